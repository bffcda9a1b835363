"""Shared test configuration. Backend fixtures live in their own modules (e.g. tests/redis_fixtures.py)."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator

import pytest

# Tests import helpers as `tests.x`; make the repository root importable without installing.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


# The job registry (mrkit.coordination.events) of every run the tests make, subprocesses included:
# a folder of this test session, never the home folder of whoever runs the tests. A test that reads
# it sets its own MRKIT_HOME (monkeypatch) first.
os.environ["MRKIT_HOME"] = tempfile.mkdtemp(prefix="mrkit-test-home-")


# What Dask's nannies set in the process that starts a LocalCluster (``os.environ.update()`` before
# each worker spawn): PYTHONHASHSEED and ``distributed.nanny.pre-spawn-environ``'s defaults.
DASK_NANNY_VARIABLES = (
    "PYTHONHASHSEED",
    "MALLOC_TRIM_THRESHOLD_",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
)


@pytest.fixture(autouse=True)
def _dask_nanny_variables_restored_after_each_test() -> Iterator[None]:
    """A test that starts a Dask LocalCluster itself must not change what later tests in the same
    process see (spawned ``processes`` workers would share one hash salt): the variables Dask's
    nannies set are restored after every test. Only those: session fixtures (the S3 server's
    credentials) set variables on purpose, some first during a test."""
    saved = {name: os.environ.get(name) for name in DASK_NANNY_VARIABLES}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
