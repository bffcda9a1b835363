"""Sorted runs: how intermediate (map output) records are laid out in bytes.

A run is a sequence of *frames*; a frame is a 4-byte little-endian length followed by a pickled
list of entries ``(key_bytes, key, values)``, sorted by ``key_bytes`` across the whole run. Framing
lets a reader stream a run one frame at a time (bounded memory), and pickling whole frames keeps
the per-record cost in C (DESIGN.md §4: serialise in batches, protocol 5).

Several runs can follow each other in one object (one per spill); the map task's commit manifest
records their byte boundaries, and the reduce side opens each run as its own ranged read.
"""

from __future__ import annotations

import pickle
import struct
from bisect import bisect_left
from collections.abc import Iterator
from itertools import accumulate, chain
from operator import itemgetter
from typing import Any, BinaryIO

Entry = tuple[bytes, Any, list[Any]]

_LEN = struct.Struct("<I")
FRAME_ENTRIES = 2048  # entries per frame: big enough to amortise pickling, small enough to stream
FRAME_VALUES = 8192  # values per frame (and per entry of a hot key): bounds a reader's memory per run
_values_of = itemgetter(2)


def write_run(
    f: BinaryIO,
    entries: list[Entry],
    frame_entries: int = FRAME_ENTRIES,
    frame_values: int = FRAME_VALUES,
) -> tuple[int, int]:
    """Write sorted ``entries`` as one run of frames to ``f``; returns ``(bytes written, values)``.

    A frame closes after ``frame_entries`` entries or ``frame_values`` values, and a key with more
    values than that is cut into several consecutive entries, so that a reader holds at most about
    one frame's worth of values per run however hot a key is.

    The frame boundaries are found on the running total of value counts (computed in C), so the
    Python work is per frame, not per entry.

    >>> import io; buf = io.BytesIO()
    >>> write_run(buf, [(b"sa", "a", [1, 2]), (b"sb", "b", [3])]) == (len(buf.getvalue()), 3)
    True
    >>> list(read_run(io.BytesIO(buf.getvalue())))
    [(b'sa', 'a', [1, 2]), (b'sb', 'b', [3])]
    >>> buf = io.BytesIO(); _ = write_run(buf, [(b"sk", "k", list(range(5)))], frame_values=2)
    >>> list(read_run(io.BytesIO(buf.getvalue())))
    [(b'sk', 'k', [0, 1]), (b'sk', 'k', [2, 3]), (b'sk', 'k', [4])]
    """
    dumps, pack, write = pickle.dumps, _LEN.pack, f.write
    written = 0

    def flush(batch: list[Entry]) -> None:
        nonlocal written
        data = dumps(batch, protocol=5)
        write(pack(len(data)))
        write(data)
        written += 4 + len(data)

    # ends[i] = values in entries[:i+1]; a frame [lo, hi) holds ends[hi-1] - ends[lo-1] values.
    ends = list(accumulate(map(len, map(_values_of, entries))))
    total = ends[-1] if ends else 0
    lo, n = 0, len(entries)
    while lo < n:
        before = ends[lo - 1] if lo else 0
        if ends[lo] - before > frame_values:  # a hot key: alone, cut into frames of its own
            kb, key, values = entries[lo]
            for cut in range(0, len(values), frame_values):
                flush([(kb, key, values[cut : cut + frame_values])])
            lo += 1
            continue
        # The first entry past the value budget closes the frame (it is included: an ordinary
        # entry is never split), unless it is a hot key, which waits for the next round.
        hi = min(n, lo + frame_entries, bisect_left(ends, before + frame_values, lo) + 1)
        if hi > lo + 1 and ends[hi - 1] - ends[hi - 2] > frame_values:
            hi -= 1
        flush(entries[lo:hi])
        lo = hi
    return written, total


def read_frames(f: BinaryIO) -> Iterator[list[Entry]]:
    """Iterate the frames (lists of entries) in ``f`` until EOF, holding one frame in memory."""
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
        yield loads(data)


def read_run(f: BinaryIO) -> Iterator[Entry]:
    """Iterate the entries of the frames in ``f`` until EOF, holding one frame in memory.

    The entries of a frame are handed out by ``chain`` (C), with no Python call per entry.
    """
    return chain.from_iterable(read_frames(f))
