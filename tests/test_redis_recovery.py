"""Recovery from a fleet killed from outside: supervisor and task processes SIGKILLed by PID, three
times mid-map. Nobody is left to hand their entries back, so the fleet must notice the departure from
the missing liveness beats (about 5 s), not from the 30 s lease (docs/redis.md, "Leases")."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import mrkit
from tests import jobs_for_tests as J
from tests.redis_fixtures import (  # noqa: F401 - fixtures
    kill_fleet,
    redis_server,
    redis_url,
    secret_env,
    start_worker,
    stop_worker,
    wait_for,
)

N_TASKS = 16
SLEEP = 0.4  # seconds per map task: two task processes run the map phase in about 3-4 s


def marked_mapper(record: int) -> Iterator[tuple[int, int]]:
    """Leaves a file per attempt in ``params["marks"]`` (progress the test can see), then sleeps."""
    ctx = mrkit.context()
    with open(os.path.join(ctx.params["marks"], f"{ctx.task_id}-a{ctx.attempt}-{os.getpid()}"), "w"):
        pass
    time.sleep(float(ctx.params["sleep"]))
    yield record % 3, 1


def _job(marks: str) -> mrkit.Job:
    return mrkit.Job(mapper=marked_mapper, reducer=J.total, params={"marks": marks, "sleep": SLEEP})


EXPECTED = sorted((k, sum(1 for r in range(N_TASKS) if r % 3 == k)) for k in range(3))


def _marks(path: str) -> int:
    return len(os.listdir(path))


def _run_with_kills(url: str, marks: str, kills: int, start: Any) -> tuple[float, list[Any], str]:
    """Start the job with ``start()`` (returns a wait function), run fleets of 2 task processes,
    SIGKILL the whole fleet ``kills`` times once it has started 2 more attempts; returns the seconds
    from start to result, the result and the fleets' stderr."""
    began = time.monotonic()
    wait = start()
    errs = []
    fleet = start_worker(url, burst=False, concurrency=2)
    try:
        for _ in range(kills):
            seen = _marks(marks)
            wait_for(lambda seen=seen: _marks(marks) >= seen + 2, timeout=60, what="two more map attempts")
            time.sleep(0.1)  # both task processes hold an entry
            kill_fleet(fleet)
            errs.append(stop_worker(fleet))
            fleet = start_worker(url, burst=False, concurrency=2)
        result = wait()
        seconds = time.monotonic() - began
    finally:
        fleet.send_signal(15)
        errs.append(stop_worker(fleet))
    return seconds, result, "\n".join(errs)


@pytest.mark.slow
def test_async_job_survives_its_fleet_killed_three_times(redis_url, tmp_path, secret_env):  # noqa: F811
    times = []
    for kills in (0, 3):
        marks = tmp_path / f"marks-{kills}"
        marks.mkdir()
        handle: list[Any] = []

        def start(marks: str = str(marks), handle: list[Any] = handle) -> Any:
            handle.append(
                mrkit.submit(
                    _job(marks), mrkit.Records(list(range(N_TASKS))), executor=redis_url, n_map=N_TASKS
                )
            )
            return lambda: sorted(handle[0].wait(timeout=120))

        seconds, result, errs = _run_with_kills(redis_url, str(marks), kills, start)
        assert result == EXPECTED, errs
        times.append(seconds)
        if kills:
            st = handle[0].status()
            assert st["lost"]["map"] >= 3 and st["failures"]["map"] == 0, st
    undisturbed, disturbed = times
    print(f"undisturbed {undisturbed:.1f}s, 3 kills {disturbed:.1f}s")
    assert disturbed <= 2 * undisturbed + 10, f"undisturbed {undisturbed:.1f}s, 3 kills {disturbed:.1f}s"


@pytest.mark.slow
def test_blocking_run_survives_its_fleet_killed_three_times(redis_url, tmp_path, secret_env):  # noqa: F811
    times = []
    for kills in (0, 3):
        marks = tmp_path / f"marks-{kills}"
        marks.mkdir()

        def start(marks: str = str(marks)) -> Any:
            box: dict[str, Any] = {}

            def run() -> None:
                try:
                    box["result"] = mrkit.run(
                        _job(marks), list(range(N_TASKS)), executor=redis_url, n_map=N_TASKS, workers=2
                    )
                except BaseException as exc:  # re-raised by wait()
                    box["error"] = exc

            thread = threading.Thread(target=run, daemon=True)
            thread.start()

            def wait() -> list[Any]:
                thread.join(timeout=120)
                assert not thread.is_alive(), "the blocking run did not finish within 120 s"
                if "error" in box:
                    raise box["error"]
                return sorted(box["result"])

            return wait

        seconds, result, errs = _run_with_kills(redis_url, str(marks), kills, start)
        assert result == EXPECTED, errs
        times.append(seconds)
    undisturbed, disturbed = times
    print(f"undisturbed {undisturbed:.1f}s, 3 kills {disturbed:.1f}s")
    assert disturbed <= 2 * undisturbed + 10, f"undisturbed {undisturbed:.1f}s, 3 kills {disturbed:.1f}s"
