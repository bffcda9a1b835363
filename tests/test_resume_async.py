"""Resuming a failed or cancelled asynchronous job on the Redis fleet (``mrkit.resume``, ``mrkit resume``).

Real redis-server (tests/redis_fixtures.py), real ``mrkit worker`` processes, loopback only; every
wait is bounded and every worker is stopped by its PID.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import pytest

import mrkit
from mrkit.backends.redis.job_handle import RedisJobHandle
from mrkit.backends.redis.job_state import SCRIPTS, JobKeys
from mrkit.backends.redis.wire import GROUP
from mrkit.coordination.resume import ResumeRefused
from mrkit.errors import JobFailed
from mrkit.model.reference import reference
from tests import jobs_for_tests as J
from tests.redis_fixtures import (  # noqa: F401 - fixtures
    mrkit_cmd,
    redis_server,
    redis_url,
    secret_env,
    start_worker,
    stop_worker,
)

TEXT = ["the cat sat on the mat", "The dog sat", "a b c a b a", "it's 42 o'clock"] * 10
HERE = os.path.dirname(os.path.abspath(__file__))
FAILING = "map-00003"  # the last map entry: with one worker every other map commits before it fails


def flaky_mapper(line: str) -> Iterator[tuple[str, int]]:
    """Notes every (task, attempt) it runs in ``runs``; task FAILING raises until ``flag`` exists."""
    ctx = mrkit.context()
    with open(ctx.params["runs"], "a") as f:
        f.write(f"{ctx.task_id} {ctx.attempt}\n")
    if ctx.task_id == FAILING and not os.path.exists(ctx.params["flag"]):
        raise RuntimeError("the flag file is missing")
    yield from J.words(line)


def flaky_reducer(key: str, values: Iterable[int]) -> int:
    """Notes every (task, attempt) it runs in ``runs``; reduce-00001 raises until ``flag`` exists."""
    ctx = mrkit.context()
    with open(ctx.params["runs"], "a") as f:
        f.write(f"{ctx.task_id} {ctx.attempt}\n")
    if ctx.task_id == "reduce-00001" and not os.path.exists(ctx.params["flag"]):
        raise RuntimeError("the flag file is missing")
    return sum(values)


def attempts_run(path: str) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    with open(path) as f:
        for line in f:
            task, attempt = line.split()
            out.setdefault(task, set()).add(int(attempt))
    return out


def run_workers(url: str, n: int = 1) -> str:
    """Run ``n`` burst workers until the fleet has nothing left to do; return their stderr."""
    workers = [start_worker(url, name=f"w{i}") for i in range(n)]
    return "".join(stop_worker(w, timeout=60) for w in workers)


def failed_job(url: str, tmp_path, job_id: str) -> mrkit.JobHandle:  # type: ignore[no-untyped-def]
    """A job whose FAILING task used up its two attempts: failed, nothing published."""
    job = mrkit.Job(mapper=flaky_mapper, reducer=J.total)
    params = {"flag": str(tmp_path / "flag"), "runs": str(tmp_path / "runs.txt")}
    handle = mrkit.submit(
        job,
        mrkit.Records(TEXT),
        executor=url,
        output=str(tmp_path / "out"),
        n_map=4,
        n_reduce=2,
        params=params,
        job_id=job_id,
        policy=mrkit.RetryPolicy(max_attempts=2),
    )
    errs = run_workers(url)
    with pytest.raises(JobFailed, match=f"map task {FAILING} of job {job_id} failed after 2 attempts"):
        handle.wait(timeout=30)
    status = handle.status()
    assert status["state"] == "failed" and status["tasks"]["map"]["done"] == 3, (status, errs)
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    return handle


def test_resume_reruns_only_the_uncommitted_tasks(redis_url, redis_server, tmp_path, secret_env):  # noqa: F811
    handle = failed_job(redis_url, tmp_path, "flaky-1")
    client = redis_server.client()
    keys = client.keys("mrkit:{flaky-1}:*")
    assert keys and all(client.ttl(k) > 0 for k in keys)  # a failed job's keys expire...
    assert any(k.endswith(b"map/map-00000/COMMIT") for k in keys)  # ...and keep its commits till then
    (tmp_path / "flag").write_text("")
    resumed = mrkit.resume("flaky-1", executor=redis_url)
    assert resumed.id == "flaky-1" and resumed.status()["state"] == "running"
    assert all(client.ttl(k) == -1 for k in client.keys("mrkit:{flaky-1}:*"))  # no TTL while it runs
    errs = run_workers(redis_url, 2)
    result = resumed.wait(timeout=30)
    assert sorted(mrkit.read_output(str(tmp_path / "out"))) == reference(J.WORDCOUNT, TEXT), errs
    assert result.counters["map.tasks_resumed"] == 3 and result.counters["reduce.tasks_resumed"] == 0
    assert result.counters["map.records_in"] == len(TEXT)
    runs = attempts_run(str(tmp_path / "runs.txt"))
    assert {t: len(a) for t, a in runs.items() if t != FAILING} == {f"map-0000{i}": 1 for i in range(3)}
    assert runs[FAILING] == {1, 2, 3}  # fresh attempt number after the two failed ones
    status = handle.status()
    assert status["state"] == "done" and status["failures"]["map"] == 0  # a fresh attempt budget
    assert all(client.ttl(k) > 0 for k in client.keys("mrkit:{flaky-1}:*"))
    assert "resumed as run 2 in the map phase: kept 3 map and 0 reduce tasks" in "\n".join(handle.logs())


def test_stale_entries_of_the_failed_run_change_nothing(redis_url, redis_server, tmp_path, secret_env):  # noqa: F811
    failed_job(redis_url, tmp_path, "flaky-2")
    client = redis_server.client()
    k = JobKeys("flaky-2")
    old = client.xrange(k.tasks)  # run 1's map entries (and the failing task's retry)
    assert len(old) == 5 and all(b'"run":1' in fields[b"p"] for _, fields in old)
    (tmp_path / "flag").write_text("")
    mrkit.resume("flaky-2", executor=redis_url)
    done_before = client.hgetall(k.done("map"))
    # A zombie of run 1 reports: a commit, a failure and a loss of the failing task. Each is dropped.
    entry_id = old[0][0]
    commit = client.register_script(SCRIPTS["commit"])
    verdict = commit(
        keys=[k.state, k.done("map"), k.tasks, k.trigger("reduce"), k.next("reduce")],
        args=[GROUP, entry_id, FAILING, 99, 4, "reduce", 0, 1],
    )
    assert verdict == b"stale"
    fail = client.register_script(SCRIPTS["fail"])
    assert fail(
        keys=[k.state, k.done("map"), k.tasks, k.failures],
        args=[GROUP, entry_id, "zombie", FAILING, 1, 2, "p", "s", "", b"x", b"", 0, 1],
    ) == [b"stale"]
    lost = client.register_script(SCRIPTS["lost"])
    assert lost(
        keys=[k.state, k.done("map"), k.tasks, k.lost], args=[GROUP, entry_id, FAILING, 8, "m", 0, 1]
    ) == [b"stale"]
    assert client.hgetall(k.done("map")) == done_before and len(done_before) == 3
    assert not client.exists(k.failures) and not client.exists(k.lost)
    assert client.hget(k.state, "state") == b"running" and client.hget(k.state, "phase") == b"map"
    # Redelivered entries of run 1 (every map task's, the committed ones too) reach the workers.
    for _, fields in old:
        client.xadd(k.tasks, fields)
    runs_before = attempts_run(str(tmp_path / "runs.txt"))
    errs = run_workers(redis_url, 2)
    result = RedisJobHandle(redis_url, "flaky-2").wait(timeout=30)
    assert sorted(mrkit.read_output(str(tmp_path / "out"))) == reference(J.WORDCOUNT, TEXT), errs
    runs = attempts_run(str(tmp_path / "runs.txt"))
    assert {t: runs[t] - runs_before.get(t, set()) for t in runs} == {
        **{f"map-0000{i}": set() for i in range(3)},
        FAILING: {3},
    }, errs  # the stale entries ran nothing; only the resumed run's entry of FAILING ran
    assert result.counters["map.tasks_resumed"] == 3 and result.counters["map.attempts_failed"] == 0
    logs = "\n".join(RedisJobHandle(redis_url, "flaky-2").logs())
    assert "dropped: an entry of run 1; the job was resumed as run 2" in logs


def test_resume_from_the_command_line(redis_url, tmp_path, secret_env):  # noqa: F811
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXT) + "\n")
    out = tmp_path / "out"
    job_ref = os.path.join(HERE, "jobs_for_tests.py") + ":WordCount"
    unknown = mrkit_cmd("resume", "no-such-job", "--executor", redis_url, check=False)
    assert unknown.returncode == 2 and "has no job no-such-job" in unknown.stderr, unknown.stderr
    sub = mrkit_cmd(
        "submit", job_ref, str(src), "-o", str(out), "--job-id", "wc-cli", "--executor", redis_url
    )
    assert sub.stdout.strip() == "wc-cli"
    twice = mrkit_cmd("submit", job_ref, str(src), "--job-id", "wc-cli", "--executor", redis_url, check=False)
    assert twice.returncode == 2 and "job wc-cli already exists" in twice.stderr, twice.stderr
    running = mrkit_cmd("resume", "wc-cli", "--executor", redis_url, check=False)
    assert running.returncode == 2 and "job wc-cli is running: nothing to resume" in running.stderr
    mrkit_cmd("cancel", "wc-cli", "--executor", redis_url)
    worker = start_worker(redis_url, burst=False, name="w-cli")
    try:
        resumed = mrkit_cmd(
            "resume", "wc-cli", "--executor", redis_url, "--wait", "--timeout", "30", timeout=40
        )
    finally:
        worker.terminate()
        errs = stop_worker(worker)
    assert resumed.returncode == 0 and resumed.stdout.strip() == "wc-cli", (resumed.stderr, errs)
    assert sorted(mrkit.read_output(str(out))) == reference(J.WordCount(), TEXT)
    again = mrkit_cmd("resume", "wc-cli", "--executor", redis_url, check=False)
    assert again.returncode == 2 and "job wc-cli is done: nothing to resume" in again.stderr


def test_submit_refuses_resume_and_points_at_mrkit_resume(redis_url):  # noqa: F811
    with pytest.raises(mrkit.ConfigError, match=r"mrkit\.resume\(ID, executor=\.\.\.\)"):
        mrkit.submit(J.WORDCOUNT, mrkit.Records(TEXT), executor=redis_url, resume=True)
    with pytest.raises(ResumeRefused, match="has no job nope"):
        mrkit.resume("nope", executor=redis_url)


def test_executors_that_cannot_resume_asynchronous_jobs_refuse(tmp_path):
    # Serverless jobs resume (tests/test_lambda_resume.py); an unknown one is refused.
    with pytest.raises(ResumeRefused, match="cannot resume: no job some-job in file://"):
        mrkit.resume("some-job", executor=f"lambda-local?storage=file://{tmp_path}/store")
    with pytest.raises(ResumeRefused, match="runs jobs in the calling process"):
        mrkit.resume("some-job", executor="inline")


def test_resume_in_the_reduce_phase_keeps_every_map_and_the_committed_reduce(redis_url, tmp_path, secret_env):  # noqa: F811
    job = mrkit.Job(mapper=J.words, reducer=flaky_reducer)
    params = {"flag": str(tmp_path / "flag"), "runs": str(tmp_path / "runs.txt")}
    out = tmp_path / "out"
    handle = mrkit.submit(
        job,
        mrkit.Records(TEXT),
        executor=redis_url,
        output=str(out),
        n_map=3,
        n_reduce=2,
        params=params,
        job_id="flaky-r",
        policy=mrkit.RetryPolicy(max_attempts=2),
    )
    errs = run_workers(redis_url)
    with pytest.raises(JobFailed, match="reduce task reduce-00001 of job flaky-r failed after 2 attempts"):
        handle.wait(timeout=30)
    assert handle.status()["phase"] == "reduce" and handle.status()["tasks"]["reduce"]["done"] == 1, errs
    (tmp_path / "flag").write_text("")
    resumed = mrkit.resume("flaky-r", executor=redis_url)
    assert resumed.status()["phase"] == "reduce"
    errs = run_workers(redis_url, 2)
    result = resumed.wait(timeout=30)
    assert sorted(mrkit.read_output(str(out))) == reference(J.WORDCOUNT, TEXT), errs
    assert result.counters["map.tasks_resumed"] == 3 and result.counters["reduce.tasks_resumed"] == 1
    runs = attempts_run(str(tmp_path / "runs.txt"))
    assert runs == {"reduce-00000": {1}, "reduce-00001": {1, 2, 3}}, runs
