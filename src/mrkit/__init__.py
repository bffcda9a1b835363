"""mrkit: MapReduce for Python.

One job definition — plain functions for map, optional combine and partition, and reduce — runs
unchanged in this process, on all local cores, on a Redis Streams fleet, on HTTP workers or on
serverless functions. See README.md and docs/.

    import mrkit
    job = mrkit.Job(mapper=..., reducer=..., combiner=...)
    result = mrkit.run(job, "texts/*.txt", output="out/")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mrkit._version import __version__

if TYPE_CHECKING:  # the names below are imported on first use (PEP 562), for type checkers here
    from mrkit.api import resume, run, submit
    from mrkit.coordination.handle import JobHandle
    from mrkit.coordination.plan import RetryPolicy
    from mrkit.coordination.prepare import Records
    from mrkit.coordination.result import Result
    from mrkit.data.output import read_output
    from mrkit.errors import (
        AuthenticationError,
        ConfigError,
        InputError,
        JobCancelled,
        JobFailed,
        MissingExtra,
        MrkitError,
        OutputExistsError,
        StorageError,
        UnsafeKeyError,
        WorkerLost,
    )
    from mrkit.model.context import TaskContext, context
    from mrkit.model.decorators import (
        combine_handler,
        job_from_module,
        map_handler,
        partition_handler,
        reduce_handler,
    )
    from mrkit.model.job import Job
    from mrkit.model.partition import stable_partition
    from mrkit.model.status import JobStatus
    from mrkit.model.steps import Step
    from mrkit.pipeline import Pipeline

# Where each public name lives. They load on first use, so that ``import mrkit`` (and every worker
# process, which imports a submodule such as the task runtime and so this package first) does not
# pay for the whole API: ~60 ms less per fresh interpreter.
_LAZY = {
    "Job": "mrkit.model.job",
    "Step": "mrkit.model.steps",
    "Pipeline": "mrkit.pipeline",
    "map_handler": "mrkit.model.decorators",
    "combine_handler": "mrkit.model.decorators",
    "partition_handler": "mrkit.model.decorators",
    "reduce_handler": "mrkit.model.decorators",
    "job_from_module": "mrkit.model.decorators",
    "stable_partition": "mrkit.model.partition",
    "context": "mrkit.model.context",
    "TaskContext": "mrkit.model.context",
    "run": "mrkit.api",
    "submit": "mrkit.api",
    "resume": "mrkit.api",
    "Records": "mrkit.coordination.prepare",
    "RetryPolicy": "mrkit.coordination.plan",
    "Result": "mrkit.coordination.result",
    "read_output": "mrkit.data.output",
    "JobHandle": "mrkit.coordination.handle",
    "JobStatus": "mrkit.model.status",
    "MrkitError": "mrkit.errors",
    "ConfigError": "mrkit.errors",
    "InputError": "mrkit.errors",
    "OutputExistsError": "mrkit.errors",
    "JobFailed": "mrkit.errors",
    "JobCancelled": "mrkit.errors",
    "WorkerLost": "mrkit.errors",
    "StorageError": "mrkit.errors",
    "AuthenticationError": "mrkit.errors",
    "UnsafeKeyError": "mrkit.errors",
    "MissingExtra": "mrkit.errors",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mrkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    # The public names (loaded or not) and the private ones; not the helpers imported above.
    return sorted(set(__all__) | {name for name in globals() if name.startswith("_")})


# Grouped by concern; tests/test_public_api.py checks that it lists every public name once.
__all__ = [
    "__version__",
    # Defining a job: the function and class forms, the decorators of a job file, partitioning.
    "Job",
    "Step",
    "Pipeline",
    "map_handler",
    "combine_handler",
    "partition_handler",
    "reduce_handler",
    "job_from_module",
    "stable_partition",
    "context",
    "TaskContext",
    # Running one: blocking, or submitted and followed; its inputs, retries and result.
    "run",
    "submit",
    "resume",
    "Records",
    "RetryPolicy",
    "Result",
    "read_output",
    "JobHandle",
    "JobStatus",
    # What can go wrong: every error is an MrkitError with a one-sentence message.
    "MrkitError",
    "ConfigError",
    "InputError",
    "OutputExistsError",
    "JobFailed",
    "JobCancelled",
    "WorkerLost",
    "StorageError",
    "AuthenticationError",
    "UnsafeKeyError",
    "MissingExtra",
]
