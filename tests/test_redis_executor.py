"""Blocking runs on the Redis fleet: mrkit.run and the futures API against a real redis-server."""

from __future__ import annotations

import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import mrkit
from mrkit import futures
from mrkit.errors import JobFailed
from mrkit.execution.base import open_executor
from mrkit.model.reference import reference
from tests import jobs_for_tests as J
from tests.redis_fixtures import (  # noqa: F401 - fixtures
    WorkerThreads,
    redis_server,
    redis_url,
    secret_env,
    start_worker,
    stop_worker,
    wait_for,
)

TEXT = ["the cat sat on the mat", "The dog sat", "", "a b c a b a", "it's 42 o'clock"] * 20


def run(job, inputs, **kw):
    kw.setdefault("quiet", True)
    return mrkit.run(job, inputs, **kw)


@pytest.mark.parametrize(
    "job",
    [J.WORDCOUNT, J.WordCount(), J.InMapperWordCount(), J.SplitWordCount()],
    ids=["functions", "class", "in-mapper", "mapper_split"],
)
def test_run_gives_the_same_result_as_processes(redis_url, job):  # noqa: F811
    # One worker thread: run_task shares a process's cached Job between threads, so two threads would
    # share an in-mapper combiner's state (worker processes never run two tasks at once).
    with WorkerThreads(redis_url, 1):
        got = run(job, mrkit.Records(TEXT), executor=redis_url, n_map=4, n_reduce=3)
    assert sorted(got) == reference(job, TEXT)
    assert sorted(got) == sorted(run(job, mrkit.Records(TEXT), executor="inline", n_map=4, n_reduce=3))
    assert got.counters["map.tasks"] == 4 and got.counters["reduce.tasks"] == 3


