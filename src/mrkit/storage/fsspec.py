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

Why one module of ~600 lines: the issue gave the object-store backend this one file (registered in
``storage/__init__.py``). It reads in three parts — the storage, the streamed reader and writer, then
the two adapters (S3 via boto3, the rest via fsspec); the adapters would be the first to move out,
into a module of their own, if it grows.

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
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO

from mrkit.errors import ConfigError, MissingExtra, StorageError
from mrkit.storage.base import Storage, check_key

READ_RETRIES = 5  # re-issues of a failed ranged GET before the read fails (reset by progress)
WINDOW = 64 << 20  # bytes asked of one ranged GET (S3); the body is streamed, not held
# An open-ended read (``length=-1``) starts with a small window and doubles it: the input reader
# opens one just to finish a split's last line, reading 64 KiB past the split's end at a time, and
# a request's whole window is transferred however little of it is read (1 MiB here cost every split
# but an object's last one an extra MiB; tests/test_s3_storage.py measures the ranges a split asks).
FIRST_OPEN_WINDOW = 64 << 10
FSSPEC_WINDOW = 8 << 20  # bytes fetched per request (and held) by the generic fsspec adapter
SPOOL = 8 << 20  # write buffer kept in memory before spilling to a temporary file
MULTIPART_OVER = 64 << 20  # uploads above this size use multipart (parallel parts)

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
        objects: the adapter that talks to the store (:class:`_S3Objects` or :class:`_FsspecObjects`).
        root: key prefix inside the bucket (``""`` or ending in ``/``).
        read_retries: re-issues of a failed ranged read before :class:`StorageError`.
    """

    def __init__(
        self, url: str, objects: _S3Objects | _FsspecObjects, root: str, *, read_retries: int = READ_RETRIES
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
        objects: _S3Objects | _FsspecObjects
        if driver == "boto3" and scheme == "s3":
            unknown = sorted(set(options) - set(S3_OPTIONS))
            if unknown:
                raise ConfigError(
                    f"unknown s3 storage option(s) {', '.join(unknown)}; valid: {', '.join(S3_OPTIONS)}"
                )
            objects = _S3Objects(bucket, options)
        elif driver == "fsspec":
            objects = _FsspecObjects(scheme, bucket, options)
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
        objects: _S3Objects | _FsspecObjects,
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
            self._stream, self._window_end = _Body(io.BytesIO(), self._pos), self._pos
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
                time.sleep(min(2.0, 0.05 * 2**failures) * (0.5 + random.random()))

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


# -- S3 through boto3 --------------------------------------------------------------------------------

_CLIENTS: dict[tuple[Any, ...], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def _s3_client(options: dict[str, Any]) -> Any:
    """One boto3 S3 client per (process, options): clients are thread-safe but not fork-safe."""
    key = (os.getpid(), tuple(sorted(options.items())))
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            try:
                import boto3.session
                from botocore.config import Config
            except ImportError:
                raise MissingExtra("s3:// storage", "s3", "boto3") from None
            opts = dict(options)
            session = boto3.session.Session(profile_name=opts.pop("profile_name", None))
            # Standard retry mode retries throttling and connection errors on every call; our reader
            # adds resumable retries for failures in the middle of a streamed body, which it cannot.
            attempts = int(opts.pop("max_attempts", 4))
            config = Config(
                retries={"max_attempts": attempts, "mode": "standard"},
                connect_timeout=10,
                read_timeout=60,
                max_pool_connections=32,
            )
            client = _CLIENTS[key] = session.client("s3", config=config, **opts)
        return client


class _S3Objects:
    """The S3 calls behind :class:`FsspecStorage` for ``s3://`` (boto3)."""

    def __init__(self, bucket: str, options: dict[str, Any]) -> None:
        self.bucket = bucket
        self.options = options
        _s3_client(options)  # fail now (MissingExtra, bad options) rather than at the first request

    @property
    def client(self) -> Any:
        return _s3_client(self.options)

    def same_store(self, other: object) -> bool:
        return isinstance(other, _S3Objects) and other.options == self.options

    def _errors(self) -> Any:
        import botocore.exceptions

        return botocore.exceptions

    def _code(self, exc: BaseException) -> tuple[str, int]:
        response = getattr(exc, "response", None) or {}
        code = str(response.get("Error", {}).get("Code", ""))
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return code, status

    def _missing(self, exc: BaseException) -> bool:
        code, status = self._code(exc)
        return code in ("NoSuchKey", "404", "NotFound") or status == 404

    def transient(self, exc: BaseException) -> bool:
        """True for failures a retry may cure: connections, timeouts, truncated bodies, 5xx, throttling."""
        errors = self._errors()
        if isinstance(exc, errors.ClientError):
            code, status = self._code(exc)
            return status >= 500 or status == 429 or code in ("SlowDown", "RequestTimeout", "InternalError")
        return (
            isinstance(exc, (errors.BotoCoreError, OSError))
            or "urllib3" in type(exc).__module__
            or "http.client" in type(exc).__module__
        )

    def open_range(self, path: str, start: int, end: int | None, window: int) -> tuple[Any, int]:
        """A streamed body of ``[start, end)`` (at most ``window`` bytes of it) and where it ends."""
        errors = self._errors()
        stop = start + window if end is None else min(end, start + window)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=path, Range=f"bytes={start}-{stop - 1}")
        except errors.ClientError as exc:
            if self._missing(exc):
                raise FileNotFoundError(f"s3://{self.bucket}/{path}") from None
            if self._code(exc)[0] == "InvalidRange":  # start is at or past the end of the object
                empty = _Body(io.BytesIO(), start)
                return empty, start
            raise
        total = _total_size(response.get("ContentRange", ""), start + int(response["ContentLength"]))
        return _Body(response["Body"], total), min(stop, total)

    def put(self, path: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=path, Body=data)

    def upload(self, path: str, f: BinaryIO, size: int) -> None:
        try:
            if size <= MULTIPART_OVER:
                self.client.put_object(Bucket=self.bucket, Key=path, Body=f, ContentLength=size)
            else:
                from boto3.s3.transfer import TransferConfig

                config = TransferConfig(
                    multipart_threshold=MULTIPART_OVER, multipart_chunksize=MULTIPART_OVER
                )
                self.client.upload_fileobj(f, self.bucket, path, Config=config)
        except self._errors().ClientError as exc:
            raise StorageError(f"cannot write s3://{self.bucket}/{path}: {exc}") from exc

    def put_if_absent(self, path: str, data: bytes) -> bool:
        errors = self._errors()
        for attempt in range(8):
            try:
                self.client.put_object(Bucket=self.bucket, Key=path, Body=data, IfNoneMatch="*")
                return True
            except errors.ClientError as exc:
                code, status = self._code(exc)
                if status == 412 or code == "PreconditionFailed":
                    # Someone holds the key -- possibly us, if a retried PUT's first try succeeded.
                    return self._read_whole(path) == data
                if status == 409 or code == "ConditionalRequestConflict":
                    # Another conditional write to this key is in flight; S3 asks us to retry.
                    time.sleep(0.02 * 2**attempt)
                    continue
                raise StorageError(f"conditional write of s3://{self.bucket}/{path} failed: {exc}") from exc
        raise StorageError(f"conditional write of s3://{self.bucket}/{path} kept conflicting; giving up")

    def _read_whole(self, path: str) -> bytes | None:
        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=path)["Body"].read())
        except self._errors().ClientError as exc:
            if self._missing(exc):
                return None
            raise

    def list(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", ()):
                yield str(item["Key"])

    def delete_many(self, paths: Sequence[str]) -> None:
        if len(paths) == 1:
            self.client.delete_object(Bucket=self.bucket, Key=paths[0])
            return
        for i in range(0, len(paths), 1000):  # DeleteObjects takes at most 1,000 keys
            batch = [{"Key": p} for p in paths[i : i + 1000]]
            response = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
            )
            if response.get("Errors"):
                first = response["Errors"][0]
                raise StorageError(
                    f"cannot delete s3://{self.bucket}/{first.get('Key')}: "
                    f"{first.get('Message')} ({len(response['Errors'])} keys failed)"
                )

    def size(self, path: str) -> int:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=path)["ContentLength"])
        except self._errors().ClientError as exc:
            if self._missing(exc):
                raise FileNotFoundError(f"s3://{self.bucket}/{path}") from None
            raise

    def copy(self, src: str, dst: str) -> None:
        try:
            # Managed copy: CopyObject, or UploadPartCopy in parts above 5 GB.
            self.client.copy({"Bucket": self.bucket, "Key": src}, self.bucket, dst)
        except self._errors().ClientError as exc:
            if self._missing(exc):
                raise FileNotFoundError(f"s3://{self.bucket}/{src}") from None
            raise


