"""The run options of a job, written once: :class:`RunOptions`.

``mrkit.run`` and ``mrkit.submit`` keep their keywords for users and build a :class:`RunOptions`
from them; the blocking driver and every asynchronous job service (Redis, serverless) take that one
object, so that an option is declared, defaulted and documented in one place. The meaning of each
field is documented on :func:`mrkit.run`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mrkit.coordination.plan import RetryPolicy
from mrkit.errors import ConfigError
from mrkit.execution.base import Executor, open_executor
from mrkit.model.job import require_job


@dataclass(frozen=True)
class RunOptions:
    """Every option of a job run besides the job, its inputs and the executor (see :func:`mrkit.run`).

    ``policy`` is never None (the default :class:`RetryPolicy`), ``files`` is a tuple and ``params``
    a plain dict, so that two equal sets of options compare equal. ``ttl`` applies to asynchronous
    jobs only (seconds their state is kept after they end; None: the backend's default).
    """

    output: str | os.PathLike[str] | None = None
    n_map: int | None = None
    n_reduce: int | None = None
    workers: int | None = None
    storage: str | None = None
    format: str = "tsv"
    memory_mb: float = 256.0
    overwrite: bool = False
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    errors: str = "strict"
    input_format: str = "auto"
    params: Mapping[str, Any] | None = None
    progress: bool | None = None
    quiet: bool = False
    job_id: str | None = None
    split_size: int | None = None
    resume: bool = False
    worker_python: str | None = None
    files: tuple[str | os.PathLike[str], ...] | None = None
    ttl: float | None = None
    sort_values: bool = False
    sort_output: bool = False
    dashboard: bool = False
    #: Internal, not a keyword of mrkit.run: the id a step of a multi-step job runs and records itself
    #: under (``{job}-step{k}``, :mod:`mrkit.coordination.step_record`). Unlike ``job_id`` it does not
    #: make the run resumable (a multi-step job does not resume yet).
    step_id: str | None = None

    def __post_init__(self) -> None:
        # Normalised here, once: callers pass None for "the default" and any iterable of files.
        if self.policy is None:
            object.__setattr__(self, "policy", RetryPolicy())
        if self.files is not None:
            object.__setattr__(self, "files", tuple(self.files))
        if self.params is not None:
            object.__setattr__(self, "params", dict(self.params))

    @classmethod
    def from_keywords(cls, caller: str = "mrkit.run", **keywords: Any) -> RunOptions:
        """The options named by ``keywords`` (the keywords of :func:`mrkit.run`).

        Raises:
            ConfigError: a keyword that is not an option, named in one sentence with ``caller``.
        """
        known = {f.name for f in dataclasses.fields(cls)} - {"step_id"}
        unknown = sorted(set(keywords) - known)
        if unknown:
            raise ConfigError(
                f"{caller}() got unknown option{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(unknown)}; the options are: {', '.join(sorted(known))}"
            )
        return cls(**keywords)

    def replace(self, **changes: Any) -> RunOptions:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    @property
    def output_format(self) -> str:
        """The format the reducers write: ``format`` when publishing to ``output``, else ``pickle``
        (an in-memory result keeps exact Python types).

        Raises:
            ConfigError: an unknown format.
        """
        from mrkit.data.output import check_format

        return check_format(self.format if self.output is not None else "pickle")

    def open_executor(self, executor: str | Executor) -> Executor:
        """``executor`` opened for these options (sized by ``workers``, ``n_map``, ``n_reduce``;
        ``worker_python`` for HTTP workers); an :class:`Executor` object is returned as it is."""
        return open_executor(
            executor,
            workers=self.workers,
            n_map=self.n_map,
            n_reduce=self.n_reduce,
            worker_python=self.worker_python,
        )

    def apply(self, job: Any) -> Any:
        """``job`` as these options run it: checked, with ``params`` merged and ``files`` attached.

        Raises:
            ConfigError: ``job`` is not an :class:`mrkit.Job`.
        """
        job = require_job(job)
        if self.params:
            job = job.with_params(self.params)
        if self.files:
            job = job.with_files(self.files)
        if self.sort_values:
            job = job.with_sorted_values()
        return job
