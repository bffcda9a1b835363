"""Where the dashboard finds jobs: the job registry of this machine, and each ``--executor`` given.

A :class:`Source` lists jobs (:class:`~mrkit.model.status.JobStatus`, newest first) and hands out a
:class:`~mrkit.coordination.handle.JobHandle` per job id; the dashboard never reaches a backend
another way. A source that cannot be reached (Redis down, a bucket gone) does not break the page:
its listing carries one sentence saying so, and the other sources still show.

Source names appear in URLs (``/jobs/{source}/{id}``): ``local`` for the registry, ``e0``, ``e1``…
for the executors in the order given. Their labels are shown on the page with any password removed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from mrkit.coordination.handle import JobHandle
from mrkit.coordination.registry import RegistryJobHandle, list_runs, registry_dir
from mrkit.model.status import JobStatus
from mrkit.storage.redis import redact


@dataclass
class Listing:
    """One source's jobs, or the sentence saying why it could not list them."""

    source: str
    label: str
    jobs: list[JobStatus] = field(default_factory=list)
    error: str = ""


class Source:
    """A place jobs live (see the module docstring)."""

    name: str = ""
    label: str = ""

    def list_jobs(self) -> list[JobStatus]:
        raise NotImplementedError

    def handle(self, job_id: str) -> JobHandle:
        raise NotImplementedError

    def listing(self) -> Listing:
        """:meth:`list_jobs`, with a failure turned into one sentence."""
        try:
            return Listing(self.name, self.label, self.list_jobs())
        except Exception as exc:  # any backend failure: the page says so, the others still show
            return Listing(self.name, self.label, error=unreachable(self.label, exc))


def unreachable(label: str, exc: BaseException) -> str:
    """One sentence for a source that failed: its label and the first line of the cause."""
    first = (str(exc).splitlines() or [type(exc).__name__])[0]
    return f"{label} could not be read: {first}"


class LocalSource(Source):
    """The runs of this machine (``mrkit run``, ``mrkit.run``), from the job registry."""

    name = "local"

    def __init__(self) -> None:
        self.label = f"this machine ({registry_dir()})"

    def list_jobs(self) -> list[JobStatus]:
        return list_runs()

    def handle(self, job_id: str) -> JobHandle:
        return RegistryJobHandle(job_id)


class ServiceSource(Source):
    """The jobs of one asynchronous executor (``redis://…``, ``lambda://…``, ``dask://…``).

    The executor is opened on first use and kept (a backend that is down is retried on the next
    request): opening it may take a network round trip, which must not delay the page's start.
    """

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url
        self.label = redact(url)
        self._service: Any = None
        self._lock = threading.Lock()

    def _job_service(self) -> Any:
        with self._lock:
            if self._service is None:
                from mrkit.coordination.service import job_service
                from mrkit.execution.base import open_executor

                service = job_service(open_executor(self.url, workers=1))
                if service is None:
                    raise ValueError(
                        f"{self.label} runs jobs in the submitting process only; "
                        "its runs are in this machine's registry"
                    )
                self._service = service
            return self._service

    def list_jobs(self) -> list[JobStatus]:
        return list(self._job_service().list_jobs())

    def handle(self, job_id: str) -> JobHandle:
        return self._job_service().handle(job_id)  # type: ignore[no-any-return]

    def close(self) -> None:
        with self._lock:
            if self._service is not None:
                self._service.executor.shutdown()
                self._service = None


def open_sources(executors: list[str], local: bool = True) -> dict[str, Source]:
    """The sources of a dashboard: the registry (unless ``local`` is False), then each executor."""
    sources: dict[str, Source] = {}
    if local:
        sources["local"] = LocalSource()
    for i, url in enumerate(executors):
        sources[f"e{i}"] = ServiceSource(f"e{i}", url)
    return sources
