"""Local (or shared, e.g. NFS) folders as storage.

Writes go to a temporary file beside the target and are renamed into place on close, so readers
never see a partial object. ``put_if_absent`` uses ``os.link``, which fails atomically when the
target exists — the first-writer-wins commit on any POSIX file system, including NFSv3+.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterator
from typing import BinaryIO

from mrkit.errors import UnsafeKeyError
from mrkit.storage.base import Storage, check_key


class _RangeReader(io.RawIOBase):
    """Raw reader over ``[start, start+length)`` of an open file."""

    def __init__(self, f: io.BufferedReader, length: int) -> None:
        self._f, self._left = f, length

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[no-untyped-def,override]
        if self._left <= 0:
            return 0
        view = memoryview(buf)[: self._left]
        n = self._f.readinto(view) or 0
        self._left -= n
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


class _AtomicWriter(io.BufferedWriter):
    """Writes to ``<path>.tmp-<id>``; renames onto ``path`` on a clean close, deletes it otherwise."""

    def __init__(self, path: str) -> None:
        self._final = path
        self._tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
        self._aborted = False
        super().__init__(io.FileIO(self._tmp, "w"), buffer_size=1 << 20)

    def __exit__(self, exc_type, *rest):  # type: ignore[no-untyped-def]
        self._aborted = exc_type is not None
        return super().__exit__(exc_type, *rest)

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()
        finally:
            if self._aborted:
                _unlink_quietly(self._tmp)
            else:
                os.replace(self._tmp, self._final)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class LocalStorage(Storage):
    """A folder on a (local or shared) file system.

    Args:
        root: the folder; created when missing.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.fspath(root))
        os.makedirs(self.root, exist_ok=True)
        self.url = "file://" + self.root

    def path(self, key: str) -> str:
        """The file path of ``key``, guaranteed to be inside the root."""
        path = os.path.join(self.root, check_key(key))
        # check_key already refuses '..'; the realpath check also refuses symlinks that leave root.
        real = os.path.realpath(path)
        if real != path and not real.startswith(os.path.realpath(self.root) + os.sep):
            raise UnsafeKeyError(f"unsafe storage key {key!r}: it resolves outside {self.root}")
        return path

    def open_read(self, key: str, start: int = 0, length: int = -1) -> BinaryIO:
        f = open(self.path(key), "rb")  # noqa: SIM115 - returned to the caller
        if start:
            f.seek(start)
        if length < 0:
            return f
        return io.BufferedReader(_RangeReader(f, length), buffer_size=1 << 20)  # type: ignore[return-value]

    def open_write(self, key: str) -> BinaryIO:
        path = self.path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return _AtomicWriter(path)  # type: ignore[return-value]

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self.path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            _unlink_quietly(tmp)

    def _folder(self, prefix: str) -> str:
        """The deepest folder that holds every key under ``prefix``."""
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        return os.path.join(self.root, base) if base else self.root

    def _walk(self, prefix: str, topdown: bool = True) -> Iterator[tuple[str, list[tuple[str, str]]]]:
        """Per folder under ``prefix``: its path and the ``(key, file name)`` of each file whose key
        starts with ``prefix``, half-written ``.tmp-`` files included (callers tell them apart)."""
        for dirpath, _dirs, files in os.walk(self._folder(prefix), topdown=topdown):
            rel = os.path.relpath(dirpath, self.root)
            rel = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            yield dirpath, [(rel + name, name) for name in files if (rel + name).startswith(prefix)]

    def list(self, prefix: str = "") -> Iterator[str]:
        for _dirpath, files in self._walk(prefix):
            yield from (key for key, name in files if ".tmp-" not in name)

    def delete(self, key: str) -> None:
        _unlink_quietly(self.path(key))

    def size(self, key: str) -> int:
        return os.stat(self.path(key)).st_size

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``, then the folders it leaves empty (up to the root)."""
        count = super().delete_prefix(prefix)
        folder = self._folder(prefix)
        for dirpath, files in self._walk(prefix, topdown=False):
            # Half-written files (``.tmp-``, not listed as keys) of a writer that was killed go too;
            # a writer still running loses its file and fails its close, as a discarded attempt should.
            for _key, name in files:
                if ".tmp-" in name:
                    _unlink_quietly(os.path.join(dirpath, name))
            _rmdir_quietly(dirpath, self.root)
        while folder != self.root and folder.startswith(self.root + os.sep):
            if os.path.isdir(folder) and not _rmdir_quietly(folder, self.root):
                break
            folder = os.path.dirname(folder)
        return count

    def get(self, key: str) -> bytes:
        with open(self.path(key), "rb") as f:
            return f.read()

    def move(self, src: str, dst: str, *, target: Storage | None = None) -> None:
        if target is None or (isinstance(target, LocalStorage) and _same_device(self.root, target.root)):
            dst_path = (target or self).path(dst)
            os.makedirs(os.path.dirname(dst_path), exist_ok=True)
            os.replace(self.path(src), dst_path)
            return
        super().move(src, dst, target=target)


def _rmdir_quietly(path: str, root: str) -> bool:
    """Remove ``path`` if it is an empty folder other than ``root``; True when removed."""
    if path == root:
        return False
    try:
        os.rmdir(path)
        return True
    except OSError:
        return False


def _same_device(a: str, b: str) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev
