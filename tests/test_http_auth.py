"""Request signing for the HTTP transport (mrkit.backends.http.auth): what verifies and what does not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mrkit.backends.http.auth import (
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    NonceCache,
    ReplayedRequest,
    RequestVerifier,
    generate_secret,
    load_secret,
    sign_request,
    sign_response,
    verify_response,
)
from mrkit.errors import AuthenticationError, ConfigError

SECRET = b"s" * 32
BODY = b'{"task_id":"map-00000"}'


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def verifier(clock: Clock | None = None) -> RequestVerifier:
    return RequestVerifier(SECRET, skew=60.0, clock=clock or Clock())


def signed(**kwargs: object) -> dict[str, str]:
    return sign_request(SECRET, "POST", "/task", BODY, timestamp=1_000_000.0, **kwargs)  # type: ignore[arg-type]


def test_a_signed_request_verifies_once_and_its_replay_is_refused() -> None:
    v = verifier()
    headers = signed()
    assert v.verify("POST", "/task", BODY, headers) == headers[HEADER_NONCE]
    with pytest.raises(ReplayedRequest, match="replayed"):
        v.verify("POST", "/task", BODY, headers)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/task", BODY + b" "),  # tampered body
        ("POST", "/status", BODY),  # re-targeted path
        ("PUT", "/task", BODY),  # another method
    ],
)
def test_anything_the_signature_covers_cannot_change(method: str, path: str, body: bytes) -> None:
    with pytest.raises(AuthenticationError, match="bad signature"):
        verifier().verify(method, path, body, signed())


def test_another_secret_is_refused() -> None:
    headers = sign_request(b"t" * 32, "POST", "/task", BODY, timestamp=1_000_000.0)
    with pytest.raises(AuthenticationError, match="bad signature"):
        verifier().verify("POST", "/task", BODY, headers)


@pytest.mark.parametrize("offset", [-61.0, 61.0, float("inf")])
def test_stale_and_future_timestamps_are_refused(offset: float) -> None:
    headers = sign_request(SECRET, "POST", "/task", BODY, timestamp=1_000_000.0 + offset)
    with pytest.raises(AuthenticationError, match="stale|malformed"):
        verifier().verify("POST", "/task", BODY, headers)


def test_timestamps_within_the_skew_are_accepted() -> None:
    v = verifier()
    for offset in (-59.0, 0.0, 59.0):
        headers = sign_request(SECRET, "POST", "/task", BODY, timestamp=1_000_000.0 + offset)
        v.verify("POST", "/task", BODY, headers)


@pytest.mark.parametrize("drop", [HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE])
def test_a_missing_header_is_refused(drop: str) -> None:
    headers = signed()
    del headers[drop]
    with pytest.raises(AuthenticationError, match="unsigned"):
        verifier().verify("POST", "/task", BODY, headers)


@pytest.mark.parametrize("nonce", ["short", "Z" * 32, "a" * 65, "../../etc"])
def test_malformed_nonces_are_refused_before_they_reach_the_cache(nonce: str) -> None:
    v = verifier()
    with pytest.raises(AuthenticationError, match="malformed"):
        v.verify("POST", "/task", BODY, signed(nonce=nonce))
    assert len(v.nonces) == 0


def test_a_bad_signature_does_not_use_up_its_nonce() -> None:
    v = verifier()
    good = signed()
    forged = {**good, HEADER_SIGNATURE: "0" * 64}
    with pytest.raises(AuthenticationError):
        v.verify("POST", "/task", BODY, forged)
    v.verify("POST", "/task", BODY, good)  # the genuine request still goes through


def test_nonces_are_remembered_for_twice_the_skew_then_forgotten() -> None:
    cache = NonceCache(window=120.0)
    assert cache.add("a" * 32, now=0.0)
    assert not cache.add("a" * 32, now=119.0)
    assert cache.add("b" * 32, now=119.0)
    assert cache.add("a" * 32, now=120.0)  # expired and dropped, then remembered again
    assert len(cache) == 2


def test_the_nonce_cache_is_bounded() -> None:
    cache = NonceCache(window=120.0, max_entries=2)
    assert cache.add("a" * 32, now=0.0) and cache.add("b" * 32, now=0.0)
    assert not cache.add("c" * 32, now=1.0)
    assert cache.add("c" * 32, now=121.0)


def test_a_replay_after_the_clock_moved_on_is_still_refused() -> None:
    clock = Clock()
    v = verifier(clock)
    headers = signed()
    v.verify("POST", "/task", BODY, headers)
    clock.now += 59.0  # still within the skew of the request's timestamp: the nonce must still be known
    with pytest.raises(ReplayedRequest, match="replayed"):
        v.verify("POST", "/task", BODY, headers)
    clock.now += 2.0  # now the timestamp itself is stale
    with pytest.raises(AuthenticationError, match="stale"):
        v.verify("POST", "/task", BODY, headers)


def test_responses_verify_only_for_their_own_request_and_body() -> None:
    signature = sign_response(SECRET, 200, "n" * 32, b"result")
    verify_response(SECRET, 200, "n" * 32, b"result", signature)
    for args in [
        (SECRET, 200, "m" * 32, b"result"),
        (SECRET, 200, "n" * 32, b"resulT"),
        (SECRET, 500, "n" * 32, b"result"),
        (b"t" * 32, 200, "n" * 32, b"result"),
    ]:
        with pytest.raises(AuthenticationError):
            verify_response(*args, signature)  # type: ignore[arg-type]
    with pytest.raises(AuthenticationError, match="not signed"):
        verify_response(SECRET, 200, "n" * 32, b"result", None)


def test_load_secret_from_a_private_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MRKIT_SECRET", raising=False)
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    path.chmod(0o600)
    assert load_secret(path) == SECRET
    monkeypatch.setenv("MRKIT_SECRET_FILE", str(path))
    assert load_secret(None) == SECRET


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_load_secret_refuses_a_file_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(SECRET)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_secret(path)


def test_load_secret_from_the_environment_and_its_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MRKIT_SECRET_FILE", raising=False)
    monkeypatch.setenv("MRKIT_SECRET", "x" * 20)
    assert load_secret(None) == b"x" * 20
    monkeypatch.setenv("MRKIT_SECRET", "short")
    with pytest.raises(ConfigError, match="at least 16"):
        load_secret(None)
    monkeypatch.delenv("MRKIT_SECRET")
    with pytest.raises(ConfigError, match="needs a shared secret: pass --secret-file") as info:
        load_secret(None)
    assert str(info.value).count(". ") == 0  # one sentence
    with pytest.raises(ConfigError, match="cannot read"):
        load_secret(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.write_bytes(b"\n")
    empty.chmod(0o600)
    with pytest.raises(ConfigError, match="is empty"):
        load_secret(empty)


def test_generated_secrets_are_fresh_and_long() -> None:
    a, b = generate_secret(), generate_secret()
    assert a != b and len(a) == 64


def test_the_host_header_is_signed() -> None:
    v = verifier()
    headers = signed(host="127.0.0.1:8001")
    headers["Host"] = "127.0.0.2:8001"  # re-aimed at another worker
    with pytest.raises(AuthenticationError, match="bad signature"):
        v.verify("POST", "/task", BODY, headers)
    headers["Host"] = "127.0.0.1:8001"
    assert v.verify("POST", "/task", BODY, headers) == headers[HEADER_NONCE]


def test_a_replay_is_not_an_authentication_error() -> None:
    # The driver gives up on a worker that refuses its signature; a duplicate must not look like that.
    assert not issubclass(ReplayedRequest, AuthenticationError)
