"""Helpers for testing jobs, for users and for mrkit's own tests (STYLE 35)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mrkit.model.job import Job


def run_inline(
    job: Job, records: Iterable[Any], *, n_map: int = 2, n_reduce: int = 2, **options: Any
) -> dict[Any, Any]:
    """Run ``job`` over in-memory ``records`` with the inline executor; return ``{key: value}``.

    The whole pipeline runs (pickling, splits, spill, shuffle, merge), in this process, so a test
    of a job is a plain function call that a debugger can step into.

    >>> import mrkit
    >>> wc = mrkit.Job(mapper=lambda line: [(w, 1) for w in line.split()], reducer=lambda k, vs: sum(vs))
    >>> run_inline(wc, ["a b", "b"])
    {'a': 1, 'b': 2}
    """
    from mrkit.api import run
    from mrkit.coordination.prepare import Records

    result = run(
        job, Records(list(records)), executor="inline", n_map=n_map, n_reduce=n_reduce, quiet=True, **options
    )
    return dict(sorted(result, key=lambda kv: repr(kv[0])))
