"""Signing and verifying the requests and responses of the HTTP transport (docs/http.md, "Authentication").

The contract:

* **Requests.** Every ``POST /task`` carries three headers::

      X-Mrkit-Timestamp: 1712345678.123          seconds since the epoch, the sender's clock
      X-Mrkit-Nonce:     9f2c...(32 hex digits)  fresh random value per request
      X-Mrkit-Signature: hex HMAC-SHA256(secret,
                             "POST\\n<Host>\\n/task\\n<sha256(body) hex>\\n<ts>\\n<nonce>")

  :class:`RequestVerifier` accepts a request only if the signature matches (compared in constant
  time), the timestamp is within ``skew`` seconds of the receiver's clock, and the nonce has not been
  seen within that window (:class:`NonceCache`). Method, ``Host`` header, path and body are all
  covered, so a re-targeted or tampered request fails, and so does any request signed with another
  secret. A replay (a nonce seen before) raises :class:`ReplayedRequest`, which is *not* an
  :class:`~mrkit.errors.AuthenticationError`: a correctly signed request that arrives twice (a
  duplicating proxy, a retry) says nothing about the secret, so the sender retries rather than
  giving up on the worker.
* **Responses.** The worker signs its answer to a signed request with
  ``HMAC(secret, "response\\n<status>\\n<request nonce>\\n<sha256(body) hex>")``, so the driver only
  decodes (and, for the futures API, unpickles) results that come from a holder of the secret and
  answer *this* request (a recorded answer to another request does not verify).
* **Secrets** are bytes of at least :data:`MIN_SECRET_BYTES`. :func:`load_secret` reads one from a
  file that only its owner can read, or from ``$MRKIT_SECRET``; :func:`generate_secret` makes the
  fresh one a driver hands to the workers it starts.

The HMAC itself and the secret sources are :mod:`mrkit.security`'s (shared with the Redis
transport); this module adds what HTTP needs on top: what is signed, the clock and replay checks,
and stricter secret rules (a secret is required, at least 16 bytes, and a secret file must be
private), because an HTTP worker is a listening socket that runs whatever a signed request says.

Raises :class:`~mrkit.errors.AuthenticationError` for anything that fails verification and
:class:`~mrkit.errors.ConfigError` for an unusable secret.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import secrets
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from email.message import Message

from mrkit import security
from mrkit.backends.http.wire import HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP
from mrkit.errors import AuthenticationError, ConfigError, MrkitError

DEFAULT_SKEW = 60.0  # seconds a request's timestamp may differ from the receiver's clock
MIN_SECRET_BYTES = 16
SECRET_ENV = security.SECRET_ENV  # MRKIT_SECRET
SECRET_FILE_ENV = "MRKIT_SECRET_FILE"
# A nonce is 16 random bytes in hex; accept 16-64 hex digits so that other clients may use longer ones,
# and nothing else, so that the replay cache cannot be filled with arbitrary strings.
_NONCE = re.compile(r"[0-9a-f]{16,64}")
_MAX_NONCES = 1_000_000  # replay-cache bound: ~1,000 requests/s for the whole default window is 120k


class ReplayedRequest(MrkitError):
    """A correctly signed request whose nonce was already used: it arrived twice, or was replayed."""


def generate_secret() -> bytes:
    """Return a fresh random secret (64 hex digits: 256 bits), as a driver gives its own workers."""
    return secrets.token_hex(32).encode("ascii")


def load_secret(secret_file: str | os.PathLike[str] | None = None) -> bytes:
    """Return the shared secret from ``secret_file``, else ``$MRKIT_SECRET_FILE``, else ``$MRKIT_SECRET``.

    Surrounding whitespace (a trailing newline) is not part of the secret
    (:func:`mrkit.security.load_secret` reads it).

    Args:
        secret_file: a file holding the secret; it must not be readable by group or others (like
            an ssh key), because anyone who reads it can run code on every worker.

    Returns:
        The secret, at least :data:`MIN_SECRET_BYTES` long.

    Raises:
        ConfigError: no secret was given, the file cannot be read or is readable by others, or the
            secret is too short. Each message is one sentence naming the fix.
    """
    path = os.fspath(secret_file) if secret_file is not None else os.environ.get(SECRET_FILE_ENV) or None
    if path is not None:
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise ConfigError(f"cannot read the secret file {path!r}: {exc.strerror or exc}") from None
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"the secret file {path} is readable by other users "
                f"(mode {stat.S_IMODE(mode):04o}): run `chmod 600 {path}`"
            )
    secret = security.load_secret(path)
    origin = f"the secret file {path}" if path is not None else f"${SECRET_ENV}"
    if secret is None:
        raise ConfigError(
            "an HTTP worker needs a shared secret: pass --secret-file FILE (a file only you "
            f"can read) or set {SECRET_ENV}, and give the driver the same one"
        )
    if len(secret) < MIN_SECRET_BYTES:
        hint = "python -c 'import secrets; print(secrets.token_hex(32))'"
        raise ConfigError(
            f"the secret in {origin} is {len(secret)} bytes long; use at least "
            f"{MIN_SECRET_BYTES}, e.g. from `{hint}`"
        )
    return secret


def body_digest(body: bytes) -> str:
    """SHA-256 of a request or response body, in hex (what the signatures cover)."""
    return hashlib.sha256(body).hexdigest()


def _request_message(method: str, host: str, path: str, body: bytes, timestamp: str, nonce: str) -> bytes:
    return f"{method.upper()}\n{host}\n{path}\n{body_digest(body)}\n{timestamp}\n{nonce}".encode()


def _response_message(status: int, request_nonce: str, body: bytes) -> bytes:
    return f"response\n{status}\n{request_nonce}\n{body_digest(body)}".encode()


def sign_request(
    secret: bytes,
    method: str,
    path: str,
    body: bytes,
    *,
    host: str = "",
    timestamp: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """Return the three auth headers for a request.

    Args:
        secret: the shared secret.
        method, path: the request line's method and path (with its query string, if any).
        body: the exact bytes sent as the body.
        host: the ``Host`` header the request carries (``127.0.0.1:8001``); send exactly this one.
        timestamp: seconds since the epoch (default: now); tests pass stale ones.
        nonce: a fresh random value (default: 16 random bytes in hex).

    Returns:
        ``{X-Mrkit-Timestamp, X-Mrkit-Nonce, X-Mrkit-Signature}``.
    """
    ts = f"{time.time() if timestamp is None else timestamp:.3f}"
    nonce = nonce or secrets.token_hex(16)
    signature = security.sign(secret, _request_message(method, host, path, body, ts, nonce))
    return {HEADER_TIMESTAMP: ts, HEADER_NONCE: nonce, HEADER_SIGNATURE: signature}


def sign_response(secret: bytes, status: int, request_nonce: str, body: bytes) -> str:
    """Return the ``X-Mrkit-Signature`` of a worker's answer to the request that carried ``request_nonce``."""
    return security.sign(secret, _response_message(status, request_nonce, body))


