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
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

Entry = tuple[bytes, Any, list[Any]]

_LEN = struct.Struct("<I")
FRAME_ENTRIES = 2048  # entries per frame: big enough to amortise pickling, small enough to stream
FRAME_VALUES = 8192  # values per frame (and per entry of a hot key): bounds a reader's memory per run


def write_run(
    f: BinaryIO,
    entries: Iterable[Entry],
    frame_entries: int = FRAME_ENTRIES,
    frame_values: int = FRAME_VALUES,
) -> int:
    """Write sorted ``entries`` as one run of frames to ``f``; returns the bytes written.

    A frame closes after ``frame_entries`` entries or ``frame_values`` values, and a key with more
    values than that is cut into several consecutive entries, so that a reader holds at most about
    one frame's worth of values per run however hot a key is.

    >>> import io; buf = io.BytesIO()
    >>> write_run(buf, [(b"sa", "a", [1, 2]), (b"sb", "b", [3])]) == len(buf.getvalue())
    True
    >>> list(read_run(io.BytesIO(buf.getvalue())))
    [(b'sa', 'a', [1, 2]), (b'sb', 'b', [3])]
    >>> buf = io.BytesIO(); _ = write_run(buf, [(b"sk", "k", list(range(5)))], frame_values=2)
    >>> list(read_run(io.BytesIO(buf.getvalue())))
    [(b'sk', 'k', [0, 1]), (b'sk', 'k', [2, 3]), (b'sk', 'k', [4])]
    """
    written = 0
    batch: list[Entry] = []
    n_values = 0
    dumps, pack = pickle.dumps, _LEN.pack

    def flush() -> int:
        data = dumps(batch, protocol=5)
        f.write(pack(len(data)))
        f.write(data)
        return 4 + len(data)

    for entry in entries:
        values = entry[2]
        if len(values) > frame_values:
            kb, key = entry[0], entry[1]
            for lo in range(0, len(values), frame_values):
                if batch:
                    written += flush()
                    batch, n_values = [], 0
                batch.append((kb, key, values[lo : lo + frame_values]))
                n_values = len(batch[-1][2])
            continue
        batch.append(entry)
        n_values += len(values)
        if len(batch) >= frame_entries or n_values >= frame_values:
            written += flush()
            batch, n_values = [], 0
    if batch:
        written += flush()
    return written


def read_run(f: BinaryIO) -> Iterator[Entry]:
    """Iterate the entries of the frames in ``f`` until EOF, holding one frame in memory."""
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
        yield from loads(data)
