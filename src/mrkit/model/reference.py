"""The reference implementation: what any executor's output must equal.

A deliberately tiny, obviously-correct, in-memory MapReduce (STYLE 22): map every record, group by
key (by the encoded key, as the real shuffle does), reduce each group. No combiner (a combiner must
not change the result), no partitioning (it must not either). Every executor is tested against it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mrkit.model.job import Job, identity_reducer, returns_pairs
from mrkit.model.partition import key_bytes


def reference(job: Job, records: Iterable[Any]) -> list[tuple[Any, Any]]:
    """Run ``job`` over ``records`` in memory; return its output pairs sorted by encoded key.

    >>> import mrkit
    >>> wc = mrkit.Job(mapper=lambda line: [(w, 1) for w in line.split()], reducer=lambda k, vs: sum(vs))
    >>> reference(wc, ["a b", "b"])
    [('a', 1), ('b', 2)]
    """
    pairs: list[tuple[Any, Any]] = []
    if job.mapper_split is not None:
        pairs.extend(job.mapper_split(iter(list(records))) or ())
    else:
        if job.mapper_init is not None:
            pairs.extend(job.mapper_init() or ())
        for record in records:
            pairs.extend(job.mapper(record) or ())  # type: ignore[misc]
        if job.mapper_final is not None:
            pairs.extend(job.mapper_final() or ())
    groups: dict[bytes, tuple[Any, list[Any]]] = {}
    for key, value in pairs:
        groups.setdefault(key_bytes(key), (key, []))[1].append(value)
    reducer = job.reducer or identity_reducer
    yields = job.reducer is None or returns_pairs(reducer)
    out: list[tuple[Any, Any]] = []
    for kb in sorted(groups):
        key, values = groups[kb]
        if yields:
            out.extend(reducer(key, iter(values)))
        else:
            out.append((key, reducer(key, iter(values))))
    return out
