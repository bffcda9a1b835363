"""Shared test configuration. Backend fixtures live in their own modules (e.g. tests/redis_fixtures.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

# Tests import helpers as `tests.x`; make the repository root importable without installing.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(autouse=True)
def _environment_is_restored_after_each_test() -> Iterator[None]:
    """Whatever a test's code sets in ``os.environ`` is undone after it, like ``monkeypatch``
    does for what it sets. Dask's nannies, for one, ``os.environ.update()`` the process that starts
    a LocalCluster (``PYTHONHASHSEED=6640``...): a test that starts one directly must not change
    what later tests in the same process see (spawned workers would share one hash salt)."""
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        for name in set(os.environ) - set(saved):
            del os.environ[name]
        os.environ.update(saved)
