"""How an event reaches a Dask cluster: :class:`DaskInvoker`, the invoker of the Dask job service.

Each event becomes one Dask task, submitted with ``fire_and_forget`` (it runs whether or not any
client still wants it) under a key that starts with :func:`job_key_prefix`. The task runs the
handler through :func:`_invocation`, which names it the way a Lambda invoker names its function: by
where it is (imported in the worker when the task runs), so that this module, which the
serverless driver imports to invoke the next phase, does not import the handler back.
See :mod:`mrkit.backends.aws_lambda.dask_jobs` for the service and what Dask changes.
"""

from __future__ import annotations

import importlib
import uuid
from typing import Any

from mrkit.backends.aws_lambda.wire import parse_event
from mrkit.errors import ConfigError

#: The phase-change holder's lease is a quarter of this (``lease_seconds``): a Dask re-run of an
#: invocation that died holding one takes the step over after at most that long.
INVOCATION_TIMEOUT = 40.0
#: The function each invocation task runs, ``module:name`` (imported in the worker).
HANDLER = "mrkit.backends.aws_lambda.dask_jobs:run_event"


def job_key_prefix(job_id: str) -> str:
    """Every Dask key of the job's invocations starts with this."""
    return f"mrkit-job-{job_id}-"


def _invocation(event: dict[str, Any]) -> Any:
    """The Dask task of one invocation: :data:`HANDLER` (see the module docstring)."""
    module, name = HANDLER.split(":")
    return getattr(importlib.import_module(module), name)(event)


#: This worker process's client, set by the handler's first invocation here: for invocations made
#: from other threads of a task (the watchdog's, after a timeout), where get_worker() does not answer.
worker_client: Any = None


def _launch(events: list[dict[str, Any]], address: str) -> int:
    """Invoke ``events`` from inside a Dask worker (the submitter's first invocations): the worker's
    client outlives the task, so its messages reach the scheduler even if the submitter exits now."""
    invoker = DaskInvoker(address)
    for event in events:
        invoker.invoke(event)
    return len(events)


class DaskInvoker:
    """Delivers events as fire-and-forget Dask tasks (the :class:`~.invokers.Invoker` protocol).

    Inside a Dask worker it submits with the worker's client. Elsewhere (the submitter) it sends the
    events to one short task that invokes them from a worker and waits for it: once ``invoke``
    returned, the scheduler has the tasks, whatever the submitting process does next.

    Args:
        address: the scheduler address (recorded in the job's events).
        client: the submitter's ``distributed.Client`` (its security is the user's).
    """

    def __init__(self, address: str, client: Any = None) -> None:
        self.address = address
        self._client = client

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DaskInvoker:
        return cls(str(config["address"]))

    def _worker_client(self) -> Any:
        from distributed import get_client, get_worker

        try:
            get_worker()
        except ValueError:  # not a task's thread: another thread of an invocation, or the submitter
            return worker_client
        return get_client()

    def invoke(self, event: dict[str, Any], *, sync: bool = False) -> Any:
        from distributed import fire_and_forget

        if sync:
            raise ConfigError("Dask invocations are asynchronous only")
        client = self._worker_client()
        if client is None:
            self.invoke_all([event])
            return None
        key = f"{job_key_prefix(_event_job(event))}{uuid.uuid4().hex[:16]}"
        fire_and_forget(client.submit(_invocation, event, key=key, pure=False, retries=0))
        return None

    def invoke_all(self, events: list[dict[str, Any]]) -> None:
        """Invoke ``events``: from a worker one by one, from elsewhere through one launch task,
        returning once it ran (see the class docstring)."""
        if not events:
            return
        if self._worker_client() is not None:
            for event in events:
                self.invoke(event)
            return
        if self._client is None:
            raise ConfigError("a DaskInvoker outside a Dask worker needs the submitter's client")
        key = f"{job_key_prefix(_event_job(events[0]))}launch-{uuid.uuid4().hex[:12]}"
        self._client.submit(_launch, events, self.address, key=key, pure=False).result()

    def config(self) -> dict[str, Any]:
        return {"kind": "dask", "address": self.address}

    def timeout(self) -> float:
        return INVOCATION_TIMEOUT

    def close(self) -> None:
        pass


def _event_job(event: dict[str, Any]) -> str:
    specs = parse_event(event, check_version=False).specs
    return specs[0].job_id if specs else "none"
