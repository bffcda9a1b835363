"""Redis storage: each object is one Redis string, under its job's hash-tagged key.

The contract (the six primitives of :class:`~mrkit.storage.base.Storage`, on one Redis database):

* A storage key ``first/rest`` lives at the Redis key ``mrkit:{first}:data:rest`` (``first`` alone at
  ``mrkit:{first}:data:``). Every mrkit key starts with the job id (``model/layout.py``), so a job's
  data sits beside its coordination keys (``mrkit:{job}:state`` …, docs/redis.md), is found with one
  ``SCAN MATCH mrkit:{job}:*``, and — the braces are a Redis Cluster hash tag — lives in one slot.
  Braces are therefore refused in a key's first segment.
* ``open_write`` buffers in memory and ``SET``\\s on a clean close, so an object appears whole or not
  at all; ``put_if_absent`` is ``SET NX`` (atomic first-writer-wins); ranged reads use
  ``GETRANGE`` in blocks, so a reducer streaming a run holds one block, not the object; ``list``
  uses ``SCAN`` (non-blocking for the server, every page); ``move`` within the store is ``RENAME``.
* A Redis string holds at most 512 MB; a map task's part per reduce partition must stay below it
  (raise ``n_map`` or ``n_reduce``, or use ``--storage`` with a shared folder, for bigger jobs).

URLs: ``redis://[[user]:password@]host:port/db`` or ``rediss://…`` (TLS), plus redis-py's own query
options (``?ssl_cert_reqs=none``…). mrkit's own options (``lease``, ``ttl``; see docs/redis.md) may
appear in the query too; they are removed before the URL reaches redis-py.
:func:`connect` shares one connection pool per URL per process (redis-py re-creates it after a fork).
Credentials: a password (and ACL user) in the URL is used as it is; otherwise ``MRKIT_REDIS_PASSWORD``
(and ``MRKIT_REDIS_USERNAME``) supply them, so that the password need not appear in any command
line (``ps``) nor in any URL mrkit stores or prints (the CLI's ``--redis-password-file`` sets the
variable for the command and the processes it starts).
The pool is bounded (``MAX_CONNECTIONS`` per process, or redis-py's ``?max_connections=N`` in the
URL) and *blocking*: a thread that finds every connection in use waits for one (up to
``POOL_WAIT`` seconds) instead of opening one more, so a process running 100 submissions or
executors in threads holds at most ``MAX_CONNECTIONS`` connections, never one per thread, and never
fails with "Too many connections". No mrkit command holds a connection for more than about a
second (blocking reads are bounded), so waiters get one quickly.
Its connections time out (``SOCKET_TIMEOUT``, or ``?socket_timeout=S`` in the URL): no mrkit command
blocks in Redis for more than a second, so a reply that does not come means Redis hung or the network
dropped the connection without a word, and waiting for it would hang the worker or the driver forever.

About 410 lines: the storage, its ranged reader and its URL options (password sources included)
share one client and its error handling.
"""

from __future__ import annotations

import io
import os
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from mrkit.errors import ConfigError, MissingExtra, UnsafeKeyError
from mrkit.security import redact_url
from mrkit.storage.base import Storage, check_key

NAMESPACE = "mrkit"
_DATA = ":data:"
_FIRST_BLOCK = 8 << 20  # first GETRANGE of a read: small objects and ranges arrive in one round trip
_BLOCK = 1 << 20  # later GETRANGEs: one block per open run keeps a k-way merge's memory bounded
MRKIT_OPTIONS = ("lease", "ttl")  # query options that belong to mrkit, not redis-py
SOCKET_TIMEOUT = 60.0  # seconds without a reply before a command fails (redis.TimeoutError)
CONNECT_TIMEOUT = 10.0
MAX_CONNECTIONS = 32  # per URL per process: far below Redis's maxclients (10000 by default)
POOL_WAIT = 60.0  # seconds a thread may wait for a free connection before redis.ConnectionError

