"""Asynchronous jobs on the Redis fleet: submit, advance without the submitter, status/logs/result/cancel."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import time
from collections.abc import Iterable, Iterator

import pytest

import mrkit
from mrkit.backends.redis.job_state import JobKeys
from mrkit.coordination.service import job_service
from mrkit.errors import JobCancelled, JobFailed
from mrkit.execution.base import open_executor
from mrkit.model.reference import reference
from mrkit.model.task import failure_message
from tests import jobs_for_tests as J
from tests.redis_fixtures import (  # noqa: F401 - fixtures
    WorkerThreads,
    mrkit_cmd,
    redis_server,
    redis_url,
    secret_env,
    start_worker,
    stop_worker,
    worker_stderr,
)

TEXT = ["the cat sat on the mat", "The dog sat", "", "a b c a b a", "it's 42 o'clock"] * 20
HERE = os.path.dirname(os.path.abspath(__file__))


def chatty_mapper(line: str) -> Iterator[tuple[str, int]]:
    print(f"mapping {line!r}")
    logging.getLogger("user.job").info("info from the mapper")
    yield from J.words(line)


def _write_pid(path: str) -> None:
    """Publish this process's pid whole (a reader never sees a partial number, which could name
    another process, such as the worker's supervisor)."""
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)


def sleepy_mapper(line: str) -> Iterator[tuple[str, int]]:
    """The first attempt of map-00001 records its pid and sleeps (to be killed)."""
    ctx = mrkit.context()
    if ctx.task_id == "map-00001" and ctx.attempt == 1:
        _write_pid(ctx.params["pidfile"])
        time.sleep(60)
    yield from J.words(line)


def sleepy_reducer(key: str, values: Iterable[int]) -> int:
    """The first attempt of reduce-00000 records its pid and sleeps (to be killed)."""
    ctx = mrkit.context()
    if ctx.task_id == "reduce-00000" and ctx.attempt == 1:
        _write_pid(ctx.params["pidfile"] + ".reduce")
        time.sleep(60)
    return sum(values)


def read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read() or 0) or None
    except FileNotFoundError:
        return None


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_submit_advances_without_the_submitter(redis_url):  # noqa: F811
    handle = mrkit.submit(J.WORDCOUNT, mrkit.Records(TEXT), executor=redis_url, n_map=3, n_reduce=2)
    assert handle.status()["state"] == "running" and handle.status()["phase"] == "map"
    with WorkerThreads(redis_url, 2, burst=True):
        result = handle.wait(timeout=60)
    assert sorted(result) == reference(J.WORDCOUNT, TEXT)
    st = handle.status()
    assert st["state"] == "done" and st["tasks"]["map"] == {"done": 3, "total": 3}
    assert st["tasks"]["reduce"] == {"done": 2, "total": 2}
    assert result.counters["map.records_in"] == len(TEXT) and result.counters["map.attempts_launched"] == 3


def test_submit_from_a_process_that_exits_then_collect_from_another(redis_url, tmp_path, secret_env):  # noqa: F811
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXT) + "\n")
    job_ref = os.path.join(HERE, "jobs_for_tests.py") + ":WordCount"
    out = mrkit_cmd("submit", job_ref, str(src), "-N", "3", "-M", "2", "--executor", redis_url)
    job_id = out.stdout.strip()
    assert re.fullmatch(r"wordcount-\d{8}-\d{6}-[0-9a-f]{6,}", job_id), out.stdout
    workers = [start_worker(redis_url, name=f"w{i}") for i in range(2)]
    try:
        got = mrkit_cmd("result", job_id, "--wait", "--timeout", "15", "--executor", redis_url)
    finally:
        errs = [stop_worker(w) for w in workers]
    pairs = sorted(
        (json.loads(k), json.loads(v)) for k, v in (line.split("\t") for line in got.stdout.splitlines())
    )
    assert pairs == reference(J.WordCount(), TEXT), errs
    status = mrkit_cmd("status", job_id, "--executor", redis_url).stdout
    assert "state     done" in status and "map       1/1 tasks done" in status  # a small file: 1 split
    assert re.search(r"workers   w[01]", status), status
    listing = mrkit_cmd("jobs", "--executor", redis_url).stdout
    assert job_id in listing and "done" in listing


