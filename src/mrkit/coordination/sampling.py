"""``sort_output=True``: cut points for a total-order partitioner, from a sample of the map output.

TeraSort's sampling: before the job runs, the driver reads the first records of every split (at most
:data:`SAMPLE_BYTES` of each, and :data:`SAMPLE_KEYS` records in all), runs the job's mapper on them
(in the driver, with the job's params and side files), and sorts the keys it emits by
:func:`~mrkit.model.partition.key_bytes`. The ``n_reduce - 1`` keys at evenly spaced ranks are the
cut points of a :class:`~mrkit.model.partition.RangePartitioner` that replaces the job's
partitioner, so that ``part-00000 … part-(M-1)`` read in order are globally sorted by key.

Cost: one read of at most 64 KiB per split and the mapper over a few thousand records, in the
driver, before any task starts (about 0.1 s for 100 MB in 32 files here). A sample from the start of
each split is balanced for inputs in no particular order; for inputs sorted within files the
partitions come out uneven, never wrong: the order holds whatever the cut points.

Keys sort by their encoded bytes: ``str`` keys in Python's order, ``bytes`` keys bytewise, ``int``
keys by their decimal text (zero-pad numbers, or use strings, for numeric order).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import cloudpickle

from mrkit.data.readers import open_split
from mrkit.model.context import TaskContext, activate
from mrkit.model.job import Job
from mrkit.model.partition import RangePartitioner, key_bytes
from mrkit.model.task import InputSplit

SAMPLE_KEYS = 10_000  # records sampled over all splits
SAMPLE_BYTES = 64 << 10  # read from the start of each split, at most


def with_range_partitioner(job: Job, splits: list[InputSplit], n_reduce: int) -> Job:
    """A copy of ``job`` whose partitioner is the :class:`RangePartitioner` sampled from ``splits``."""
    clone = object.__new__(type(job))
    clone.__dict__.update(job.__dict__)
    clone.partitioner = RangePartitioner(sample_cuts(job, splits, n_reduce))
    return clone


def sample_cuts(job: Job, splits: list[InputSplit], n_reduce: int) -> list[bytes]:
    """The ``n_reduce - 1`` cut points of the map output's keys, from a sample (module docstring)."""
    if n_reduce <= 1 or not splits:
        return []
    per_split = max(10, SAMPLE_KEYS // len(splits))
    # A copy runs the sample: hooks such as mapper_init may keep state on the job, which must not
    # travel to the workers inside the job's code.
    job = cloudpickle.loads(cloudpickle.dumps(job))
    ctx = TaskContext(
        job_id="sample", task_id="sample", attempt=0, params=job.params, files=getattr(job, "files", {})
    )
    keys: list[bytes] = []
    with activate(ctx):
        for split in splits:
            mapper_job = job.for_input(split.mapper) if split.mapper >= 0 else job
            keys += [key_bytes(key) for key, _value in _map(mapper_job, _first_records(split, per_split))]
    keys.sort()
    if not keys:
        return []
    return [keys[(i * len(keys)) // n_reduce] for i in range(1, n_reduce)]


def _first_records(split: InputSplit, n: int) -> list[Any]:
    reader = open_split(split, block_size=SAMPLE_BYTES)
    records: list[Any] = []
    try:
        for batch in reader.batches():
            records += batch.records
            if len(records) >= n:
                break
    finally:
        reader.close()
    return records[:n]


def _map(job: Job, records: list[Any]) -> Iterable[tuple[Any, Any]]:
    """The pairs ``job``'s map side emits for ``records`` (its hooks included), unpartitioned."""
    out: list[tuple[Any, Any]] = []
    if job.mapper_init is not None:
        out += list(job.mapper_init() or ())
    if job.mapper_split is not None:
        out += list(job.mapper_split(iter(records)) or ())
    elif job.mapper is not None:
        for record in records:
            out += list(job.mapper(record) or ())
    if job.mapper_final is not None:
        out += list(job.mapper_final() or ())
    return out
