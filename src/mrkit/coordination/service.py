"""The job-service contract: asynchronous jobs that advance without the process that submitted them.

An executor runs *tasks* (:class:`~mrkit.execution.base.Executor`); a :class:`JobService` runs whole
*jobs* on a backend that keeps their state itself (Redis streams, an object store driven by the
functions), so that the submitter may exit and anyone may follow the job by its id. Executors
whose ``asynchronous`` attribute is True have one; :func:`job_service` finds it through
:data:`SERVICES`, by the executor's registry key, as :func:`~mrkit.execution.base.open_executor`
finds executors: the core never imports a backend.

A backend's service implements the four calls below. Their handles all answer the same questions
(:class:`~mrkit.coordination.handle.JobHandle`: ``status()``, ``logs()``, ``wait()``, ``cancel()``).
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from mrkit.coordination.handle import JobHandle
from mrkit.coordination.options import RunOptions
from mrkit.execution.base import Executor, executor_key
from mrkit.model.status import JobStatus

#: Registry key of an executor (its URL scheme or name) -> ``module:class`` of its job service.
SERVICES = {
    "redis": "mrkit.backends.redis.jobs:RedisJobService",
    "rediss": "mrkit.backends.redis.jobs:RedisJobService",
    "lambda": "mrkit.backends.aws_lambda.jobs:ServerlessJobService",
    "lambda-local": "mrkit.backends.aws_lambda.jobs:ServerlessJobService",
    # Dask: the same object-store driver, its invocations Dask tasks (a cluster that outlives the
    # caller: dask://, tls:// or a Client; the "dask" local cluster runs submits in the background).
    "dask": "mrkit.backends.aws_lambda.dask_jobs:DaskJobService",
    "tls": "mrkit.backends.aws_lambda.dask_jobs:DaskJobService",
}


class JobService(Protocol):
    """Asynchronous jobs on one backend, reached through the executor that names it.

    Attributes:
        executor: that executor (its connection, storage and secret are the service's).
    """

    executor: Executor

    def submit_job(self, job: Any, inputs: Any, options: RunOptions) -> JobHandle:
        """Plan ``job`` over ``inputs`` with ``options``, hand it to the backend and return its
        handle at once; the job advances without this process.

        The preamble (options applied, id, storage, output check, plan) is
        :func:`~mrkit.coordination.prepare.prepare_submission`, shared by every service; what is
        the backend's own is how it stores the plan and starts the first tasks. ``options.resume``
        is refused before this is called (:func:`mrkit.resume` resumes asynchronous jobs).
        """
        ...

    def handle(self, job_id: str) -> JobHandle:
        """A handle on the job ``job_id``, from any process that reaches the backend."""
        ...

    def list_jobs(self) -> list[JobStatus]:
        """The status of every job the backend knows, newest first."""
        ...

    def resume_job(self, job_id: str) -> JobHandle:
        """Put the failed or cancelled job ``job_id`` back to running, re-using its committed tasks.

        Raises:
            ResumeRefused: the job is unknown or expired, still running or done, or its data is gone.
        """
        ...


def job_service(executor: Executor) -> JobService | None:
    """The job service of ``executor``'s backend, or None when it runs jobs in the caller only."""
    target = SERVICES.get(executor_key(executor.name)) if executor.asynchronous else None
    if target is None:
        return None
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(executor)  # type: ignore[no-any-return]
