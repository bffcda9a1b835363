"""Shared test configuration. Backend fixtures live in their own modules (e.g. tests/redis_fixtures.py)."""

from __future__ import annotations

import os
import sys

# Tests import helpers as `tests.x`; make the repository root importable without installing.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