def test_files_in_and_output_folder_out(redis_url, tmp_path):  # noqa: F811
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXT) + "\n")
    with WorkerThreads(redis_url, 2):
        result = run(
            J.WORDCOUNT, str(src), executor=redis_url, n_map=3, n_reduce=2, output=str(tmp_path / "out")
        )
    assert sorted(mrkit.read_output(str(tmp_path / "out"))) == reference(J.WORDCOUNT, TEXT)
    assert result.output == str(tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["_SUCCESS", "part-00000", "part-00001"]


def test_intermediate_data_in_a_shared_folder(redis_url, tmp_path, redis_server):  # noqa: F811
    with WorkerThreads(redis_url, 2):
        got = run(
            J.WORDCOUNT,
            mrkit.Records(TEXT),
            executor=redis_url,
            storage=str(tmp_path / "shared"),
            n_map=3,
            n_reduce=2,
        )
    assert sorted(got) == reference(J.WORDCOUNT, TEXT)
    assert not [k for k in redis_server.client().keys("*") if b":data:" in k]  # nothing went to Redis


def test_real_worker_processes(redis_url, tmp_path, secret_env):  # noqa: F811
    """`mrkit worker URL --burst` processes run the job; they exit once the executor shuts down."""
    ex = open_executor(redis_url)
    ex.open_session()
    procs = [start_worker(redis_url, name=f"proc-{i}") for i in range(2)]
    try:
        got = run(J.WordCount(), mrkit.Records(TEXT), executor=ex, n_map=4, n_reduce=2)
        assert sorted(got) == reference(J.WordCount(), TEXT)
    finally:
        ex.shutdown()
    errs = [stop_worker(p) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs


def test_futures_map_on_redis(redis_url):  # noqa: F811
    with WorkerThreads(redis_url, 2):
        assert list(futures.map(lambda x: x * x, range(200), executor=redis_url)) == [
            x * x for x in range(200)
        ]
        assert futures.map_reduce(lambda x: x, lambda a, b: a + b, range(100), executor=redis_url) == 4950
        with pytest.raises(ZeroDivisionError):
            list(futures.map(lambda x: 1 / (x - 5), range(10), executor=redis_url))
    futures.shutdown()


def test_user_failure_fails_with_the_driver_message(redis_url):  # noqa: F811
    records = ["fine line", "poison here", "ok"]
    job = mrkit.Job(mapper=J.failing_mapper, reducer=J.total)
    policy = mrkit.RetryPolicy(max_attempts=2, speculative=False)
    with WorkerThreads(redis_url, 2), pytest.raises(JobFailed) as info:
        run(
            job,
            mrkit.Records(records),
            executor=redis_url,
            n_map=1,
            n_reduce=1,
            policy=policy,
            job_id="fail-r",
        )
    with pytest.raises(JobFailed) as inline:
        run(
            job,
            mrkit.Records(records),
            executor="inline",
            n_map=1,
            n_reduce=1,
            policy=policy,
            job_id="fail-r",
        )

    def same(message: str) -> str:  # the in-memory records' storage URL differs, nothing else
        return re.sub(r"\S+#fail-r/", "STORAGE#fail-r/", message)

    assert same(str(info.value)) == same(str(inline.value))
    assert "ValueError" in str(info.value) and "after 2 attempts" in str(info.value)


def test_worker_killed_mid_task_is_retried(redis_url, tmp_path, secret_env):  # noqa: F811
    """SIGKILL the task process running a task: its supervisor hands its entries back, the executor
    fails the attempt with WorkerLost, and the driver re-runs it (counted as lost, not failed)."""
    url = redis_url + "?lease=1"
    marker = tmp_path / "killed"
    job = mrkit.Job(mapper=J.kill_once_mapper, reducer=J.total, params={"marker": str(marker)})
    records = ["a b", "killme now", "c d", "e f"]
    ex = open_executor(url)
    ex.open_session()
    procs = [start_worker(url, name=f"victim-{i}") for i in range(2)]
    try:
        started = time.monotonic()
        got = run(job, mrkit.Records(records), executor=ex, n_map=4, n_reduce=2)
        assert sorted(got) == reference(mrkit.Job(mapper=J.words, reducer=J.total), records)
        assert 1 <= got.counters["map.attempts_lost"] <= 2  # its task, and one it may have prefetched
        assert time.monotonic() - started < 25  # handed back at once: not a 30 s lease waited out
    finally:
        ex.shutdown()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        errs = [stop_worker(p) for p in procs]
    # The task process was SIGKILLed (a lost worker, not a failed attempt); its supervisor says so.
    assert [p.returncode for p in procs] == [0, 0], errs
    assert sum("task process killed by signal 9 (SIGKILL)" in err for err in errs) == 1, errs


def test_session_streams_are_trimmed(redis_url, redis_server):  # noqa: F811
    """Once results are in, both streams of a session shrink (XTRIM MINID), even when nothing is
    pending any more; the session's keys go when the executor shuts down."""
    ex = open_executor(redis_url + "?lease=2", workers=8)  # housekeeping every second
    client = redis_server.client()
    try:
        with WorkerThreads(redis_url, 2):
            assert sum(futures.map(lambda x: x, range(1000), executor=ex)) == sum(range(1000))
            # Approximate trimming removes whole stream nodes (100 entries each by default).
            wait_for(
                lambda: client.xlen(ex.stream) <= 200 and client.xlen(ex.results) <= 200,
                what=f"trimming (now {client.xlen(ex.stream)} tasks, {client.xlen(ex.results)} results)",
            )
    finally:
        ex.shutdown()
    assert not client.exists(ex.stream, ex.results, ex.meta)
    assert client.zscore("mrkit:queues", ex.stream) is None


def test_tasks_waiting_without_any_worker_are_reported(redis_url, capfd, monkeypatch):  # noqa: F811
    from mrkit.backends.redis import executor as redis_streams

    monkeypatch.setattr(redis_streams, "NO_WORKER_NOTICE", 1.0)  # instead of 10 s
    ex = open_executor(redis_url + "?lease=2", workers=2)
    try:
        results = futures.map(lambda x: x * 2, [21], executor=ex)  # lazy: the first next() submits
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(next, results)
            wait_for(lambda: "no worker consumes Redis" in capfd.readouterr().err, what="the notice")
            with WorkerThreads(redis_url, 1):
                assert first.result(timeout=60) == 42
    finally:
        ex.shutdown()


def test_task_timeout_clock_starts_when_a_worker_takes_the_attempt(redis_url, secret_env):  # noqa: F811
    # One worker, two attempts in flight: one always waits in the stream. map-00001's first attempt
    # sleeps 4 s, past task_timeout=1 s; the worker's watchdog ends it (a failed attempt) and the
    # supervisor replaces the task process. The attempts behind it must not time out: their clocks
    # start when a task process runs them, not when they were queued. 20 ms per record keeps the
    # worker from reading entries ahead.
    records = ["fast a"] * 5 + ["slow b"] + ["fast c"] * 14
    job = mrkit.Job(mapper=J.straggler_mapper, reducer=J.total, params={"sleep": 4.0, "each": 0.02})
    policy = mrkit.RetryPolicy(task_timeout=1.0, speculative=False, max_lost=2)
    worker = start_worker(redis_url, burst=False)
    try:
        res = run(
            job, mrkit.Records(records), executor=redis_url, workers=2, n_map=4, n_reduce=1, policy=policy
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        err = stop_worker(worker)
    assert dict(res) == dict(reference(J.WORDCOUNT, records))
    assert res.counters["map.attempts_failed"] == 1 and res.counters["map.attempts_lost"] == 0, err
