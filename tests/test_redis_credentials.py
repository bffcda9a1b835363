"""Redis credentials out of argv: ``MRKIT_REDIS_PASSWORD`` / ``MRKIT_REDIS_USERNAME`` or
``--redis-password-file`` on every command that takes a redis:// executor; ``ps`` never shows the
password, and no command prints it."""

from __future__ import annotations

import tempfile

import pytest

import mrkit
from mrkit.model.reference import reference
from tests import jobs_for_tests as J
from tests.redis_fixtures import (  # noqa: F401 - fixtures
    RedisServer,
    WorkerThreads,
    mrkit_cmd,
    process_tree,
    secret_env,
    start_worker,
    stop_worker,
    wait_for,
)
from tests.test_redis_cli import TEXT, WORDCOUNT_REF, pairs

PASSWORD = "pw-never-in-argv-7f3a"


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_every_command_takes_the_password_from_a_file_and_the_user_from_the_environment(
    tmp_path,
    secret_env,  # noqa: F811
):
    acl = ["--user", "default", "off", "--user", "fleet", "on", f">{PASSWORD}", "~*", "&*", "+@all"]
    server = RedisServer(tempfile.mkdtemp(dir=tmp_path), extra=acl).start()
    url = f"redis://127.0.0.1:{server.port}/0"  # no credentials in any argv
    pw_file = tmp_path / "redis-password"
    pw_file.write_text(PASSWORD + "\n")
    env = {"MRKIT_REDIS_USERNAME": "fleet"}
    auth = ["--redis-password-file", str(pw_file)]
    text = tmp_path / "text.txt"
    text.write_text("\n".join(TEXT) + "\n")
    outputs = []
    worker = start_worker(
        url, burst=False, concurrency=2, args=auth, env=env, drop_env=("MRKIT_REDIS_PASSWORD",)
    )
    try:
        wait_for(lambda: len(process_tree(worker.pid)) >= 3, what="the worker's task processes")
        argvs = [_cmdline(pid) for pid in process_tree(worker.pid)]
        assert all(PASSWORD not in argv for argv in argvs) and any(
            "--redis-password-file" in a for a in argvs
        )

        def cmd(*args: str) -> str:
            proc = mrkit_cmd(*args, *auth, env=env, timeout=120)
            outputs.append(proc.stdout + proc.stderr)
            return proc.stdout

        job_id = cmd("submit", WORDCOUNT_REF, str(text), "-N", "2", "-M", "1", "--executor", url).strip()
        assert pairs(cmd("result", job_id, "--wait", "--timeout", "60", "--executor", url)) == reference(
            J.WordCount(), TEXT
        )
        assert '"state": "done"' in cmd("status", job_id, "--json", "--executor", url)
        assert "committed" in cmd("logs", job_id, "--executor", url)
        assert job_id in cmd("jobs", "--executor", url)
        cmd("cancel", job_id, "--executor", url)  # already done: says so, exits 0
        assert pairs(cmd("run", WORDCOUNT_REF, str(text), "-N", "2", "--executor", url)) == reference(
            J.WordCount(), TEXT
        )
        # Without the password: one sentence naming the failure, never the password.
        denied = mrkit_cmd("jobs", "--executor", url, env=env, check=False)
        assert denied.returncode != 0 and "Traceback" not in denied.stderr, denied.stderr
        outputs.append(denied.stdout + denied.stderr)
    finally:
        worker.send_signal(15)
        outputs.append(stop_worker(worker))
        server.stop()
    assert not [out for out in outputs if PASSWORD in out]


def test_the_password_from_the_environment(tmp_path, monkeypatch, secret_env):  # noqa: F811
    server = RedisServer(tempfile.mkdtemp(dir=tmp_path), extra=["--requirepass", PASSWORD]).start()
    try:
        url = f"redis://127.0.0.1:{server.port}/0"
        monkeypatch.setenv("MRKIT_REDIS_PASSWORD", PASSWORD)
        handle = mrkit.submit(J.WORDCOUNT, mrkit.Records(TEXT), executor=url, n_map=2, n_reduce=1)
        with WorkerThreads(url, 1):
            assert sorted(handle.wait(timeout=60)) == reference(J.WORDCOUNT, TEXT)
        status = repr(handle.status())
        assert PASSWORD not in status
        import redis

        stored = redis.Redis(host="127.0.0.1", port=server.port, password=PASSWORD)
        state = stored.hgetall(f"mrkit:{{{handle.id}}}:state")
        assert not [v for v in state.values() if PASSWORD.encode() in v]  # no URL carries it
    finally:
        server.stop()


def test_an_unreadable_password_file_is_one_sentence(tmp_path):
    proc = mrkit_cmd(
        "jobs",
        "--executor",
        "redis://127.0.0.1:1/0",
        "--redis-password-file",
        str(tmp_path / "nope"),
        check=False,
    )
    assert proc.returncode == 2 and "cannot read the Redis password file" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_failure_in_records_stored_in_redis_never_shows_the_password(tmp_path):
    """A failed task names its split, and in-memory records live in Redis: the split's URL holds
    the password, which must read ``***`` in the error, the job's state, its logs and its events."""
    acl = ["--requirepass", PASSWORD]
    server = RedisServer(tempfile.mkdtemp(dir=tmp_path), extra=acl).start()
    url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
    job = mrkit.Job(mapper=J.failing_mapper, reducer=J.total, name="pw-failing")
    records = mrkit.Records(["a b", "poison here", "c"])
    policy = mrkit.RetryPolicy(max_attempts=1)
    try:
        with WorkerThreads(url, 1, burst=False):
            handle = mrkit.submit(job, records, executor=url, n_map=1, policy=policy)
            try:
                handle.wait(60)
            except mrkit.JobFailed as exc:
                error = str(exc)
            else:
                raise AssertionError("the job did not fail")
            seen = [
                error,
                str(handle.status().to_dict()),
                "\n".join(handle.logs()),
                str([e.to_dict() for e in handle.events()]),
            ]
        with pytest.raises(mrkit.JobFailed) as blocking:
            with WorkerThreads(url, 1, burst=False):
                mrkit.run(job, records, executor=url, n_map=1, policy=policy, quiet=True)
        seen.append(str(blocking.value))
        assert "cannot map" in error and ":***@127.0.0.1" in error
        assert all(PASSWORD not in text for text in seen), [t for t in seen if PASSWORD in t]
    finally:
        server.stop()
