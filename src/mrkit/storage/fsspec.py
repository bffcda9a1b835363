"""Object stores as storage: ``s3://bucket/prefix`` (boto3), any other fsspec URL (``gs://``, ``az://`` …).

The contract is :class:`mrkit.storage.base.Storage`'s; how each primitive keeps it on an object store:

    open_read(key, start, length)  ranged GETs, streamed into the caller's buffer, never the whole
                                   object in memory. A GET that fails or ends short is re-issued
                                   from the first byte not yet delivered (a bounded number of times,
                                   with backoff), then :class:`~mrkit.errors.StorageError` is raised:
                                   a read is never silently truncated.
    open_write(key)                spooled to a temporary file (memory up to 8 MiB, then disk) and
                                   uploaded on a clean close; S3 makes an object visible whole when
                                   its PUT (or multipart upload) completes, and nothing is uploaded
                                   when the ``with`` block raises.
    put_if_absent(key, data)       S3: ``PutObject`` with ``If-None-Match: *`` (a conditional write,
                                   atomic on S3 since August 2024); other stores: fsspec's exclusive
                                   create (``mode="create"``). See the note on lost replies below.
    list(prefix)                   ``ListObjectsV2`` through a paginator: every page, not the first
                                   1,000 keys.
    delete(key) / delete_prefix    ``DeleteObject`` / ``DeleteObjects`` in batches of 1,000.
    size(key)                      ``HeadObject``.

Why boto3 for S3 and fsspec for the rest (docs/serverless.md says more): boto3 ships inside the AWS
Lambda Python runtime, so a function package needs only mrkit's pure-Python code, while s3fs brings
aiobotocore/aiohttp and compiled wheels that must match the function's platform; boto3 is
synchronous (no event-loop thread to carry through forked workers); and it exposes conditional
writes, paginators and streamed ranged GETs directly. Other object stores have no such common
client, so they go through fsspec, which also serves ``s3://`` when asked (``driver="fsspec"``).

A lost reply to a conditional write: botocore retries a PUT whose reply was lost; if the first try
had in fact succeeded, the retry gets ``412 Precondition Failed``. ``put_if_absent`` then reads the
object back and reports success when it holds exactly our bytes — so callers store a value unique
to the writer (mrkit's commit manifests name their attempt; guard keys hold a request id).

This module holds the storage and its streamed reader and writer; the two adapters that talk to
the stores (S3 via boto3, the rest via fsspec) are in :mod:`mrkit.storage.objects`.

Endpoint and credentials come from the usual AWS sources (``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID`` …, profiles, instance and function roles), or from
options: ``open_storage("s3://b/p", endpoint_url="http://127.0.0.1:9000")``. Clients are created
once per process and option set (creating one costs ~100-300 ms) and are never shared across a fork.
"""

from __future__ import annotations

import io
import json
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from mrkit.errors import ConfigError, StorageError
from mrkit.storage.base import Storage, check_key
from mrkit.storage.objects import Body, FsspecObjects, S3Objects

READ_RETRIES = 5  # re-issues of a failed ranged GET before the read fails (reset by progress)
# Retry jitter comes from a private generator: a library must not draw from (and so shift) the
# caller's global ``random`` stream, which a user may have seeded for reproducible results. Reseeded
# in every forked child, as ``random`` does for its own: workers forked from one process would
# otherwise all wait the same "random" delays, which is what jitter is there to prevent.
_JITTER = random.Random()
os.register_at_fork(after_in_child=_JITTER.seed)
WINDOW = 64 << 20  # bytes asked of one ranged GET (S3); the body is streamed, not held
# An open-ended read (``length=-1``) starts with a small window and doubles it: the input reader
# opens one just to finish a split's last line, reading 64 KiB past the split's end at a time, and
# a request's whole window is transferred however little of it is read (1 MiB here cost every split
# but an object's last one an extra MiB; tests/test_s3_storage.py measures the ranges a split asks).
FIRST_OPEN_WINDOW = 64 << 10
SPOOL = 8 << 20  # write buffer kept in memory before spilling to a temporary file

S3_OPTIONS = (
    "endpoint_url",
    "region_name",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "profile_name",
    "max_attempts",
    "read_retries",
    "driver",
)


def parse_storage_options(raw: str, source: str) -> dict[str, Any]:
    """Parse a JSON object of storage options; ``source`` names where it came from in errors.

    >>> parse_storage_options('{"endpoint_url": "http://127.0.0.1:9000"}', "test")
    {'endpoint_url': 'http://127.0.0.1:9000'}
    """
    try:
        options = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source} must be a JSON object of storage options: {exc}") from None
    if not isinstance(options, dict):
        raise ConfigError(f"{source} must be a JSON object of storage options, got {raw!r}")
    return options


def env_storage_options() -> dict[str, Any]:
    """The options in ``$MRKIT_STORAGE_OPTIONS`` (a JSON object), or ``{}``."""
    raw = os.environ.get("MRKIT_STORAGE_OPTIONS")
    return parse_storage_options(raw, "$MRKIT_STORAGE_OPTIONS") if raw else {}