def test_logs_capture_user_output_per_task(redis_url, tmp_path, secret_env):  # noqa: F811
    job = mrkit.Job(mapper=chatty_mapper, reducer=J.total)
    handle = mrkit.submit(
        job, mrkit.Records(["one line", "two lines"]), executor=redis_url, n_map=2, n_reduce=1
    )
    worker = start_worker(redis_url, name="talker")
    try:
        handle.wait(timeout=60)
    finally:
        stop_worker(worker)
    lines = list(handle.logs())
    text = "\n".join(lines)
    assert re.search(r"map-00000 a1 \[talker\] stdout: mapping 'one line'", text), text
    assert re.search(r"map-00001 a1 \[talker\] log: INFO user.job: info from the mapper", text), text
    assert "every map task committed: reduce phase started" in text and "done in" in text
    followed = mrkit_cmd("logs", handle.id, "--follow", "--executor", redis_url).stdout
    assert "stdout: mapping 'two lines'" in followed


def test_failure_after_max_attempts_uses_the_driver_message_and_publishes_nothing(redis_url, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    job = mrkit.Job(mapper=J.failing_mapper, reducer=J.total)
    policy = mrkit.RetryPolicy(max_attempts=3)
    records = ["fine", "poison pill", "ok"]
    handle = mrkit.submit(
        job,
        mrkit.Records(records),
        executor=redis_url,
        n_map=2,
        n_reduce=1,
        output=str(out),
        policy=policy,
        job_id="failing-job",
    )
    with WorkerThreads(redis_url, 2, burst=True), pytest.raises(JobFailed) as info:
        handle.wait(timeout=60)
    with pytest.raises(JobFailed) as inline:
        mrkit.run(
            job,
            mrkit.Records(records),
            executor="inline",
            n_map=2,
            n_reduce=1,
            policy=policy,
            job_id="failing-job",
            quiet=True,
        )
    same = lambda m: re.sub(r"\S+#failing-job/", "STORAGE#failing-job/", m)  # noqa: E731
    assert same(str(info.value)) == same(str(inline.value))
    assert "after 3 attempts" in str(info.value) and "ValueError: cannot map 'poison pill'" in str(info.value)
    assert "Traceback" in info.value.remote_traceback and info.value.task_id == "map-00001"
    assert not out.exists() or not (out / "_SUCCESS").exists()
    st = handle.status()
    assert st["state"] == "failed" and st["failures"]["map"] == 3 and st["error"] == str(info.value)
    status = mrkit_cmd("status", handle.id, "--executor", redis_url, check=False)
    assert status.returncode == 1 and "cannot map 'poison pill'" in status.stdout


def test_failure_message_matches_the_driver():
    from mrkit.model.task import InputSplit, TaskFailure, TaskKind, TaskSpec

    spec = TaskSpec("j", "map-00002", TaskKind.MAP, split=InputSplit("/d/a.txt", 0, 10))
    failure = TaskFailure("", "InputError", "no such file", retryable=False)
    assert failure_message("map", spec, failure, 1) == (
        "map task map-00002 of job j failed after 1 attempt (not retried: another attempt would fail the "
        "same way): /d/a.txt bytes 0-10: InputError: no such file"
    )


def test_cancel(redis_url, tmp_path):  # noqa: F811
    handle = mrkit.submit(J.WORDCOUNT, mrkit.Records(TEXT), executor=redis_url, n_map=3, n_reduce=2)
    assert handle.cancel() is True
    assert handle.cancel() is False
    with pytest.raises(JobCancelled):
        handle.wait(timeout=5)
    with WorkerThreads(redis_url, 1, burst=True):  # leftover entries are acked and skipped, not run
        pass
    st = handle.status()
    assert st["state"] == "cancelled" and st["attempts"] == {"map": 0, "reduce": 0}
    assert mrkit_cmd("cancel", handle.id, "--executor", redis_url).stderr.startswith(f"job {handle.id} had")


def test_duplicated_entries_change_nothing(redis_url, redis_server):  # noqa: F811
    """XADD every map entry (and later a reduce entry) a second time: same result, counted once."""
    handle = mrkit.submit(J.WORDCOUNT, mrkit.Records(TEXT), executor=redis_url, n_map=3, n_reduce=2)
    client = redis_server.client()
    k = JobKeys(handle.id)
    for _, fields in client.xrange(k.tasks):
        client.xadd(k.tasks, fields)
    reduce_entry = client.lrange(k.next("reduce"), 0, 1)
    client.xadd(k.tasks, {"p": reduce_entry[0], "s": reduce_entry[1]})  # a reduce before its phase, even
    with WorkerThreads(redis_url, 2, burst=True):
        result = handle.wait(timeout=60)
    assert sorted(result) == reference(J.WORDCOUNT, TEXT)
    assert result.counters["map.records_in"] == len(TEXT)  # counted from the winning commits only
    # A duplicate of a task already committed is acked without running; one still racing runs, loses
    # the commit and is discarded.
    assert 3 <= result.counters["map.attempts_launched"] <= 6
    assert client.get(k.trigger("reduce")) is not None and client.hlen(k.done("map")) == 3


def test_sigkill_a_worker_mid_map_and_mid_reduce(redis_url, tmp_path, secret_env):  # noqa: F811
    url = redis_url + "?lease=1"
    pidfile = str(tmp_path / "pid")
    job = mrkit.Job(mapper=sleepy_mapper, reducer=sleepy_reducer, params={"pidfile": pidfile})
    handle = mrkit.submit(job, mrkit.Records(TEXT), executor=url, n_map=3, n_reduce=2)
    workers = [start_worker(url, name=f"w{i}", burst=False) for i in range(3)]
    try:
        os.kill(wait_for(lambda: read_pid(pidfile), what="the map to start"), signal.SIGKILL)
        os.kill(
            wait_for(lambda: read_pid(pidfile + ".reduce"), timeout=15, what="the reduce"), signal.SIGKILL
        )
        result = handle.wait(timeout=60)
    finally:
        for w in workers:
            # A worker still starting up (a loaded machine: the job may end before the third worker
            # has imported mrkit) has no signal handler yet: let it start before asking it to stop.
            deadline = time.monotonic() + 30
            while w.poll() is None and "consuming" not in worker_stderr(w) and time.monotonic() < deadline:
                time.sleep(0.05)
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        errs = [stop_worker(w) for w in workers]
    assert sorted(result) == reference(mrkit.Job(mapper=J.words, reducer=J.total), TEXT), errs
    st = handle.status()
    assert st["lost"]["map"] >= 1 and st["lost"]["reduce"] >= 1
    assert result.counters["map.attempts_lost"] >= 1 and result.counters["reduce.attempts_lost"] >= 1
    # The task processes were killed; their supervisors replaced them and exited cleanly when asked.
    assert [w.returncode for w in workers] == [0, 0, 0], errs
    assert sum(err.count("task process killed by signal 9") for err in errs) == 2, errs
    logs = "\n".join(handle.logs())
    assert "reclaimed (its lease of 1s expired" in logs


def test_keys_have_a_ttl_and_are_documented(redis_url, redis_server):  # noqa: F811
    handle = mrkit.submit(
        J.WORDCOUNT, mrkit.Records(TEXT), executor=redis_url + "?ttl=600", n_map=2, n_reduce=2
    )
    with WorkerThreads(redis_url, 2, burst=True):
        handle.wait(timeout=60)
    client = redis_server.client()
    job_keys = [k.decode() for k in client.keys(f"mrkit:{{{handle.id}}}:*")]
    assert job_keys and all(0 < client.ttl(k) <= 600 for k in job_keys)
    assert not [k for k in job_keys if ":data:map/" in k or ":data:input/" in k]  # intermediate data deleted
    with open(os.path.join(os.path.dirname(HERE), "docs", "redis.md")) as f:
        doc = f.read()
    for name in {re.sub(r"^mrkit:\{[^}]+\}:", "", k).split("/")[0].split(":")[0] for k in job_keys}:
        assert f"mrkit:{{job}}:{name}" in doc, name
    for name in ("mrkit:queues", "mrkit:jobs", "mrkit:workers", "mrkit:dead"):
        assert f"`{name}`" in doc


def test_many_jobs_share_one_redis(redis_url):  # noqa: F811
    handles = [
        mrkit.submit(
            J.WORDCOUNT, mrkit.Records(TEXT[: 10 * (i + 1)]), executor=redis_url, n_map=2, n_reduce=2
        )
        for i in range(3)
    ]
    with WorkerThreads(redis_url, 2, burst=True):
        results = [h.wait(timeout=60) for h in handles]
    for i, result in enumerate(results):
        assert sorted(result) == reference(J.WORDCOUNT, TEXT[: 10 * (i + 1)])
    service = job_service(open_executor(redis_url, workers=1))
    assert service is not None
    listed = {st["id"]: st["state"] for st in service.list_jobs()}
    assert listed == {h.id: "done" for h in handles}


def test_local_input_missing_on_the_worker_is_named(redis_url, tmp_path):  # noqa: F811
    src = tmp_path / "in.txt"
    src.write_text("a b\n" * 10)
    handle = mrkit.submit(J.WORDCOUNT, str(src), executor=redis_url, n_map=1, n_reduce=1)
    src.unlink()  # as if the worker ran on a machine without this file
    with WorkerThreads(redis_url, 1, burst=True), pytest.raises(JobFailed) as info:
        handle.wait(timeout=60)
    message = str(info.value)
    assert f"input {src} is not readable on worker thread-0 (host " in message
    assert "must exist at the same path on every worker" in message and "after 1 attempt" in message
