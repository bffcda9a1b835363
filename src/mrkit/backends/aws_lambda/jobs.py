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

Keys, in the job's storage (beside those of :mod:`mrkit.model.layout` and
:mod:`mrkit.backends.aws_lambda.executor`)::

    {job}/state/plan.json                the plan: specs, output URL, format, policy (written once)
    {job}/state/committed/{phase}/{task} a completed task (empty; listed to count a phase)
    {job}/state/attempt/{task}/a{n}      guard: attempt n was launched once; JSON failed/lost counts
    {job}/state/trigger/{step}           who owns a phase change (reduce, publish): put_if_absent, request id
    {job}/state/reduce/g{n}              lease, generation n: which of the owner's deliveries starts them
    {job}/state/reduce-sent              the reduce tasks were invoked
    {job}/state/publish/g{n}             lease, generation n: who publishes the output
    {job}/state/end                      the job's end, first writer wins: done (with counters and
                                         seconds, written after _SUCCESS), failed or cancelled
    {job}/state/runs/r{n}                run n >= 2 was started by a resume (put_if_absent): kept
                                         tasks, first attempt number, start phase, time
    {job}/state/r{n}/…                   run n's trigger/, reduce/g{k}, reduce-sent, publish/g{k}, end
    _jobs/{job}                          index of submitted jobs (empty), listed by ``list_jobs``

Why one module of about 1,000 lines: submitting, resuming, advancing (inside the functions) and following
a job all read and write the same keys, listed above once; :class:`ObjectStoreJobHandle` would be
the first to move out.

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
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mrkit.coordination.handle import JobHandle
from mrkit.coordination.options import RunOptions
from mrkit.coordination.plan import JobPlan, RetryPolicy
from mrkit.coordination.prepare import prepare_submission
from mrkit.coordination.publish import publish_output
from mrkit.coordination.resume import ResumeRefused, commit_is_whole
from mrkit.data.output import read_output
from mrkit.errors import ConfigError, JobCancelled, JobFailed
from mrkit.model import layout
from mrkit.model.job import Job
from mrkit.model.status import JobStatus
from mrkit.model.task import TaskFailure, TaskKind, TaskResult, TaskSpec
from mrkit.storage import open_storage
from mrkit.storage.base import Storage


def plan_key(job_id: str) -> str:
    return f"{job_id}/state/plan.json"


def committed_prefix(job_id: str, phase: str) -> str:
    return f"{job_id}/state/committed/{phase}/"


def attempt_key(job_id: str, task_id: str, attempt: int) -> str:
    return f"{job_id}/state/attempt/{task_id}/a{attempt}"


def run_prefix(job_id: str, run: int = 1) -> str:
    """Where run ``run`` keeps its phase changes and end: ``{job}/state/`` for the first run (as
    before resumes existed), ``{job}/state/r{run}/`` for each resumed run."""
    return f"{job_id}/state/" if run <= 1 else f"{job_id}/state/r{run}/"


def end_key(job_id: str, run: int = 1) -> str:
    return run_prefix(job_id, run) + "end"


def run_key(job_id: str, run: int) -> str:
    return f"{job_id}/state/runs/r{run}"


def current_run(storage: Storage, job_id: str) -> int:
    """The job's current run: 1, or the highest ``{job}/state/runs/r{n}`` a resume created."""
    runs = [int(key.rsplit("/r", 1)[1]) for key in storage.list(f"{job_id}/state/runs/")]
    return max(runs, default=1)


def event_run(job_event: dict[str, Any]) -> int:
    """The run an event belongs to (events of a job's first run carry none)."""
    return int(job_event.get("run", 1))


def _run_record(storage: Storage, job_id: str, run: int) -> dict[str, Any] | None:
    """What the resume that started ``run`` recorded (None for the first run)."""
    raw = storage.get_or_none(run_key(job_id, run)) if run > 1 else None
    return None if raw is None else dict(json.loads(raw))