_CLIENTS: dict[tuple[str, str | None, str | None], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def _redis() -> Any:
    try:
        import redis
    except ImportError:
        raise MissingExtra("Redis support", "redis", "redis") from None
    return redis


@dataclass(frozen=True)
class RedisURL:
    """A parsed Redis URL.

    Attributes:
        url: the URL redis-py is given (mrkit's query options removed).
        host: the server's host name (None for a Unix socket).
        options: mrkit's options from the query string, as strings.
    """

    url: str
    host: str | None
    options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, url: str) -> RedisURL:
        """Split mrkit's options out of ``url``.

        >>> RedisURL.parse("redis://:pw@127.0.0.1:6379/0?lease=5").options
        {'lease': '5'}

        Raises:
            ConfigError: the scheme is not redis, rediss or unix.
        """
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(
                f"not a Redis URL: {redact(url)!r}; use redis://[:password@]host:port/db or rediss://…"
            )
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        ours = {k: v for k, v in query if k in MRKIT_OPTIONS}
        rest = urllib.parse.urlencode([(k, v) for k, v in query if k not in MRKIT_OPTIONS])
        clean = urllib.parse.urlunsplit(parts._replace(query=rest, fragment=""))
        return cls(url=clean, host=parts.hostname if parts.scheme != "unix" else None, options=ours)

    def number(self, name: str, default: float) -> float:
        """The option ``name`` as a positive number, else ``default``.

        Raises:
            ConfigError: the option is not a positive number.
        """
        raw = self.options.get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if value <= 0:
            raise ConfigError(f"Redis URL option {name}={raw!r} must be a positive number of seconds")
        return value


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (:func:`mrkit.security.redact_url`).

    >>> redact("redis://user:secret@h:6379/0")
    'redis://user:***@h:6379/0'
    """
    return redact_url(url)


PASSWORD_ENV = "MRKIT_REDIS_PASSWORD"
USERNAME_ENV = "MRKIT_REDIS_USERNAME"


def _credentials_from_env() -> dict[str, str]:
    """``password``/``username`` for redis-py from the environment; a URL's own credentials win
    (redis-py lets URL components override these keyword arguments)."""
    found = {}
    if os.environ.get(PASSWORD_ENV):
        found["password"] = os.environ[PASSWORD_ENV]
    if os.environ.get(USERNAME_ENV):
        found["username"] = os.environ[USERNAME_ENV]
    return found


def read_password_file(path: str) -> str:
    """The Redis password held in the file ``path`` (one line; surrounding whitespace dropped).

    Raises:
        ConfigError: the file cannot be read or is empty.
    """
    try:
        with open(path, encoding="utf-8") as f:
            password = f.read().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the Redis password file {path}: {exc.strerror or exc}") from None
    if not password:
        raise ConfigError(f"the Redis password file {path} is empty")
    return password


def connect(url: str) -> Any:
    """A ``redis.Redis`` client for ``url``, sharing one connection pool per URL in this process.

    Typed ``Any``: redis-py's annotations cover its sync and async clients at once (every reply is
    ``X | Awaitable[X]``), which would bury this package's real type errors.

    Raises:
        MissingExtra: redis-py is not installed.
        ConfigError: the URL is not a Redis URL.
    """
    clean = RedisURL.parse(url).url
    credentials = _credentials_from_env()
    cache_key = (clean, credentials.get("username"), credentials.get("password"))
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(cache_key)
        if client is None:
            # health_check_interval: a connection idle in the pool for 30 s is PINGed before use, so a
            # Redis restart surfaces as one reconnect instead of an error on the first command.
            # Timeouts and keepalive: see the module docstring (the URL's own values win).
            redis = _redis()
            pool = redis.BlockingConnectionPool.from_url(
                clean,
                **credentials,
                max_connections=MAX_CONNECTIONS,
                timeout=POOL_WAIT,
                health_check_interval=30,
                socket_timeout=SOCKET_TIMEOUT,
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_keepalive=True,
            )
            client = _CLIENTS[cache_key] = redis.Redis(connection_pool=pool)
        return client


def data_key(key: str) -> str:
    """The Redis key of storage key ``key``.

    >>> data_key("job-1/map/map-00000/COMMIT")
    'mrkit:{job-1}:data:map/map-00000/COMMIT'

    Raises:
        UnsafeKeyError: ``key`` is unsafe (see ``check_key``) or has braces in its first segment.
    """
    first, _, rest = check_key(key).partition("/")
    if "{" in first or "}" in first:
        raise UnsafeKeyError(f"unsafe storage key {key!r}: no braces in the first segment of a Redis key")
    return f"{NAMESPACE}:{{{first}}}{_DATA}{rest}"


def storage_key(redis_key: str) -> str | None:
    """The storage key of a Redis data key, or None for any other Redis key (inverse of :func:`data_key`)."""
    head = f"{NAMESPACE}:{{"
    if not redis_key.startswith(head):
        return None
    end = redis_key.find("}" + _DATA, len(head))
    if end < 0:
        return None
    first, rest = redis_key[len(head) : end], redis_key[end + 1 + len(_DATA) :]
    return f"{first}/{rest}" if rest else first


def glob_escape(text: str) -> str:
    """Escape Redis glob characters so that ``text`` matches itself in ``SCAN MATCH``."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class _Writer(io.BytesIO):
    """Buffers the object; ``SET``\\s it on a clean close only."""

    def __init__(self, client: Any, rkey: str) -> None:
        super().__init__()
        self._client, self._rkey, self._aborted = client, rkey, False

    def __exit__(self, exc_type, *rest):  # type: ignore[no-untyped-def]
        self._aborted = exc_type is not None
        return super().__exit__(exc_type, *rest)

    def close(self) -> None:
        if not self.closed and not self._aborted:
            # Release the view even when SET raises: a live export would make BytesIO.close() raise
            # BufferError, so an abort() after a failed SET could not discard the other writers.
            with self.getbuffer() as view:
                self._client.set(self._rkey, view)
        super().close()

    def __del__(self) -> None:
        # Garbage that was never closed (a task that died half-way, an interpreter exiting) must not
        # publish: IOBase's finalizer would call close(), which SETs.
        self._aborted = True
        super().__del__()


