"""The progress bar moves during a long map task: records and bytes read so far, before it ends."""

from __future__ import annotations

import contextlib
import io
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import mrkit

N = 1500


def slow_mapper(line: str) -> Iterator[tuple[str, int]]:
    time.sleep(0.002)  # ~3 s for the one map task
    yield line[:2], 1


@pytest.mark.parametrize("executor", ["inline", "processes"])
def test_progress_is_reported_while_the_only_map_task_runs(executor: str, tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_text("".join(f"w{i % 7}\n" for i in range(N)))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        result = mrkit.run(
            mrkit.Job(mapper=slow_mapper, reducer=lambda key, counts: sum(counts)),
            str(path),
            executor=executor,
            workers=2,
            n_map=1,
            progress=True,
        )
    assert sum(dict(result).values()) == N
    frames = err.getvalue().split("\r")
    # A frame drawn while the task still ran (0/1 tasks done) already counts its records and bytes,
    # with the elapsed time and the rate.
    running = [f for f in frames if f.startswith("map") and "0/1 tasks" in f and f"{N:,} records" in f]
    assert running, frames
    assert re.search(r"\[\d\d:\d\d<", running[-1]) and "KB" in running[-1]


def test_no_bar_when_stderr_is_not_a_terminal_only_the_summary(tmp_path: Path) -> None:
    err = io.StringIO()  # not a TTY
    with contextlib.redirect_stderr(err):
        mrkit.run(mrkit.Job(mapper=slow_mapper), mrkit.Records(["a", "b"]), executor="inline")
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mrkit: job ") and "MB/s" in lines[0]
