"""A worker process that exits 0 mid-task is a failed attempt naming "exit code 0" (processes)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import mrkit
from mrkit import RetryPolicy
from mrkit.errors import JobFailed


def _wait_for(path: Path, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def exit_zero_mapper(record: str) -> Iterator[tuple[str, int]]:
    ctx = mrkit.context()
    folder = Path(ctx.params["dir"])
    if ctx.params.get("always"):
        os._exit(0)
    if ctx.task_id == "map-00000" and ctx.attempt == 1:
        # The first attempt of task 0 outlives its speculative twin, then exits 0 mid-task.
        _wait_for(folder / "twin-ran")
        time.sleep(1.0)  # the twin commits
        (folder / "exited").touch()
        os._exit(0)
    if ctx.task_id == "map-00000":
        (folder / "twin-ran").touch()
    if ctx.task_id == "map-00001":
        # Keeps the map phase open until the parent has seen the exit and reported it.
        _wait_for(folder / "exited")
        time.sleep(2.5)
    yield record, 1


def test_a_worker_exiting_0_mid_task_is_a_failed_attempt_naming_exit_code_0(tmp_path: Path) -> None:
    job = mrkit.Job(mapper=exit_zero_mapper, reducer=lambda key, counts: sum(counts))
    with pytest.raises(JobFailed) as caught:
        mrkit.run(
            job,
            mrkit.Records(["a"]),
            executor="processes",
            workers=2,
            n_map=1,
            params={"dir": str(tmp_path), "always": True},
            policy=RetryPolicy(max_attempts=2, speculative=False),
            quiet=True,
        )
    message = str(caught.value)
    assert "failed after 2 attempts" in message and "exit code 0" in message, message
    assert caught.value.counters["map.attempts_failed"] == 2
    assert caught.value.counters["map.attempts_lost"] == 0


def test_exit_0_is_counted_as_failed_even_when_a_speculative_twin_wins(tmp_path: Path) -> None:
    job = mrkit.Job(mapper=exit_zero_mapper, reducer=lambda key, counts: sum(counts))
    policy = RetryPolicy(max_attempts=2, speculative_after=1.0, speculative_min_seconds=0.3)
    result = mrkit.run(
        job,
        mrkit.Records(["a", "b", "c"]),
        executor="processes",
        workers=4,
        n_map=3,
        params={"dir": str(tmp_path)},
        policy=policy,
        quiet=True,
    )
    assert dict(result) == {"a": 1, "b": 1, "c": 1}
    assert (tmp_path / "exited").exists()
    assert result.counters["map.attempts_speculative"] >= 1
    assert result.counters["map.attempts_failed"] == 1, result.counters
    assert result.counters["map.attempts_lost"] == 0, result.counters