class _RangeReader(io.RawIOBase):
    """Reads ``[pos, end)`` of a Redis string with one ``GETRANGE`` per block."""

    def __init__(self, client: Any, rkey: str, first: bytes, pos: int, end: int | None) -> None:
        super().__init__()
        self._client, self._rkey = client, rkey
        self._buf, self._pos, self._end = first, pos, end  # _pos: offset just after _buf

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        if self._end is not None and self._pos >= self._end:
            return False
        stop = self._pos + _BLOCK if self._end is None else min(self._end, self._pos + _BLOCK)
        data: bytes = self._client.getrange(self._rkey, self._pos, stop - 1)
        if not data:
            self._end = self._pos
            return False
        self._buf += data
        self._pos += len(data)
        if len(data) < stop - (self._pos - len(data)):
            self._end = self._pos  # shorter than asked: the object ends here
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if not self._buf and not self._fill():
            return 0
        n = min(len(view), len(self._buf))
        view[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            chunks = [self._buf]
            self._buf = b""
            while self._fill():
                chunks.append(self._buf)
                self._buf = b""
            return b"".join(chunks)
        while len(self._buf) < size and self._fill():
            pass
        out, self._buf = self._buf[:size], self._buf[size:]
        return out


class RedisStorage(Storage):
    """Objects as Redis strings in one database.

    Args:
        url: ``redis://…`` or ``rediss://…`` (see the module docstring).

    Raises:
        MissingExtra: redis-py is not installed.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = connect(url)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStorage:
        """Open the storage at ``url`` (no backend options)."""
        if options:
            raise ConfigError(f"RedisStorage takes no options, got {sorted(options)}")
        return cls(url)

    def open_read(self, key: str, start: int = 0, length: int = -1) -> BinaryIO:
        rkey = data_key(key)
        first_stop = start + (_FIRST_BLOCK if length < 0 else min(length, _FIRST_BLOCK))
        pipe = self.client.pipeline(transaction=False)
        pipe.exists(rkey)
        pipe.getrange(rkey, start, first_stop - 1)
        exists, first = pipe.execute()
        if not exists:
            raise FileNotFoundError(f"{redact(self.url)}: no object {key!r}")
        end = None if length < 0 else start + length
        done = len(first) < first_stop - start or (end is not None and first_stop >= end)
        if done:
            return io.BytesIO(first)
        return io.BufferedReader(_RangeReader(self.client, rkey, first, start + len(first), end), _BLOCK)

    def open_write(self, key: str) -> BinaryIO:
        return _Writer(self.client, data_key(key))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return bool(self.client.set(data_key(key), data, nx=True))

    def list(self, prefix: str = "") -> Iterator[str]:
        first, slash, rest = prefix.partition("/")
        if slash:
            pattern = f"{NAMESPACE}:{{{glob_escape(first)}}}{_DATA}{glob_escape(rest)}*"
        else:  # a partial first segment: match every job whose id starts with it
            pattern = f"{NAMESPACE}:{{{glob_escape(first)}*}}{_DATA}*"
        seen: set[str] = set()  # SCAN may return a key twice (when the table is rehashed meanwhile)
        for raw in self.client.scan_iter(match=pattern, count=1000):
            key = storage_key(raw.decode())
            if key is not None and key.startswith(prefix) and key not in seen:
                seen.add(key)
                yield key

    def delete(self, key: str) -> None:
        self.client.delete(data_key(key))

    def size(self, key: str) -> int:
        rkey = data_key(key)
        pipe = self.client.pipeline(transaction=False)
        pipe.exists(rkey)
        pipe.strlen(rkey)
        exists, n = pipe.execute()
        if not exists:
            raise FileNotFoundError(f"{redact(self.url)}: no object {key!r}")
        return int(n)

    # -- faster than the base's versions ------------------------------------------------------

    def get(self, key: str) -> bytes:
        data = self.client.get(data_key(key))
        if data is None:
            raise FileNotFoundError(f"{redact(self.url)}: no object {key!r}")
        return bytes(data)

    def put(self, key: str, data: bytes) -> None:
        self.client.set(data_key(key), data)

    def delete_prefix(self, prefix: str) -> int:
        keys = [data_key(k) for k in self.list(prefix)]
        for i in range(0, len(keys), 500):
            self.client.delete(*keys[i : i + 500])
        return len(keys)

    def move(self, src: str, dst: str, *, target: Storage | None = None) -> None:
        if target is not None and target is not self:
            super().move(src, dst, target=target)
            return
        try:
            self.client.rename(data_key(src), data_key(dst))  # atomic, replaces dst
        except _redis().ResponseError as exc:
            if "no such key" in str(exc).lower():
                raise FileNotFoundError(f"{redact(self.url)}: no object {src!r}") from None
            raise

    def __repr__(self) -> str:
        return f"<RedisStorage {redact(self.url)}>"