JOBS_INDEX = "_jobs/"  # one empty key per submitted job, so that listing jobs lists only this folder
LEASE_SECONDS = 30.0  # a phase change's lease (shorter for functions whose timeout is short)


def lease_seconds(function_timeout: float) -> float:
    """The lease of a job's phase changes: a quarter of the function's timeout, 1 to 30 seconds, so
    that a retry of a dead holder can wait one lease out and still do the step in its own time.

    >>> lease_seconds(900), lease_seconds(20)
    (30.0, 5.0)
    """
    return max(1.0, min(LEASE_SECONDS, function_timeout / 4))


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
    from mrkit.backends.aws_lambda.executor import invoker_from_config

    prepared = prepare_submission(job, inputs, options, executor=executor)
    job_id, inter, plan = prepared.job_id, prepared.storage, prepared.plan
    for spec in (*plan.map_specs, *plan.reduce_specs):
        executor.check_reachable(spec.output_url)
    invoker = invoker_from_config(executor.invoker.config())
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
    job_event: dict[str, Any] = {"invoker": invoker.config()}
    if executor.batch_size > 1:  # tiny tasks: several per invocation, here and inside the functions
        job_event["batch_size"] = executor.batch_size
    if plan.map_specs:
        _invoke_all(invoker, plan.map_specs, inter.url, job_event)
    else:  # no input bytes at all: the reduce phase starts at once (and publishes empty parts)
        _invoke_all(invoker, plan.reduce_specs, inter.url, job_event)
        inter.put(f"{job_id}/state/reduce-sent", b"submit")
    return ObjectStoreJobHandle(job_id, inter.url)


def _plan_to_dict(plan: JobPlan) -> dict[str, Any]:
    return {
        "job_id": plan.job_id,
        "name": plan.name,
        "storage_url": plan.storage_url,
        "output_url": plan.output_url,
        "output_format": plan.output_format,
        "overwrite": plan.overwrite,
        "policy": dataclasses.asdict(plan.policy),
        "input_bytes": plan.input_bytes,
        "map_specs": [s.encode().decode() for s in plan.map_specs],
        "reduce_specs": [s.encode().decode() for s in plan.reduce_specs],
    }


def _plan_from_dict(data: dict[str, Any]) -> JobPlan:
    return JobPlan(
        job_id=data["job_id"],
        name=data["name"],
        storage_url=data["storage_url"],
        output_url=data["output_url"],
        output_format=data["output_format"],
        overwrite=data["overwrite"],
        policy=RetryPolicy(**data["policy"]),
        input_bytes=data["input_bytes"],
        map_specs=tuple(TaskSpec.decode(s) for s in data["map_specs"]),
        reduce_specs=tuple(TaskSpec.decode(s) for s in data["reduce_specs"]),
    )


def _invoke_all(invoker: Any, specs: Iterable[TaskSpec], url: str, job_event: dict[str, Any]) -> None:
    """Invoke ``specs``, ``job_event["batch_size"]`` (default 1) to an event, within the payload limit."""
    from mrkit.backends.aws_lambda.executor import build_event, pack

    groups = pack(list(specs), url, job=job_event, batch_size=int(job_event.get("batch_size", 1)))
    events = [build_event(group, url, job=job_event) for group in groups]
    # An Invoke call is a round trip (~10-50 ms on AWS; a process spawn locally): overlap them.
    with ThreadPoolExecutor(max_workers=min(16, len(events) or 1)) as pool:
        list(pool.map(invoker.invoke, events))


# -- resuming ---------------------------------------------------------------------------------------

_ATTEMPT_SEGMENT = re.compile(r"/a(\d+)(?:[/.-]|$)")


