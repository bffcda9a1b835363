"""The submit preamble every path shares: check the job, turn the inputs into splits, build the plan.

:func:`plan_job` is called by :func:`mrkit.run` (a blocking run, fresh or resumed) and, through
:func:`prepare_submission` (the whole submit preamble: options, job id, storage, output check, plan),
by each asynchronous job service (Redis, serverless), so that one job and one set of inputs give the
same splits and the same tasks whichever way they are run. A blocking run checks and opens its
output itself: only it knows whether a resumed run may find its own earlier output there.

Input conventions (the user's, documented on :func:`mrkit.run`): a str, a path, or a non-empty list
or tuple of them names files, globs or folders; any other iterable holds the records themselves
(wrap a list of strings in :class:`Records`). Records are stored in the job's storage in chunks, one
split each.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from mrkit.coordination.options import RunOptions
from mrkit.coordination.plan import JobPlan, build_plan, store_records
from mrkit.errors import ConfigError
from mrkit.execution.base import Executor
from mrkit.model.job import Job, require_job
from mrkit.model.task import InputSplit, TaskSettings
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


def is_paths(inputs: Any) -> bool:
    """True when ``inputs`` names files, globs or folders (a str, a path, or a list/tuple of them)."""
    path_like = (str, os.PathLike)
    if isinstance(inputs, path_like):
        return True
    if not isinstance(inputs, (list, tuple)) or not inputs:
        return False
    return all(isinstance(i, path_like) for i in inputs)


@dataclass(frozen=True)
class StepOutput:
    """The result a step of a multi-step job left at ``url`` (``pickle`` parts, never published
    to the user): the next step's map tasks read it as typed ``(key, value)`` records, one split per
    part, straight from that storage (the driver reads each part once, for its SHA-256: nothing is
    unpickled that the plan did not vouch for)."""

    url: str

    def splits(self) -> list[InputSplit]:
        from mrkit.storage import open_storage

        base, prefix = self.url.split("#", 1) if "#" in self.url else (self.url, "")
        storage = open_storage(self.url)
        try:
            parts = sorted(k for k in storage.list("") if k.startswith("part-"))
            base = base if prefix else storage.url
            return [
                InputSplit(
                    f"{base}#{prefix}{part}",
                    format="pickle",
                    index=i,
                    options={"sha256": hashlib.sha256(storage.get(part)).hexdigest(), "framed": True},
                )
                for i, part in enumerate(parts)
            ]
        finally:
            storage.close()


@dataclass(frozen=True)
class InputGroups:
    """The inputs of a job that reads each input with its own mapper: the path groups, in the order
    of the job's ``input_mappers`` (what :func:`attach_input_mappers` makes of ``{paths: mapper}``)."""

    groups: tuple[tuple[str, ...], ...]


def attach_input_mappers(job: Job, inputs: Any) -> tuple[Job, Any]:
    """``inputs={paths: mapper, ...}`` (Hadoop's ``MultipleInputs``): the job with those mappers and
    the inputs as :class:`InputGroups`; any other ``inputs`` come back unchanged.

    A key is a path, glob, folder or URL, or a tuple of them; its value is the mapper of every
    record read from it. ``mrkit.context().input.path`` still tells the files apart inside one group.

    Raises:
        ConfigError: an empty mapping, a key that names no path, or a mapper that is not callable.
    """
    if not isinstance(inputs, dict):
        return job, inputs
    if not inputs:
        raise ConfigError("inputs={} names no input: give {path: mapper} for each input")
    groups: list[tuple[str, ...]] = []
    for key in inputs:
        paths: list[Any] = list(key) if isinstance(key, tuple) else [key]
        if not is_paths(paths):
            raise ConfigError(
                f"inputs={{...}}: the key {key!r} must be a path, glob, folder or URL, or a tuple of them "
                "(its value is the mapper that reads it)"
            )
        groups.append(tuple(os.fspath(p) for p in paths))
    return job.with_input_mappers(inputs.values()), InputGroups(tuple(groups))


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
    from mrkit.data.splits import plan_splits  # reading file sizes and globs: only for paths

    if isinstance(inputs, StepOutput):
        return inputs.splits()
    if isinstance(inputs, InputGroups):
        # Each input planned on its own (``n_map`` shared out), its splits tagged with its mapper.
        per_group = None if n_map is None else max(1, round(n_map / len(inputs.groups)))
        splits = []
        for i, group in enumerate(inputs.groups):
            planned = plan_splits(
                list(group), per_group, format=input_format, errors=errors, split_size=split_size
            )
            splits += [dataclasses.replace(split, mapper=i) for split in planned]
        return [dataclasses.replace(split, index=i) for i, split in enumerate(splits)]
    if isinstance(inputs, Records) or not is_paths(inputs):
        items = inputs.items if isinstance(inputs, Records) else inputs
        if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
            raise ConfigError(
                f"inputs must be paths, globs, folders or an iterable of records, got {inputs!r:.80}"
            )
        chunks = n_map or max(2, min(2 * workers, MAX_RECORD_CHUNKS))
        return store_records(storage, job_id, items, chunks)
    paths = [os.fspath(p) for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)]
    return plan_splits(paths, n_map, format=input_format, errors=errors, split_size=split_size)


