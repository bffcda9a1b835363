"""Stable key encoding and partitioning.

Keys go to reducers by a digest of their *encoded bytes*, never by ``hash()``: ``hash(str)`` is
salted per process (``PYTHONHASHSEED``), so two map workers would send the same word to different
reducers (the bug of seed 003's ``ord(word[0]) % M`` is the opposite one: stable but badly skewed).

The same encoding also orders keys for the shuffle's sort and merge and decides which keys are
equal: two keys are grouped together exactly when their encodings are equal. For str, int, bytes,
float, bool, None and tuples of those this is ordinary equality, except that ``1``, ``1.0`` and
``True`` stay three different keys (as in Hadoop, where keys compare by their serialised form).
"""

from __future__ import annotations

import bisect
import pickle
import zlib
from collections.abc import Callable
from typing import Any, Protocol

# Type tags keep "1" (str), b"1" (bytes) and 1 (int) apart while keeping each type's bytes cheap.
_STR, _INT, _BYTES, _OTHER = b"s", b"i", b"b", b"p"


def key_bytes(key: Any) -> bytes:
    """Encode ``key`` to bytes that are equal exactly when the keys are grouped together.

    The result is stable across processes, machines and runs (it never uses ``hash()``).

    >>> key_bytes("hé"), key_bytes(7), key_bytes(b"7")
    (b'sh\\xc3\\xa9', b'i7', b'b7')
    """
    kind = type(key)
    if kind is str:
        return _STR + key.encode("utf-8", "surrogatepass")
    if kind is int:
        return _INT + str(key).encode()
    if kind is bytes:
        return _BYTES + key
    return _OTHER + pickle.dumps(key, protocol=4)


def stable_partition(key: Any, n_reduce: int) -> int:
    """Default partitioner: CRC-32 of :func:`key_bytes` modulo ``n_reduce``.

    >>> stable_partition("apple", 4) == stable_partition("apple", 4)
    True
    >>> 0 <= stable_partition(("a", 1), 7) < 7
    True
    """
    return zlib.crc32(key_bytes(key)) % n_reduce


class Partitioner(Protocol):
    """What a custom partitioner looks like: ``partition(key, n_reduce) -> int`` in ``range(n_reduce)``."""

    def __call__(self, key: Any, n_reduce: int, /) -> int: ...


def checked_partitioner(fn: Callable[[Any, int], int] | None) -> Callable[[Any, int], int]:
    """Return ``fn`` (or the default) wrapped so an out-of-range answer fails with a clear message."""
    if fn is None:
        return stable_partition

    def partition(key: Any, n_reduce: int) -> int:
        p = fn(key, n_reduce)
        if type(p) is not int or not 0 <= p < n_reduce:
            raise ValueError(
                f"partitioner returned {p!r} for key {key!r}; expected an int in range({n_reduce})"
            )
        return p

    return partition


class RangePartitioner:
    """A total-order partitioner (``sort_output=True``, TeraSort's): partition ``i`` holds the keys
    whose :func:`key_bytes` lie between cut points ``i - 1`` and ``i``.

    Within a partition the reduce side hands keys out in :func:`key_bytes` order (for ``str`` keys,
    Python's own order), so the parts read in order are globally sorted.

    >>> p = RangePartitioner([key_bytes("h"), key_bytes("p")])
    >>> [p(k, 3) for k in ("apple", "h", "kiwi", "zebra")]
    [0, 1, 1, 2]
    """

    def __init__(self, cuts: list[bytes]) -> None:
        self.cuts = list(cuts)

    def __call__(self, key: Any, n_reduce: int) -> int:
        return min(bisect.bisect_right(self.cuts, key_bytes(key)), n_reduce - 1)