def resume_job(job_id: str, storage_url: str, *, batch_size: int = 1) -> ObjectStoreJobHandle:
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

    Returns:
        The job's :class:`ObjectStoreJobHandle`.

    Raises:
        ResumeRefused: no such job in that storage, it is running or done (nothing to resume), its
            code is gone, or another resume started it meanwhile.
    """
    from mrkit.backends.aws_lambda.executor import DELIVERY_STRIDE, invoker_from_config

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
            for folder in ("lambda/claims", "lambda/done", "state/attempt")
            for key in storage.list(f"{job_id}/{folder}/")
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
    storage.delete_prefix(f"{job_id}/state/committed/")
    for phase, tasks in kept.items():
        for task in tasks:
            storage.put(committed_prefix(job_id, phase) + task, b"")
    invoker = invoker_from_config(doc["invoker"])
    job_event: dict[str, Any] = {"invoker": doc["invoker"], "run": new}
    if batch_size > 1:
        job_event["batch_size"] = batch_size

    def fresh(specs: Iterable[TaskSpec], phase: str) -> list[TaskSpec]:
        return [dataclasses.replace(s, attempt=attempt) for s in specs if s.task_id not in kept[phase]]

    if start == "map":
        _invoke_all(invoker, fresh(plan.map_specs, "map"), plan.storage_url, job_event)
    elif start == "reduce":
        stamp = json.dumps({"request_id": f"resume-r{new}", "time": time.time()}).encode()
        storage.put(trigger_key(job_id, "reduce", new), stamp)
        _invoke_all(invoker, fresh(plan.reduce_specs, "reduce"), plan.storage_url, job_event)
        storage.put(run_prefix(job_id, new) + "reduce-sent", b"resume")
    else:  # every task is kept: the delivery of a committed reduce task completes the phase, and publishes
        last = dataclasses.replace(plan.reduce_specs[-1], attempt=attempt)
        _invoke_all(invoker, [last], plan.storage_url, job_event)
    return ObjectStoreJobHandle(job_id, storage.url)


_PLANS: dict[str, dict[str, Any]] = {}
_PLANS_LOCK = threading.Lock()


def _load(storage: Storage, job_id: str) -> dict[str, Any]:
    """The job's plan document, read once per process (it never changes)."""
    with _PLANS_LOCK:
        doc = _PLANS.get(job_id)
    if doc is None:
        raw = storage.get_or_none(plan_key(job_id))
        if raw is None:
            raise ConfigError(f"no job {job_id!r} in {storage.url} (no {plan_key(job_id)})")
        doc = json.loads(raw)
        with _PLANS_LOCK:
            if len(_PLANS) > 16:
                _PLANS.clear()
            _PLANS[job_id] = doc
    return doc


# -- advancing, inside the functions --------------------------------------------------------------------


def stopped(storage: Storage, job_id: str, run: int = 1) -> dict[str, Any] | None:
    """The end record (done, failed or cancelled) of run ``run`` of the job, or None while it runs.

    A run is resumed only once it has ended, so an event of an older run always finds its run's end
    record here and is dropped: this one read fences every stale event.
    """
    raw = storage.get_or_none(end_key(job_id, run))
    return None if raw is None else dict(json.loads(raw))


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
    if phase == "map" and done >= plan.n_map:
        _start_reduce(storage, plan, job_event, request_id)
    elif phase == "reduce" and done >= plan.n_reduce:
        _publish(storage, plan, request_id, run)


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
    from mrkit.backends.aws_lambda.executor import invoker_from_config

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
        retry_note = "" if failure.retryable else " (not retried: another attempt would fail the same way)"
        where = spec.split.describe() if spec.split is not None and not failure.where else ""
        detail = failure.sentence() if not where else f"{where}: {failure.sentence()}"
        message = (
            f"{phase} task {spec.task_id} of job {spec.job_id} failed after {counts['failed']} "
            f"attempt{'s' * (counts['failed'] != 1)}{retry_note}: {detail}"
        )
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


def trigger_key(job_id: str, step: str, run: int = 1) -> str:
    return f"{run_prefix(job_id, run)}trigger/{step}"