def plan_job(
    job: Job,
    inputs: Any,
    options: RunOptions,
    *,
    job_id: str,
    storage: Storage,
    output_url: str,
    workers: int,
    code: bytes | None = None,
) -> JobPlan:
    """Check ``job``, split ``inputs`` and build the job's :class:`JobPlan` (storing its code once).

    Args:
        job: the job as ``options`` run it (:meth:`RunOptions.apply`); anything else is refused with
            one sentence.
        inputs: paths/globs/folders, or records (module docstring).
        options: the run's options (``n_map``, ``n_reduce``, ``memory_mb``, ``overwrite``, ``policy``,
            ``errors``, ``input_format``, ``split_size`` and the output format are used here).
        job_id: the job's id; its keys in ``storage`` start with it.
        storage: the job's intermediate storage (records chunks, ``job.pkl``, map outputs).
        output_url: where the reduce tasks write (the output storage's URL).
        workers: how many attempts the executor runs at once: sizes the default ``n_reduce`` (one
            per worker) and the default number of record chunks (two per worker, at most 64).
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
        n_map=options.n_map,
        errors=options.errors,
        input_format=options.input_format,
        split_size=options.split_size,
    )
    if any(split.mapper < 0 for split in splits) or not splits:
        job.require_mapper()
    n_reduce = options.n_reduce if options.n_reduce is not None else max(1, workers)
    if n_reduce == 0 and not splits:
        raise ConfigError("a map-only job (n_reduce=0) has no input records to map: give it an input")
    if options.sort_output and n_reduce == 0:
        raise ConfigError(
            "sort_output=True needs a reduce phase: a map-only job (n_reduce=0) writes no sorted output"
        )
    if options.sort_output:
        from mrkit.coordination.sampling import with_range_partitioner

        job = with_range_partitioner(job, splits, n_reduce)
    policy = options.policy
    settings = TaskSettings(
        memory_mb=options.memory_mb, output_format=options.output_format, task_timeout=policy.task_timeout
    )
    groups = None
    if options.n_map is None and options.split_size is None and n_reduce > 0:
        from mrkit.data.splits import pack_splits

        # Small files share a map task (fewer sorts and shuffle entries); an explicit n_map or
        # split_size is the user's own cut, and a map-only job writes one part per map task.
        groups = pack_splits(splits, workers)
    return build_plan(
        job,
        splits,
        job_id=job_id,
        storage=storage,
        output_url=output_url,
        n_reduce=n_reduce,
        settings=settings,
        policy=policy,
        overwrite=options.overwrite,
        code=code,
        groups=groups,
    )


@dataclass(frozen=True)
class Submission:
    """A job ready to hand to an asynchronous backend: what :func:`prepare_submission` returns.

    Attributes:
        job_id: its id (given, or generated from its name and the time).
        storage: its intermediate storage (records chunks, ``job.pkl``, map outputs).
        output: where it publishes (``output=``, else ``{job_id}/output/`` in ``storage``).
        plan: its tasks.
    """

    job_id: str
    storage: Storage
    output: Storage
    plan: JobPlan


def kept_output(storage: Storage, job_id: str) -> Storage:
    """Where a job run without ``output=`` keeps its result when the process that reads it may not
    see the workers' folders (a remote executor, an asynchronous job): ``{job_id}/output/`` in the
    job's intermediate ``storage``."""
    from mrkit.storage import open_storage

    return open_storage(f"{storage.url}#{job_id}/output/")


def prepare_submission(
    job: Any,
    inputs: Any,
    options: RunOptions,
    *,
    executor: Executor,
    check_id: Callable[[str], None] | None = None,
) -> Submission:
    """The submit preamble of every asynchronous job service, written once.

    Applies ``options`` to ``job``, names the job, opens its intermediate storage (``storage=``,
    else the executor's) and its output (checked with :func:`~mrkit.coordination.publish.open_output`
    when ``output=`` is given, else a folder of the intermediate storage, so the result outlives the
    submitter), then splits the inputs and plans the tasks.

    Args:
        job, inputs, options: as for :func:`mrkit.submit`.
        executor: the backend's executor: its ``storage_url(job_id)``, ``workers`` and ``name``.
        check_id: called with the job id before anything is written (a backend refuses ids its keys
            cannot hold, or ids already taken, here).

    Raises:
        ConfigError: bad options, a refused id, or no storage for the job.
        OutputExistsError: ``output`` holds a result and ``overwrite`` is False.
        InputError: bad inputs.
    """
    from mrkit.coordination.plan import new_job_id
    from mrkit.coordination.publish import open_output
    from mrkit.storage import open_storage

    job, planned = attach_input_mappers(options.apply(job), inputs)
    job_id = options.job_id or new_job_id(job.name)
    if check_id is not None:
        check_id(job_id)
    url = options.storage or executor.storage_url(job_id)
    if not url:
        raise ConfigError(
            f"executor {executor.name} needs storage=URL (e.g. s3://bucket/mrkit) for a submitted job"
        )
    storage = open_storage(url)
    if options.output is None:
        output = kept_output(storage, job_id)
    else:
        output = open_output(os.fspath(options.output), overwrite=options.overwrite, inputs=inputs)
    plan = plan_job(
        job, planned, options, job_id=job_id, storage=storage, output_url=output.url, workers=executor.workers
    )
    return Submission(job_id, storage, output, plan)
