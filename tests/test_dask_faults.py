"""Worker loss on Dask: a ``dask worker`` process SIGKILLed mid-map or mid-reduce still gives exactly
the output an undisturbed run gives, on a ``LocalCluster`` (mrkit's retries counted as lost
attempts) and on ``dask scheduler`` + ``dask worker`` commands (Dask's own re-run, counted through
the re-run's delivery claim).

Each test runs the job in a thread, waits for the stalled attempt to write its worker's pid, kills that
process from outside, and compares the published bytes with the same word count run on ``inline``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

import mrkit
from mrkit.execution.base import Executor, open_executor
from mrkit.storage import open_storage
from tests import contract_jobs as C
from tests import dask_jobs as D
from tests.dask_fixtures import start_cluster

LINES = [f"line {i} the quick brown fox {i % 7}" for i in range(400)]
LINES[150] = "stall " + LINES[150]


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[Executor]:
    executor = open_executor("dask", workers=2)
    try:
        yield executor
    finally:
        executor.shutdown()


def parts(url: str) -> dict[str, bytes]:
    storage = open_storage(url)
    names = storage.list("")
    assert any(n.endswith("_SUCCESS") for n in names), names
    return {n: storage.get(n) for n in names if n.rsplit("/", 1)[-1].startswith("part-")}


def wait_for_pid(marker: Path, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert time.monotonic() < deadline, f"no attempt stalled within {timeout} s"
        time.sleep(0.05)
    return int(marker.read_text())


def in_background(fn: Any, *args: Any, **kwargs: Any) -> Future[Any]:
    """Run ``fn`` in a daemon thread; its future. Unlike a ThreadPoolExecutor, nothing joins the
    thread: a run that never ends fails its test at ``result(timeout=…)`` instead of hanging it."""
    future: Future[Any] = Future()

    def target() -> None:
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # delivered to result()
            future.set_exception(exc)

    threading.Thread(target=target, name="test-run", daemon=True).start()
    return future


def kill_mid_task(job: mrkit.Job, executor: Any, tmp_path: Path) -> tuple[mrkit.Result, int]:
    """Run ``job`` on ``executor`` and SIGKILL the worker process of the stalled attempt; return the
    job's result (after asserting its output is the undisturbed word count's) and the killed pid."""
    source = tmp_path / "input.txt"
    source.write_text("".join(line + "\n" for line in LINES), encoding="utf-8")
    marker = tmp_path / "stalled-pid"
    options: dict[str, Any] = {"n_map": 4, "n_reduce": 3, "split_size": 4000, "quiet": True}
    mrkit.run(C.WORD_COUNT, str(source), executor="inline", output=str(tmp_path / "expected"), **options)
    running = in_background(
        mrkit.run,
        job,
        str(source),
        executor=executor,
        output=str(tmp_path / "got"),
        params={"marker": str(marker)},
        **options,
    )
    pid = wait_for_pid(marker)
    assert pid != os.getpid()
    os.kill(pid, signal.SIGKILL)
    result = running.result(timeout=180)
    assert parts(str(tmp_path / "got")) == parts(str(tmp_path / "expected"))
    return result, pid


def test_a_worker_killed_mid_map_is_counted_as_lost_attempts_on_a_local_cluster(
    local_cluster: Executor, tmp_path: Path
) -> None:
    result, _ = kill_mid_task(D.STALL_IN_MAP, local_cluster, tmp_path)
    # The stalled attempt is lost, and so is any attempt the scheduler had already handed to that
    # worker to run next (Dask sends tasks ahead): at least one, at most the map tasks.
    assert 1 <= result.counters["map.attempts_lost"] <= result.counters["map.tasks"]
    assert result.counters.get("reduce.attempts_lost", 0) == 0
    assert result.counters["map.records_in"] == len(LINES)  # each split counted once, not twice


def test_a_worker_killed_mid_reduce_is_counted_as_lost_attempts_on_a_local_cluster(
    local_cluster: Executor, tmp_path: Path
) -> None:
    result, _ = kill_mid_task(D.STALL_IN_REDUCE, local_cluster, tmp_path)
    assert 1 <= result.counters["reduce.attempts_lost"] <= result.counters["reduce.tasks"]  # as above
    assert result.counters.get("map.attempts_lost", 0) == 0


def test_a_dask_worker_command_killed_mid_map_leaves_exactly_once_output_and_counts_the_lost_run(
    tmp_path: Path,
) -> None:
    # The scheduler keeps Dask's default allowed-failures (3): it re-runs the task on the surviving
    # worker itself, and mrkit's driver launched one attempt per task. The re-run finds the killed
    # run's delivery claim, so the lost run is counted as on every other backend (launched and lost),
    # and the re-run commits first-writer-wins as usual.
    cluster = start_cluster(n_workers=2)
    try:
        address = cluster.address.replace("tcp://", "dask://")
        result, pid = kill_mid_task(D.STALL_IN_MAP, address, tmp_path)
        killed = [w for w in cluster.workers if w.pid == pid]
        assert killed and killed[0].wait(timeout=10) == -signal.SIGKILL
        counters = result.counters
        assert counters["map.records_in"] == len(LINES)
        assert counters["map.attempts_lost"] == 1, counters
        assert counters["map.attempts_launched"] == counters["map.tasks"] + 1, counters
        assert counters.get("reduce.attempts_lost", 0) == 0, counters
    finally:
        cluster.stop()


def test_a_delivery_claim_counts_the_runs_of_an_attempt_that_started_before(tmp_path: Path) -> None:
    from mrkit.backends.dask.tasks import claim_delivery
    from mrkit.model.task import TaskKind, TaskSpec

    url = str(tmp_path / "storage")
    first = TaskSpec("job-1", "map-00002", TaskKind.MAP, attempt=1, storage_url=url)
    assert [claim_delivery(first) for _ in range(3)] == [0, 1, 2]  # a first run, then two re-runs
    # Another attempt (mrkit's own retry) or task starts from zero; a futures call is never counted.
    assert claim_delivery(TaskSpec("job-1", "map-00002", TaskKind.MAP, attempt=2, storage_url=url)) == 0
    assert claim_delivery(TaskSpec("job-1", "reduce-00000", TaskKind.REDUCE, storage_url=url)) == 0
    assert claim_delivery(TaskSpec("job-1", "call-000001", TaskKind.CALL, storage_url=url)) == 0
    # A storage that cannot be written counts nothing (the attempt then fails on it by itself).
    blocked = tmp_path / "file"
    blocked.write_text("not a folder", encoding="utf-8")
    assert claim_delivery(TaskSpec("job-1", "map-00000", TaskKind.MAP, storage_url=str(blocked))) == 0


def test_a_scheduler_that_goes_away_fails_the_job_clearly_and_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mrkit.backends.dask import executor as dask_executor

    # The client gives up reconnecting after its timeout (30 s by default; 3 s here, to keep it short).
    monkeypatch.setattr(dask_executor, "CONNECT_TIMEOUT", 3.0)
    source = tmp_path / "input.txt"
    source.write_text("".join(line + "\n" for line in LINES), encoding="utf-8")
    marker = tmp_path / "stalled-pid"
    cluster = start_cluster(n_workers=2)
    try:
        address = cluster.address.replace("tcp://", "dask://")
        running = in_background(
            mrkit.run,
            D.STALL_IN_MAP,
            str(source),
            executor=address,
            output=str(tmp_path / "got"),
            params={"marker": str(marker)},
            n_map=4,
            quiet=True,
        )
        wait_for_pid(marker)
        assert cluster.scheduler is not None
        os.kill(cluster.scheduler.pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(mrkit.JobFailed, match="the Dask (client is closed|scheduler went away)"):
            running.result(timeout=120)
        assert time.monotonic() - started < 60
    finally:
        cluster.stop()
    assert not (tmp_path / "got").exists() or not list((tmp_path / "got").iterdir())