def _take_trigger(storage: Storage, job_id: str, step: str, request_id: str, run: int = 1) -> bool:
    """True when this invocation owns the phase change ``step`` (``reduce`` or ``publish``) of the job.

    The owner is decided by one conditional write (``put_if_absent`` of :func:`trigger_key`), so of
    any number of invocations that complete a phase at the same instant exactly one wins, whatever
    their timing. Lambda's retries and duplicates of the winner's event carry the same request id and
    own the step too (a retry must finish what a dead owner began); they serialise on the step's
    lease (:class:`_StepLease`). No other invocation ever takes a step over on its own clock.
    """
    key = trigger_key(job_id, step, run)
    record = json.dumps({"request_id": request_id, "time": time.time()}).encode()
    if storage.put_if_absent(key, record):
        return True
    raw = storage.get_or_none(key)
    return raw is not None and json.loads(raw).get("request_id") == request_id


def _start_reduce(storage: Storage, plan: JobPlan, job_event: dict[str, Any], request_id: str) -> None:
    from mrkit.backends.aws_lambda.executor import invoker_from_config

    run = event_run(job_event)
    state = run_prefix(plan.job_id, run)
    sent = state + "reduce-sent"
    if stopped(storage, plan.job_id, run) is not None:
        return  # the run ended (or a late call of a run that was resumed): take nothing
    if storage.exists(sent) or not _take_trigger(storage, plan.job_id, "reduce", request_id, run):
        return  # started, or another invocation (the trigger's owner) starts the reduce tasks
    lease = _StepLease.take(
        storage,
        state + "reduce/",
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


def _publish(storage: Storage, plan: JobPlan, request_id: str, run: int = 1) -> None:
    if stopped(storage, plan.job_id, run) is not None:
        return  # the run ended (or a late call of a run that was resumed): take nothing
    if not _take_trigger(storage, plan.job_id, "publish", request_id, run):
        return  # another invocation (the trigger's owner) publishes the output
    doc = _load(storage, plan.job_id)
    lease = _StepLease.take(
        storage,
        run_prefix(plan.job_id, run) + "publish/",
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
        publish_output(
            storage,
            output,
            plan.job_id,
            plan.n_reduce,
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


class _StepLease:
    """The right to run one phase change of a job, held by one live invocation at a time.

    Generation ``n`` of the lease is the key ``{prefix}g{n}``, created with ``put_if_absent`` and
    holding a token unique to its holder, which rewrites it every ``seconds / 4`` while it works.
    Whoever finds generation ``n`` taken watches it (polling, bounded by one lease):

    * the step's ``done`` test turns true: nothing to do;
    * the key changes: its holder is alive (and if it dies later, Lambda's retry of *its* event
      comes back here): nothing to do;
    * it stays unchanged for a whole lease: its holder is dead; take generation ``n + 1``.

    Liveness is judged by observed change, on this process's clock, never by comparing timestamps
    written by other machines. A holder checks :meth:`held` before irreversible work: a slow holder
    presumed dead and replaced steps aside.
    """

    def __init__(self, storage: Storage, key: str, next_key: str, record: dict[str, Any], seconds: float):
        self.storage, self.key, self.next_key = storage, key, next_key
        self._record, self._seconds = record, seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="mrkit-lease", daemon=True)
        self._thread.start()

    @classmethod
    def take(
        cls, storage: Storage, prefix: str, request_id: str, *, seconds: float, done: Any
    ) -> _StepLease | None:
        """Take the lease, or return None when the step is done or a live invocation holds it."""
        import uuid

        record = {"token": uuid.uuid4().hex, "request_id": request_id, "renewals": 0}
        n = 0
        while True:
            key = f"{prefix}g{n}"
            if storage.put_if_absent(key, json.dumps(record).encode()):
                return cls(storage, key, f"{prefix}g{n + 1}", record, seconds)
            if storage.exists(f"{prefix}g{n + 1}"):
                n += 1  # superseded generation
                continue
            if cls._watch(storage, key, seconds, done) != "dead":
                return None
            n += 1

    @staticmethod
    def _watch(storage: Storage, key: str, seconds: float, done: Any) -> str:
        first = storage.get_or_none(key)
        until = time.monotonic() + seconds
        pause = min(0.25, seconds / 8)
        while True:
            if done():
                return "done"
            now = storage.get_or_none(key)
            if now != first:
                return "alive"  # renewed (or the job's state was discarded: it ended)
            if time.monotonic() > until:
                return "dead"
            time.sleep(pause)

    def _renew(self) -> None:
        while not self._stop.wait(self._seconds / 4):
            if self.storage.exists(self.next_key):
                return  # replaced: stop claiming to be alive
            self._record["renewals"] += 1
            try:
                self.storage.put(self.key, json.dumps(self._record).encode())
            except Exception:  # a failed renewal is retried at the next tick; one lease of them is death
                continue

    def held(self) -> bool:
        """False once another invocation took the next generation (we were presumed dead)."""
        return not self.storage.exists(self.next_key)

    def release(self) -> None:
        """Stop renewing (the key stays: the step's done marker, not the lease, says it finished).

        Joined, not left to run: on AWS a sandbox is frozen after the handler returns and thawed
        for the next invocation, where a leftover renewal would keep a dead holder looking alive.
        """
        self._stop.set()
        self._thread.join()


def _restage(storage: Storage, output: Storage, plan: JobPlan) -> None:
    """Undo a publish that a crashed invocation began: move published parts back to their temp keys.

    Only a retry of the publishing invocation gets here with work to undo; on a first publish
    every temp key exists and this costs one ``size`` per part.
    """
    for p in range(plan.n_reduce):
        manifest = json.loads(storage.get(layout.commit_key(plan.job_id, layout.task_id("reduce", p))))
        if not output.exists(manifest["key"]) and output.exists(layout.part_key(p)):
            output.move(layout.part_key(p), manifest["key"])


def _counters(storage: Storage, plan: JobPlan) -> dict[str, int]:
    """Job counters from the winning attempts' manifests, plus attempts and deliveries per phase."""
    totals: dict[str, int] = {}
    for phase, specs in (("map", plan.map_specs), ("reduce", plan.reduce_specs)):
        totals[f"{phase}.tasks"] = len(specs)
        for spec in specs:
            manifest = json.loads(storage.get(layout.commit_key(plan.job_id, spec.task_id)))
            for name, value in manifest.get("counters", {}).items():
                key = name if name.startswith("user.") else f"{phase}.{name}"
                totals[key] = totals.get(key, 0) + int(value)
    totals.update(_attempt_counters(storage, plan.job_id))
    return totals


def _attempt_counters(
    storage: Storage, job_id: str, latest: tuple[str, dict[str, Any]] | None = None
) -> dict[str, int]:
    """``{phase}.attempts_launched/_failed/_lost``, ``{phase}.deliveries`` and
    ``{phase}.duplicates_skipped`` (deliveries that did not run committed work) from the claims and
    attempt guards (read before they are deleted with the job's intermediate data).

    Args:
        latest: ``(task id, counts)`` of a failure not yet written to a guard (the one that ends
            the job), counted too.
    """
    totals: dict[str, int] = {}

    def add(name: str, task: str, n: int) -> None:
        key = f"{task.split('-', 1)[0]}.{name}"
        totals[key] = totals.get(key, 0) + n

    attempts: set[tuple[str, str]] = set()
    for key in storage.list(f"{job_id}/lambda/claims/"):
        task, attempt, _delivery = key.split("/")[-3:]
        add("deliveries", task, 1)
        attempts.add((task, attempt))
    for task, _attempt in attempts:
        add("attempts_launched", task, 1)
    for key in storage.list(f"{job_id}/lambda/skipped/"):
        add("duplicates_skipped", key.split("/")[-2], 1)
    for task, counts in _task_failure_counts(storage, job_id, latest).items():
        add("attempts_failed", task, counts[0])
        add("attempts_lost", task, counts[1])
    return totals


def _task_failure_counts(
    storage: Storage, job_id: str, latest: tuple[str, dict[str, Any]] | None = None
) -> dict[str, tuple[int, int]]:
    """Task id -> (attempts failed, attempts lost), from the attempt guards: the guard of attempt n
    holds the counts of the run's attempts before n, so a task's counts in a run are the largest of
    its guards' in that run, summed over the runs (each resumed run counts afresh)."""
    per_run: dict[tuple[str, int], tuple[int, int]] = {}
    found = [
        (key.split("/")[-2], storage.get_or_none(key)) for key in storage.list(f"{job_id}/state/attempt/")
    ]
    guards = [(task, json.loads(raw)) for task, raw in found if raw]
    if latest is not None:
        guards.append(latest)
    for task, counts in guards:
        where = (task, int(counts.get("run", 1)))
        failed, lost = per_run.get(where, (0, 0))
        per_run[where] = (max(failed, int(counts["failed"])), max(lost, int(counts["lost"])))
    out: dict[str, tuple[int, int]] = {}
    for (task, _run), (failed, lost) in per_run.items():
        total = out.get(task, (0, 0))
        out[task] = (total[0] + failed, total[1] + lost)
    return out


def _discard(storage: Storage, plan: JobPlan) -> None:
    """Delete the intermediate keys of a job that is done; keep the plan, the run records and the
    end records (status reads them). Only a done job is discarded: a failed or cancelled one keeps
    everything, for a resume."""
    for folder in ["map", "reduce", "input", "state/committed", "state/attempt", "lambda"]:
        storage.delete_prefix(f"{plan.job_id}/{folder}/")
    storage.delete(layout.job_key(plan.job_id))
    open_storage(plan.output_url).delete_prefix(f"_temporary/{plan.job_id}/")


# -- following a job from anywhere -----------------------------------------------------------------------


def list_jobs(storage_url: str) -> list[JobStatus]:
    """The status of every job submitted with this storage, newest first."""
    storage = open_storage(storage_url)
    ids = [key[len(JOBS_INDEX) :] for key in storage.list(JOBS_INDEX)]
    found = [ObjectStoreJobHandle(job_id, storage_url).status() for job_id in ids]
    return sorted((s for s in found if s.state != "unknown"), key=lambda s: -float(s.submitted or 0))


def open_job_handle(job_id: str, storage_url: str) -> ObjectStoreJobHandle:
    """A handle on the serverless job ``job_id`` whose state lies in ``storage_url``.

    This is the hook for ``mrkit status/result/cancel/logs ID --storage URL``.

    Raises:
        ConfigError: there is no such job in that storage.
    """
    handle = ObjectStoreJobHandle(job_id, storage_url)
    _load(handle.storage, job_id)
    return handle


class ObjectStoreJobHandle(JobHandle):
    """Follows a serverless job by reading its state from the object store (from any process).

    Args:
        job_id: the job's id.
        storage_url: the job's storage (the executor's ``storage=``).
        poll_interval: seconds between state reads in :meth:`wait` and :meth:`logs` with ``follow``.
    """

    def __init__(self, job_id: str, storage_url: str, *, poll_interval: float = 0.25) -> None:
        self.id = job_id
        self.storage_url = storage_url
        self.storage = open_storage(storage_url)
        self.poll_interval = poll_interval

    def status(self) -> JobStatus:
        """The job's :class:`~mrkit.model.status.JobStatus` (see :meth:`_status_dict`)."""
        return JobStatus.from_dict(self._status_dict())

    def _status_dict(self) -> dict[str, Any]:
        """The job's state, in the shape ``mrkit status`` prints for every asynchronous executor.

        Returns:
            ``{"id", "name", "executor", "state", "phase", "submitted", "seconds", "output",
            "tasks": {"map": {"done", "total"}, "reduce": {…}}, "attempts": {"map", "reduce"},
            "failures": {…}, "lost": {…}, "duplicates_skipped": {…}, "in_flight", "workers"}``;
            ``state`` is running, done, failed, cancelled or unknown (no such job); a done job adds
            ``counters``, a failed one ``error``. Attempt counts of an ended job come from its
            counters (its claims are gone).
        """
        try:
            doc = _load(self.storage, self.id)
        except ConfigError:
            return {"id": self.id, "state": "unknown", "error": f"no job {self.id} in {self.storage_url}"}
        plan = doc["plan"]
        totals = {"map": len(plan["map_specs"]), "reduce": len(plan["reduce_specs"])}
        status: dict[str, Any] = {
            "id": self.id,
            "name": plan["name"],
            "executor": doc.get("executor", ""),
            "submitted": doc["submitted"],
            "seconds": round(time.time() - doc["submitted"], 3),
            "output": None if "#" in plan["output_url"] else plan["output_url"].removeprefix("file://"),
            "workers": [doc.get("executor", "")],
            "in_flight": 0,
        }
        zero = {"map": 0, "reduce": 0}
        run = current_run(self.storage, self.id)
        if run > 1:
            status["run"] = run
        end = stopped(self.storage, self.id, run)
        if end is not None:
            counters = end.get("counters", {})
            done = totals if end["state"] == "done" else zero
            status.update(
                {k: v for k, v in end.items() if k not in ("traceback", "time")},
                phase="end",
                tasks={p: {"done": done[p], "total": totals[p]} for p in totals},
                attempts={p: counters.get(f"{p}.attempts_launched", 0) for p in totals},
                failures={p: counters.get(f"{p}.attempts_failed", 0) for p in totals},
                lost={p: counters.get(f"{p}.attempts_lost", 0) for p in totals},
                duplicates_skipped={p: counters.get(f"{p}.duplicates_skipped", 0) for p in totals},
            )
            if "seconds" in end:
                status["seconds"] = end["seconds"]
            return status
        done = {p: len(set(self.storage.list(committed_prefix(self.id, p)))) for p in totals}
        attempts: dict[str, set[str]] = {"map": set(), "reduce": set()}
        for key in self.storage.list(f"{self.id}/lambda/claims/"):
            task, attempt, _delivery = key.split("/")[-3:]
            attempts[task.split("-", 1)[0]].add(f"{task}/{attempt}")
        finished = {
            "/".join(k.split("/")[-2:]).removesuffix(".lost")
            for k in self.storage.list(f"{self.id}/lambda/done/")
        }
        failures, lost = dict(zero), dict(zero)
        for task, (failed, was_lost) in _task_failure_counts(self.storage, self.id).items():
            phase = task.split("-", 1)[0]
            failures[phase] += failed
            lost[phase] += was_lost
        phase = next((p for p in ("map", "reduce") if done[p] < totals[p]), "publish")
        status.update(
            state="running",
            phase=phase,
            tasks={p: {"done": done[p], "total": totals[p]} for p in totals},
            attempts={p: len(attempts[p]) for p in totals},
            failures=failures,
            lost=lost,
            in_flight=sum(len(a - finished) for a in attempts.values()),
            duplicates_skipped={
                p: sum(
                    1
                    for k in self.storage.list(f"{self.id}/lambda/skipped/")
                    if k.split("/")[-2].startswith(p)
                )
                for p in totals
            },
        )
        return status

    def wait(self, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            end = stopped(self.storage, self.id, current_run(self.storage, self.id))
            if end is not None:
                return self._finish(end)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} still running after {timeout}s: {self.status()}")
            time.sleep(self.poll_interval)

    def _finish(self, end: dict[str, Any]) -> Any:
        from mrkit.coordination.result import Result

        if end["state"] == "cancelled":
            raise JobCancelled(f"job {self.id} was cancelled", job_id=self.id)
        if end["state"] == "failed":
            raise JobFailed(
                end["error"],
                job_id=self.id,
                task_id=end.get("task_id", ""),
                remote_traceback=end.get("traceback", ""),
            )
        output = _load(self.storage, self.id)["plan"]["output_url"]
        pairs = list(read_output(output)) if "#" in output else None
        return Result(
            self.id,
            None if pairs is not None else output.removeprefix("file://"),
            end.get("counters", {}),
            float(end.get("seconds", 0.0)),
            pairs,
        )

    def cancel(self) -> bool:
        """Record the cancellation of the job's current run (invocations that start afterwards do
        nothing); False when it had already ended. The intermediate data stays, for
        :func:`resume_job`."""
        record = {"state": "cancelled", "time": time.time()}
        run = current_run(self.storage, self.id)
        return self.storage.put_if_absent(end_key(self.id, run), json.dumps(record).encode())

    def logs(self, follow: bool = False) -> Iterator[str]:
        """One line per delivery and per result, in time order.

        With ``follow``, keep polling (every ``poll_interval``) for new lines until the job ends,
        then print how it ended. A job that succeeded deletes its deliveries and results with its
        intermediate data, so only a follower sees them all.
        """
        seen: set[str] = set()
        while True:
            end = stopped(self.storage, self.id, current_run(self.storage, self.id))
            for _, line in sorted(self._new_log_lines(seen), key=lambda item: item[0]):
                yield line
            if not follow:
                return
            if end is not None:
                yield f"job {self.id} {end['state']}" + (f": {end['error']}" if end.get("error") else "")
                return
            time.sleep(self.poll_interval)

    def _new_log_lines(self, seen: set[str]) -> list[tuple[float, str]]:
        """The log lines of deliveries and results whose keys are not in ``seen`` (added to it)."""
        lines: list[tuple[float, str]] = []
        for key in self.storage.list(f"{self.id}/lambda/claims/"):
            raw = None if key in seen else self.storage.get_or_none(key)
            if raw is None:
                continue
            seen.add(key)
            claim = json.loads(raw)
            task, attempt, delivery = key.split("/")[-3:]
            lines.append(
                (
                    claim["time"],
                    f"{task} {attempt} delivery {delivery[1:]} started (request {claim['request_id']})",
                )
            )
        for key in self.storage.list(f"{self.id}/lambda/done/"):
            raw = None if key in seen else self.storage.get_or_none(key)
            if raw is None:
                continue
            seen.add(key)
            task, attempt = key.split("/")[-2:]
            if attempt.endswith(".lost"):
                lines.append((time.time(), f"{task} {attempt[:-5]} lost: {json.loads(raw).get('reason')}"))
                continue
            result = TaskResult.decode(raw)
            state = (
                ("committed" if result.committed else "ok (duplicate)")
                if result.ok
                else f"failed: {result.failure.sentence() if result.failure else '?'}"
            )
            lines.append(
                (time.time(), f"{task} {attempt} {state} in {result.seconds:.3f}s on {result.worker}")
            )
        return lines


class ServerlessJobService:
    """The :class:`~mrkit.coordination.service.JobService` of the serverless backend (``lambda://…``,
    ``lambda-local``): jobs kept in the executor's storage, advanced by the functions."""

    def __init__(self, executor: Any) -> None:
        self.executor = executor

    def submit_job(self, job: Any, inputs: Any, options: RunOptions) -> ObjectStoreJobHandle:
        return submit_job(self.executor, job, inputs, options)

    def handle(self, job_id: str) -> ObjectStoreJobHandle:
        return ObjectStoreJobHandle(job_id, self.executor.require_storage())

    def list_jobs(self) -> list[JobStatus]:
        return list_jobs(self.executor.require_storage())

    def resume_job(self, job_id: str) -> ObjectStoreJobHandle:
        return resume_job(job_id, self.executor.require_storage(), batch_size=self.executor.batch_size)
