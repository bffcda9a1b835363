"""The AWS Lambda entry point: ``mrkit.backends.aws_lambda.handler.handler(event, context)``.

The same handler runs on AWS (``mrkit lambda deploy`` sets it as the function's handler) and in
the local function runtime (``lambda-local``). The event is JSON, built by
:func:`mrkit.backends.aws_lambda.wire.build_event` (its format and the keys below are written there),
and carries references only: the specs, the job's storage (results and claims are written there)
and, for a serverless job, the ``job`` member (the invoker, the run: an event of a run that has ended
runs nothing, writes nothing)

or a Lambda on-failure destination record (``requestContext.condition`` = ``RetriesExhausted``)
whose ``requestPayload`` is such an event: its tasks are reported lost, except that a task whose own
code ended every delivery (``Runtime.ExitError`` with an exit status or a crash signal, not SIGKILL)
gets a failed ``WorkerCrashed`` result instead, and a task that had reported finishes the phase
change its invocation may have owned (as the original request id).

For each spec, one invocation:

1. **Claims a delivery number** ``n`` (``put_if_absent`` on ``…/claims/{task}/a{attempt}/d{n}``) and
   runs the task as attempt ``attempt + 1000 * n``. Lambda delivers an event at least once: it
   retries a delivery that crashed or timed out and, rarely, delivers one twice. Without distinct
   attempt numbers, two deliveries would write the same attempt keys, and the one that lost the
   commit would delete the winner's files (the runtime removes a losing attempt's keys).
2. **Runs** :func:`mrkit.execution.runtime.run_task` under :func:`mrkit.execution.watchdog.watch`: first
   attempt wins the commit, so a duplicate changes nothing in the output; a user error is a result
   with ``ok=False``, never an exception. An attempt without progress for ``task_timeout`` seconds
   stores a ``TaskTimeout`` result naming its record, advances the job, then ends the invocation
   (the runtime's retry of the delivery finds the result and returns it).
3. **Writes the result** to ``…/done/{task}/a{attempt}`` with ``put_if_absent`` (the first delivery to
   finish reports; a delivery that finds a result already there returns it without running).
4. For a serverless job, **records the delivery's task event** (one PUT, :mod:`.task_events`) and
   **advances the job** (:func:`mrkit.backends.aws_lambda.jobs.advance`): the invocation that
   completes a phase starts the next one or publishes the output.

Returns ``{"results": [TaskResult JSON, ...]}``, the response of a synchronous invocation.

Raises:
    Only for infrastructure failures (e.g. storage unreachable): Lambda then counts the delivery
    as failed and retries it, which step 1 makes safe.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from typing import Any

from mrkit.backends.aws_lambda import task_events
from mrkit.backends.aws_lambda.wire import (
    DELIVERY_STRIDE,
    MAX_DELIVERIES,
    claim_key,
    crash_description,
    crashed_result,
    event_key,
    event_run,
    is_failure_record,
    lost_key,
    lost_record,
    parse_event,
    parse_failure_record,
    result_key,
    skipped_key,
    stamp,
)
from mrkit.coordination.events import TaskEvent
from mrkit.execution.runtime import run_task, storage_for
from mrkit.execution.watchdog import end_process, watch
from mrkit.model import layout
from mrkit.model.task import TaskFailure, TaskResult, TaskSpec
from mrkit.storage.base import Storage


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Run the tasks of ``event`` (see the module docstring for the contract).

    Args:
        event: an mrkit event, or an on-failure destination record wrapping one.
        context: the Lambda context (``aws_request_id``, ``function_name`` are used).

    Returns:
        ``{"results": [...]}``: each task's :class:`TaskResult` as JSON text.

    Raises:
        ConfigError: not an mrkit event (or a newer format than this mrkit understands).
    """
    inv = _Invocation.of(context)
    if is_failure_record(event):
        return _report_lost(event, inv)
    parsed = parse_event(event)
    results = [_run_one(spec, parsed.results, parsed.job, inv) for spec in parsed.specs]
    return {"results": [r.encode().decode() for r in results]}


