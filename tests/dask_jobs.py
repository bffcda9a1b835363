"""Jobs for the Dask fault tests (tests/test_dask_faults.py), in a module the Dask workers import.

``stall_once`` makes the first attempt that meets a record starting with ``stall`` (a mapper) or the
key ``stall`` (a reducer) write its process id to ``params["marker"]`` and sleep, so that the test can
SIGKILL that worker process from outside while the task is mid-way; every later attempt (the marker
exists) runs normally.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator

import mrkit
from tests.jobs_for_tests import total, words

STALL_SECONDS = 60.0  # far longer than the test waits: the attempt only ends by being killed


def _stall_once() -> None:
    params = mrkit.context().params
    marker = params["marker"]
    if not os.path.exists(marker):
        with open(marker + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(marker + ".tmp", marker)  # the test never reads a half-written pid
        # A test on a shared cluster stalls for less: the sleeping thread holds its worker's only one.
        time.sleep(float(params.get("stall_seconds", STALL_SECONDS)))


def stalling_mapper(line: str) -> Iterator[tuple[str, int]]:
    if line.startswith("stall"):
        _stall_once()
    yield from words(line)


def stalling_reducer(key: str, counts: Iterable[int]) -> int:
    if key == "stall":
        _stall_once()
    return total(key, counts)


STALL_IN_MAP = mrkit.Job(mapper=stalling_mapper, combiner=total, reducer=total, name="dask-stall-map")
STALL_IN_REDUCE = mrkit.Job(mapper=words, combiner=total, reducer=stalling_reducer, name="dask-stall-reduce")
