"""A view of another storage under a key prefix: ``<storage-url>#<prefix>``.

Used where a job needs a folder inside a storage that has no folders of its own (an in-memory result
kept in Redis, an output under a bucket prefix): ``open_storage("redis://h:6379/0#job-1/output/")``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from mrkit.storage.base import Storage, check_key


class PrefixedStorage(Storage):
    """Every key ``k`` of this storage is ``prefix + k`` in ``base``.

    Args:
        base: the storage that holds the bytes.
        prefix: a key prefix ending in ``/``.
    """

    def __init__(self, base: Storage, prefix: str) -> None:
        if not prefix.endswith("/"):
            prefix += "/"
        check_key(prefix.rstrip("/"))
        self.base = base
        self.prefix = prefix
        self.url = f"{base.url}#{prefix}"

    def open_read(self, key: str, start: int = 0, length: int = -1) -> BinaryIO:
        return self.base.open_read(self.prefix + check_key(key), start, length)

    def open_write(self, key: str) -> BinaryIO:
        return self.base.open_write(self.prefix + check_key(key))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self.base.put_if_absent(self.prefix + check_key(key), data)

    def list(self, prefix: str = "") -> Iterator[str]:
        n = len(self.prefix)
        for key in self.base.list(self.prefix + prefix):
            yield key[n:]

    def delete(self, key: str) -> None:
        self.base.delete(self.prefix + check_key(key))

    def size(self, key: str) -> int:
        return self.base.size(self.prefix + check_key(key))

    def get(self, key: str) -> bytes:
        return self.base.get(self.prefix + check_key(key))

    def move(self, src: str, dst: str, *, target: Storage | None = None) -> None:
        if target is None or target is self:
            self.base.move(self.prefix + check_key(src), self.prefix + check_key(dst))
        else:
            super().move(src, dst, target=target)

    def close(self) -> None:
        self.base.close()