@dataclasses.dataclass(frozen=True)
class _Invocation:
    """What the handler reads of its context: who runs (request id, worker label, the worker its
    events name), the function's memory (its events' ``memory_mb``), and whether a timeout ends
    the process."""

    request_id: str
    label: str
    worker: str
    memory_mb: int
    ends_process: bool

    @classmethod
    def of(cls, context: Any) -> _Invocation:
        request_id = str(getattr(context, "aws_request_id", "") or "unknown")
        label = (
            getattr(context, "worker_label", None)
            or f"lambda:{getattr(context, 'function_name', '?')}:{request_id[:8]}"
        )
        return cls(
            request_id,
            label,
            str(getattr(context, "event_worker", "") or request_id),
            int(getattr(context, "memory_limit_in_mb", 0) or 0),
            # A Lambda invocation ends itself after a timeout (the only way to stop a stuck thread); a
            # Dask task must not end the worker process that other jobs share (.dask_jobs).
            bool(getattr(context, "ends_process_on_timeout", True)),
        )

    def event(self, spec: TaskSpec, outcome: str, result: TaskResult | None = None, **kw: Any) -> TaskEvent:
        """The task event of this invocation's delivery of ``spec`` (:mod:`.task_events`)."""
        kw.setdefault("worker", self.worker)
        return task_events.delivery_event(spec, outcome, result, memory_mb=self.memory_mb, **kw)


def _outcome(result: TaskResult) -> str:
    return "committed" if result.ok and result.committed else "discarded" if result.ok else "failed"


def _run_one(spec: TaskSpec, url: str, job: dict[str, Any] | None, inv: _Invocation) -> TaskResult:
    started = time.time()
    storage = storage_for(url)
    key = result_key(spec.job_id, spec.task_id, spec.attempt)
    request_id, label = inv.request_id, inv.label
    if job is not None and _job_stopped(storage, spec.job_id, job):
        # The event's run has ended (done, failed, cancelled, or resumed as a newer run, which
        # happens only after it ended): write nothing, so a late event changes no state (only the
        # event of a delivery that its run's cancel dropped is recorded).
        _note_cancelled(storage, spec, job, inv, started)
        return TaskResult(
            spec.task_id,
            spec.attempt,
            ok=False,
            worker=label,
            failure=TaskFailure(
                "", "JobStopped", f"job {spec.job_id} has already ended; task not run", retryable=False
            ),
        )
    stored = storage.get_or_none(key)
    if stored is not None:
        result = TaskResult.decode(stored)  # a duplicate that arrived after the first delivery ended
        _note_skipped(storage, spec, job, inv, started)
    elif (done := _committed_result(storage, spec, label)) is not None:
        # The task committed already (another attempt, or this one before its invocation died): a
        # duplicate event must not run committed work again. (The runtime skips it too; this guard
        # also spares the claim and the job's code.)
        result, winner = done
        storage.put_if_absent(key, result.encode())
        if job is not None and winner is not None:  # our attempt committed: its event, if it died first
            key_, start, worker_ = winner
            event = inv.event(spec, "committed", result, start=start or started, worker=worker_ or inv.worker)
            task_events.record(storage, key_, event, if_absent=True)
        _note_skipped(storage, spec, job, inv, started)
    else:
        delivery = _claim(storage, spec, request_id)
        if delivery is None:
            reason = f"{MAX_DELIVERIES} deliveries of this event already ran"
            storage.put_if_absent(lost_key(spec.job_id, spec.task_id, spec.attempt), lost_record(reason))
            if job is not None:
                final = event_key(spec.job_id, spec.task_id, spec.attempt, "final")
                task_events.record(storage, final, inv.event(spec, "lost", start=started, error=reason))
                _serverless().lost(storage, spec, job, reason)
            return TaskResult(
                spec.task_id,
                spec.attempt,
                ok=False,
                worker=label,
                failure=TaskFailure("", "WorkerLost", reason),
            )
        attempt = spec.attempt + DELIVERY_STRIDE * delivery
        run_as = dataclasses.replace(spec, attempt=attempt) if delivery else spec
        worker = f"{label}/d{delivery}"
        mine = event_key(spec.job_id, spec.task_id, spec.attempt, f"d{delivery}")

        timed_out_here = False

        def on_timeout(failure: TaskFailure) -> None:
            # From the watchdog thread, while the user code is stuck in this one: report the attempt
            # as failed (it counts against max_attempts), then end the invocation, the only way to
            # stop a Python thread. The runtime's retry of this delivery finds the result and returns it.
            nonlocal timed_out_here
            timed_out = TaskResult(spec.task_id, spec.attempt, ok=False, worker=worker, failure=failure)
            timed_out_here = True
            try:
                storage.put_if_absent(key, timed_out.encode())
                if job is not None:
                    task_events.record(storage, mine, inv.event(spec, "failed", timed_out, start=started))
                    _serverless().advance(storage, spec, timed_out, job, request_id)
            finally:
                if inv.ends_process:
                    end_process()

        with watch(run_as, on_timeout):
            result = run_task(run_as, worker=worker)
        result = dataclasses.replace(result, attempt=spec.attempt)
        storage.put_if_absent(key, result.encode())
        if timed_out_here:  # reported, and the job advanced, when it timed out (the process went on)
            return TaskResult.decode(storage.get(key))
        if job is not None:
            task_events.record(storage, mine, inv.event(spec, _outcome(result), result, start=started))
    if job is not None:
        _serverless().advance(storage, spec, result, job, request_id)
    return result


