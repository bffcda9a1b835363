"""Shared-secret message signing: HMAC-SHA256 over the exact bytes that travel.

The contract, used by every transport that carries work between machines (Redis streams, HTTP):

* :func:`load_secret` finds the shared secret: the file named by ``secret_file`` (``--secret-file``)
  if given, else the ``MRKIT_SECRET`` environment variable, else ``None``. Surrounding whitespace
  (a trailing newline in a file) is ignored; an empty secret is treated as none.
* :func:`sign` returns the hex HMAC-SHA256 of ``payload`` under ``secret``; the sender ships it
  beside the payload, unchanged.
* :func:`verify` recomputes it and compares in constant time (:func:`hmac.compare_digest`), so the
  comparison leaks nothing about how many leading characters matched. A receiver verifies *before*
  decoding, unpickling or running anything in the payload, and refuses on failure
  (:func:`require` raises :class:`~mrkit.errors.AuthenticationError`).
* :func:`is_loopback` tells whether a host name is this machine, for the policy "a secret is
  required unless every peer is on loopback".

Signing covers integrity and authenticity, not secrecy: payloads are readable by anyone who can read
the transport. Use TLS (``rediss://``, HTTPS) when that matters.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import urllib.parse

from mrkit.errors import AuthenticationError, ConfigError

SECRET_ENV = "MRKIT_SECRET"


def load_secret(secret_file: str | os.PathLike[str] | None = None) -> bytes | None:
    """Return the shared secret, or None when none is configured.

    Args:
        secret_file: a file holding the secret (its content, stripped of surrounding whitespace).
            When None, the ``MRKIT_SECRET`` environment variable is used.

    Returns:
        The secret's bytes, or None when neither source provides a non-empty secret.

    Raises:
        ConfigError: ``secret_file`` was given but cannot be read or is empty.
    """
    if secret_file is not None:
        try:
            with open(secret_file, "rb") as f:
                secret = f.read().strip()
        except OSError as exc:
            path = os.fspath(secret_file)
            raise ConfigError(f"cannot read the secret file {path!r}: {exc.strerror}") from None
        if not secret:
            raise ConfigError(f"the secret file {os.fspath(secret_file)!r} is empty")
        return secret
    value = os.environ.get(SECRET_ENV, "").strip()
    return value.encode() if value else None


def sign(secret: bytes, payload: bytes) -> str:
    """Return the hex HMAC-SHA256 of ``payload`` under ``secret``.

    >>> sign(b"k", b"hello")[:16]
    '406e4b43f87095aa'
    """
    return hmac.new(secret, payload, hashlib.sha256).hexdigest()


def verify(secret: bytes, payload: bytes, signature: str | bytes | None) -> bool:
    """True when ``signature`` is :func:`sign` of ``payload`` under ``secret`` (constant-time compare).

    >>> verify(b"k", b"hello", sign(b"k", b"hello")), verify(b"k", b"hello!", sign(b"k", b"hello"))
    (True, False)
    """
    if not signature:
        return False
    if isinstance(signature, bytes):
        try:
            signature = signature.decode("ascii")
        except UnicodeDecodeError:
            return False
    return hmac.compare_digest(sign(secret, payload), signature)


def require(secret: bytes, payload: bytes, signature: str | bytes | None, what: str) -> None:
    """Raise unless ``signature`` verifies; ``what`` names the message in the error.

    Raises:
        AuthenticationError: the signature is missing or wrong.
    """
    if not verify(secret, payload, signature):
        state = "has no signature" if not signature else "has a signature that does not verify"
        raise AuthenticationError(
            f"{what} {state}: refusing it (do sender and receiver share the same "
            f"{SECRET_ENV} / --secret-file?)"
        )


def is_loopback(host: str | None) -> bool:
    """True when ``host`` names this machine's loopback interface (``127.x``, ``::1``, ``localhost``).

    A Unix socket (``host`` None or empty) counts as loopback.

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("10.0.0.5")
    (True, True, False)
    """
    if not host:
        return True
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for every message, log line, event and page.

    >>> redact_url("redis://user:secret@h:6379/0#in/chunk-0")
    'redis://user:***@h:6379/0#in/chunk-0'
    >>> redact_url("/data/a.txt")
    '/data/a.txt'
    """
    if "@" not in url:
        return url  # no userinfo: nothing to hide (and no parsing cost for plain paths)
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
