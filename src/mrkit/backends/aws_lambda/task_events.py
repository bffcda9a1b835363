"""A serverless or Dask job's task events, kept in its object store: one small JSON object per delivery.

The function's handler (:mod:`.handler`) records every delivery of a submitted job's task as it ends:
one ``PUT`` of a :class:`~mrkit.coordination.events.TaskEvent` as JSON (never a pickle) at
:func:`~.wire.event_key` under the job's ``state/events/``. Who records which outcome:

* the delivery that ran the task, once its result is stored and before it advances the job:
  ``committed`` (its attempt won the commit), ``discarded`` (another attempt or delivery had
  committed: a speculative twin, a duplicate delivery), ``failed`` (the user code raised, or the
  attempt hit ``task_timeout``: recorded by the watchdog before the invocation ends);
* a delivery that found the attempt reported or the task committed, and did not run it:
  ``discarded`` (and, when it finds that its own attempt committed and then died before reporting,
  the committed event of the delivery that did, written only if that one is absent);
* the handler of Lambda's on-failure record, when every delivery of the attempt died (killed, timed
  out): ``lost`` with the record's reason (``failed`` when the task's own code ended them: an exit
  status, a crash signal); its start is the last delivery's claim. The same for an attempt whose
  :data:`~.wire.MAX_DELIVERIES` deliveries all ran;
* a delivery dropped because its run was cancelled: ``cancelled``;
* a Dask job's follower that fails the job because its tasks are gone from the scheduler: ``lost``
  for every delivery still open (:func:`end_open_deliveries`).

A delivery that died and was delivered again by the runtime (Lambda's retry, Dask's re-run of a task
whose worker died) records nothing itself; its retry does. ``worker`` is the function's request id
(Lambda) or the Dask worker's address; ``memory_mb`` the function's configured memory (0 on Dask);
``start``/``end`` the delivery's wall clock, from its handler's start on that task to its report.

The events stay with the plan and end records (a done job's clean-up keeps ``state/``) and go with
the job's data (its prefix; a bucket lifecycle rule). :func:`read_events` reads them back for
``ObjectStoreJobHandle.events()``: one listing, then the objects, a few at a time in threads.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mrkit.backends.aws_lambda.wire import (
    claim_parts,
    claims_prefix,
    done_prefix,
    event_delivery,
    event_key,
    events_prefix,
)
from mrkit.coordination.events import TaskEvent, event_of
from mrkit.model.task import TaskResult, TaskSpec
from mrkit.storage.base import Storage

READ_THREADS = 8  # concurrent GETs when reading a job's events


def one_line(text: str) -> str:
    """``text`` on one line (an event's ``error`` is one sentence, never a newline)."""
    return " ".join(text.split())


def delivery_event(
    spec: TaskSpec,
    outcome: str,
    result: TaskResult | None = None,
    *,
    start: float,
    worker: str,
    memory_mb: int = 0,
    error: str = "",
    end: float | None = None,
) -> TaskEvent:
    """The event of one delivery of ``spec`` that ended now (or at ``end``) with ``outcome``;
    counters and traceback from ``result``, ``error`` from its failure unless given."""
    if not error and result is not None and result.failure is not None:
        error = result.failure.sentence()
    event = event_of(spec.kind.value, spec, outcome, result, end=end, worker=worker, error=one_line(error))
    event.worker, event.start, event.memory_mb = worker, min(start, event.end), int(memory_mb)
    return event


def record(storage: Storage, key: str, event: TaskEvent, *, if_absent: bool = False) -> bool:
    """Store ``event`` at ``key`` (one PUT); False when it could not be (or ``if_absent`` and one is
    there). An event that cannot be written is logged, never a reason to fail the task or the job."""
    data = json.dumps(event.to_dict(), sort_keys=True).encode()
    try:
        if if_absent:
            return storage.put_if_absent(key, data)
        storage.put(key, data)
        return True
    except Exception as exc:  # the event is an account of the job, not part of its state
        logging.getLogger("mrkit").warning("could not record the event of %s: %s", key, exc)
        return False


def last_claim(storage: Storage, spec: TaskSpec) -> tuple[float, str] | None:
    """``(time, request id)`` of the latest delivery claimed for ``spec``'s attempt (None: none)."""
    prefix = f"{claims_prefix(spec.job_id)}{spec.task_id}/a{spec.attempt}/"
    keys = sorted(storage.list(prefix), key=lambda k: int(k.rsplit("/d", 1)[1]))
    raw = storage.get_or_none(keys[-1]) if keys else None
    if raw is None:
        return None
    claim = json.loads(raw)
    return float(claim.get("time", 0.0)), str(claim.get("request_id", ""))


def read_events(storage: Storage, job_id: str, *, running: bool = False) -> list[TaskEvent]:
    """The job's recorded events, in start order.

    Args:
        running: also return the deliveries still running (``end`` 0): claimed, with no event and
            no result for their attempt yet (read while the job runs; an ended job has none).
    """
    keys = list(storage.list(events_prefix(job_id)))
    raws = _get_all(storage, keys)
    events = [e for e in (_decode(raw) for raw in raws) if e is not None]
    if running:
        events += _running(storage, job_id, {event_delivery(k) for k in keys})
    return sorted(events, key=lambda e: e.start)


def end_open_deliveries(storage: Storage, job_id: str, reason: str) -> int:
    """Record a ``lost`` event (``error``: ``reason``) for every delivery of the job still open; for
    the one who finds the job's invocations gone (at most once per attempt). Returns how many."""
    recorded = {event_delivery(k) for k in storage.list(events_prefix(job_id))}
    n = 0
    for event in _running(storage, job_id, recorded):
        event.end, event.outcome, event.error = max(time.time(), event.start), "lost", one_line(reason)
        n += record(storage, event_key(job_id, event.task, event.attempt, "final"), event, if_absent=True)
    return n


def _get_all(storage: Storage, keys: list[str]) -> list[bytes | None]:
    if len(keys) <= 1:
        return [storage.get_or_none(k) for k in keys]
    with ThreadPoolExecutor(max_workers=min(READ_THREADS, len(keys))) as pool:
        return list(pool.map(storage.get_or_none, keys))


def _decode(raw: bytes | None) -> TaskEvent | None:
    if raw is None:
        return None  # deleted between the listing and the read
    try:
        data: Any = json.loads(raw)
        return TaskEvent.from_dict(data) if isinstance(data, dict) else None
    except (ValueError, TypeError):
        return None  # not an event this mrkit reads


def _running(storage: Storage, job_id: str, recorded: set[str]) -> list[TaskEvent]:
    """The deliveries claimed but not yet reported (see :func:`read_events`)."""
    reported = {"/".join(k.split("/")[-2:]).split(".")[0] for k in storage.list(done_prefix(job_id))}
    reported |= {d.rsplit("-", 1)[0] for d in recorded if d.endswith("-final")}  # the attempt ended
    open_claims = [
        k
        for k in storage.list(claims_prefix(job_id))
        if event_delivery(k) not in recorded and "/".join(claim_parts(k)[:2]) not in reported
    ]
    out = []
    for key, raw in zip(open_claims, _get_all(storage, open_claims), strict=True):
        if raw is None:
            continue
        task, attempt, _delivery = claim_parts(key)
        claim = json.loads(raw)
        out.append(
            TaskEvent(
                task.split("-", 1)[0],
                task,
                int(attempt[1:]),
                float(claim.get("time", 0.0)),
                worker=str(claim.get("request_id", "")),
            )
        )
    return out