def _committed_result(
    storage: Storage, spec: TaskSpec, worker: str
) -> tuple[TaskResult, tuple[str, float, str] | None] | None:
    """The result of ``spec`` when its task already has a COMMIT (None when it has none), and, when
    a delivery of this very attempt wrote the COMMIT, ``(its event key, its claim's time, its
    request id)`` (else None).

    ``committed`` is True when a delivery of this very attempt wrote the COMMIT (delivery n runs as
    attempt ``a + DELIVERY_STRIDE * n``), with the counters of its manifest; False when another
    attempt of the task won.
    """
    raw = storage.get_or_none(layout.commit_key(spec.job_id, spec.task_id))
    if raw is None:
        return None
    try:
        manifest = json.loads(raw)
    except ValueError:
        manifest = {}
    ours = isinstance(manifest, dict) and manifest.get("attempt", -1) % DELIVERY_STRIDE == spec.attempt
    counters = manifest.get("counters", {}) if ours else {}
    result = TaskResult(
        spec.task_id,
        spec.attempt,
        ok=True,
        committed=ours,
        counters=counters if isinstance(counters, dict) else {},
        worker=worker,
    )
    if not ours:
        return result, None
    delivery = int(manifest["attempt"]) // DELIVERY_STRIDE
    raw_claim = storage.get_or_none(claim_key(spec.job_id, spec.task_id, spec.attempt, delivery))
    claim = json.loads(raw_claim) if raw_claim else {}
    winner = event_key(spec.job_id, spec.task_id, spec.attempt, f"d{delivery}")
    return result, (winner, float(claim.get("time", 0.0)), str(claim.get("request_id", "")))


def _note_skipped(
    storage: Storage, spec: TaskSpec, job: dict[str, Any] | None, inv: _Invocation, started: float
) -> None:
    """Count a delivery that did not run its task (``{phase}.duplicates_skipped`` in the job's
    counters) and, for a serverless job, record it as ``discarded``."""
    token = uuid.uuid4().hex[:12]
    storage.put(skipped_key(spec.job_id, spec.task_id, spec.attempt, token), b"")
    if job is not None:
        key = event_key(spec.job_id, spec.task_id, spec.attempt, f"s{token}")
        task_events.record(storage, key, inv.event(spec, "discarded", start=started))


def _note_cancelled(
    storage: Storage, spec: TaskSpec, job: dict[str, Any], inv: _Invocation, started: float
) -> None:
    """Record a delivery dropped because its run, the job's current one, was cancelled (a late
    delivery of a run that ended otherwise, or was resumed since, writes nothing at all)."""
    serverless = _serverless()
    run = event_run(job)
    end = serverless.stopped(storage, spec.job_id, run)
    if end is None or end.get("state") != "cancelled" or serverless.current_run(storage, spec.job_id) != run:
        return
    key = event_key(spec.job_id, spec.task_id, spec.attempt, f"c{uuid.uuid4().hex[:12]}")
    error = f"job {spec.job_id} was cancelled; task not run"
    task_events.record(storage, key, inv.event(spec, "cancelled", start=started, error=error))


def _claim(storage: Storage, spec: TaskSpec, request_id: str) -> int | None:
    """The first free delivery number of this attempt, taken atomically; None when all are taken."""
    taken = stamp(request_id)
    for n in range(MAX_DELIVERIES):
        if storage.put_if_absent(claim_key(spec.job_id, spec.task_id, spec.attempt, n), taken):
            return n
    return None


