"""A non-deterministic mapper under repeated kills on serverless (``lambda-local``, async driver).

A killer thread SIGKILLs running deliveries of the job's function (found by the response path in
their environment, which lies in this test's function folder) a bounded number of times, at random
moments: before, during and after commits. The mapper tags every pair with a random number, so two
attempts of a task never emit the same data: if both were counted, the counts would double. The job
must finish with every word counted once (one committed attempt per task), within a bounded time.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator

import mrkit
from mrkit.backends.aws_lambda.executor import LocalLambdaExecutor
from mrkit.model.reference import reference
from tests.s3_fixtures import *  # noqa: F403 - moto_server, s3_bucket, s3_url
from tests.test_lambda_jobs import corpus, no_function_left_running  # noqa: F401 - autouse fixture


class RandomTags(mrkit.Job):
    """Word count whose map output differs between attempts (each pair carries a random tag)."""

    def mapper(self, line: str) -> Iterator[tuple[str, tuple[int, float]]]:
        for word in line.split():
            yield word, (1, random.random())

    def reducer(self, word: str, values: Iterator[tuple[int, float]]) -> int:
        return sum(count for count, _tag in values)


class WordCount(mrkit.Job):
    def mapper(self, line: str) -> Iterator[tuple[str, int]]:
        for word in line.split():
            yield word, 1

    def reducer(self, word: str, counts: Iterator[int]) -> int:
        return sum(counts)


def _deliveries_of(folder: str) -> list[int]:
    """PIDs of running deliveries whose response file lies in ``folder``."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if f"MRKIT_LAMBDA_RESPONSE={folder}".encode() in env:
            pids.append(int(name))
    return pids


def _kill_storm(folder: str, kills: int, stop: threading.Event, killed: list[int]) -> None:
    rng = random.Random(7)
    while len(killed) < kills and not stop.is_set():
        stop.wait(rng.uniform(0.05, 0.4))
        pids = _deliveries_of(folder)
        if pids:
            pid = rng.choice(pids)
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass


def test_a_nondeterministic_mapper_under_repeated_kills_finishes_with_one_attempt_per_task(
    tmp_path, s3_bucket, s3_url
):
    lines = corpus(s3_bucket)
    folder = str(tmp_path / "fn")
    ex = LocalLambdaExecutor.from_name(
        "lambda-local", state_dir=folder, storage=s3_url, timeout=20, retry_delay=0.05
    )
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_storm, args=(folder, 6, stop, killed), daemon=True)
    started = time.monotonic()
    handle = mrkit.submit(RandomTags(), f"s3://{s3_bucket}/in/*.txt", executor=ex, n_reduce=2)
    killer.start()
    try:
        result = handle.wait(150)
    finally:
        stop.set()
        killer.join(5)
    seconds = time.monotonic() - started
    assert killed, "the storm killed nothing: the test proved nothing"
    assert sorted(result) == sorted(reference(WordCount(), lines)), f"{len(killed)} kills"
    assert result.counters["map.records_in"] == len(lines)  # nothing counted twice
    assert seconds < 150