class _Body:
    """A response body with the size of the whole object attached (to tell its end from a cut)."""

    def __init__(self, body: Any, object_size: int) -> None:
        self._body = body
        self.object_size = object_size

    def read(self, n: int) -> bytes:
        return bytes(self._body.read(n))

    def close(self) -> None:
        self._body.close()


def _total_size(content_range: str, fallback: int) -> int:
    """``"bytes 0-99/1234"`` -> 1234."""
    _, _, total = content_range.rpartition("/")
    return int(total) if total.isdigit() else fallback


# -- any other store through fsspec ----------------------------------------------------------------------


class _FsspecObjects:
    """The calls behind :class:`FsspecStorage` for stores reached through an fsspec filesystem."""

    def __init__(self, scheme: str, bucket: str, options: dict[str, Any]) -> None:
        try:
            import fsspec
        except ImportError:
            raise MissingExtra(f"{scheme}:// storage", "s3", "fsspec") from None
        try:
            # Listing caches would let one process see a stale listing after another process wrote.
            self.fs = fsspec.filesystem(scheme, use_listings_cache=False, **options)
        except ImportError as exc:
            # fsspec's backend for this scheme (gcsfs, adlfs, s3fs …) is not one of mrkit's extras.
            raise ConfigError(
                f"{scheme}:// storage needs fsspec's backend for {scheme}, which is not installed: {exc}"
            ) from None
        self.scheme, self.bucket = scheme, bucket

    def _path(self, path: str) -> str:
        return f"{self.bucket}/{path}"

    def same_store(self, other: object) -> bool:
        return isinstance(other, _FsspecObjects) and other.fs is self.fs

    def transient(self, exc: BaseException) -> bool:
        return not isinstance(exc, (PermissionError, ValueError, NotImplementedError))

    def open_range(self, path: str, start: int, end: int | None, window: int) -> tuple[Any, int]:
        size = self.size(path)
        window = min(window, FSSPEC_WINDOW)  # held in memory here: keep it bounded
        stop = min(size, start + window if end is None else min(end, start + window))
        if start >= stop:
            return _Body(io.BytesIO(), size), start
        data = self.fs.cat_file(self._path(path), start=start, end=stop)
        return _Body(io.BytesIO(data), size), start + len(data) if len(data) < stop - start else stop

    def put(self, path: str, data: bytes) -> None:
        self.fs.pipe_file(self._path(path), data)

    def upload(self, path: str, f: BinaryIO, size: int) -> None:
        with self.fs.open(self._path(path), "wb") as out:
            while chunk := f.read(1 << 20):
                out.write(chunk)

    def put_if_absent(self, path: str, data: bytes) -> bool:
        full = self._path(path)
        try:
            self.fs.pipe_file(full, data, mode="create")
            return True
        except FileExistsError:
            try:
                return bool(self.fs.cat_file(full) == data)
            except FileNotFoundError:
                return False
        except (NotImplementedError, TypeError, ValueError) as exc:
            raise StorageError(
                f"{self.scheme}:// (fsspec {type(self.fs).__name__}) has no atomic create, "
                f"which mrkit's commits need: {exc}"
            ) from exc

    def list(self, prefix: str) -> Iterator[str]:
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self._path(folder).rstrip("/")
        strip = len(self.bucket) + 1
        try:
            found = self.fs.find(base, withdirs=False)
        except FileNotFoundError:
            return
        for full in found:
            key = full[strip:] if full.startswith(self.bucket + "/") else full
            if key.startswith(prefix):
                yield key

    def delete_many(self, paths: Sequence[str]) -> None:
        for path in paths:
            try:
                self.fs.rm_file(self._path(path))
            except FileNotFoundError:
                pass

    def size(self, path: str) -> int:
        self.fs.invalidate_cache(self._path(path))
        info = self.fs.info(self._path(path))
        if info.get("type") == "directory":
            raise FileNotFoundError(f"{self.scheme}://{self._path(path)}")
        return int(info["size"])

    def copy(self, src: str, dst: str) -> None:
        self.fs.copy(self._path(src), self._path(dst))
