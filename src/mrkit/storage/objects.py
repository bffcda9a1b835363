"""The adapters behind :class:`~mrkit.storage.fsspec.FsspecStorage`: the calls that talk to an object store.

* :class:`S3Objects` — ``s3://`` through boto3 (one client per process and option set; conditional
  writes with ``If-None-Match: *``, paginated listings, streamed ranged GETs, multipart uploads);
* :class:`FsspecObjects` — any other fsspec filesystem (``gs://``, ``az://`` …), or ``s3://`` with
  ``driver="fsspec"``.

Both answer the same few calls (``open_range``, ``put``, ``put_if_absent``, ``list``, ``delete``,
``size`` …); :class:`~mrkit.storage.fsspec.FsspecStorage` keeps the :class:`~mrkit.storage.base.Storage`
contract on top of them (retries of cut reads, spooled writes). Why boto3 for S3: see
:mod:`mrkit.storage.fsspec`.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

from mrkit.errors import ConfigError, MissingExtra, StorageError

FSSPEC_WINDOW = 8 << 20  # bytes fetched per request (and held) by the generic fsspec adapter
MULTIPART_OVER = 64 << 20  # uploads above this size use multipart (parallel parts)

# -- S3 through boto3 --------------------------------------------------------------------------------

_CLIENTS: dict[tuple[Any, ...], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def s3_client(options: dict[str, Any]) -> Any:
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


class S3Objects:
    """The S3 calls behind :class:`FsspecStorage` for ``s3://`` (boto3)."""

    def __init__(self, bucket: str, options: dict[str, Any]) -> None:
        self.bucket = bucket
        self.options = options
        s3_client(options)  # fail now (MissingExtra, bad options) rather than at the first request

    @property
    def client(self) -> Any:
        return s3_client(self.options)

    def same_store(self, other: object) -> bool:
        return isinstance(other, S3Objects) and other.options == self.options

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
                empty = Body(io.BytesIO(), start)
                return empty, start
            raise
        total = total_size(response.get("ContentRange", ""), start + int(response["ContentLength"]))
        return Body(response["Body"], total), min(stop, total)

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


class Body:
    """A response body with the size of the whole object attached (to tell its end from a cut)."""

    def __init__(self, body: Any, object_size: int) -> None:
        self._body = body
        self.object_size = object_size

    def read(self, n: int) -> bytes:
        return bytes(self._body.read(n))

    def close(self) -> None:
        self._body.close()


def total_size(content_range: str, fallback: int) -> int:
    """``"bytes 0-99/1234"`` -> 1234."""
    _, _, total = content_range.rpartition("/")
    return int(total) if total.isdigit() else fallback


# -- any other store through fsspec ----------------------------------------------------------------------


class FsspecObjects:
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
        return isinstance(other, FsspecObjects) and other.fs is self.fs

    def transient(self, exc: BaseException) -> bool:
        return not isinstance(exc, (PermissionError, ValueError, NotImplementedError))

    def open_range(self, path: str, start: int, end: int | None, window: int) -> tuple[Any, int]:
        size = self.size(path)
        window = min(window, FSSPEC_WINDOW)  # held in memory here: keep it bounded
        stop = min(size, start + window if end is None else min(end, start + window))
        if start >= stop:
            return Body(io.BytesIO(), size), start
        data = self.fs.cat_file(self._path(path), start=start, end=stop)
        return Body(io.BytesIO(data), size), start + len(data) if len(data) < stop - start else stop

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
