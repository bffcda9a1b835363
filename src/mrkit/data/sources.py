"""Byte sources of the split reader: where the bytes of one split come from.

A split's bytes come from a local file (plain unbuffered reads), a storage object (ranged
:meth:`~mrkit.storage.Storage.open_read` calls, streamed, never whole), and through a decompressor
(``gz``, ``bz2``, ``xz`` from the standard library, ``zst`` from the optional ``zstandard``). Each
is wrapped in a :class:`Stream` with ``readinto``; closing it closes everything it was built on.
A storage backend's ``OSError`` travels out of the decompressors as :class:`StorageFailed`, so that
the reader re-raises it as itself (the runtime retries it) and never mistakes it for bad input.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import zlib
from typing import Any

from mrkit.errors import MissingExtra

BLOCK_SIZE = 4 << 20  # bytes per read; big enough that per-read costs vanish, small enough for caches
READ_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)  # what a broken file or stream raises


class StorageFailed(Exception):
    """Carries an ``OSError`` of a storage backend (a dropped connection...) out through the
    decompressors, so that it is re-raised as itself, which the runtime retries, instead of becoming
    an :class:`InputError` (a bad input, which fails the same way on every attempt)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class Stream:
    """An uncompressed byte stream with ``readinto``; closing it closes the source, then ``closers``
    (the raw file, the storage) in reverse order."""

    def __init__(self, source: Any, closers: list[Any]) -> None:
        self._closers = [*closers, source]
        self.readinto = source.readinto

    def discard(self, n: int) -> None:
        buf = memoryview(bytearray(min(max(n, 1), BLOCK_SIZE)))
        while n > 0:
            got = self.readinto(buf[: min(n, len(buf))])
            if not got:
                return
            n -= got

    def close(self) -> None:
        close_all(self._closers)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RangedObject:
    """Reads ``[pos, end)`` of a stored object with one ranged read, then (to finish the split's last
    line) the rest of the object with a second one, opened only if needed."""

    def __init__(self, storage: Any, key: str, pos: int, end: int | None) -> None:
        self._storage, self._key, self._end = storage, key, end
        self._f = storage.open_read(key, pos, -1 if end is None else max(end - pos, 0))
        self._continued = end is None

    def readinto(self, b: memoryview) -> int:
        try:
            n = readinto(self._f, b)
            if not n and not self._continued:
                self._continued = True
                self._f.close()
                self._f = self._storage.open_read(self._key, self._end, -1)
                n = readinto(self._f, b)
        except OSError as exc:
            raise StorageFailed(exc) from exc
        return n

    def close(self) -> None:
        self._f.close()


class StorageFile:
    """A stored object's file, read by a decompressor; its errors become :class:`StorageFailed`."""

    def __init__(self, f: Any) -> None:
        self._f = f

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        try:
            return bytes(self._f.read(n))
        except OSError as exc:
            raise StorageFailed(exc) from exc

    def readinto(self, b: memoryview) -> int:
        try:
            return readinto(self._f, b)
        except OSError as exc:
            raise StorageFailed(exc) from exc

    def close(self) -> None:
        self._f.close()


class ZstdSource:
    """``zstandard``'s stream reader, with its errors turned into ``OSError`` like the others'."""

    def __init__(self, raw: Any) -> None:
        try:
            import zstandard  # optional: imported only when a .zst split is read (STYLE 9)
        except ImportError:
            raise MissingExtra("reading .zst input", "zstd", "zstandard") from None
        self._error = zstandard.ZstdError
        self._reader: Any = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)

    def readinto(self, b: memoryview) -> int:
        try:
            return int(self._reader.readinto(b))
        except self._error as exc:
            raise OSError(f"zstd: {exc}") from exc

    def close(self) -> None:
        self._reader.close()


def decompressor(compression: str, raw: Any) -> Any:
    if compression == "gz":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if compression == "bz2":
        return bz2.BZ2File(raw, "rb")
    if compression == "xz":
        return lzma.LZMAFile(raw, "rb")
    return ZstdSource(raw)


def readinto(f: Any, b: memoryview) -> int:
    """``f.readinto(b)``, for the storage backends' file objects that only have ``read``."""
    if hasattr(f, "readinto"):
        return f.readinto(b) or 0
    data = f.read(len(b))
    b[: len(data)] = data
    return len(data)


def close_all(closers: list[Any]) -> None:
    for thing in reversed(closers):
        try:
            thing.close()
        except Exception:  # noqa: S110 - closing is best effort; the first error was already raised
            pass


def skip_lines(stream: Stream, count: int) -> int:
    """Read past ``count`` newlines; return how many bytes that took."""
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    consumed = 0
    while count:
        n = stream.readinto(view)
        if not n:
            break
        found = buf.count(b"\n", 0, n)
        if found < count:
            count, consumed = count - found, consumed + n
            continue
        pos = -1
        for _ in range(count):
            pos = buf.index(b"\n", pos + 1, n)
        return consumed + pos + 1
    return consumed
