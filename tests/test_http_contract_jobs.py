"""The end-to-end job tests that take a real pool of workers (tests/test_core_jobs.py), run against
``http``: results equal to the reference, a failing reducer, a killed worker, a straggler.

That module's tests run on ``processes`` through its ``processes`` fixture; they are imported here
unchanged, and this module's fixture of that name gives them two driver-started HTTP workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mrkit.backends.http.executor import HttpExecutor
from tests.test_core_jobs import (  # noqa: F401 - collected here, on HTTP workers
    test_property_processes_equals_reference as test_property_http_equals_reference,
)
from tests.test_core_jobs import (  # noqa: F401
    test_raising_reducer_names_the_key_and_publishes_nothing,
    test_sigkilled_worker_is_replaced_and_output_is_exact,
    test_straggler_gets_a_speculative_attempt_that_wins,
)


@pytest.fixture(scope="module")
def processes() -> Iterator[HttpExecutor]:
    """What the job suite calls its real pool of worker processes."""
    executor = HttpExecutor(workers=2)
    try:
        yield executor
    finally:
        executor.shutdown()
