"""The futures API's contract suite (tests/test_futures.py), run against ``http``.

That module parametrizes over ``inline`` and ``processes`` through its ``executor`` and ``processes``
fixtures. Its tests are imported here unchanged, and this module's fixtures of the same names give
them two driver-started HTTP workers instead, so one suite checks every executor.
The suite's ``test_a_killed_worker_is_replaced_and_its_chunk_rerun`` (``os._exit(9)`` once) is
replaced here by a test that kills the task process from outside: on HTTP workers a task that ends
its own process is the task's failure (``WorkerCrashed``, counted against ``max_attempts``; the
futures API does not retry failures), while a process killed from outside is a lost attempt, rerun.
tests/test_http_contract_jobs.py does the same for tests/test_core_jobs.py, with workers of its own
(its straggler test leaves a worker busy for seconds after it passes, as it would a process pool).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from mrkit import futures
from mrkit.backends.http.executor import HttpExecutor
from tests.test_futures import (  # noqa: F401 - collected here, on HTTP workers
    no_default_left_behind,
    test_a_result_that_cannot_be_pickled_fails_the_call,
    test_exceptions_that_do_not_travel_become_call_failed,
    test_map_as_completed_does_not_wait_for_a_slow_item,
    test_map_as_completed_yields_every_result,
    test_map_empty_and_single_item,
    test_map_is_lazy_and_takes_an_infinite_input,
    test_map_is_ordered_and_takes_lambdas_and_closures,
    test_map_raises_the_worker_exception_at_its_item,
    test_map_reduce_empty_single_and_initializer,
    test_map_reduce_errors_name_the_function_and_item,
    test_map_reduce_keeps_order_for_non_commutative_operations,
    test_map_reduce_seed_002,
    test_map_zips_iterables_shortest_wins,
    test_submit_returns_a_future_of_the_value,
    test_ten_thousand_tiny_tasks,
)


@pytest.fixture(scope="module", name="http2")
def http2_fixture() -> Iterator[HttpExecutor]:
    executor = HttpExecutor(workers=2)
    try:
        yield executor
    finally:
        executor.shutdown()


@pytest.fixture
def executor(http2: HttpExecutor) -> HttpExecutor:
    """What the futures suite calls ``executor``."""
    return http2


@pytest.fixture(scope="module")
def processes(http2: HttpExecutor) -> HttpExecutor:
    """What the futures suite calls its real pool of worker processes."""
    return http2


def test_a_killed_task_process_is_replaced_and_its_chunk_rerun(http2: HttpExecutor, tmp_path: Path) -> None:
    marker = str(tmp_path / "killed-once")

    def die_once(x: int) -> int:
        if x == 3 and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return x * 10

    results = futures.map(die_once, range(8), executor=http2, chunksize=2)
    assert list(results) == [x * 10 for x in range(8)]
    assert os.path.exists(marker)
