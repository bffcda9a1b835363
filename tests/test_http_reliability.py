"""HTTP workers under tasks that hang or end their worker, replayed requests, kill storms, bad
addresses, and the options of driver-started workers. Real processes on 127.0.0.1 throughout."""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import mrkit
import mrkit.backends.http.exchange as http_exchange
from mrkit.backends.http.auth import sign_request
from mrkit.backends.http.executor import HttpExecutor, HttpTimeouts
from mrkit.backends.http.server import WorkerServer
from mrkit.cli.worker_cmd import worker as worker_command
from mrkit.coordination.plan import RetryPolicy
from mrkit.errors import ConfigError, JobFailed
from mrkit.model.reference import reference
from tests.http_fixtures import (  # noqa: F401 - fixtures
    SECRET,
    call_spec,
    crash_mapper,
    get_json,
    hang_mapper,
    pid_alive,
    slow_words,
    thread_worker_fixture,
    touch,
    wait_until,
)
from tests.jobs_for_tests import total, words

RECORDS = [f"line {i} of the text with words {i % 13}" for i in range(400)]
PLAIN = mrkit.Job(mapper=words, reducer=total)
FAST = HttpTimeouts(health_interval=0.2, health_timeout=0.5, health_misses=2, unreachable=2.0)


def _with(word: str, at: int = 150) -> list[str]:
    records = list(RECORDS)
    records[at] = f"{word} {records[at]}"
    return records


# -- item: tasks that hang or end their worker ------------------------------------------------------


def test_a_mapper_stuck_forever_fails_the_job_with_a_timeout_naming_the_record(tmp_path: Path) -> None:
    children = tmp_path / "children"
    executor = HttpExecutor(workers=2, timeouts=FAST)
    started = time.monotonic()
    try:
        executor.warm_up()
        servers = sorted(w["pid"] for w in executor.worker_info())
        with pytest.raises(JobFailed) as caught:
            mrkit.run(
                mrkit.Job(mapper=hang_mapper, reducer=total),
                mrkit.Records(_with("stuck")),
                executor=executor,
                n_map=2,
                n_reduce=1,
                params={"children": str(children)},
                policy=RetryPolicy(max_attempts=2, task_timeout=1, speculative=False),
                quiet=True,
            )
        elapsed = time.monotonic() - started
        assert sorted(w["pid"] for w in executor.worker_info()) == servers  # the workers lived on
    finally:
        executor.shutdown()
    message = str(caught.value)
    assert "task map-00000" in message and "failed after 2 attempts" in message, message
    assert "TaskTimeout: timed out after 1 s" in message and "record 150" in message, message
    assert elapsed < 12, elapsed
    grandchildren = [int(p) for p in children.read_text().split()]
    assert len(grandchildren) == 2
    assert wait_until(lambda: not any(pid_alive(p) for p in grandchildren), timeout=5)


@pytest.mark.parametrize(
    ("how", "why"),
    [
        ("exit", "WorkerCrashed: the task ended its worker: its process exited with code 3"),
        ("segv", "WorkerCrashed: the task ended its worker: its process was killed by SIGSEGV"),
        ("sysexit", "WorkerCrashed: the task ended its worker: it raised SystemExit(3)"),
    ],
)
def test_a_mapper_that_ends_its_worker_fails_after_exactly_max_attempts(
    how: str, why: str, tmp_path: Path
) -> None:
    attempts = tmp_path / "attempts"
    executor = HttpExecutor(workers=2, timeouts=FAST)
    try:
        with pytest.raises(JobFailed) as caught:
            mrkit.run(
                mrkit.Job(mapper=crash_mapper, reducer=total),
                mrkit.Records(_with("poison")),
                executor=executor,
                n_map=2,
                n_reduce=1,
                params={"attempts": str(attempts), "how": how},
                policy=RetryPolicy(max_attempts=2, speculative=False),
                quiet=True,
            )
    finally:
        executor.shutdown()
    message = str(caught.value)
    # "SystemExit" may also be reported by the runtime itself, as a plain failure naming it.
    assert "failed after 2 attempts" in message and (
        why in message or (how == "sysexit" and "SystemExit" in message)
    )
    assert attempts.read_text().split() == ["1", "2"]  # counted against max_attempts, not max_lost


# -- item: replayed requests and the Host header ----------------------------------------------------


