"""Planning: turn a job and its inputs into a :class:`JobPlan` of task specs.

Planning decides *what* runs (STYLE 20); an executor decides *where*. A plan is a plain value: the
same plan is run by the in-process driver (:mod:`mrkit.coordination.driver`) or handed whole to an
asynchronous executor (Redis, Lambda) that advances it without the submitting process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from mrkit.errors import ConfigError
from mrkit.execution import shipping
from mrkit.model import layout
from mrkit.model.job import Job
from mrkit.model.task import InputSplit, TaskKind, TaskSettings, TaskSpec
from mrkit.storage.base import Storage


@dataclass(frozen=True)
class RetryPolicy:
    """How attempts are retried and duplicated.

    Attributes:
        max_attempts: attempts per task whose user code raised before the job fails (default 4).
        max_lost: attempts per task lost with their worker (killed, hung, unreachable); separate
            from ``max_attempts`` so infrastructure trouble does not eat the user's attempts, but
            bounded so a task that kills every worker still ends the job.
        speculative: launch a second attempt of a straggling task; the first to commit wins.
        speculative_after: a running attempt is a straggler after this many times the median
            duration of the phase's finished tasks (and at least ``speculative_min_seconds``).
        task_timeout: seconds *without progress* after which an attempt is ended and counts as a
            failed attempt (``TaskTimeout``, against ``max_attempts``) on executors that enforce it
            where it runs (``enforces_timeouts``: processes, inline); others abandon it as lost
            after that long. None (default): never. See docs/faults.md.

    Example:
        >>> RetryPolicy(max_attempts=2, speculative=False).max_lost
        8
    """

    max_attempts: int = 4
    max_lost: int = 8
    speculative: bool = True
    speculative_after: float = 3.0
    speculative_min_seconds: float = 2.0
    task_timeout: float | None = None

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, got {self.max_attempts}")


@dataclass(frozen=True)
class JobPlan:
    """Everything needed to run a job, by reference.

    Attributes:
        job_id: unique id; prefix of every storage key of the job.
        name: the job's display name.
        storage_url: intermediate storage (job code, map output, commits).
        output_url: the output folder's storage URL.
        map_specs: one spec per map task (attempt 1).
        reduce_specs: one spec per reduce partition (attempt 1).
        output_format: ``tsv``, ``jsonl`` or ``pickle``.
        overwrite: replace an existing output.
        policy: :class:`RetryPolicy`.
        input_bytes: total size of the inputs (for progress and MB/s).
    """

    job_id: str
    name: str
    storage_url: str
    output_url: str
    map_specs: tuple[TaskSpec, ...]
    reduce_specs: tuple[TaskSpec, ...]
    output_format: str = "tsv"
    overwrite: bool = False
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    input_bytes: int = 0

    @property
    def n_map(self) -> int:
        return len(self.map_specs)

    @property
    def n_reduce(self) -> int:
        return len(self.reduce_specs)

    @property
    def output_phase(self) -> tuple[str, int]:
        """The phase whose tasks write the output parts, and how many: ``("reduce", n_reduce)``, or
        ``("map", n_map)`` for a map-only job (``n_reduce=0``)."""
        return ("reduce", self.n_reduce) if self.reduce_specs else ("map", self.n_map)


def new_job_id(name: str) -> str:
    """A unique, storage-key-safe job id: ``wordcount-20261121-143501-1a2b3c4d5e``.

    Forty random bits: a hundred jobs submitted in the same second collide once in ~10^8 bursts
    (24 bits, the old length, made that once in ~3,000, and a fleet test saw it).
    """
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:32] or "job"
    return f"{slug}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:10]}"


def pickle_job(job: Job, *, remote: bool = False) -> bytes:
    """Pickle ``job`` so that it runs on a worker that cannot import the user's modules.

    The job's local modules (its file and the helpers it imports) travel by value with their
    source (:func:`mrkit.execution.shipping.dumps`); installed packages are imported by the worker.
    """
    hooks = ("mapper", "reducer", "combiner", "partitioner", "mapper_init", "mapper_final", "mapper_split")
    return shipping.dumps(job, roots=tuple(getattr(job, name, None) for name in hooks), remote=remote)


def store_records(storage: Storage, job_id: str, records: Iterable[Any], n_map: int) -> list[InputSplit]:
    """Store in-memory input records as ``n_map`` pickled chunks; return one split per chunk."""
    items = list(records)
    n = max(1, min(n_map, len(items))) if items else 1
    splits = []
    for i in range(n):
        chunk = items[i * len(items) // n : (i + 1) * len(items) // n]
        data = cloudpickle.dumps(chunk, protocol=5)
        key = layout.input_chunk_key(job_id, i)
        storage.put(key, data)
        splits.append(
            InputSplit(
                uri=f"{storage.url}#{key}",
                format="pickle",
                index=i,
                options={"sha256": hashlib.sha256(data).hexdigest(), "records": len(chunk)},
            )
        )
    return splits


def build_plan(
    job: Job,
    splits: list[InputSplit],
    *,
    job_id: str,
    storage: Storage,
    output_url: str,
    n_reduce: int,
    settings: TaskSettings,
    policy: RetryPolicy,
    overwrite: bool = False,
    code: bytes | None = None,
    groups: Sequence[tuple[InputSplit, ...]] | None = None,
) -> JobPlan:
    """Store the job's code in ``storage`` and return the plan of its map and reduce tasks.

    Args:
        groups: the splits packed into map tasks (:func:`mrkit.data.splits.pack_splits`), in
            order; default: one map task per split.
        code: the pickled job to store, when the caller already has it (a resume re-uses the
            bytes an earlier driver stored, so that its tasks and ours name the same digest);
            default: :func:`pickle_job` of ``job``.
    """
    if n_reduce < 0:
        raise ConfigError(f"n_reduce must be at least 0 (0: a map-only job), got {n_reduce}")
    code = pickle_job(job) if code is None else code
    storage.put(layout.job_key(job_id), code)
    base = TaskSpec(
        job_id=job_id,
        task_id="",
        kind=TaskKind.MAP,
        storage_url=storage.url,
        job_key=layout.job_key(job_id),
        job_digest=hashlib.sha256(code).hexdigest(),
        n_map=len(groups) if groups is not None else len(splits),
        n_reduce=n_reduce,
        output_url=output_url,
        settings=settings,
    )
    if groups is None:
        groups = [(s,) for s in splits]
    maps = tuple(
        dataclasses.replace(base, task_id=layout.task_id("map", i), split=g[0], more_splits=tuple(g[1:]))
        for i, g in enumerate(groups)
    )
    reduces = tuple(
        dataclasses.replace(base, task_id=layout.task_id("reduce", p), kind=TaskKind.REDUCE, partition=p)
        for p in range(n_reduce)
    )
    input_bytes = sum(_split_bytes(s) for s in splits)
    return JobPlan(
        job_id=job_id,
        name=job.name,
        storage_url=storage.url,
        output_url=output_url,
        map_specs=maps,
        reduce_specs=reduces,
        output_format=settings.output_format,
        overwrite=overwrite,
        policy=policy,
        input_bytes=input_bytes,
    )


def _split_bytes(split: InputSplit) -> int:
    if split.length >= 0:
        return split.length
    if "://" not in split.uri and os.path.exists(split.uri):
        return os.path.getsize(split.uri)
    return 0
