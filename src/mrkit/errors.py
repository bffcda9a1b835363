"""Every exception mrkit raises, under one root.

    MrkitError                      root: catch this to catch anything mrkit raises on purpose
    ├── ConfigError                 a bad argument, option, job file or URL (the user's fix is in the message)
    ├── MissingExtra                an optional integration is selected but its package is not installed
    ├── InputError                  an input cannot be found, opened or decoded (names file and byte offset)
    ├── StorageError                a storage backend refused or lost an operation
    │   └── UnsafeKeyError          a key would escape its storage root (``..``, absolute, empty segment)
    ├── OutputExistsError           the output folder already holds a result and overwrite was not asked
    ├── WorkerLost                  the process or machine running an attempt died or stopped answering
    ├── AuthenticationError         a message or request failed signature verification
    └── JobFailed                   a job ended without publishing output (carries the first task failure)
        └── JobCancelled            the job was cancelled before it finished

Each one carries the context it names (task id, attempt, key) so that the first line of the message
says what failed, where, and why; the remote traceback, when there is one, comes after it.
"""

from __future__ import annotations

from typing import Any


class MrkitError(Exception):
    """Root of every error mrkit raises on purpose."""


class ConfigError(MrkitError, ValueError):
    """Raised for a bad argument, option, job file or URL; the message names the valid choices."""


class MissingExtra(MrkitError, ImportError):
    """Raised when an optional integration is selected but its package is not installed."""

    def __init__(self, feature: str, extra: str, missing: str) -> None:
        self.feature = feature
        self.extra = extra
        self.missing = missing
        super().__init__(
            f"{feature} needs the package {missing!r}, which is not installed: "
            f"run `pip install 'mrkit[{extra}]'`"
        )


class InputError(MrkitError):
    """Raised when an input cannot be found, opened or decoded; the message names file and offset."""


class StorageError(MrkitError):
    """Raised when a storage backend refuses or loses an operation."""


class UnsafeKeyError(StorageError, ValueError):
    """Raised when a storage key would leave its root (``..``, an absolute path, an empty segment)."""


class OutputExistsError(MrkitError):
    """Raised when the output folder already holds a result and ``overwrite`` was not asked for."""


class WorkerLost(MrkitError):
    """Raised (on an attempt's future) when the worker running it died or stopped answering.

    A lost attempt is retried without consuming the user's ``max_attempts`` the way a raising user
    function does; it has its own, larger bound so that a task that kills every worker still ends.
    """

    def __init__(self, message: str, *, task_id: str = "", attempt: int = 0, worker: str = "") -> None:
        self.task_id = task_id
        self.attempt = attempt
        self.worker = worker
        super().__init__(message)

    def __reduce__(self):  # keep the keyword context across pickling
        return (_rebuild_worker_lost, (str(self), self.task_id, self.attempt, self.worker))


def _rebuild_worker_lost(message: str, task_id: str, attempt: int, worker: str) -> WorkerLost:
    return WorkerLost(message, task_id=task_id, attempt=attempt, worker=worker)


class AuthenticationError(MrkitError):
    """Raised when a message or request fails signature verification; nothing in it is unpickled."""


class JobFailed(MrkitError):
    """Raised when a job ends without publishing its output.

    ``str(error)`` is one sentence naming the task, its input (file and byte range, record) or key,
    the attempt count and the exception; ``error.remote_traceback`` holds the user's traceback.
    ``error.counters`` holds the job's counters up to the failure (attempts launched, failed and
    lost per phase, and the counters of the tasks that committed), and ``error.status`` one dict
    per task that was planned so far: ``{"map-00000": {"state": "committed", "launched": 1,
    "failed": 0, "lost": 0}, ...}``; both are empty when the job failed before running anything.
    """

    def __init__(
        self,
        message: str,
        *,
        job_id: str = "",
        task_id: str = "",
        remote_traceback: str = "",
        counters: dict[str, int] | None = None,
        status: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.job_id = job_id
        self.task_id = task_id
        self.remote_traceback = remote_traceback
        self.counters: dict[str, int] = dict(counters or {})
        self.status: dict[str, dict[str, Any]] = dict(status or {})
        super().__init__(message)

    def __reduce__(self):
        return (
            type(self),
            (str(self),),
            {
                "job_id": self.job_id,
                "task_id": self.task_id,
                "remote_traceback": self.remote_traceback,
                "counters": self.counters,
                "status": self.status,
            },
        )

    def __setstate__(self, state: dict[str, Any] | None) -> None:
        self.__dict__.update(state or {})


class JobCancelled(JobFailed):
    """Raised when a job was cancelled before it finished."""
