"""The submit preamble every path shares: check the job, turn the inputs into splits, build the plan.

:func:`plan_job` is called by :func:`mrkit.run` (a blocking run, fresh or resumed) and by each
asynchronous job service (Redis, serverless) when a job is submitted, so that one job and one set of
inputs give the same splits and the same tasks whichever way they are run. Checking and opening the
output folder (:func:`mrkit.coordination.publish.open_output`) stays with the caller: only it knows
whether a resumed run may find its own earlier output there.

Input conventions (the user's, documented on :func:`mrkit.run`): a str, a path, or a non-empty list
or tuple of them names files, globs or folders; any other iterable holds the records themselves
(wrap a list of strings in :class:`Records`). Records are stored in the job's storage in chunks, one
split each.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from mrkit.coordination.plan import JobPlan, RetryPolicy, build_plan, store_records
from mrkit.errors import ConfigError
from mrkit.model.job import Job
from mrkit.model.task import TaskSettings
from mrkit.storage.base import Storage

MAX_RECORD_CHUNKS = 64  # default splits of in-memory records: 2 per worker, at most this many


class Records:
    """Marks an iterable as input *records*, even when its items are strings.

    A str, a path or a list of them is read as files/globs/folders; any other iterable is records.
    Wrap a list of strings in ``Records`` to process the strings themselves:
    ``mrkit.run(job, mrkit.Records(["a b", "b c"]))``.
    """

    def __init__(self, items: Iterable[Any]) -> None:
        self.items = items


def require_job(job: Any) -> Job:
    """``job`` itself when it is an :class:`~mrkit.model.job.Job`; else a one-sentence ConfigError."""
    if not isinstance(job, Job):
        raise ConfigError(
            f"expected an mrkit.Job, got {type(job).__name__}: define mrkit.Job(mapper=..., reducer=...)"
        )
    return job


def is_paths(inputs: Any) -> bool:
    """True when ``inputs`` names files, globs or folders (a str, a path, or a list/tuple of them)."""
    path_like = (str, os.PathLike)
    if isinstance(inputs, path_like):
        return True
    if not isinstance(inputs, (list, tuple)) or not inputs:
        return False
    return all(isinstance(i, path_like) for i in inputs)


def input_splits(
    inputs: Any,
    storage: Storage,
    job_id: str,
    *,
    workers: int,
    n_map: int | None,
    errors: str,
    input_format: str,
    split_size: int | None = None,
) -> list[Any]:
    """The splits of ``inputs``: planned over files, or stored records chunks in ``storage``.

    Raises:
        ConfigError: ``inputs`` is neither paths nor an iterable of records.
        InputError: a named input does not exist or cannot be read.
    """
    if isinstance(inputs, Records) or not is_paths(inputs):
        items = inputs.items if isinstance(inputs, Records) else inputs
        if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
            raise ConfigError(
                f"inputs must be paths, globs, folders or an iterable of records, got {inputs!r:.80}"
            )
        chunks = n_map or max(2, min(2 * workers, MAX_RECORD_CHUNKS))
        return store_records(storage, job_id, items, chunks)
    from mrkit.data.splits import plan_splits  # reading file sizes and globs: only for paths

    paths = [os.fspath(p) for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)]
    return plan_splits(paths, n_map, format=input_format, errors=errors, split_size=split_size)


def plan_job(
    job: Job,
    inputs: Any,
    *,
    job_id: str,
    storage: Storage,
    output_url: str,
    workers: int,
    n_map: int | None,
    n_reduce: int | None,
    fmt: str,
    memory_mb: float,
    overwrite: bool,
    policy: RetryPolicy,
    errors: str,
    input_format: str,
    split_size: int | None = None,
    code: bytes | None = None,
) -> JobPlan:
    """Check ``job``, split ``inputs`` and build the job's :class:`JobPlan` (storing its code once).

    Args:
        job: the job; anything else is refused with one sentence.
        inputs: paths/globs/folders, or records (module docstring).
        job_id: the job's id; its keys in ``storage`` start with it.
        storage: the job's intermediate storage (records chunks, ``job.pkl``, map outputs).
        output_url: where the reduce tasks write (the output storage's URL).
        workers: how many attempts the executor runs at once: sizes the default ``n_reduce`` (one
            per worker) and the default number of record chunks (two per worker, at most 64).
        n_map, n_reduce, fmt, memory_mb, overwrite, policy, errors, input_format, split_size: as
            for :func:`mrkit.run` (``fmt`` is the output format).
        code: the pickled job of an earlier run being resumed (re-used, so the plan matches).

    Raises:
        ConfigError, InputError: a bad job, inputs or options.
    """
    require_job(job)
    splits = input_splits(
        inputs,
        storage,
        job_id,
        workers=workers,
        n_map=n_map,
        errors=errors,
        input_format=input_format,
        split_size=split_size,
    )
    settings = TaskSettings(memory_mb=memory_mb, output_format=fmt, task_timeout=policy.task_timeout)
    return build_plan(
        job,
        splits,
        job_id=job_id,
        storage=storage,
        output_url=output_url,
        n_reduce=n_reduce or max(1, workers),
        settings=settings,
        policy=policy,
        overwrite=overwrite,
        code=code,
    )
