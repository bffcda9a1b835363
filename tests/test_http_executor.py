"""HttpExecutor end to end on real workers (127.0.0.1): the same results, counters and errors as the
``processes`` executor, the futures API, existing workers, and how the executor is configured."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

import mrkit
from mrkit import futures
from mrkit.backends.http.executor import HttpExecutor, HttpTimeouts, parse_addresses
from mrkit.errors import ConfigError, JobFailed, WorkerLost
from mrkit.execution.base import open_executor
from mrkit.model.reference import reference
from mrkit.tools.corpus import generate_text
from tests.http_fixtures import (  # noqa: F401 - fixtures
    ROOT,
    SECRET,
    TAG_VARIABLE,
    CliWorkers,
    RecordingRelay,
    call_spec,
    cli_workers_fixture,
    get_json,
    pid_alive,
    post_task,
    tagged_processes,
    touch,
    wait_until,
    worker_env,
    write_secret,
)
from tests.jobs_for_tests import WORDCOUNT, WordCount, failing_mapper, total


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return generate_text(tmp_path_factory.mktemp("corpus"), size_mb=1.0, files=4, seed=3)


@pytest.fixture(scope="module")
def http2() -> Iterator[HttpExecutor]:
    """Two driver-started workers, shared by the tests that only need a working executor."""
    executor = HttpExecutor(workers=2)
    try:
        yield executor
    finally:
        executor.shutdown()


def _lines(paths: list[str]) -> list[str]:
    out: list[str] = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            out.extend(line.rstrip("\n") for line in f)
    return out


def _stable(counters: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counters.items() if not k.endswith(".millis")}


def test_wordcount_equals_processes_and_the_reference(
    corpus: list[str], http2: HttpExecutor, tmp_path: Path
) -> None:
    options = dict(n_map=6, n_reduce=3, quiet=True)
    by_http = mrkit.run(WORDCOUNT, corpus, output=tmp_path / "http", executor=http2, **options)
    by_processes = mrkit.run(
        WORDCOUNT, corpus, output=tmp_path / "processes", executor="processes", workers=2, **options
    )
    assert sorted(by_http) == sorted(by_processes) == reference(WORDCOUNT, _lines(corpus))
    for p in range(3):  # byte for byte
        name = f"part-{p:05d}"
        assert (tmp_path / "http" / name).read_bytes() == (tmp_path / "processes" / name).read_bytes()
    assert (tmp_path / "http" / "_SUCCESS").exists()
    assert _stable(by_http.counters) == _stable(by_processes.counters)


def test_in_memory_records_and_class_jobs_with_params(http2: HttpExecutor) -> None:
    records = [f"alpha beta {i % 5} gamma{i % 3}" for i in range(500)] + ["", "a", "ab abc"]
    result = mrkit.run(
        WordCount(), mrkit.Records(records), executor=http2, params={"min_length": 2}, quiet=True
    )
    assert sorted(result) == reference(WordCount().with_params({"min_length": 2}), records)
    assert dict(mrkit.run(WORDCOUNT, mrkit.Records([]), executor=http2, quiet=True)) == {}


def test_a_failing_user_function_fails_the_job_as_with_processes(http2: HttpExecutor) -> None:
    job = mrkit.Job(mapper=failing_mapper, reducer=total)
    records = mrkit.Records(["ok line", "a poison line", "fine"])
    errors = []
    for executor in (http2, "processes"):
        with pytest.raises(JobFailed) as info:
            mrkit.run(
                job,
                records,
                executor=executor,
                workers=None if executor is http2 else 2,
                n_map=2,
                job_id="failing-job",
                quiet=True,
            )
        errors.append(info.value)
    same = [re.sub(r"mrkit-job-\w+", "TEMP", str(e)) for e in errors]  # each run has its own temp folder
    assert same[0] == same[1]
    assert "failed after 4 attempts" in str(errors[0]) and "ValueError: cannot map 'a poison line'" in str(
        errors[0]
    )
    assert "failing_mapper" in errors[0].remote_traceback


def test_the_futures_api_runs_unchanged(http2: HttpExecutor) -> None:
    offset = 7
    with futures.using(http2):
        assert list(futures.map(lambda x: x + offset, range(200))) == [x + 7 for x in range(200)]
        assert futures.submit(pow, 2, 10).result(timeout=30) == 1024
        assert futures.map_reduce(lambda x: x * x, lambda a, b: a + b, range(100)) == sum(
            x * x for x in range(100)
        )
        with pytest.raises(ZeroDivisionError):
            list(futures.map(lambda x: 1 // x, [1, 0]))


def test_python_m_mrkit_runs_a_script_on_http_workers(tmp_path: Path) -> None:
    script = tmp_path / "squares.py"
    script.write_text(
        textwrap.dedent("""
        from mrkit import futures
        if __name__ == "__main__":
            print(sum(futures.map(lambda x: x * x, range(1000))))
    """)
    )
    tag = uuid.uuid4().hex
    done = subprocess.run(
        [sys.executable, "-m", "mrkit", "--executor", "http", "-n", "2", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env=worker_env(**{TAG_VARIABLE: tag}),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(sum(x * x for x in range(1000)))
    assert not tagged_processes(tag)  # its workers stopped with it


def test_existing_workers_run_a_job_and_share_the_work(
    cli_workers: CliWorkers, corpus: list[str], tmp_path: Path
) -> None:
    ports = [int(cli_workers.start()[1].rsplit(":", 1)[1]) for _ in range(2)]
    executor = open_executor(
        f"http://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}", secret_file=str(write_secret(tmp_path))
    )
    try:
        assert isinstance(executor, HttpExecutor) and executor.workers == 2 and executor.local
        result = mrkit.run(WORDCOUNT, corpus, executor=executor, n_map=8, n_reduce=2, quiet=True)
    finally:
        executor.shutdown()
    assert sorted(result) == reference(WORDCOUNT, _lines(corpus))
    completed = [get_json(port, "/status")[1]["completed"] for port in ports]
    tasks = result.counters["map.attempts_launched"] + result.counters["reduce.attempts_launched"]
    assert sum(completed) == tasks and all(completed), completed


def test_requests_carry_references_only_and_a_function_travels_once_per_worker(
    cli_workers: CliWorkers, tmp_path: Path
) -> None:
    _, url = cli_workers.start()
    text = tmp_path / "in.txt"
    text.write_text("".join(f"zyzzogeton line {i}\n" for i in range(2000)))
    offset = 3
    with RecordingRelay(int(url.rsplit(":", 1)[1])) as relay:
        executor = HttpExecutor([f"127.0.0.1:{relay.port}"], secret_file=str(write_secret(tmp_path)))
        try:
            result = mrkit.run(WORDCOUNT, str(text), executor=executor, n_map=4, n_reduce=2, quiet=True)
            squares = list(futures.map(lambda x: x + offset, range(30), executor=executor, chunksize=1))
        finally:
            executor.shutdown()
        requests = relay.requests()
    assert dict(result)["zyzzogeton"] == 2000 and squares == [x + 3 for x in range(30)]
    assert {(m, p) for m, p, _ in requests} <= {("POST", "/task"), ("GET", "/health")}
    tasks = [json.loads(body) for _, path, body in requests if path == "/task"]
    jobs = [t for t in tasks if t["kind"] in ("map", "reduce")]
    launched = result.counters["map.attempts_launched"] + result.counters["reduce.attempts_launched"]
    assert len(jobs) == launched
    for task in jobs:  # the job's code by key and digest, the input by file and byte range
        assert task["job_key"] and len({t["job_digest"] for t in jobs}) == 1
        assert "call_fn" not in task and "call" not in task  # empty fields are left out
        assert task["kind"] == "reduce" or str(text) in task["split"]["uri"]
    bodies = [body for _, path, body in requests if path == "/task"]
    assert not any(b"zyzzogeton" in body for body in bodies)
    assert max(len(body) for body, task in zip(bodies, tasks, strict=True) if task in jobs) < 2048
    calls = [t for t in tasks if t["kind"] == "call"]
    assert len(calls) == 30 and sum(1 for t in calls if t.get("call_fn")) == 1  # then by digest only


def test_workers_start_on_demand_and_are_reused_across_phases_and_jobs() -> None:
    executor = HttpExecutor(workers=4)
    try:
        for _ in range(2):
            result = mrkit.run(
                WORDCOUNT, mrkit.Records(["a b", "b c"]), executor=executor, n_map=1, n_reduce=1, quiet=True
            )
            assert dict(result) == {"a": 1, "b": 2, "c": 1}
        info = executor.worker_info()
        assert len(info) == 1, info  # one task at a time needed only one worker, reused 4 times
        pid = info[0]["pid"]
    finally:
        executor.shutdown()
    assert wait_until(lambda: not pid_alive(pid), timeout=5)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(call_spec(touch, "/nonexistent"))


def test_driver_started_workers_get_their_secret_through_a_pipe_not_argv_or_env() -> None:
    executor = HttpExecutor(workers=1)
    try:
        executor.warm_up()
        pid = executor.worker_info()[0]["pid"]
        secret = executor._secret
        for name in ("cmdline", "environ"):
            assert secret not in Path(f"/proc/{pid}/{name}").read_bytes(), name
    finally:
        executor.shutdown()


def test_each_executor_gives_its_workers_a_fresh_secret_the_others_workers_refuse(tmp_path: Path) -> None:
    first, second = HttpExecutor(workers=1), HttpExecutor(workers=1)
    try:
        first.warm_up()
        second.warm_up()
        assert first._secret != second._secret
        port = int(second.worker_info()[0]["address"].rsplit(":", 1)[1])
        marker = tmp_path / "ran"
        assert post_task(port, call_spec(touch, str(marker)), secret=first._secret)[0] == 401
        assert not marker.exists()
    finally:
        first.shutdown()
        second.shutdown()


def test_a_queued_attempt_can_be_cancelled_and_never_runs(tmp_path: Path) -> None:
    executor = HttpExecutor(workers=1)
    try:
        first = executor.submit(call_spec(touch, str(tmp_path / "first"), 1.0, task="call-000001"))
        second: Future[object] = executor.submit(
            call_spec(touch, str(tmp_path / "second"), task="call-000002")
        )
        third = executor.submit(call_spec(touch, str(tmp_path / "third"), task="call-000003"))
        assert second.cancel()
        assert first.result(timeout=30).ok
        assert third.result(timeout=30).ok  # one worker, first in first out: "second" had its turn
    finally:
        executor.shutdown()
    assert (tmp_path / "first").exists() and not (tmp_path / "second").exists()


def test_shutdown_fails_a_running_attempt_with_worker_lost_and_stops_its_worker(tmp_path: Path) -> None:
    executor = HttpExecutor(workers=1)
    future = executor.submit(call_spec(touch, str(tmp_path / "ran"), 30.0))
    assert wait_until(lambda: any(w["busy"] and w["pid"] for w in executor.worker_info()), timeout=15)
    pid, address = executor.worker_info()[0]["pid"], executor.worker_info()[0]["address"]
    port = int(address.rsplit(":", 1)[1])
    assert wait_until(lambda: get_json(port, "/status")[1]["running"] == 1, timeout=15)  # it runs
    started = time.monotonic()
    executor.shutdown()
    with pytest.raises(WorkerLost, match="the executor shut down"):
        future.result(timeout=10)
    assert time.monotonic() - started < 5
    assert not pid_alive(pid) and not (tmp_path / "ran").exists()


# -- configuration ----------------------------------------------------------------------------------


def test_from_name_worker_counts() -> None:
    assert HttpExecutor.from_name("http", n_map=30, n_reduce=20).workers == 30  # seed 003: max(N, M)
    assert HttpExecutor.from_name("http", workers=3, n_map=30).workers == 3
    assert HttpExecutor.from_name("http").workers == (os.cpu_count() or 1)
    assert open_executor("http", workers=2).name == "http"


def _pid_mapper(line: str) -> Iterator[tuple[str, int]]:
    mrkit.context().increment(f"pid-{os.getpid()}")
    for word in line.split():
        yield word, 1


def test_run_sizes_driver_started_workers_from_n_map_and_n_reduce() -> None:
    # Seed 003: without --workers, `-N 3 -M 2` starts max(3, 2) workers, used by both phases.
    records = [f"w{i % 9} x" for i in range(300)]
    job = mrkit.Job(mapper=_pid_mapper, reducer=total)
    result = mrkit.run(job, mrkit.Records(records), executor="http", n_map=3, n_reduce=2)
    assert dict(result) == dict(reference(WORDCOUNT, records))
    pids = {name for name in result.counters if name.startswith("user.pid-")}
    assert 1 <= len(pids) <= 3
    assert all(int(name.rpartition("-")[2]) != os.getpid() for name in pids)  # not the driver


def test_addresses_are_parsed_and_checked() -> None:
    assert parse_addresses("http://h1:1,h2:2,http://[::1]:3") == [("h1", 1), ("h2", 2), ("::1", 3)]
    for bad in ("http://h1", "http://h1:port", "http://:80", "http://h:70000"):
        with pytest.raises(ConfigError, match="expected http://host:port"):
            parse_addresses(bad)


def test_existing_workers_need_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MRKIT_SECRET", raising=False)
    monkeypatch.delenv("MRKIT_SECRET_FILE", raising=False)
    with pytest.raises(ConfigError, match="need their shared secret: set MRKIT_SECRET"):
        open_executor("http://127.0.0.1:8001")
    monkeypatch.setenv("MRKIT_SECRET", SECRET.decode())
    assert open_executor("http://127.0.0.1:8001").workers == 1
    with pytest.raises(ConfigError, match="one worker per address"):
        open_executor("http://127.0.0.1:8001", workers=4)
    with pytest.raises(ConfigError, match="fresh secret of their own"):
        HttpExecutor(workers=1, secret="x" * 20)


def test_remote_workers_need_shared_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRKIT_SECRET", SECRET.decode())
    remote = open_executor("http://10.0.0.1:8001,127.0.0.1:8002")
    assert not remote.local and remote.storage_url("job") is None
    with pytest.raises(ConfigError, match="give storage= a URL they all reach"):
        mrkit.run(WORDCOUNT, mrkit.Records(["a"]), executor=remote, quiet=True)
    shared = open_executor("http://10.0.0.1:8001", storage="s3://bucket/mrkit")
    assert shared.storage_url("job") == "s3://bucket/mrkit"
    assert open_executor("http://localhost:1,127.0.0.2:2,[::1]:3").local


def test_timeouts_are_checked() -> None:
    with pytest.raises(ConfigError, match="health_interval must be > 0"):
        HttpTimeouts(health_interval=0)
    with pytest.raises(ConfigError, match="health_misses must be at least 1"):
        HttpTimeouts(health_misses=0)


def test_worker_labels_in_results(http2: HttpExecutor, tmp_path: Path) -> None:
    result = http2.submit(call_spec(touch, str(tmp_path / "x"))).result(timeout=30)
    assert re.fullmatch(r"127\.0\.0\.1:\d+", result.worker)