def verify_response(
    secret: bytes, status: int, request_nonce: str, body: bytes, signature: str | None
) -> None:
    """Check a worker's answer before anything in it is decoded.

    Raises:
        AuthenticationError: the signature is missing or does not match (another secret, a tampered
            body, or an answer to a different request).
    """
    if not signature:
        raise AuthenticationError("the worker's response is not signed")
    if not security.verify(secret, _response_message(status, request_nonce, body), signature):
        raise AuthenticationError(
            "the worker's response signature does not match: another secret, or a "
            "tampered or misdirected response"
        )


class NonceCache:
    """The nonces of accepted requests, remembered as long as a replay could still pass the clock check.

    A request passes the clock check while ``|now - timestamp| <= skew``, so a replay is possible
    until ``timestamp + skew <= arrival + 2 * skew``. Every nonce therefore expires ``2 * skew`` after
    it *arrived*; expiry times then grow in insertion order and expired nonces are dropped from the
    front of a queue, O(1) per request. Thread-safe.

    Example:
        >>> cache = NonceCache(window=120.0)
        >>> cache.add("a" * 32, now=0.0), cache.add("a" * 32, now=1.0), cache.add("a" * 32, now=121.0)
        (True, False, True)
    """

    def __init__(self, window: float, *, max_entries: int = _MAX_NONCES) -> None:
        self.window = window
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._expiry: dict[str, float] = {}
        self._order: deque[tuple[float, str]] = deque()

    def add(self, nonce: str, now: float) -> bool:
        """Remember ``nonce``; return False if it is already remembered (a replay) or the cache is full."""
        with self._lock:
            order, expiry = self._order, self._expiry
            while order and order[0][0] <= now:
                expiry.pop(order.popleft()[1], None)
            if nonce in expiry or len(expiry) >= self.max_entries:
                return False
            expiry[nonce] = now + self.window
            order.append((now + self.window, nonce))
            return True

    def __len__(self) -> int:
        return len(self._expiry)