class FsspecStorage(Storage):
    """Keys under ``prefix/`` of an object-store bucket.

    Use :meth:`from_url`. ``url`` is ``scheme://bucket[/prefix]`` and reopens the same storage in
    another process (with that process's environment for endpoint and credentials).

    Args:
        url: the canonical URL (no trailing slash).
        objects: the adapter that talks to the store (:class:`S3Objects` or :class:`FsspecObjects`).
        root: key prefix inside the bucket (``""`` or ending in ``/``).
        read_retries: re-issues of a failed ranged read before :class:`StorageError`.
    """

    def __init__(
        self, url: str, objects: S3Objects | FsspecObjects, root: str, *, read_retries: int = READ_RETRIES
    ) -> None:
        self.url = url
        self.objects = objects
        self.root = root
        self.read_retries = read_retries

    @classmethod
    def from_url(cls, url: str, **options: Any) -> FsspecStorage:
        """Open ``scheme://bucket[/prefix]``.

        Args:
            url: ``s3://bucket/prefix`` or another fsspec URL (``gs://bucket/prefix``).
            options: for S3: ``endpoint_url``, ``region_name``, ``aws_access_key_id``,
                ``aws_secret_access_key``, ``aws_session_token``, ``profile_name``, ``max_attempts``
                (botocore's attempts per request, default 4); for any store:
                ``read_retries`` (default 5) and ``driver`` (``boto3`` for S3 by default, or
                ``fsspec``). Other stores take their fsspec filesystem's options.

        Raises:
            ConfigError: a malformed URL or an unknown S3 option.
            MissingExtra: boto3 (S3) or fsspec and its backend are not installed.
        """
        if "://" not in url:
            raise ConfigError(f"object-store URL {url!r} needs a scheme, e.g. s3://bucket/prefix")
        scheme, rest = url.split("://", 1)
        bucket, _, prefix = rest.partition("/")
        if not bucket or "?" in rest or "#" in rest:
            raise ConfigError(f"object-store URL {url!r} must look like {scheme}://bucket[/prefix]")
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix)
        # Explicit options win over $MRKIT_STORAGE_OPTIONS (set by --storage-options, inherited by
        # the worker processes the driver starts).
        options = {**env_storage_options(), **options}
        read_retries = int(options.pop("read_retries", READ_RETRIES))
        driver = options.pop("driver", "boto3" if scheme == "s3" else "fsspec")
        canonical = f"{scheme}://{bucket}" + (f"/{prefix}" if prefix else "")
        objects: S3Objects | FsspecObjects
        if driver == "boto3" and scheme == "s3":
            unknown = sorted(set(options) - set(S3_OPTIONS))
            if unknown:
                raise ConfigError(
                    f"unknown s3 storage option(s) {', '.join(unknown)}; valid: {', '.join(S3_OPTIONS)}"
                )
            objects = S3Objects(bucket, options)
        elif driver == "fsspec":
            objects = FsspecObjects(scheme, bucket, options)
        else:
            raise ConfigError(
                f"storage driver {driver!r} is not valid for {scheme}://; choose boto3 (s3 only) or fsspec"
            )
        return cls(canonical, objects, f"{prefix}/" if prefix else "", read_retries=read_retries)

    # -- the primitives ------------------------------------------------------------------------

    def open_read(self, key: str, start: int = 0, length: int = -1) -> BinaryIO:
        path = self.root + check_key(key)
        end = None if length < 0 else start + length
        raw = _RangeReader(self.objects, path, start, end, self.read_retries, f"{self.url}/{key}")
        raw.open_first()  # FileNotFoundError now, from open_read, as the contract says
        return io.BufferedReader(raw, buffer_size=1 << 20)  # type: ignore[return-value]

    def open_write(self, key: str) -> BinaryIO:
        path = self.root + check_key(key)
        return _UploadOnClose(lambda f, size: self.objects.upload(path, f, size))  # type: ignore[return-value]

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self.objects.put_if_absent(self.root + check_key(key), bytes(data))

    def list(self, prefix: str = "") -> Iterator[str]:
        n = len(self.root)
        for path in self.objects.list(self.root + prefix):
            yield path[n:]

    def delete(self, key: str) -> None:
        self.objects.delete_many([self.root + check_key(key)])

    def size(self, key: str) -> int:
        return self.objects.size(self.root + check_key(key))

    # -- faster paths --------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        with self.open_read(key) as f:
            return f.read()

    def put(self, key: str, data: bytes) -> None:
        self.objects.put(self.root + check_key(key), bytes(data))

    def delete_prefix(self, prefix: str) -> int:
        paths = list(self.objects.list(self.root + prefix))
        self.objects.delete_many(paths)
        return len(paths)

    def move(self, src: str, dst: str, *, target: Storage | None = None) -> None:
        """Server-side copy then delete when both keys are in the same store; else copy through us."""
        target = target or self
        if isinstance(target, FsspecStorage) and target.objects.same_store(self.objects):
            self.objects.copy(self.root + check_key(src), target.root + check_key(dst))
            self.delete(src)
            return
        super().move(src, dst, target=target)

    def close(self) -> None:
        """Nothing to release: clients are shared per process (readers open and close storages
        per split, and a client costs far more to create than a request)."""


