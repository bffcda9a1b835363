"""Where bytes live: one bytes-only interface every backend implements.

Storage knows bytes, not records (STYLE 7): codecs in :mod:`mrkit.data` turn records into bytes.
A backend implements six primitives; everything else here is built on them (STYLE 5):

    open_read(key, start=0, length=-1) -> readable binary file over that byte range
    open_write(key)                    -> writable binary file; the object appears whole on close
                                          (never partially), and not at all if the block raises
    put_if_absent(key, data) -> bool   -> atomic first-writer-wins create; the commit primitive
    list(prefix) -> iterator of keys   -> every key under prefix, however many (paginated inside)
    delete(key)                        -> remove one key; a missing key is not an error
    size(key) -> int                   -> byte size; raises FileNotFoundError when missing

Keys are relative, ``/``-separated strings. :func:`check_key` refuses any key that could escape
the storage root (``..``, absolute, empty or ``.`` segments, backslashes, NUL), so a task id or a
user key can never become a path outside the job's folders.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from typing import BinaryIO

from mrkit.errors import UnsafeKeyError


def check_key(key: str) -> str:
    """Return ``key`` when it is a safe relative storage key, else raise :class:`UnsafeKeyError`.

    >>> check_key("job-1/map/map-00000/COMMIT")
    'job-1/map/map-00000/COMMIT'
    >>> check_key("../etc/passwd")
    Traceback (most recent call last):
    ...
    mrkit.errors.UnsafeKeyError: unsafe storage key '../etc/passwd': segment '..' is not allowed
    """
    if not isinstance(key, str) or not key:
        raise UnsafeKeyError(f"unsafe storage key {key!r}: keys are non-empty strings")
    if "\\" in key or "\x00" in key:
        raise UnsafeKeyError(f"unsafe storage key {key!r}: backslash and NUL are not allowed")
    if key.startswith("/"):
        raise UnsafeKeyError(f"unsafe storage key {key!r}: keys are relative (no leading '/')")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise UnsafeKeyError(f"unsafe storage key {key!r}: segment {segment!r} is not allowed")
    return key


class Storage:
    """Base class of every storage backend; subclasses implement the six primitives.

    Attributes:
        url: the URL that reopens this storage in another process (``open_storage(url)``).
    """

    url: str = ""

    # -- the primitives ----------------------------------------------------------------------

    def open_read(self, key: str, start: int = 0, length: int = -1) -> BinaryIO:
        """Open ``key`` for reading bytes ``[start, start+length)`` (``-1``: to the end).

        Raises:
            FileNotFoundError: when ``key`` does not exist.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement open_read()")

    def open_write(self, key: str) -> BinaryIO:
        """Open ``key`` for writing; the object becomes visible, whole, when the file is closed.

        Used as a context manager, an exception inside the block discards the object.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement open_write()")

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` with ``data`` unless it exists, atomically. Returns True when created."""
        raise NotImplementedError(f"{type(self).__name__} does not implement put_if_absent()")

    def list(self, prefix: str = "") -> Iterator[str]:
        """Iterate every key that starts with ``prefix`` (all pages), in no particular order."""
        raise NotImplementedError(f"{type(self).__name__} does not implement list()")

    def delete(self, key: str) -> None:
        """Delete ``key``; deleting a missing key is not an error."""
        raise NotImplementedError(f"{type(self).__name__} does not implement delete()")

    def size(self, key: str) -> int:
        """Byte size of ``key``.

        Raises:
            FileNotFoundError: when ``key`` does not exist.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement size()")

    # -- built on the primitives; backends may override for speed ------------------------------

    def get(self, key: str) -> bytes:
        """Read the whole of ``key``."""
        with self.open_read(key) as f:
            return f.read()

    def get_or_none(self, key: str) -> bytes | None:
        """Read ``key``, or return None when it does not exist."""
        try:
            return self.get(key)
        except FileNotFoundError:
            return None

    def put(self, key: str, data: bytes) -> None:
        """Write ``data`` to ``key``, replacing any previous object."""
        with self.open_write(key) as f:
            f.write(data)

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except FileNotFoundError:
            return False
        return True

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``; returns how many were deleted."""
        keys = list(self.list(prefix))
        for key in keys:
            self.delete(key)
        return len(keys)

    def move(self, src: str, dst: str, *, target: Storage | None = None) -> None:
        """Move ``src`` to ``dst`` (in ``target``, default this storage), replacing ``dst``.

        The base copies then deletes; local folders override this with an atomic rename.
        """
        target = target or self
        with self.open_read(src) as fin, target.open_write(dst) as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        self.delete(src)

    def close(self) -> None:
        """Release connections; the storage may not be used afterwards."""

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"