def _job_stopped(storage: Storage, job_id: str, job: dict[str, Any]) -> bool:
    """Whether the run of the job that ``job`` (an event's ``job`` member) belongs to has ended."""
    return _serverless().stopped(storage, job_id, event_run(job)) is not None


def _report_lost(record: dict[str, Any], inv: _Invocation) -> dict[str, Any]:
    """Every delivery of the wrapped event failed: mark its tasks lost (unless one of them reported)."""
    failure = parse_failure_record(record)
    event = parse_event(failure.event, check_version=False)
    reason, original, job = failure.reason, failure.request_id, event.job
    crash = crash_description(failure.error_type, failure.error_message)
    lost: list[str] = []
    failed_ids: list[str] = []
    for spec in event.specs:
        storage = storage_for(event.results)
        if job is not None and _job_stopped(storage, spec.job_id, job):
            continue  # the event's run has ended (or was resumed as a newer run): nothing to report
        stored = storage.get_or_none(result_key(spec.job_id, spec.task_id, spec.attempt))
        if stored is not None:
            # The task ran, and its invocation died afterwards, perhaps while it owned a phase change
            # (the trigger holds the request id): finish it, as the original request.
            if job is not None:
                _serverless().advance(storage, spec, TaskResult.decode(stored), job, original)
            continue
        found = _committed_result(storage, spec, f"lambda:{original[:8]}")
        if found is not None:
            # A delivery committed the task and died before it wrote its result: the work is done.
            # Calling it lost would run committed work again, and an async job would wait forever
            # for a phase whose every task committed.
            done, winner = found
            if job is not None:
                _final_event(storage, spec, inv, original, "lost", done, reason, winner)
            if storage.put_if_absent(result_key(spec.job_id, spec.task_id, spec.attempt), done.encode()):
                if job is not None:
                    _serverless().advance(storage, spec, done, job, original)
            continue
        if crash is not None:
            # The task's code ended every delivery itself (os._exit, a segfault): a failed attempt,
            # counted against max_attempts like an exception, not an infrastructure loss.
            failed = crashed_result(spec, crash, worker=f"lambda:{original[:8]}")
            if job is not None:
                _final_event(storage, spec, inv, original, "failed", failed)
            if storage.put_if_absent(result_key(spec.job_id, spec.task_id, spec.attempt), failed.encode()):
                if job is not None:
                    _serverless().advance(storage, spec, failed, job, original)
            failed_ids.append(spec.task_id)
            crash = None  # a batch runs in order: the first task without a result ended it; the rest are lost
            continue
        storage.put_if_absent(lost_key(spec.job_id, spec.task_id, spec.attempt), lost_record(reason))
        if job is not None:
            _final_event(storage, spec, inv, original, "lost", None, reason)
            _serverless().lost(storage, spec, job, reason)
        lost.append(spec.task_id)
    return {"lost": lost, **({"failed": failed_ids} if failed_ids else {})}


def _final_event(
    storage: Storage,
    spec: TaskSpec,
    inv: _Invocation,
    original: str,
    outcome: str,
    result: TaskResult | None,
    reason: str = "",
    winner: tuple[str, float, str] | None = None,
) -> None:
    """Record, from the on-failure record of ``original``, the end of an attempt whose every delivery
    died: ``outcome`` from its last claim to now (at most once: ``put_if_absent``). A delivery of
    the attempt that committed before dying (``winner``) gets its ``committed`` event instead."""
    if winner is not None:
        key, start, worker = winner
        event = inv.event(spec, "committed", result, start=start or time.time(), worker=worker or original)
        task_events.record(storage, key, event, if_absent=True)
        return
    claim = task_events.last_claim(storage, spec)
    start = claim[0] if claim is not None else time.time()
    event = inv.event(spec, outcome, result, start=start, worker=original, error=reason)
    final = event_key(spec.job_id, spec.task_id, spec.attempt, "final")
    task_events.record(storage, final, event, if_absent=True)


def _serverless() -> Any:
    # The serverless driver runs inside the function, but it belongs to the coordination layer, which
    # sits above this one: import it only for serverless events, so a plain task never loads it.
    from mrkit.backends.aws_lambda import jobs as object_store_jobs

    return object_store_jobs
