"""The shuffle: sorted runs, how intermediate (map output) records are laid out in bytes.

A run is a sequence of *frames*; a frame is a 4-byte little-endian length followed by one pickled
tuple ``(keys, values, kbs, single)``, *columnar* so that pickling and unpickling stay in C and cost
per frame, not per key (serialise in batches, pickle protocol 5):

* ``keys``: the frame's keys, sorted by their encoded bytes (:func:`~mrkit.model.partition.key_bytes`)
  across the whole run;
* ``values``: when ``single`` is true, one value per key (``values[i]`` belongs to ``keys[i]``: the
  usual case after a combiner or a ``Counter``); otherwise one list of values per key;
* ``kbs``: the keys' encoded bytes, or ``None`` when every key of the run is a ``str``. A str's
  encoding sorts and compares exactly as the str does (UTF-8 keeps code point order), so str keys
  are sorted, grouped and merged as themselves and their bytes are never built or stored.

Framing lets a reader stream a run one frame at a time (bounded memory). Several runs can follow each
other in one object (one per spill); the map task's commit manifest records their byte boundaries,
and the reduce side opens each run as its own ranged read.
"""

from __future__ import annotations

import pickle
import struct
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from itertools import accumulate, chain
from typing import Any, BinaryIO

from mrkit.errors import StorageError
from mrkit.model.partition import key_bytes

Entry = tuple[bytes, Any, list[Any]]  # (key bytes, key, values): one item of the streaming merge
Frame = tuple[list[Any], list[Any], "list[bytes] | None", bool]  # (keys, values, kbs, single)

_LEN = struct.Struct("<I")
FRAME_ENTRIES = 8192  # keys per frame: big enough to amortise pickling, small enough to stream
FRAME_VALUES = 8192  # values per frame (and per entry of a hot key): bounds a reader's memory per run


def write_run(
    f: BinaryIO,
    keys: list[Any],
    values: list[Any],
    *,
    kbs: list[bytes] | None = None,
    single: bool = False,
    frame_entries: int = FRAME_ENTRIES,
    frame_values: int = FRAME_VALUES,
) -> tuple[int, int]:
    """Write one sorted run to ``f``; returns ``(bytes written, values written)``.

    Args:
        keys: sorted by encoded key (by themselves when they are all str and ``kbs`` is None).
        values: one value per key if ``single``, else one non-empty list of values per key.
        kbs: the keys' encoded bytes, required unless every key is a str.

    A frame closes after ``frame_entries`` keys or ``frame_values`` values, and a key with more
    values than that is cut into several consecutive entries, so that a reader holds at most about
    one frame's worth of values per run however hot a key is. The boundaries are found on the
    running total of value counts (computed in C), so the Python work is per frame, not per key.

    >>> import io; buf = io.BytesIO()
    >>> write_run(buf, ["a", "b"], [[1, 2], [3]]) == (len(buf.getvalue()), 3)
    True
    >>> list(read_run(io.BytesIO(buf.getvalue())))
    [(b'sa', 'a', [1, 2]), (b'sb', 'b', [3])]
    >>> buf = io.BytesIO(); _ = write_run(buf, ["k"], [list(range(5))], frame_values=2)
    >>> [frame[1] for frame in read_frames(io.BytesIO(buf.getvalue()))]
    [[[0, 1]], [[2, 3]], [[4]]]
    """
    dumps, pack, write = pickle.dumps, _LEN.pack, f.write
    written = 0

    def flush(lo: int, hi: int, frame_vals: list[Any] | None = None) -> None:
        nonlocal written
        frame = (
            keys[lo:hi],
            values[lo:hi] if frame_vals is None else frame_vals,
            None if kbs is None else kbs[lo:hi],
            single,
        )
        data = dumps(frame, protocol=5)
        write(pack(len(data)))
        write(data)
        written += 4 + len(data)

    n = len(keys)
    if single:
        step = max(1, min(frame_entries, frame_values))
        for lo in range(0, n, step):
            flush(lo, min(n, lo + step))
        return written, n
    # ends[i] = values of keys[:i+1]; a frame [lo, hi) holds ends[hi-1] - ends[lo-1] values.
    ends = list(accumulate(map(len, values)))
    total = ends[-1] if ends else 0
    lo = 0
    while lo < n:
        before = ends[lo - 1] if lo else 0
        if ends[lo] - before > frame_values:  # a hot key: alone, cut into frames of its own
            hot = values[lo]
            for cut in range(0, len(hot), frame_values):
                flush(lo, lo + 1, [hot[cut : cut + frame_values]])
            lo += 1
            continue
        # The first key past the value budget closes the frame (it is included: an ordinary
        # entry is never split), unless it is a hot key, which waits for the next round.
        hi = min(n, lo + frame_entries, bisect_left(ends, before + frame_values, lo) + 1)
        if hi > lo + 1 and ends[hi - 1] - ends[hi - 2] > frame_values:
            hi -= 1
        flush(lo, hi)
        lo = hi
    return written, total


def read_frames(f: BinaryIO) -> Iterator[Frame]:
    """Iterate the frames in ``f`` until EOF, holding one frame in memory."""
    read, unpack, loads = f.read, _LEN.unpack, pickle.loads
    while True:
        head = read(4)
        if not head:
            return
        if len(head) < 4:
            raise EOFError("truncated run: incomplete frame header")
        (size,) = unpack(head)
        data = read(size)
        if len(data) < size:
            raise EOFError(f"truncated run: frame of {size} bytes has only {len(data)}")
        frame = loads(data)
        if type(frame) is not tuple or len(frame) != 4:
            # Before columnar frames a frame was a list of (key bytes, key, values) entries.
            raise StorageError(
                "a map task's output is not in this mrkit's run format (it was written by another "
                "mrkit version, e.g. a worker not yet upgraded): run the job again on one version"
            )
        yield frame


def frame_entries(frame: Frame) -> Iterator[Entry]:
    """The frame's ``(key bytes, key, values)`` entries, for the streaming merge."""
    keys, values, kbs, single = frame
    if kbs is None:
        kbs = list(map(key_bytes, keys))
    if single:
        values = [[v] for v in values]
    return zip(kbs, keys, values, strict=True)


def run_entries(frames: Iterable[Frame]) -> Iterator[Entry]:
    """The entries of a run's frames, in order; ``chain`` (C) hands them out, with Python work
    once per frame (:func:`frame_entries`), not per entry."""
    return chain.from_iterable(map(frame_entries, frames))


def read_run(f: BinaryIO) -> Iterator[Entry]:
    """Iterate the entries of the frames in ``f`` until EOF, holding one frame in memory."""
    return run_entries(read_frames(f))