# -- reading ---------------------------------------------------------------------------------------


class _RangeReader(io.RawIOBase):
    """Bytes ``[start, end)`` of one object (``end=None``: to the object's end), streamed from ranged
    requests. A request that fails or ends before its window does is re-issued from the next byte
    not yet delivered; ``retries`` failures in a row without progress raise :class:`StorageError`."""

    def __init__(
        self,
        objects: S3Objects | FsspecObjects,
        path: str,
        start: int,
        end: int | None,
        retries: int,
        label: str,
    ) -> None:
        self._objects, self._path, self._label = objects, path, label
        self._pos, self._end, self._retries = start, end, retries
        self._stream: Any = None
        self._window_end = start  # the request in flight covers [.., window_end)
        self._window = min(FIRST_OPEN_WINDOW, WINDOW) if end is None else WINDOW

    def readable(self) -> bool:
        return True

    def open_first(self) -> None:
        self._with_retries(self._open)

    def _open(self) -> None:
        if self._end is not None and self._pos >= self._end:
            self._stream, self._window_end = Body(io.BytesIO(), self._pos), self._pos
            return
        opened = self._objects.open_range(self._path, self._pos, self._end, self._window)
        self._stream, self._window_end = opened
        self._window = min(self._window * 2, WINDOW)

    def readinto(self, buf: Any) -> int:
        view = memoryview(buf).cast("B")
        if self._end is not None:
            view = view[: max(0, self._end - self._pos)]
        if not len(view):
            return 0
        return int(self._with_retries(lambda: self._read_some(view)))

    def _read_some(self, view: memoryview) -> int:
        fresh = False
        while True:
            if self._stream is None:
                self._open()
                fresh = True
            size = self._stream.object_size
            stop = size if self._end is None else min(self._end, size)
            if self._pos >= stop:
                return 0  # the end of the range, or of the object
            if self._pos >= self._window_end:
                if fresh:  # a new request that covers nothing although bytes remain: never loop on it
                    raise _Truncated(f"request at byte {self._pos} returned no bytes of {stop - self._pos}")
                self._drop_stream()  # this request's window is done; ask for the next one
                continue
            data = self._stream.read(min(len(view), self._window_end - self._pos))
            if not data:
                # The body ended before its window did: a cut connection. Never report that as EOF.
                self._drop_stream()
                raise _Truncated(f"response ended at byte {self._pos}, before byte {self._window_end}")
            n = len(data)
            view[:n] = data
            self._pos += n
            return n

    def _with_retries(self, op: Callable[[], Any]) -> Any:
        failures = 0
        while True:
            before = self._pos
            try:
                return op()
            except FileNotFoundError:
                raise
            except StorageError:
                raise
            except Exception as exc:
                if not self._objects.transient(exc):
                    raise StorageError(
                        f"cannot read {self._label} at byte {self._pos}: {type(exc).__name__}: {exc}"
                    ) from exc
                self._drop_stream()
                failures = 1 if self._pos > before else failures + 1
                if failures > self._retries:
                    raise StorageError(
                        f"cannot read {self._label} at byte {self._pos}: {failures} requests in a row "
                        f"failed (last: {type(exc).__name__}: {exc}); giving up after "
                        f"{self._retries} retries"
                    ) from exc
                time.sleep(min(2.0, 0.05 * 2**failures) * (0.5 + _JITTER.random()))

    def _drop_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except Exception:  # closing a broken connection may raise; the request is abandoned anyway
                pass

    def close(self) -> None:
        self._drop_stream()
        super().close()


class _Truncated(OSError):
    """A response body ended before the bytes it promised (retried like a dropped connection)."""


# -- writing ---------------------------------------------------------------------------------------


class _UploadOnClose(io.RawIOBase):
    """A writable file spooled to memory, then disk; uploaded on a clean close, dropped otherwise."""

    def __init__(self, upload: Callable[[BinaryIO, int], None]) -> None:
        self._upload = upload
        self._spool: Any = tempfile.SpooledTemporaryFile(max_size=SPOOL)  # noqa: SIM115 - closed in close()
        self._size = 0
        self._aborted = False

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        n = self._spool.write(b)
        self._size += n
        return int(n)

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        self._aborted = exc_type is not None
        super().__exit__(exc_type, *rest)

    def close(self) -> None:
        if self.closed:
            return
        try:
            if not self._aborted:
                self._spool.seek(0)
                self._upload(self._spool, self._size)
        finally:
            self._spool.close()
            super().close()
