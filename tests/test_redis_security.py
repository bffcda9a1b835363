"""Security of the Redis fleet: signed entries, secrets, passwords in the URL."""

from __future__ import annotations

import pickle
import tempfile

import pytest

import mrkit
from mrkit.backends.redis.job_state import JobKeys
from mrkit.backends.redis.supervisor import serve
from mrkit.backends.redis.wire import DEAD, pack, resolve_secret, unpack
from mrkit.errors import AuthenticationError, ConfigError, JobFailed, StorageError
from mrkit.model.reference import reference
from mrkit.security import load_secret, sign, verify
from tests import jobs_for_tests as J
from tests.redis_fixtures import (  # noqa: F401 - fixtures
    RedisServer,
    WorkerThreads,
    make_tls_files,
    mrkit_cmd,
    redis_server,
    redis_url,
    secret_env,
    start_worker,
    stop_worker,
    wait_for,
)

TEXT = ["a b c", "b c", "c"] * 5


class Evil:
    """Unpickling this would create a file: the proof that a worker ran an injected payload."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.path, "w"))


def test_sign_and_verify():
    sig = sign(b"k", b"payload")
    assert verify(b"k", b"payload", sig) and verify(b"k", b"payload", sig.encode())
    assert not verify(b"k", b"payload!", sig) and not verify(b"other", b"payload", sig)
    assert not verify(b"k", b"payload", None) and not verify(b"k", b"payload", b"\xff")
    header, body = unpack(
        b"k",
        {
            k.encode(): v if isinstance(v, bytes) else v.encode()
            for k, v in pack(b"k", {"op": "task"}, b"body").items()
        },
        "x",
    )
    assert header == {"op": "task"} and body == b"body"
    with pytest.raises(AuthenticationError, match="does not verify"):
        unpack(b"k2", {b"p": b'{"op":"task"}\nbody', b"s": sig.encode()}, "an entry")


def test_secret_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("MRKIT_SECRET", raising=False)
    assert load_secret() is None
    monkeypatch.setenv("MRKIT_SECRET", " s3 \n")
    assert load_secret() == b"s3"
    (tmp_path / "f").write_text("from-file\n")
    assert load_secret(str(tmp_path / "f")) == b"from-file"
    with pytest.raises(ConfigError, match="cannot read the secret file"):
        load_secret(str(tmp_path / "missing"))


def test_no_secret_is_refused_off_loopback(monkeypatch):
    monkeypatch.delenv("MRKIT_SECRET", raising=False)
    assert resolve_secret("redis://127.0.0.1:6379/0") == b""
    assert resolve_secret("redis://localhost:6379/0") == b""
    with pytest.raises(ConfigError, match="not on loopback.*MRKIT_SECRET"):
        serve("redis://10.1.2.3:6379/0", concurrency=1, burst=True)
    with pytest.raises(ConfigError, match="--concurrency must be at least 1, got 0"):
        serve("redis://127.0.0.1:6379/0", concurrency=0, burst=True)
    with pytest.raises(ConfigError, match="not on loopback"):
        mrkit.submit(J.WORDCOUNT, mrkit.Records(TEXT), executor="rediss://10.1.2.3:6380/0")


def test_injected_entry_is_refused_logged_and_never_run(redis_url, redis_server, tmp_path, secret_env):  # noqa: F811
    proof = tmp_path / "pwned"
    handle = mrkit.submit(J.WORDCOUNT, mrkit.Records(TEXT), executor=redis_url, n_map=2, n_reduce=1)
    client = redis_server.client()
    stream = JobKeys(handle.id).tasks
    evil = pickle.dumps(Evil(str(proof)))
    client.xadd(stream, {"p": b'{"op":"task","job":"%s"}\n' % handle.id.encode() + evil, "s": "0" * 64})
    client.xadd(stream, {"p": evil})  # no signature at all
    client.xadd(stream, {"p": b"x\n" + evil, "s": sign(b"wrong secret", b"x\n" + evil)})
    worker = start_worker(redis_url, name="guard")
    try:
        result = handle.wait(timeout=60)
    finally:
        err = stop_worker(worker)
    assert sorted(result) == reference(J.WORDCOUNT, TEXT)  # the job itself was unaffected
    assert not proof.exists()
    assert err.count("REFUSED entry") == 3 and "does not verify" in err and "has no signature" in err
    dead = client.xrange(DEAD)
    assert len(dead) == 3 and all(f[b"stream"] == stream.encode() for _, f in dead)
    assert sum("refused entry" in line for line in handle.logs()) == 3 and handle.status()["refused"] == 3
    assert client.xpending(stream, "workers")["pending"] == 0  # acked: never redelivered


def test_mismatched_secrets_fail_the_blocking_job_clearly(redis_url, monkeypatch):  # noqa: F811
    monkeypatch.setenv("MRKIT_SECRET", "submitter-secret")
    policy = mrkit.RetryPolicy(max_lost=1)
    with WorkerThreads(redis_url, 1, secret=b"worker-secret"), pytest.raises(JobFailed) as info:
        mrkit.run(
            J.WORDCOUNT,
            mrkit.Records(TEXT),
            executor=redis_url,
            n_map=1,
            n_reduce=1,
            policy=policy,
            quiet=True,
        )
    assert "refused task map-00000" in str(info.value) and "does not verify" in str(info.value)


def test_password_in_the_url(tmp_path, secret_env):  # noqa: F811
    server = RedisServer(tempfile.mkdtemp(dir=tmp_path), extra=["--requirepass", "hunter2"]).start()
    try:
        good = f"redis://:hunter2@127.0.0.1:{server.port}/0"
        handle = mrkit.submit(J.WORDCOUNT, mrkit.Records(TEXT), executor=good, n_map=2, n_reduce=1)
        worker = start_worker(good, name="authed")
        try:
            assert sorted(handle.wait(timeout=60)) == reference(J.WORDCOUNT, TEXT)
            assert "hunter2" not in repr(handle.status())
        finally:
            stop_worker(worker)
        with pytest.raises(ConfigError, match=r"refused the credentials") as info:
            serve(f"redis://:wrong@127.0.0.1:{server.port}/0", concurrency=1, burst=True)
        assert "wrong" not in str(info.value)
    finally:
        server.stop()


def test_acl_user_in_the_url_and_the_secret_from_a_file(tmp_path, monkeypatch):
    """An ACL user (the default user disabled) in the URL; the worker reads the secret from
    --secret-file, the submitter from MRKIT_SECRET."""
    acl = ["--user", "default", "off", "--user", "fleet", "on", ">s3cret", "~*", "&*", "+@all"]
    server = RedisServer(tempfile.mkdtemp(dir=tmp_path), extra=acl).start()
    try:
        url = f"redis://fleet:s3cret@127.0.0.1:{server.port}/0"
        (tmp_path / "secret").write_text("shared by file\n")
        monkeypatch.setenv("MRKIT_SECRET", "shared by file")
        handle = mrkit.submit(J.WORDCOUNT, mrkit.Records(TEXT), executor=url, n_map=2, n_reduce=1)
        worker = start_worker(
            url, name="acl", args=["--secret-file", str(tmp_path / "secret")], drop_env=("MRKIT_SECRET",)
        )
        try:
            assert sorted(handle.wait(timeout=60)) == reference(J.WORDCOUNT, TEXT)
        finally:
            err = stop_worker(worker)
        assert "REFUSED" not in err and "s3cret" not in err
        assert "s3cret" not in repr(handle.status()) and handle.status()["workers"] == ["acl"]
        with pytest.raises(ConfigError, match=r"refused the credentials") as info:
            serve(f"redis://fleet:wrong@127.0.0.1:{server.port}/0", concurrency=1, burst=True)
        assert "wrong" not in str(info.value)
        with pytest.raises(ConfigError, match=r"refused the credentials"):  # the default user is off
            serve(f"redis://127.0.0.1:{server.port}/0", concurrency=1, burst=True)
    finally:
        server.stop()


def test_tls_rediss(tmp_path, secret_env):  # noqa: F811
    """A TLS-only redis-server (Debian's is built with TLS): async and blocking jobs over rediss://."""
    import redis

    directory = tempfile.mkdtemp(dir=tmp_path)
    server = RedisServer(directory, tls=make_tls_files(directory)).start()
    try:
        url = server.url
        assert url.startswith("rediss://")
        with pytest.raises(redis.ConnectionError):  # the port speaks TLS only
            redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5).ping()
        handle = mrkit.submit(J.WORDCOUNT, mrkit.Records(TEXT), executor=url, n_map=2, n_reduce=1)
        worker = start_worker(url, name="tls")
        try:
            assert sorted(handle.wait(timeout=60)) == reference(J.WORDCOUNT, TEXT)
        finally:
            err = stop_worker(worker)
        assert worker.returncode == 0, err
        with WorkerThreads(url, 1):
            got = mrkit.run(J.WORDCOUNT, mrkit.Records(TEXT), executor=url, n_map=2, n_reduce=1, quiet=True)
        assert sorted(got) == reference(J.WORDCOUNT, TEXT)
        untrusted = f"rediss://127.0.0.1:{server.port}/0"  # no CA given: the certificate does not verify
        with pytest.raises(StorageError, match="cannot reach Redis"):
            serve(untrusted, concurrency=1, burst=True)
    finally:
        server.stop()


