"""Poison tasks on the Redis fleet: an attempt that hangs or ends its worker process is a *failed*
attempt, reported at once by the worker's watchdog or supervisor, so the job fails after
``max_attempts`` in seconds, naming the cause and the record (blocking runs and asynchronous jobs)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

import mrkit
from mrkit.errors import JobFailed
from tests import jobs_for_tests as J
from tests.redis_fixtures import (  # noqa: F401 - fixtures
    redis_server,
    redis_url,
    secret_env,
    start_worker,
    stop_worker,
)

RECORDS = ["the cat sat", "a b c", "poison pill here", "it's 42 o'clock"] * 3
POLICY = mrkit.RetryPolicy(max_attempts=2, task_timeout=1, speculative=False)


def hanging_mapper(line: str) -> Iterator[tuple[str, int]]:
    """Hangs forever on the poison record (a lost lock, a network call without a timeout)."""
    if line.startswith("poison"):
        time.sleep(3600)
    yield from J.words(line)


def exiting_mapper(line: str) -> Iterator[tuple[str, int]]:
    """Ends its own process on the poison record, as a C library calling exit() would."""
    if line.startswith("poison"):
        os._exit(3)
    yield from J.words(line)


@pytest.fixture
def fleet(redis_url, secret_env):  # noqa: F811
    """One ``mrkit worker`` (a supervisor and its task process) on the test's Redis."""
    proc = start_worker(redis_url, name="poisoned", burst=False)
    yield redis_url
    proc.send_signal(signal.SIGTERM)
    stop_worker(proc, timeout=20)


def run_to_failure(mapper, url: str, asynchronous: bool) -> tuple[str, float]:
    job = mrkit.Job(mapper=mapper, reducer=J.total)
    started = time.monotonic()
    with pytest.raises(JobFailed) as info:
        if asynchronous:
            handle = mrkit.submit(
                job, mrkit.Records(RECORDS), executor=url, n_map=2, n_reduce=1, policy=POLICY
            )
            handle.wait(timeout=60)
        else:
            mrkit.run(
                job, mrkit.Records(RECORDS), executor=url, n_map=2, n_reduce=1, policy=POLICY, quiet=True
            )
    return str(info.value), time.monotonic() - started


@pytest.mark.parametrize("asynchronous", [False, True], ids=["blocking", "async"])
def test_a_hanging_task_times_out_and_fails_the_job_after_max_attempts(fleet, asynchronous):
    message, seconds = run_to_failure(hanging_mapper, fleet, asynchronous)
    assert "timed out after 1 s" in message, message
    assert "2 attempts" in message and "record" in message, message
    assert seconds < 15, f"took {seconds:.1f}s"  # 2 x 1 s timeouts and a process restart, not leases


@pytest.mark.parametrize("asynchronous", [False, True], ids=["blocking", "async"])
def test_a_task_that_ends_its_worker_fails_the_job_after_max_attempts(fleet, asynchronous):
    message, seconds = run_to_failure(exiting_mapper, fleet, asynchronous)
    assert "exit code 3" in message and "2 attempts" in message, message
    assert seconds < 15, f"took {seconds:.1f}s"  # reported by the supervisor, not by a 30 s lease
