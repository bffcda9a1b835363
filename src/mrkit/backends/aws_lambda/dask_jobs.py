"""Asynchronous jobs on a Dask cluster: the object-store driver, with Dask tasks as its invocations.

``mrkit.submit(job, inputs, executor="dask://host:8786")`` (or ``tls://…``, or a ``Client`` of a
cluster that outlives the caller) hands the job to the driver of :mod:`.jobs`, the one the serverless
backend uses: the plan, the completion sets, the phase-change triggers and leases, the end record
and the cancel/publish decision all live in the job's storage. An *invocation* here is a Dask task,
``run_event(event)``, submitted with ``fire_and_forget`` so that it runs whether or not any client
still wants it. It runs :func:`~mrkit.backends.aws_lambda.handler.handler`: the task (first attempt
wins the commit), then the job's next step; the invocation that completes the map phase invokes the
reduce tasks from inside its Dask worker, and the one that completes the reduce phase publishes.
So the job advances without the submitting process, which may exit once ``submit`` returns.

What Dask changes, and how it is handled:

* **Dask re-runs a task whose worker died** (up to ``distributed.scheduler.allowed-failures``
  times). A re-run is another delivery of the same event, with the same request id (the Dask key):
  the handler's delivery claims and the first-attempt-wins commit make it harmless, and a re-run of
  an invocation that died holding a phase change takes the step over once its lease has lapsed.
* **When Dask gives up on a task** (``KilledWorker``) or the scheduler restarts, nobody is told:
  there is no on-failure destination. A follower (:class:`DaskJobHandle`: ``status``, ``wait``,
  ``mrkit status``) that finds *no task of the job left on the scheduler* twice, a second apart, and
  no end record fails the job with a sentence saying so (the job's keys on the scheduler all start
  with :func:`job_key_prefix`; an invocation submits the next phase's tasks before it ends, so a
  running job always has one). A follower that cannot reach the scheduler for
  :data:`SCHEDULER_GONE_SECONDS` fails the job too. ``mrkit resume ID`` runs the rest again.
* **Where a job's state lives** is recorded on the scheduler (``set_metadata``: msgpack, no
  pickle): ``mrkit status/logs/result/cancel ID --executor dask://…`` find it without
  ``--storage``. The storage is the executor's ``storage=`` (or the submit's), and a folder of this
  machine (the default, under the temp folder) only when every worker runs here.
* **Timeouts**: an attempt without progress for ``task_timeout`` seconds is reported failed and the
  job moves on; the stuck thread is left to finish in its worker (ending the process, as a Lambda
  invocation does, would kill a Dask worker that other jobs share).
* **cancel** records the decision (as on every object-store job), then cancels the job's tasks on
  the scheduler.

Why this lives in the serverless package: it is that driver, with one more invoker (the rules that
write a job's state are written once, in :mod:`.jobs`); the Dask executor (:mod:`mrkit.backends.dask`)
runs blocking jobs and is not imported here (the service reads ``client``, ``local``, ``name`` and
``storage_url`` from it).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import tempfile
import time
import uuid
from typing import Any

from mrkit.backends.aws_lambda import dask_invoker
from mrkit.backends.aws_lambda.chain import chain_handle, is_chain, submit_chain_job
from mrkit.backends.aws_lambda.dask_invoker import DaskInvoker, job_key_prefix
from mrkit.backends.aws_lambda.handle import ObjectStoreJobHandle, list_jobs
from mrkit.backends.aws_lambda.state import current_run, stopped
from mrkit.backends.aws_lambda.task_events import end_open_deliveries
from mrkit.backends.aws_lambda.wire import end_key
from mrkit.coordination.chain import chain_resume_refused
from mrkit.coordination.handle import JobHandle
from mrkit.coordination.options import RunOptions
from mrkit.errors import ConfigError
from mrkit.model.status import JobStatus
from mrkit.model.steps import job_steps
from mrkit.storage import open_storage

#: Seconds a follower waits on an unreachable scheduler before it fails the job.
SCHEDULER_GONE_SECONDS = 10.0
#: The scheduler metadata folder where each job's storage URL is recorded.
REGISTRY = "mrkit-jobs"
_ASK_TIMEOUT = 5.0  # seconds for one question to the scheduler


# -- the invocations (the task side) ------------------------------------------------------------


class _Context:
    """What the handler reads of a Lambda context, for one Dask task."""

    def __init__(self, key: str, worker: str) -> None:
        self.aws_request_id = key  # the same for Dask's re-runs of the task: a retried delivery
        self.function_name = "dask"
        self.worker_label = f"dask:{worker}" if worker else "dask"
        self.event_worker = worker or key  # its task events name the worker (the key outside one)
        self.ends_process_on_timeout = False  # the worker is shared: see the module docstring


def run_event(event: dict[str, Any]) -> dict[str, Any]:
    """One invocation, in its Dask task (:data:`~.dask_invoker.HANDLER`): run ``event`` through the
    serverless handler."""
    from distributed import get_worker

    from mrkit.backends.aws_lambda.handler import handler

    try:
        worker = get_worker()
        key, address = str(worker.get_current_task()), worker.address
    except ValueError:  # called outside a worker (a test)
        key, address = f"local-{uuid.uuid4().hex}", ""
    else:
        from distributed import get_client

        # For invocations made from other threads of this task (the watchdog's, after a timeout),
        # where get_worker() does not answer.
        dask_invoker.worker_client = get_client()
    return handler(event, _Context(key, address))


# -- following a job -----------------------------------------------------------------------------------


def _ask(client: Any, function: Any, *args: Any) -> Any:
    """``client.run_on_scheduler(function, *args)``, given up after a few seconds (a scheduler that
    went away makes the client retry its connection for much longer)."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return pool.submit(client.run_on_scheduler, function, *args).result(timeout=_ASK_TIMEOUT)
    finally:
        pool.shutdown(wait=False)


