"""In-memory storage: the test double of every backend, shared by name within one process.

``memory://NAME`` reopens the same dict anywhere in the process, which is what the inline executor
needs. It is not visible to other processes: the processes executor uses a local folder instead.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from typing import BinaryIO

from mrkit.storage.base import Storage, check_key

_STORES: dict[str, dict[str, bytes]] = {}
_STORES_LOCK = threading.Lock()


class _MemoryWriter(io.BytesIO):
    """A BytesIO that publishes its bytes to the store on a clean close only."""

    def __init__(self, store: MemoryStorage, key: str) -> None:
        super().__init__()
        self._store, self._key, self._aborted = store, key, False

    def __exit__(self, exc_type, *rest):  # type: ignore[no-untyped-def]
        self._aborted = exc_type is not None
        return super().__exit__(exc_type, *rest)

    def close(self) -> None:
        if not self.closed and not self._aborted:
            with self._store._lock:
                self._store._objects[self._key] = self.getvalue()
        super().close()


class MemoryStorage(Storage):
    """Objects in a dict, shared by ``name`` within the process.

    Args:
        name: the store's name; ``MemoryStorage("x")`` twice gives the same objects.
    """

    def __init__(self, name: str = "default") -> None:
        self.name = name
        self.url = f"memory://{name}"
        with _STORES_LOCK:
            self._objects = _STORES.setdefault(name, {})
        self._lock = _STORES_LOCK

    def open_read(self, key: str, start: int = 0, length: int = -1) -> BinaryIO:
        check_key(key)
        try:
            data = self._objects[key]
        except KeyError:
            raise FileNotFoundError(f"{self.url}/{key}") from None
        end = len(data) if length < 0 else start + length
        return io.BytesIO(data[start:end])

    def open_write(self, key: str) -> BinaryIO:
        return _MemoryWriter(self, check_key(key))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        check_key(key)
        with self._lock:
            if key in self._objects:
                return False
            self._objects[key] = bytes(data)
            return True

    def list(self, prefix: str = "") -> Iterator[str]:
        with self._lock:
            keys = [k for k in self._objects if k.startswith(prefix)]
        return iter(keys)

    def delete(self, key: str) -> None:
        with self._lock:
            self._objects.pop(check_key(key), None)

    def size(self, key: str) -> int:
        try:
            return len(self._objects[check_key(key)])
        except KeyError:
            raise FileNotFoundError(f"{self.url}/{key}") from None

    def get(self, key: str) -> bytes:
        try:
            return self._objects[check_key(key)]
        except KeyError:
            raise FileNotFoundError(f"{self.url}/{key}") from None

    def put(self, key: str, data: bytes) -> None:
        with self._lock:
            self._objects[check_key(key)] = bytes(data)

    def drop(self) -> None:
        """Forget every object of this store (tests)."""
        with self._lock:
            self._objects.clear()
