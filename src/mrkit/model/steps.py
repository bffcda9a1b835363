"""Multi-step jobs: a job that is a list of :class:`Step` (mrjob's ``steps()``/``MRStep``).

A step is one map → reduce: its own mapper (or none: its input records, ``(key, value)`` pairs, pass
through as they are), combiner, reducer (or none: every value is emitted under its key),
partitioner, ``n_reduce`` and ``params``. A job lists its steps in one of two forms:

* functions: ``mrkit.Job(steps=[mrkit.Step(mapper=f, reducer=g), mrkit.Step(reducer=h, n_reduce=1)])``;
* a class: ``def steps(self): return [mrkit.Step(mapper=self.words, reducer=self.count), ...]``.

Step ``k``'s reduce output becomes step ``k + 1``'s input records, ``(key, value)`` pairs with their
exact Python types (never text); only the last step publishes. :func:`job_steps` reads and checks a
job's steps; :func:`step_job` makes the plain :class:`~mrkit.model.job.Job` that runs one of them.
How they run is :mod:`mrkit.multistep`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from mrkit.errors import ConfigError
from mrkit.model.job import FUNCTION_SLOTS, Job


@dataclass(frozen=True)
class Step:
    """One map → reduce of a multi-step job (see the module docstring).

    Args:
        mapper, combiner, reducer, partitioner, mapper_init, mapper_final, mapper_split: as for
            :class:`~mrkit.model.job.Job`; ``mapper`` omitted: the input records, which must be
            ``(key, value)`` pairs, are mapped to themselves; ``reducer`` omitted: every value is
            emitted under its key.
        n_reduce: this step's reduce tasks (default: the run's ``n_reduce``).
        params: merged over the job's ``params`` for this step.
        name: shown in progress and in a failure (default ``step K``).
    """

    mapper: Callable[..., Any] | None = None
    combiner: Callable[..., Any] | None = None
    reducer: Callable[..., Any] | None = None
    partitioner: Callable[..., int] | None = None
    mapper_init: Callable[[], Any] | None = None
    mapper_final: Callable[[], Any] | None = None
    mapper_split: Callable[..., Any] | None = None
    n_reduce: int | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None

    def __post_init__(self) -> None:
        if self.n_reduce is not None and (not isinstance(self.n_reduce, int) or self.n_reduce < 1):
            raise ConfigError(f"Step n_reduce= must be a positive integer, got {self.n_reduce!r}")


def pass_through(records: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
    """The ``mapper_split`` of a step that has no mapper: each ``(key, value)`` record is its own
    output pair. One generator for the whole split, not a mapper call per record: the step after
    a join or a count reads every pair of the step before (a mapper call per record cost ~30% of
    such a map task)."""
    for record in records:
        if type(record) is not tuple or len(record) != 2:
            _check_pair(record)
        yield record


def pass_through_record(record: Any) -> Iterator[tuple[Any, Any]]:
    """The per-record form of :func:`pass_through`, for a step with ``mapper_init`` or
    ``mapper_final`` hooks but no mapper (a split-level mapper would skip those hooks)."""
    _check_pair(record)
    yield record


def _check_pair(record: Any) -> None:
    if not isinstance(record, tuple) or len(record) != 2:
        raise TypeError(
            f"a step without a mapper reads (key, value) pairs, got {type(record).__name__}: "
            f"{record!r:.80} (give the first step a mapper, or pass pairs as its input)"
        )


def job_steps(job: Job) -> list[Step] | None:
    """The steps of ``job``, checked; None for a one-step job.

    Raises:
        ConfigError: ``steps`` is not a list of :class:`Step`, it is empty, a step has neither
            mapper nor reducer, or the job also defines its own mapper or reducer.
    """
    found = job.steps()
    if found is None:
        return None
    if isinstance(found, (str, bytes)) or not isinstance(found, Iterable):
        raise ConfigError(f"job {job.name!r}: steps must be a list of mrkit.Step, got {type(found).__name__}")
    steps = list(found)
    if not steps:
        raise ConfigError(f"job {job.name!r} lists no steps: give at least one mrkit.Step")
    for k, step in enumerate(steps, 1):
        if not isinstance(step, Step):
            raise ConfigError(f"job {job.name!r}: step {k} is a {type(step).__name__}, not an mrkit.Step")
        if not any(getattr(step, slot) is not None for slot in ("mapper", "mapper_split", "reducer")):
            raise ConfigError(f"job {job.name!r}: step {k} has neither a mapper nor a reducer")
    own = [slot for slot in ("mapper", "mapper_split", "reducer", "combiner") if getattr(job, slot, None)]
    if own:
        raise ConfigError(
            f"job {job.name!r} lists steps and also defines {', '.join(own)}: put every function in a step"
        )
    return steps


def step_job(job: Job, step: Step, index: int) -> Job:
    """The one-step :class:`Job` that runs ``step`` (number ``index``, from 1) of ``job``: the step's
    functions, the job's params updated with the step's, the job's side files."""
    functions = {slot: getattr(step, slot) for slot in FUNCTION_SLOTS}
    if functions["mapper"] is None and functions["mapper_split"] is None:
        if functions["mapper_init"] is None and functions["mapper_final"] is None:
            functions["mapper_split"] = pass_through
        else:
            functions["mapper"] = pass_through_record
    one = Job(**functions, params={**job.params, **dict(step.params)}, name=f"{job.name}-step{index}")
    one.files = dict(getattr(job, "files", {}))
    return one