class RequestVerifier:
    """Checks the auth headers of incoming requests (a worker holds one).

    Args:
        secret: the shared secret.
        skew: seconds a request's timestamp may differ from this machine's clock.
        clock: ``time.time`` (tests pass a fake one).
    """

    def __init__(
        self, secret: bytes, *, skew: float = DEFAULT_SKEW, clock: Callable[[], float] = time.time
    ) -> None:
        if not skew > 0:
            raise ConfigError(f"skew must be > 0 seconds, got {skew!r}")
        self._secret = secret
        self.skew = skew
        self._clock = clock
        self.nonces = NonceCache(window=2 * skew)

    def verify(self, method: str, path: str, body: bytes, headers: Mapping[str, str] | Message) -> str:
        """Accept a request or raise; return its nonce (the response is signed with it).

        The nonce is remembered only after the signature verified, so unauthenticated requests cannot
        fill the replay cache.

        The ``Host`` header (``""`` when absent) is part of what is signed.

        Raises:
            AuthenticationError: a header is missing or malformed, the timestamp is outside the allowed
                skew, or the signature does not match.
            ReplayedRequest: the signature matches but the nonce was already used.
        """
        ts_text, nonce, signature = (
            headers.get(HEADER_TIMESTAMP),
            headers.get(HEADER_NONCE),
            headers.get(HEADER_SIGNATURE),
        )
        if not ts_text or not nonce or not signature:
            raise AuthenticationError(
                f"unsigned request: {HEADER_TIMESTAMP}, {HEADER_NONCE} and {HEADER_SIGNATURE} are required"
            )
        try:
            timestamp = float(ts_text)
        except ValueError:
            raise AuthenticationError(f"malformed {HEADER_TIMESTAMP}") from None
        if not _NONCE.fullmatch(nonce):
            raise AuthenticationError(f"malformed {HEADER_NONCE}: 16-64 lowercase hex digits expected")
        now = self._clock()
        if not math.isfinite(timestamp) or abs(now - timestamp) > self.skew:
            raise AuthenticationError(
                f"stale request: its timestamp is {now - timestamp:+.0f}s from this "
                f"worker's clock (allowed: {self.skew:g}s); check both clocks"
            )
        # security.verify compares in constant time.
        host = headers.get("Host") or ""
        message = _request_message(method, host, path, body, ts_text, nonce)
        if not security.verify(self._secret, message, signature):
            raise AuthenticationError("bad signature: another secret, or a tampered request")
        if not self.nonces.add(nonce, now):
            raise ReplayedRequest("replayed request: this nonce was already used")
        return nonce
