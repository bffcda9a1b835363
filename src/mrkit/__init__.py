"""mrkit: MapReduce for Python.

One job definition — plain functions for map, optional combine and partition, and reduce — runs
unchanged in this process, on all local cores, on a Redis Streams fleet, on HTTP workers or on
serverless functions. See README.md and docs/.

    import mrkit
    job = mrkit.Job(mapper=..., reducer=..., combiner=...)
    result = mrkit.run(job, "texts/*.txt", output="out/")
"""

from __future__ import annotations

from mrkit.api import Records, Result, resume, run, submit
from mrkit.coordination.handle import JobHandle
from mrkit.coordination.plan import RetryPolicy
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

__version__ = "0.1.0"

# Sorted; tests/test_public_api.py checks that it lists every public name.
__all__ = [
    "AuthenticationError",
    "ConfigError",
    "InputError",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobHandle",
    "MissingExtra",
    "MrkitError",
    "OutputExistsError",
    "Records",
    "Result",
    "RetryPolicy",
    "StorageError",
    "TaskContext",
    "UnsafeKeyError",
    "WorkerLost",
    "__version__",
    "combine_handler",
    "context",
    "job_from_module",
    "map_handler",
    "partition_handler",
    "read_output",
    "reduce_handler",
    "resume",
    "run",
    "stable_partition",
    "submit",
]
