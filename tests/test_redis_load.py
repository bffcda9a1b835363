"""Redis under load: 100 jobs submitted at once from one process (threads) all complete, through a
bounded connection pool, on a server that allows few clients (``--maxclients``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import mrkit
from mrkit.model.reference import reference
from tests import jobs_for_tests as J
from tests.redis_fixtures import RedisServer, secret_env, start_worker, stop_worker  # noqa: F401

N_JOBS = 100
MAX_CLIENTS = 48  # the submitting process may not open a connection per thread
TEXT = ["the cat sat on the mat", "a b c a b a"]


@pytest.fixture
def small_redis(tmp_path) -> Iterator[RedisServer]:  # type: ignore[no-untyped-def]
    server = RedisServer(str(tmp_path), extra=["--maxclients", str(MAX_CLIENTS)]).start()
    try:
        yield server
    finally:
        server.stop()


def test_a_hundred_jobs_submitted_at_once_from_threads_all_complete(small_redis, secret_env):  # noqa: F811
    url = small_redis.url
    results: dict[int, Any] = {}
    errors: list[BaseException] = []
    ids: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        try:
            handle = mrkit.submit(J.WORDCOUNT, mrkit.Records(TEXT), executor=url, n_map=2, n_reduce=1)
            with lock:
                ids.append(handle.id)
            results[i] = sorted(handle.wait(timeout=60))
        except BaseException as exc:  # reported below, with the others
            with lock:
                errors.append(exc)

    fleet = start_worker(url, burst=False, concurrency=2)
    began = time.monotonic()
    try:
        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(N_JOBS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=90)
        seconds = time.monotonic() - began
        clients = small_redis.client().info("clients")["connected_clients"]
    finally:
        fleet.send_signal(15)
        err = stop_worker(fleet)
    assert not errors, (errors[:3], err[-2000:])
    expected = reference(J.WORDCOUNT, TEXT)
    assert len(results) == N_JOBS and all(r == expected for r in results.values())
    assert len(set(ids)) == N_JOBS
    assert "Too many connections" not in err and "max number of clients" not in err, err[-2000:]
    assert clients <= MAX_CLIENTS
    print(f"{N_JOBS} jobs in {seconds:.1f}s")


def test_the_same_job_id_submitted_from_many_threads_at_once_is_created_exactly_once(small_redis, secret_env):  # noqa: F811
    """Creation is one atomic step: of eight submitters racing on one id, one wins, seven are refused."""
    url = small_redis.url
    ID = "same-id"
    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def one() -> None:
        start.wait(timeout=10)
        try:
            mrkit.submit(J.WORDCOUNT, mrkit.Records(TEXT), executor=url, n_map=2, n_reduce=1, job_id=ID)
            outcome = "created"
        except mrkit.ConfigError as exc:
            said = str(exc)
            outcome = "refused" if ID in said and "choose another job id" in said else repr(exc)
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcomes) == ["created"] + ["refused"] * 7, outcomes
    assert small_redis.client().xlen("mrkit:{same-id}:tasks") == 2  # one job's map tasks, not several