def test_a_replayed_request_is_sent_again_and_the_worker_stays_in_rotation(
    thread_worker: WorkerServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="mrkit.http")
    port = thread_worker.server_port
    nonces = iter(["ab" * 16, "ab" * 16])  # the second request repeats the first one's nonce

    def duplicating(*args: object, **kwargs: object) -> dict[str, str]:
        kwargs["nonce"] = next(nonces, None)
        return sign_request(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(http_exchange, "sign_request", duplicating)
    executor = HttpExecutor([f"127.0.0.1:{port}"], secret=SECRET, timeouts=FAST)
    try:
        first = executor.submit(call_spec(touch, str(tmp_path / "a"), task="call-000001")).result(timeout=30)
        second = executor.submit(call_spec(touch, str(tmp_path / "b"), task="call-000002")).result(timeout=30)
        assert executor.worker_info()[0]["ready"]
    finally:
        executor.shutdown()
    assert first.ok and second.ok and (tmp_path / "a").exists() and (tmp_path / "b").exists()
    assert "refused task call-000002 attempt 1 as a replayed request" in caplog.text
    status = get_json(port, "/status")[1]
    assert status["refused"] == 1 and status["completed"] == 2


# -- item: kill storm -------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_kill_storm_on_driver_started_workers_does_not_fail_the_job(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="mrkit.http")
    executor = HttpExecutor(workers=2, timeouts=FAST)
    done = threading.Event()
    killed: list[int] = []

    def storm() -> None:
        rng = random.Random(7)
        while not done.is_set() and len(killed) < 8:
            done.wait(rng.uniform(0.3, 0.6))
            busy = [w["pid"] for w in executor.worker_info() if w["busy"] and w["ready"] and w["pid"]]
            if busy and not done.is_set():
                pid = rng.choice(busy)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    thread = threading.Thread(target=storm, daemon=True)
    started = time.monotonic()
    try:
        executor.warm_up()
        thread.start()
        result = mrkit.run(
            mrkit.Job(mapper=slow_words, reducer=total),
            mrkit.Records(RECORDS * 2),
            executor=executor,
            n_map=16,
            n_reduce=4,
            # max_lost=0: a loss that reached the driver would fail the job at once.
            policy=RetryPolicy(max_lost=0, speculative=False),
            quiet=True,
        )
    finally:
        done.set()
        thread.join(timeout=10)
        executor.shutdown()
    assert sorted(result) == reference(PLAIN, RECORDS * 2)
    assert len(killed) >= 3, killed
    assert "sending the task again as attempt 100" in caplog.text
    assert time.monotonic() - started < 60


# -- item: workers that were never reachable --------------------------------------------------------


def test_a_worker_that_never_answered_fails_the_job_within_seconds(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(JobFailed, match=f"no HTTP worker answered at 127.0.0.1:{port}"):
        mrkit.run(
            PLAIN,
            mrkit.Records(RECORDS),
            executor=HttpExecutor([f"http://127.0.0.1:{port}"], secret=SECRET),
            quiet=True,
        )
    assert time.monotonic() - started < 6


# -- item: the interpreter of driver-started workers, and options HTTP workers do not take ---------


def test_worker_python_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    marker = tmp_path / "used"
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\necho "$$" >> {marker}\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("MRKIT_WORKER_PYTHON", str(wrapper))
    executor = HttpExecutor(workers=1)
    try:
        assert executor.worker_python == str(wrapper)
        result = mrkit.run(PLAIN, mrkit.Records(RECORDS), executor=executor, n_map=2, n_reduce=1, quiet=True)
        pid = executor.worker_info()[0]["pid"]
    finally:
        executor.shutdown()
    assert sorted(result) == reference(PLAIN, RECORDS)
    assert marker.read_text().split() == [str(pid)]  # exec keeps the pid: the worker is that interpreter


def test_worker_python_is_only_for_driver_started_workers() -> None:
    assert HttpExecutor(workers=1, worker_python="/opt/py/bin/python").worker_python == "/opt/py/bin/python"
    with pytest.raises(ConfigError, match="worker_python= is for the workers the driver starts"):
        HttpExecutor(["127.0.0.1:8001"], secret=SECRET, worker_python="/opt/py/bin/python")


@pytest.mark.parametrize("option", [["--burst"], ["--concurrency", "2"], ["--name", "w1"]])
def test_the_http_worker_rejects_redis_only_options(option: list[str]) -> None:
    outcome = CliRunner().invoke(worker_command, ["http", *option])
    assert outcome.exit_code == 2, outcome.output
    assert f"{option[0]} is for Redis workers" in outcome.output