class DaskJobHandle(ObjectStoreJobHandle):
    """Follows a Dask job: its state from storage (as :class:`ObjectStoreJobHandle`), plus what the
    scheduler knows (the dashboard, whether the job's tasks are still there; see the module
    docstring for the verdicts it may write)."""

    reports_cost = False  # a Dask cluster is not billed per invocation

    def __init__(
        self, job_id: str, storage_url: str, client: Any, address: str, dashboard: str | None = None
    ) -> None:
        super().__init__(job_id, storage_url)
        self.client, self.address, self.dashboard = client, address, dashboard
        self._empty_since: float | None = None
        self._unreachable_since: float | None = None

    def status(self) -> JobStatus:
        self._check_alive()
        st = JobStatus.from_dict(self._status_dict())
        return st if self.dashboard is None else dataclasses.replace(st, dashboard=self.dashboard)

    def _while_running(self) -> None:
        self._check_alive()

    def cancel(self) -> bool:
        cancelled = super().cancel()
        if cancelled:
            try:
                keys = _ask(self.client, _job_task_keys, job_key_prefix(self.id))
                if keys:
                    from distributed import Future

                    self.client.cancel([Future(k, self.client) for k in keys], force=True)
            except Exception:  # the decision is recorded: a task that still runs does nothing more
                pass
        return cancelled

    def _check_alive(self) -> None:
        """Fail the running job when its tasks are all gone from the scheduler, or the scheduler is
        unreachable for :data:`SCHEDULER_GONE_SECONDS` (see the module docstring)."""
        run = current_run(self.storage, self.id)
        if stopped(self.storage, self.id, run) is not None:
            return
        now = time.monotonic()
        try:
            left = _ask(self.client, _job_task_keys, job_key_prefix(self.id))
        except Exception as exc:
            self._unreachable_since = self._unreachable_since or now
            if now - self._unreachable_since >= SCHEDULER_GONE_SECONDS:
                self._fail(
                    run,
                    f"job {self.id} failed: the Dask scheduler at {self.address} could not be reached "
                    f"for {SCHEDULER_GONE_SECONDS:.0f} s ({type(exc).__name__}: {exc}); its tasks are "
                    f"gone with it. Resume it with `mrkit resume {self.id} --executor ...` once a "
                    "scheduler runs",
                )
            return
        self._unreachable_since = None
        if left:
            self._empty_since = None
            return
        if self._empty_since is None:
            self._empty_since = now  # an invocation may be handing over to the next phase: look again
            return
        if now - self._empty_since >= 1.0 and stopped(self.storage, self.id, run) is None:
            self._fail(
                run,
                f"job {self.id} failed: none of its tasks is left on the Dask scheduler at "
                f"{self.address}, and it has not ended (Dask gave up on a task whose workers kept "
                "dying -- distributed.scheduler.allowed-failures -- or the scheduler was restarted). "
                f"Resume it with `mrkit resume {self.id} --executor ...`",
            )

    def _fail(self, run: int, message: str) -> None:
        record = {"state": "failed", "error": message, "task_id": "", "traceback": "", "time": time.time()}
        if self.storage.put_if_absent(end_key(self.id, run), json.dumps(record).encode()):
            # Its deliveries still open will never report: they are lost (their task events say so).
            reason = f"its Dask task is gone from the scheduler at {self.address}"
            end_open_deliveries(self.storage, self.id, reason)


