"""Where bytes live: open a storage backend by URL.

    /some/folder, file:///some/folder   LocalStorage
    memory://name                       MemoryStorage (one process only)
    <any of these>#prefix/              PrefixedStorage: the keys under prefix/ of that storage
    redis://…, rediss://…               RedisStorage      (extra: redis)
    s3://bucket/prefix, other fsspec    FsspecStorage     (extra: s3)

Optional backends are imported only when their URL is opened (STYLE 9).
"""

from __future__ import annotations

import importlib
from typing import Any

from mrkit.errors import ConfigError
from mrkit.storage.base import Storage, check_key
from mrkit.storage.local import LocalStorage
from mrkit.storage.memory import MemoryStorage

# scheme -> "module:Class"; each class takes (url, **options) through its `from_url` classmethod.
BACKENDS: dict[str, str] = {
    "redis": "mrkit.storage.redis:RedisStorage",
    "rediss": "mrkit.storage.redis:RedisStorage",
    "s3": "mrkit.storage.fsspec:FsspecStorage",
    "gs": "mrkit.storage.fsspec:FsspecStorage",
    "gcs": "mrkit.storage.fsspec:FsspecStorage",
    "az": "mrkit.storage.fsspec:FsspecStorage",
    "abfs": "mrkit.storage.fsspec:FsspecStorage",
}


def open_storage(url: str, **options: Any) -> Storage:
    """Open the storage named by ``url``.

    Args:
        url: a folder path, ``file://``, ``memory://``, ``redis://``, ``s3://`` or another fsspec URL.
        options: backend options (e.g. ``endpoint_url`` for s3).

    Raises:
        ConfigError: for an unknown scheme.
        MissingExtra: when the backend's package is not installed.
    """
    if "#" in url:
        from mrkit.storage.prefixed import PrefixedStorage

        base, prefix = url.split("#", 1)
        return PrefixedStorage(open_storage(base, **options), prefix)
    if "://" not in url:
        return LocalStorage(url)
    scheme, rest = url.split("://", 1)
    if scheme == "file":
        return LocalStorage(rest)
    if scheme == "memory":
        return MemoryStorage(rest or "default")
    target = BACKENDS.get(scheme)
    if target is None:
        choices = ", ".join(["file", "memory", *sorted(BACKENDS)])
        raise ConfigError(f"unknown storage URL scheme {scheme!r} in {url!r}; choose one of: {choices}")
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls.from_url(url, **options)  # type: ignore[no-any-return]


__all__ = ["LocalStorage", "MemoryStorage", "Storage", "check_key", "open_storage"]
