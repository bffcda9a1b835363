"""Handles on running jobs: ``mrkit.submit`` returns one.

:class:`JobHandle` is the interface (``id``, ``status()``, ``wait()``, ``result()``, ``cancel()``,
``logs()``, ``events()``); :class:`~mrkit.coordination.registry.LocalJobHandle` follows a job running
in a thread of this process, :class:`~mrkit.coordination.registry.RegistryJobHandle` a run of this
machine. Asynchronous backends (Redis, serverless, Dask) return their own subclass that reads the
job's state from shared storage, so that any process can follow a job by id.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mrkit.coordination.events import TaskEvent
from mrkit.model.status import JobStatus


class JobHandle:
    """A job that was submitted and may still be running.

    Attributes:
        id: the job id (``mrkit status ID`` and friends take it).
    """

    id: str = ""

    def status(self) -> JobStatus:
        """The job's :class:`~mrkit.model.status.JobStatus` (one schema for every backend)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement status()")

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the job ends; return its :class:`~mrkit.api.Result`.

        Raises:
            JobFailed: the job failed (or was cancelled).
            TimeoutError: ``timeout`` passed first.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement wait()")

    def result(self, timeout: float | None = None) -> Any:
        """Same as :meth:`wait`."""
        return self.wait(timeout)

    def cancel(self) -> bool:
        """Ask the job to stop; returns True when the request was recorded."""
        raise NotImplementedError(f"{type(self).__name__} does not implement cancel()")

    def logs(self, follow: bool = False) -> Iterator[str]:
        """Iterate the job's log lines (task events and user output)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement logs()")

    def events(self) -> list[TaskEvent]:
        """The job's task events so far: one per attempt that ended (and, where the backend knows
        them, the attempts still running, with ``end`` 0), in start order
        (:mod:`mrkit.coordination.events`). Kept with the job: readable during and after it, by
        any process that reaches the backend, until the job's data expires."""
        raise NotImplementedError(f"{type(self).__name__} does not implement events()")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id}>"
