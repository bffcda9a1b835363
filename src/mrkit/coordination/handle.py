"""Handles on running jobs: ``mrkit.submit`` returns one.

:class:`JobHandle` is the interface (``id``, ``status()``, ``wait()``, ``result()``, ``cancel()``,
``logs()``); :class:`LocalJobHandle` follows a job running in a thread of this process. Asynchronous
executors (Redis, Lambda) return their own subclass that reads the job's state from shared storage,
so that any process can follow a job by id.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

from mrkit.model.status import JobStatus, PhaseProgress


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

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id}>"


class LocalJobHandle(JobHandle):
    """Follows a job that runs in a background thread of this process."""

    def __init__(self, job_id: str, future: Future[Any], thread: threading.Thread) -> None:
        self.id = job_id
        self._future = future
        self._thread = thread

    def status(self) -> JobStatus:
        if not self._future.done():
            return JobStatus(self.id, "running", executor="local")
        exc = self._future.exception()
        if exc is None:
            result = self._future.result()
            counters = result.counters
            phases = {
                p: PhaseProgress(
                    done=counters.get(f"{p}.tasks", 0),
                    total=counters.get(f"{p}.tasks", 0),
                    attempts=counters.get(f"{p}.attempts_launched", 0),
                    failures=counters.get(f"{p}.attempts_failed", 0),
                    lost=counters.get(f"{p}.attempts_lost", 0),
                )
                for p in ("map", "reduce")
            }
            return JobStatus(
                self.id,
                "done",
                phase="end",
                executor="local",
                map=phases["map"],
                reduce=phases["reduce"],
                seconds=result.seconds,
                output=result.output,
                counters=counters,
            )
        return JobStatus(self.id, "failed", phase="end", executor="local", error=str(exc))

    def wait(self, timeout: float | None = None) -> Any:
        try:
            return self._future.result(timeout)
        except TimeoutError:
            raise
        except Exception as exc:  # concurrent.futures.TimeoutError is TimeoutError on 3.11+
            if type(exc).__name__ == "TimeoutError":
                raise TimeoutError(f"job {self.id} still running after {timeout}s") from exc
            raise

    def cancel(self) -> bool:
        return False  # a local job runs to completion; documented in the API reference

    def logs(self, follow: bool = False) -> Iterator[str]:
        return iter(())
