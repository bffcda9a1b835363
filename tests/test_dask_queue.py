"""The Dask executor keeps one attempt queued beside each worker thread (``Executor.queue_ahead``),
and times an attempt from when a thread takes it, not from its submit (``reports_running``): a queued
attempt never times out for waiting.

Against a real ``LocalCluster`` of one single-threaded worker process, so that the queue is certain.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

import mrkit
from mrkit.execution.base import Executor, open_executor
from tests.jobs_for_tests import PACED

SECONDS_PER_TASK = 1.2  # 4 records at 0.3 s: long enough that the queue holds for a second
TIMEOUT = 2.0  # above one attempt's running time, below a queued attempt's time since its submit


def inputs(folder: Path, files: int, lines: int) -> list[str]:
    """``files`` input files of ``lines`` lines each, every line holding the word ``x`` once."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(files):
        path = folder / f"in-{i}.txt"
        path.write_text("".join(f"w{i}{j} x\n" for j in range(lines)), encoding="utf-8")
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def one_thread(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Executor]:
    executor = open_executor("dask", workers=1)
    try:
        # The worker imports mrkit and loads a job first: not inside a timed attempt of the tests.
        mrkit.run(PACED, inputs(tmp_path_factory.mktemp("warm"), 1, 1), executor=executor, quiet=True)
        yield executor
    finally:
        executor.shutdown()


def watch(executor: Executor) -> tuple[list[Future[Any]], Callable[[], tuple[int, int]]]:
    """Record the futures the driver gets from ``executor``; ``peak()`` stops sampling them and
    returns the most seen at once not done, and running."""
    futures: list[Future[Any]] = []
    submit = executor.submit
    peaks = [0, 0]
    stop = threading.Event()

    def recording(spec: Any) -> Future[Any]:
        future = submit(spec)
        futures.append(future)
        return future

    def sample() -> None:
        while not stop.is_set():
            live = [f for f in list(futures) if not f.done()]
            peaks[0] = max(peaks[0], len(live))
            peaks[1] = max(peaks[1], sum(f.running() for f in live))
            time.sleep(0.01)

    executor.submit = recording  # type: ignore[method-assign]
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    def peak() -> tuple[int, int]:
        stop.set()
        sampler.join(5)
        executor.submit = submit  # type: ignore[method-assign]
        return peaks[0], peaks[1]

    return futures, peak


def test_a_queued_attempt_waits_beside_the_worker_and_is_timed_from_when_it_runs(
    one_thread: Executor, tmp_path: Path
) -> None:
    assert (one_thread.workers, one_thread.queue_ahead, one_thread.reports_running) == (1, 1, True)
    _futures, peak = watch(one_thread)
    result = mrkit.run(
        PACED,
        inputs(tmp_path / "in", 3, 4),
        executor=one_thread,
        n_map=3,  # one task per file (the default plan would pack these small files into two)
        n_reduce=1,
        params={"each": SECONDS_PER_TASK / 4},
        policy=mrkit.RetryPolicy(task_timeout=TIMEOUT, speculative=False),
        output=str(tmp_path / "out"),
        quiet=True,
    )
    in_flight, running = peak()
    # Three map tasks on one thread: the second waited beside the worker while the first ran, and the
    # third while the second ran (about 2.4 s after its submit, past the timeout): none was abandoned.
    assert (in_flight, running) == (2, 1)
    assert result.counters["map.attempts_launched"] == 3 and result.counters["map.attempts_lost"] == 0
    assert dict(mrkit.read_output(tmp_path / "out"))["x"] == 12