def test_an_async_job_whose_entries_are_all_refused_says_so_and_fails(redis_url, monkeypatch):  # noqa: F811
    """Submitter and workers with different secrets: nothing runs, status says why, and waiting
    for the result fails (a refused entry is never run) instead of waiting forever."""
    monkeypatch.setenv("MRKIT_SECRET", "submitter-secret")
    handle = mrkit.submit(J.WORDCOUNT, mrkit.Records(TEXT), executor=redis_url, n_map=2, n_reduce=1)
    with WorkerThreads(redis_url, 1, secret=b"worker-secret"):
        wait_for(lambda: handle.status()["refused"] == 2, what="both map entries to be refused")
    st = handle.status()
    assert st["state"] == "running" and st["attempts"] == {"map": 0, "reduce": 0}
    status = mrkit_cmd("status", handle.id, "--executor", redis_url)
    assert "refused   2 entries" in status.stdout and "share one secret" in status.stdout
    result = mrkit_cmd("result", handle.id, "--wait", "--executor", redis_url, check=False)
    assert result.returncode == 1
    assert "cannot complete: worker thread-0 refused its task entry" in result.stderr
    assert "share one secret" in result.stderr
    assert handle.status()["state"] == "failed"
    with pytest.raises(JobFailed, match="cannot complete"):
        handle.wait(timeout=5)