def _job_task_keys(prefix: str, dask_scheduler: Any = None) -> list[str]:
    """On the scheduler: the keys of the job's tasks it holds, in any state."""
    return [str(key) for key in dask_scheduler.tasks if str(key).startswith(prefix)]


# -- the service ---------------------------------------------------------------------------------------


class _Submitter:
    """What :func:`~.jobs.submit_job` reads of an executor, for a Dask cluster."""

    batch_size = 1

    def __init__(self, executor: Any, address: str) -> None:
        self.executor, self.name, self.workers = executor, executor.name, executor.workers
        self.invoker = DaskInvoker(address, client=executor.client)

    def job_invoker(self) -> DaskInvoker:
        return self.invoker

    def storage_url(self, job_id: str) -> str | None:
        return self.executor.storage_url(job_id) or (default_storage() if self.executor.local else None)

    def check_reachable(self, url: str) -> None:
        self.executor.check_reachable(url, option="output=")


def default_storage() -> str:
    """Where Dask jobs keep their state when every worker runs on this machine and no ``storage=``
    was given: a folder of this user under the temp folder."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return os.path.join(tempfile.gettempdir(), f"mrkit-dask-jobs-{uid}")


class DaskJobService:
    """The :class:`~mrkit.coordination.service.JobService` of ``dask://…``, ``tls://…`` and a
    ``distributed.Client`` (see the module docstring)."""

    def __init__(self, executor: Any) -> None:
        self.executor = executor
        self.address = str(executor.client.scheduler.address)

    def submit_job(self, job: Any, inputs: Any, options: RunOptions) -> JobHandle:
        from mrkit.backends.aws_lambda.jobs import submit_job

        submitter = _Submitter(self.executor, self.address)
        applied = options.apply(job)
        steps = job_steps(applied)
        if steps is not None:  # a multi-step job: a chain of one-step jobs (.chain)
            chain = submit_chain_job(submitter, applied, steps, inputs, options, submit_job, self._handle_for)
            self.executor.client.set_metadata([REGISTRY, chain.id], chain.store.storage.url)  # type: ignore[attr-defined]
            return chain
        # A missing storage= is refused by the shared preamble (prepare_submission), in one sentence.
        handle = submit_job(submitter, job, inputs, options)
        self.executor.client.set_metadata([REGISTRY, handle.id], handle.storage_url)
        return self._handle(handle.id, handle.storage_url)

    def _handle(self, job_id: str, storage_url: str) -> DaskJobHandle:
        dashboard = getattr(self.executor, "dashboard_link", None)
        return DaskJobHandle(job_id, storage_url, self.executor.client, self.address, dashboard)

    def _handle_for(self, storage_url: str, job_id: str) -> JobHandle:
        return self._handle(job_id, storage_url)

    def _chain(self, storage_url: str, job_id: str) -> JobHandle:
        from mrkit.backends.aws_lambda.jobs import submit_job

        submitter = _Submitter(self.executor, self.address)
        return chain_handle(storage_url, job_id, self._handle_for, lambda *a: submit_job(submitter, *a))

    def handle(self, job_id: str) -> JobHandle:
        storage_url = self.executor.client.get_metadata([REGISTRY, job_id], None)
        if storage_url is None:
            raise ConfigError(
                f"no job {job_id} on the Dask scheduler at {self.address} (it was submitted to another "
                "scheduler, or this one was restarted since)"
            )
        if is_chain(open_storage(str(storage_url)), job_id):
            return self._chain(str(storage_url), job_id)
        return self._handle(job_id, str(storage_url))

    def list_jobs(self) -> list[JobStatus]:
        registry = self.executor.client.get_metadata([REGISTRY], {}) or {}
        found: list[JobStatus] = []
        for storage_url in sorted(set(registry.values())):
            found += [s for s in list_jobs(storage_url) if s.id in registry]
            storage = open_storage(storage_url)
            chains = [j for j, url in registry.items() if url == storage_url and is_chain(storage, j)]
            found += [self._chain(storage_url, j).status() for j in chains]
        return sorted(found, key=lambda s: -float(s.submitted or 0))

    def resume_job(self, job_id: str) -> DaskJobHandle:
        from mrkit.backends.aws_lambda.jobs import resume_job

        handle = self.handle(job_id)  # resume_job refuses a job whose state is gone
        if not isinstance(handle, DaskJobHandle):
            raise chain_resume_refused(job_id)
        resume_job(job_id, handle.storage_url, invoker=_Submitter(self.executor, self.address).invoker)
        return handle
