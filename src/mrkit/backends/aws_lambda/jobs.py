"""The serverless driver: a job that advances itself from inside its function invocations.

``mrkit.submit(job, inputs, executor="lambda://fn", storage="s3://bucket/mrkit")`` plans the job,
writes the plan to the object store, invokes one function per map task and returns an
:class:`ObjectStoreJobHandle` at once; the submitting process may exit. From then on:

* every invocation runs its task (commit: first attempt wins), then records the task as completed
  (``state/committed/{phase}/{task}``, written only once the task's ``COMMIT`` key exists) and lists
  that folder: completion is a *set of task ids*, never a counter, so a retried or duplicated
  invocation cannot count twice;
* the invocation that sees the last map task completed takes the ``state/trigger/reduce`` key (one
  conditional write: exactly one of the invocations completing the phase at once wins), then the
  ``state/reduce`` lease, and invokes the reduce tasks. (Object stores list strongly after writes,
  so of two tasks completing at once, at least the later sees both.)
* the invocation that sees the last reduce task completed takes the ``state/publish`` lease, calls
  :func:`~mrkit.coordination.publish.publish_output` (parts, then ``_SUCCESS``), records the summary
  in ``state/end`` and deletes the intermediate data;
* a task whose user code raised is re-invoked as its next attempt (guarded per attempt by the failure
  counts, so a retry of the guard's taker takes it again; a concurrent twin may too, and the event
  is then sent twice, which the delivery claims make harmless) until
  ``RetryPolicy.max_attempts``; one lost with every delivery (the on-failure record) likewise until
  ``max_lost``; then the job fails: ``state/end`` records the first failure and nothing is published.
  A failed or cancelled job keeps its intermediate data (commits, map outputs, ``job.pkl``, plan).

**Runs.** :func:`resume_job` puts a failed or cancelled job back to running as its next *run*
(``state/runs/r{n}``, created with ``put_if_absent``): its committed tasks are kept, the others are
invoked again with fresh attempt numbers (one above any the job used) and a fresh attempt budget.
Every event carries its run (``job.run``; none means run 1), and each run has its own triggers,
leases and end record (run 1 under ``state/``, run n under ``state/r{n}/``). A run is resumed only
after its end record exists, so every step of an older run — a late delivery, a retry, an on-failure
record, a phase change — finds its run's end record and does nothing: it cannot end, advance or fail
the newer run. The completion sets (``state/committed/``) and COMMITs are shared by the runs: a
COMMIT is first-writer-wins, and a marker is written only for a task that has one.

A phase change is run by one live invocation at a time, under a lease (:class:`_StepLease`), not a
guard holding the request id: Lambda runs duplicates of an event *with the same request id*, at
the same time, and two concurrent publishers destroy each other's output (the second moves the
first's published parts back to resume "its" publish, or deletes them as a previous result). The
lease is taken with ``put_if_absent`` and renewed while its holder works; a holder that stops
renewing for a whole lease is dead (killed, timed out), and whoever then arrives — Lambda's retry of
that invocation, with the same event — takes the next generation and redoes the step, which is
idempotent (invoking a reduce task twice is harmless, and publishing resumes where it stopped).

Keys: see :mod:`mrkit.backends.aws_lambda.wire` (written there once). Reading the state back (the
plan document, runs, end records, counts) is :mod:`.state`; following a job from anywhere
(:class:`ObjectStoreJobHandle`, :func:`list_jobs`, :func:`open_job_handle`) is :mod:`.handle`; the
phase-change lease is :mod:`.lease`. Their names stay importable from here.

Why one module of about 540 lines: submitting, resuming and advancing (inside the functions) are the
rules that write a job's state, and they share its phase changes (trigger, lease, publish).

Not handled: a job whose every attempt of some task vanishes without an on-failure record (no
destination configured, or Lambda dropped the event) stays ``running``; ``status()`` shows which
tasks have not completed. Invocations that were already running when a job ended may leave keys
under ``{job}/`` (a bucket lifecycle rule on the prefix removes them; docs/serverless.md). A failed or
cancelled job's data stays until a resumed run finishes or the user deletes ``{job}/``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mrkit.backends.aws_lambda.chain import (
    after_publish,
    chain_handle,
    chain_statuses,
    is_chain,
    submit_chain_job,
)
from mrkit.backends.aws_lambda.handle import ObjectStoreJobHandle, list_jobs, open_job_handle
from mrkit.backends.aws_lambda.invokers import invoker_from_config
from mrkit.backends.aws_lambda.lease import LEASE_SECONDS, _StepLease, lease_seconds
from mrkit.backends.aws_lambda.state import (
    _attempt_counters,
    _counters,
    _load,
    _plan_from_dict,
    _plan_to_dict,
    _run_record,
    current_run,
    stopped,
)
from mrkit.backends.aws_lambda.wire import (
    DELIVERY_STRIDE,
    JOBS_INDEX,
    attempt_folders,
    attempt_key,
    build_event,
    cancelled_record,
    committed_prefix,
    decision_key,
    end_key,
    event_batch_size,
    event_run,
    intermediate_folders,
    job_member,
    lease_prefix,
    pack,
    plan_key,
    reduce_sent_key,
    run_key,
    run_prefix,
    stamp,
    trigger_key,
)
from mrkit.coordination.chain import chain_resume_refused
from mrkit.coordination.handle import JobHandle
from mrkit.coordination.options import RunOptions
from mrkit.coordination.plan import JobPlan
from mrkit.coordination.prepare import prepare_submission
from mrkit.coordination.publish import publish_output
from mrkit.coordination.resume import ResumeRefused, commit_is_whole
from mrkit.errors import ConfigError
from mrkit.model import layout
from mrkit.model.job import Job
from mrkit.model.status import JobStatus
from mrkit.model.steps import job_steps
from mrkit.model.task import TaskFailure, TaskKind, TaskResult, TaskSpec, failure_message
from mrkit.storage import open_storage
from mrkit.storage.base import Storage

# Moved to .wire, .state and .handle; importable from here as before (tests and docs name them).
__all__ = [
    "JOBS_INDEX",
    "LEASE_SECONDS",
    "ObjectStoreJobHandle",
    "ServerlessJobService",
    "advance",
    "attempt_key",
    "committed_prefix",
    "current_run",
    "end_key",
    "event_run",
    "lease_seconds",
    "list_jobs",
    "lost",
    "open_job_handle",
    "plan_key",
    "resume_job",
    "run_key",
    "run_prefix",
    "stopped",
    "submit_job",
    "trigger_key",
]


# -- submitting ------------------------------------------------------------------------------------


def submit_job(executor: Any, job: Job, inputs: Any, options: RunOptions) -> ObjectStoreJobHandle:
    """Plan ``job``, store the plan, invoke its map tasks and return at once.

    Args:
        executor: a :class:`~mrkit.backends.aws_lambda.executor.LambdaExecutor` (its invoker and storage).
        job, inputs, options: as for :func:`mrkit.submit` (``options.ttl`` does not apply: a
            serverless job's data stays in its storage until deleted, see docs/serverless.md).

    Returns:
        The job's :class:`ObjectStoreJobHandle`.

    Raises:
        ConfigError: no storage the functions reach, a job id already taken there, or bad options.
        OutputExistsError: ``output`` holds a result and ``overwrite`` is False.
        InputError: unreadable inputs.
    """
    prepared = prepare_submission(job, inputs, options, executor=executor)
    job_id, inter, plan = prepared.job_id, prepared.storage, prepared.plan
    for spec in (*plan.map_specs, *plan.reduce_specs):
        executor.check_reachable(spec.output_url)
    # The invoker recorded in the job's events; an executor may hand over its own (Dask: the
    # submitter's client, with the user's security), else it is rebuilt detached from its config.
    job_invoker = getattr(executor, "job_invoker", None)
    invoker = job_invoker() if job_invoker is not None else invoker_from_config(executor.invoker.config())
    document = {
        "plan": _plan_to_dict(plan),
        "invoker": invoker.config(),
        "submitted": time.time(),
        "executor": executor.name,
        "lease": lease_seconds(invoker.timeout()),
    }
    if not inter.put_if_absent(plan_key(job_id), json.dumps(document).encode()):
        raise ConfigError(f"job id {job_id} is already taken in {inter.url}")
    inter.put(JOBS_INDEX + job_id, b"")
    job_event = job_member(invoker.config(), batch_size=executor.batch_size)
    if plan.map_specs:
        _invoke_all(invoker, plan.map_specs, inter.url, job_event)
    else:  # no input bytes at all: the reduce phase starts at once (and publishes empty parts)
        _invoke_all(invoker, plan.reduce_specs, inter.url, job_event)
        inter.put(reduce_sent_key(job_id), b"submit")
    return ObjectStoreJobHandle(job_id, inter.url)


def _invoke_all(invoker: Any, specs: Iterable[TaskSpec], url: str, job_event: dict[str, Any]) -> None:
    """Invoke ``specs``, ``job_event["batch_size"]`` (default 1) to an event, within the payload limit."""
    groups = pack(list(specs), url, job=job_event, batch_size=event_batch_size(job_event))
    events = [build_event(group, url, job=job_event) for group in groups]
    bulk = getattr(invoker, "invoke_all", None)
    if bulk is not None:  # the invoker sends many events at once itself (Dask)
        bulk(events)
        return
    # An Invoke call is a round trip (~10-50 ms on AWS; a process spawn locally): overlap them.
    with ThreadPoolExecutor(max_workers=min(16, len(events) or 1)) as pool:
        list(pool.map(invoker.invoke, events))


# -- resuming ---------------------------------------------------------------------------------------

_ATTEMPT_SEGMENT = re.compile(r"/a(\d+)(?:[/.-]|$)")


def resume_job(
    job_id: str, storage_url: str, *, batch_size: int = 1, invoker: Any = None
) -> ObjectStoreJobHandle:
    """Put the failed or cancelled serverless job ``job_id`` back to running as its next run.

    Every task whose COMMIT (and the files it names) is still in the job's storage is kept; the
    others are invoked again, in events that carry the new run number, as fresh attempt numbers
    (one above any the job used) with a fresh attempt budget. The run starts in the first phase
    with a task to run: the map tasks left, else the reduce tasks left (the run's reduce trigger is
    taken by the resume), else one committed reduce task is delivered again so that the function
    that finds the phase complete publishes. The run is created with ``put_if_absent`` on
    ``{job}/state/runs/r{n}``, so of two concurrent resumes one wins and the other refuses.

    Args:
        job_id: the job's id.
        storage_url: the storage it was submitted with.
        batch_size: tasks per event (the executor's ``batch_size``).
        invoker: what invokes the resumed tasks (default: rebuilt from the job's plan document).

    Returns:
        The job's :class:`ObjectStoreJobHandle`.

    Raises:
        ResumeRefused: no such job in that storage, it is running or done (nothing to resume), its
            code is gone, or another resume started it meanwhile.
    """
    storage = open_storage(storage_url)
    try:
        doc = _load(storage, job_id)
    except ConfigError:
        raise ResumeRefused(
            f"cannot resume: no job {job_id} in {storage.url} (it was never submitted with this "
            "storage, or its keys were deleted)"
        ) from None
    run = current_run(storage, job_id)
    end = stopped(storage, job_id, run)
    if end is None or end["state"] == "done":
        raise ResumeRefused(f"job {job_id} is {'running' if end is None else 'done'}: nothing to resume")
    if not storage.exists(layout.job_key(job_id)):
        raise ResumeRefused(
            f"cannot resume job {job_id}: its code is gone from {storage.url} (the job failed on an "
            "mrkit that deleted a failed job's data, or someone deleted it); submit it again"
        )
    plan = _plan_from_dict(doc["plan"])
    output = open_storage(plan.output_url)
    kept = {
        phase: [s.task_id for s in specs if commit_is_whole(storage, output, job_id, s.task_id)]
        for phase, specs in (("map", plan.map_specs), ("reduce", plan.reduce_specs))
    }
    start = next((p for p in ("map", "reduce") if len(kept[p]) < len(getattr(plan, f"{p}_specs"))), "publish")
    if start == "map":
        kept["reduce"] = []  # the reduce phase starts afresh; a reduce commit found later still wins
    attempt = 1 + max(
        (
            int(m.group(1))
            for folder in attempt_folders(job_id)
            for key in storage.list(folder)
            if (m := _ATTEMPT_SEGMENT.search(key[len(job_id) :]))
        ),
        default=1,
    )
    if attempt >= DELIVERY_STRIDE:
        raise ResumeRefused(
            f"cannot resume job {job_id}: its tasks used {attempt - 1} attempt numbers; submit it again"
        )
    new = run + 1
    record = {"run": new, "submitted": time.time(), "start": start, "attempt": attempt, "kept": kept}
    if not storage.put_if_absent(run_key(job_id, new), json.dumps(record).encode()):
        raise ResumeRefused(
            f"job {job_id} changed while it was being resumed (resumed elsewhere?); nothing done"
        )
    # The completion sets become the kept tasks (a commit whose files were gone was deleted above).
    storage.delete_prefix(committed_prefix(job_id))
    for phase, tasks in kept.items():
        for task in tasks:
            storage.put(committed_prefix(job_id, phase) + task, b"")
    invoker = invoker or invoker_from_config(doc["invoker"])
    job_event = job_member(doc["invoker"], batch_size=batch_size, run=new)

    def fresh(specs: Iterable[TaskSpec], phase: str) -> list[TaskSpec]:
        return [dataclasses.replace(s, attempt=attempt) for s in specs if s.task_id not in kept[phase]]

    if start == "map":
        _invoke_all(invoker, fresh(plan.map_specs, "map"), plan.storage_url, job_event)
    elif start == "reduce":
        storage.put(trigger_key(job_id, "reduce", new), stamp(f"resume-r{new}"))
        _invoke_all(invoker, fresh(plan.reduce_specs, "reduce"), plan.storage_url, job_event)
        storage.put(reduce_sent_key(job_id, new), b"resume")
    else:  # every task is kept: the delivery of a committed reduce task completes the phase, and publishes
        last = dataclasses.replace((plan.reduce_specs or plan.map_specs)[-1], attempt=attempt)
        _invoke_all(invoker, [last], plan.storage_url, job_event)
    return ObjectStoreJobHandle(job_id, storage.url)


# -- advancing, inside the functions --------------------------------------------------------------------


def advance(
    storage: Storage, spec: TaskSpec, result: TaskResult, job_event: dict[str, Any], request_id: str
) -> None:
    """After one task attempt: record it, and start the next phase or publish when it completed one.

    Args:
        storage: the job's storage.
        spec: the attempt that ran (as the executor sent it).
        result: its result.
        job_event: the event's ``job`` member (the invoker of further tasks).
        request_id: this invocation's request id (recorded in the leases it takes).
    """
    job_id = spec.job_id
    run = event_run(job_event)
    if spec.kind is TaskKind.CALL or stopped(storage, job_id, run) is not None:
        return
    committed = storage.exists(layout.commit_key(job_id, spec.task_id))
    if not result.ok and not committed:
        failure = result.failure or TaskFailure("", "Error", "no failure reported")
        _retry_or_fail(storage, spec, job_event, failure=failure)
        return
    phase = spec.kind.value
    storage.put(committed_prefix(job_id, phase) + spec.task_id, b"")
    done = len(set(storage.list(committed_prefix(job_id, phase))))
    plan = _plan_from_dict(_load(storage, job_id)["plan"])
    if phase == "map" and done >= plan.n_map and plan.n_reduce:
        _start_reduce(storage, plan, job_event, request_id)
    elif phase == plan.output_phase[0] and done >= plan.output_phase[1]:
        _publish(storage, plan, request_id, run, job_event)  # the last reduce (or map-only map) task


def lost(storage: Storage, spec: TaskSpec, job_event: dict[str, Any], reason: str) -> None:
    """Every delivery of ``spec``'s event failed: launch its next attempt, or fail the job."""
    if stopped(storage, spec.job_id, event_run(job_event)) is not None:
        return
    if not storage.exists(layout.commit_key(spec.job_id, spec.task_id)):
        _retry_or_fail(storage, spec, job_event, lost_reason=reason)


def _retry_or_fail(
    storage: Storage,
    spec: TaskSpec,
    job_event: dict[str, Any],
    *,
    failure: TaskFailure | None = None,
    lost_reason: str = "",
) -> None:
    plan = _plan_from_dict(_load(storage, spec.job_id)["plan"])
    policy = plan.policy
    run = event_run(job_event)
    raw = storage.get_or_none(attempt_key(spec.job_id, spec.task_id, spec.attempt))
    counts: dict[str, Any] = json.loads(raw) if raw else {}
    if int(counts.get("run", 1)) != run:  # each run has a fresh attempt budget
        counts = {}
    counts = {"failed": 0, "lost": 0, "last": "", **counts, "run": run}
    if failure is not None:
        counts["failed"] += 1
        counts["last"] = failure.sentence()
        give_up = not failure.retryable or counts["failed"] >= policy.max_attempts
    else:
        counts["lost"] += 1
        counts["last"] = lost_reason
        give_up = counts["lost"] > policy.max_lost
    if give_up:
        _fail_job(storage, plan, spec, counts, failure, run)
        return
    nxt = spec.next_attempt()
    if storage.put_if_absent(attempt_key(spec.job_id, nxt.task_id, nxt.attempt), json.dumps(counts).encode()):
        _invoke_all(invoker_from_config(job_event["invoker"]), [nxt], plan.storage_url, job_event)


def _fail_job(
    storage: Storage,
    plan: JobPlan,
    spec: TaskSpec,
    counts: dict[str, Any],
    failure: TaskFailure | None,
    run: int,
) -> None:
    phase = spec.kind.value
    if failure is not None:
        message = failure_message(phase, spec, failure, counts["failed"])
        traceback = failure.traceback
    else:
        message = (
            f"{phase} task {spec.task_id} of job {spec.job_id} failed: its invocations were lost "
            f"{counts['lost']} times (last: {counts['last']})"
        )
        traceback = ""
    record = {
        "state": "failed",
        "error": message,
        "task_id": spec.task_id,
        "traceback": traceback,
        "time": time.time(),
        "counters": _attempt_counters(storage, spec.job_id, (spec.task_id, counts)),
    }
    # The intermediate data stays (commits, map outputs, job.pkl, the plan): a resume re-uses it.
    storage.put_if_absent(end_key(spec.job_id, run), json.dumps(record).encode())


def _take_trigger(storage: Storage, job_id: str, step: str, request_id: str, run: int = 1) -> bool:
    """True when this invocation owns the phase change ``step`` (``reduce`` or ``publish``) of the job.

    The owner is decided by one conditional write (``put_if_absent`` of :func:`trigger_key`), so of
    any number of invocations that complete a phase at the same instant exactly one wins, whatever
    their timing. Lambda's retries and duplicates of the winner's event carry the same request id and
    own the step too (a retry must finish what a dead owner began); they serialise on the step's
    lease (:class:`_StepLease`). No other invocation ever takes a step over on its own clock.
    """
    key = trigger_key(job_id, step, run)
    if storage.put_if_absent(key, stamp(request_id)):
        return True
    raw = storage.get_or_none(key)
    return raw is not None and json.loads(raw).get("request_id") == request_id


def _start_reduce(storage: Storage, plan: JobPlan, job_event: dict[str, Any], request_id: str) -> None:
    run = event_run(job_event)
    sent = reduce_sent_key(plan.job_id, run)
    if stopped(storage, plan.job_id, run) is not None:
        return  # the run ended (or a late call of a run that was resumed): take nothing
    if storage.exists(sent) or not _take_trigger(storage, plan.job_id, "reduce", request_id, run):
        return  # started, or another invocation (the trigger's owner) starts the reduce tasks
    lease = _StepLease.take(
        storage,
        lease_prefix(plan.job_id, "reduce", run),
        request_id,
        seconds=float(_load(storage, plan.job_id).get("lease", LEASE_SECONDS)),
        done=lambda: storage.exists(sent) or stopped(storage, plan.job_id, run) is not None,
    )
    if lease is None:
        return  # another invocation started (or is starting) the reduce tasks
    try:
        if storage.exists(sent):
            return
        _invoke_all(invoker_from_config(job_event["invoker"]), plan.reduce_specs, plan.storage_url, job_event)
        storage.put(sent, request_id.encode())
    finally:
        lease.release()


def _publish(
    storage: Storage, plan: JobPlan, request_id: str, run: int = 1, job_event: dict[str, Any] | None = None
) -> None:
    if stopped(storage, plan.job_id, run) is not None:
        return  # the run ended (or a late call of a run that was resumed): take nothing
    if not _take_trigger(storage, plan.job_id, "publish", request_id, run):
        return  # another invocation (the trigger's owner) publishes the output
    doc = _load(storage, plan.job_id)
    lease = _StepLease.take(
        storage,
        lease_prefix(plan.job_id, "publish", run),
        request_id,
        seconds=float(doc.get("lease", LEASE_SECONDS)),
        done=lambda: stopped(storage, plan.job_id, run) is not None,
    )
    if lease is None:
        return  # another invocation published (or is publishing) the output
    try:
        if stopped(storage, plan.job_id, run) is not None:
            return
        output = open_storage(plan.output_url)
        _restage(storage, output, plan)
        counters = _counters(storage, plan)
        resumed = _run_record(storage, plan.job_id, run)
        if resumed is not None:  # a resumed run: how many tasks it kept; its seconds count from the resume
            for phase in ("map", "reduce"):
                counters[f"{phase}.tasks_resumed"] = len(resumed["kept"][phase])
        seconds = time.time() - float((resumed or doc)["submitted"])
        if not lease.held():
            return  # taken over while we prepared (we were presumed dead): the new holder publishes
        decision = decision_key(plan.job_id, run)
        if not storage.put_if_absent(decision, b"publish") and storage.get_or_none(decision) == b"cancel":
            # Cancelled first: publish nothing, and end the run as cancelled in case the canceller
            # died between its decision and its end record (it would otherwise run forever).
            storage.put_if_absent(end_key(plan.job_id, run), cancelled_record())
            return
        phase, n_parts = plan.output_phase
        publish_output(
            storage,
            output,
            plan.job_id,
            n_parts,
            phase=phase,
            output_format=plan.output_format,
            overwrite=plan.overwrite,
            summary={"seconds": round(seconds, 3), "counters": counters},
        )
        record = {
            "state": "done",
            "counters": counters,
            "seconds": round(seconds, 3),
            "time": time.time(),
            "output": plan.output_url,
        }
        storage.put_if_absent(end_key(plan.job_id, run), json.dumps(record).encode())
        _discard(storage, plan)
    finally:
        lease.release()
    # A step of a multi-step job that published: this invocation submits the next step (.chain).
    after_publish(storage, plan.job_id, doc, event_batch_size(job_event or {}), submit_job)


def _restage(storage: Storage, output: Storage, plan: JobPlan) -> None:
    """Undo a publish that a crashed invocation began: move published parts back to their temp keys.

    Only a retry of the publishing invocation gets here with work to undo; on a first publish
    every temp key exists and this costs one ``size`` per part.
    """
    phase, n_parts = plan.output_phase
    for p in range(n_parts):
        manifest = json.loads(storage.get(layout.commit_key(plan.job_id, layout.task_id(phase, p))))
        if not output.exists(manifest["key"]) and output.exists(layout.part_key(p)):
            output.move(layout.part_key(p), manifest["key"])


def _discard(storage: Storage, plan: JobPlan) -> None:
    """Delete the intermediate keys of a job that is done; keep the plan, the run records and the
    end records (status reads them). Only a done job is discarded: a failed or cancelled one keeps
    everything, for a resume."""
    for folder in intermediate_folders(plan.job_id):
        storage.delete_prefix(folder)
    storage.delete(layout.job_key(plan.job_id))
    open_storage(plan.output_url).delete_prefix(f"_temporary/{plan.job_id}/")


class ServerlessJobService:
    """The :class:`~mrkit.coordination.service.JobService` of the serverless backend (``lambda://…``,
    ``lambda-local``): jobs kept in the executor's storage, advanced by the functions."""

    def __init__(self, executor: Any) -> None:
        self.executor = executor

    def submit_job(self, job: Any, inputs: Any, options: RunOptions) -> JobHandle:
        applied = options.apply(job)
        steps = job_steps(applied)
        if steps is not None:  # a multi-step job: a chain of one-step jobs (.chain)
            return submit_chain_job(self.executor, applied, steps, inputs, options, submit_job, _handle_for)
        return submit_job(self.executor, job, inputs, options)

    def handle(self, job_id: str) -> JobHandle:
        url = self.executor.require_storage()
        if is_chain(open_storage(url), job_id):
            return chain_handle(url, job_id, _handle_for, lambda *a: submit_job(self.executor, *a))
        return ObjectStoreJobHandle(job_id, url)

    def list_jobs(self) -> list[JobStatus]:
        url = self.executor.require_storage()
        return chain_statuses(url, list_jobs(url), _handle_for)

    def resume_job(self, job_id: str) -> ObjectStoreJobHandle:
        if is_chain(open_storage(self.executor.require_storage()), job_id):
            raise chain_resume_refused(job_id)
        return resume_job(job_id, self.executor.require_storage(), batch_size=self.executor.batch_size)


def _handle_for(storage_url: str, job_id: str) -> JobHandle:
    return ObjectStoreJobHandle(job_id, storage_url)
