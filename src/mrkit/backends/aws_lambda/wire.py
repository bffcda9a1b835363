"""The serverless backend's wire: its key scheme in the object store and its invocation event.

Written once, read by every side of the backend: the executor (:mod:`.executor`, which builds
events and polls results), the function's handler (:mod:`.handler`, which parses events and writes
claims and results), the serverless driver (:mod:`.jobs`, :mod:`.state`, :mod:`.handle`, which keep
and read a job's state) and the local function runtime (:mod:`.emulator`, which wraps a failed
event in Lambda's on-failure record).

Keys, in the job's storage (beside those of :mod:`mrkit.model.layout`)::

    {job}/lambda/claims/{task}/a{attempt}/d{n}   delivery n of an attempt's event (put_if_absent),
                                                 holding the request id; its keys use attempt
                                                 ``attempt + 1000 * n`` (see the handler)
    {job}/lambda/done/{task}/a{attempt}          the attempt's TaskResult JSON (first delivery to end)
    {job}/lambda/done/{task}/a{attempt}.lost     every delivery of the attempt failed (JSON reason)
    {job}/lambda/skipped/{task}/a{attempt}-{id}  a delivery that found the attempt reported or the
                                                 task committed and did not run it (empty)
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
    {job}/state/events/{task}/a{n}-{tag}.json   one TaskEvent (JSON, one PUT) per delivery that ended:
                                         tag ``d{k}`` delivery k ran it, ``s{token}`` a delivery that
                                         did not run it, ``final`` every delivery died (the on-failure
                                         record's), ``c{token}`` a delivery its cancelled run dropped;
                                         kept with the plan and end records (:mod:`.task_events`)
    {job}/state/r{n}/…                   run n's trigger/, reduce/g{k}, reduce-sent, publish/g{k}, end
    _jobs/{job}                          index of submitted jobs (empty), listed by ``list_jobs``

The event of one invocation (JSON, references only; :func:`build_event`, :func:`parse_event`)::

    {"mrkit": 1,
     "specs": ["<TaskSpec JSON>", ...],   one task, or a batch of tiny ones, run in order
     "results": "s3://bucket/prefix",     the job's storage: results and claims are written there
     "job": {"invoker": {...},            only for a serverless job: advance the job afterwards
             "batch_size": 4,             tasks per event the job sends (absent: 1)
             "run": 2}}                   the job's run the event belongs to (absent: run 1)

or Lambda's on-failure destination record wrapping one (:func:`failure_record`,
:func:`is_failure_record`).

About 430 lines: the keys, the event and Lambda's records are one contract that every side of the
backend imports, so they are read in one place.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from mrkit.errors import ConfigError
from mrkit.model.task import TaskKind, TaskResult, TaskSpec  # noqa: F401  (TaskKind: pack's doctest)

HANDLER = "mrkit.backends.aws_lambda.handler.handler"
EVENT_VERSION = 1
MAX_ASYNC_EVENT = 256 * 1024  # Lambda's limit for an asynchronous (Event) invocation payload
MAX_SYNC_EVENT = 6 * 1024 * 1024  # ... and for a synchronous one
DELIVERY_STRIDE = 1000  # delivery n of attempt a runs as attempt a + 1000 * n (drivers never get near 1000)
MAX_DELIVERIES = 16  # deliveries of one attempt's event before the handler calls it lost
LOST = ".lost"  # suffix of a result key: every delivery of the attempt failed
JOBS_INDEX = "_jobs/"  # one empty key per submitted job, so that listing jobs lists only this folder


# -- the executor's keys: deliveries and results ----------------------------------------------------


def claims_prefix(job_id: str) -> str:
    return f"{job_id}/lambda/claims/"


def claim_key(job_id: str, task_id: str, attempt: int, delivery: int) -> str:
    return f"{claims_prefix(job_id)}{task_id}/a{attempt}/d{delivery}"


def claim_parts(key: str) -> tuple[str, str, str]:
    """``(task, "a{attempt}", "d{n}")`` of a claim key."""
    task, attempt, delivery = key.split("/")[-3:]
    return task, attempt, delivery


def done_prefix(job_id: str) -> str:
    return f"{job_id}/lambda/done/"


def result_key(job_id: str, task_id: str, attempt: int) -> str:
    return f"{done_prefix(job_id)}{task_id}/a{attempt}"


def lost_key(job_id: str, task_id: str, attempt: int) -> str:
    return result_key(job_id, task_id, attempt) + LOST


def skipped_prefix(job_id: str) -> str:
    return f"{job_id}/lambda/skipped/"


def skipped_key(job_id: str, task_id: str, attempt: int, token: str) -> str:
    return f"{skipped_prefix(job_id)}{task_id}/a{attempt}-{token}"


def stamp(request_id: str) -> bytes:
    """A claim's or a trigger's content: who took it (a request id) and when."""
    return json.dumps({"request_id": request_id, "time": time.time()}).encode()


def cancelled_record() -> bytes:
    """The end record of a cancelled run (written by the canceller, or by a publisher that finds the
    run's decision was ``cancel``)."""
    return json.dumps({"state": "cancelled", "time": time.time()}).encode()


def lost_record(reason: str) -> bytes:
    """The content of a :func:`lost_key`: why every delivery failed."""
    return json.dumps({"reason": reason}).encode()


def lost_reason(raw: bytes, default: str | None = None) -> str | None:
    return json.loads(raw).get("reason", default)


def key_task(key: str) -> str:
    """The task id of a skipped-delivery or attempt-guard key (the folder the key sits in)."""
    return key.split("/")[-2]


# -- the serverless driver's keys: the job's state ---------------------------------------------------


def plan_key(job_id: str) -> str:
    return f"{job_id}/state/plan.json"


def committed_prefix(job_id: str, phase: str | None = None) -> str:
    """The completion set of ``phase`` (of every phase when None)."""
    return f"{job_id}/state/committed/" + (f"{phase}/" if phase else "")


def attempts_prefix(job_id: str) -> str:
    return f"{job_id}/state/attempt/"


def attempt_key(job_id: str, task_id: str, attempt: int) -> str:
    return f"{attempts_prefix(job_id)}{task_id}/a{attempt}"


def run_prefix(job_id: str, run: int = 1) -> str:
    """Where run ``run`` keeps its phase changes and end: ``{job}/state/`` for the first run (as
    before resumes existed), ``{job}/state/r{run}/`` for each resumed run."""
    return f"{job_id}/state/" if run <= 1 else f"{job_id}/state/r{run}/"


def end_key(job_id: str, run: int = 1) -> str:
    return run_prefix(job_id, run) + "end"


def decision_key(job_id: str, run: int = 1) -> str:
    """Publish or cancel, decided once per run (``put_if_absent``): ``b"publish"`` by the invocation
    about to publish the output, ``b"cancel"`` by a cancel. Whichever is written first wins: a cancel
    after the publish began is refused, a publish after a cancel never starts."""
    return run_prefix(job_id, run) + "decision"


def trigger_key(job_id: str, step: str, run: int = 1) -> str:
    return f"{run_prefix(job_id, run)}trigger/{step}"


def lease_prefix(job_id: str, step: str, run: int = 1) -> str:
    """The generations ``g{n}`` of the lease of phase change ``step`` (reduce, publish)."""
    return f"{run_prefix(job_id, run)}{step}/"


def reduce_sent_key(job_id: str, run: int = 1) -> str:
    return run_prefix(job_id, run) + "reduce-sent"


def runs_prefix(job_id: str) -> str:
    return f"{job_id}/state/runs/"


def run_key(job_id: str, run: int) -> str:
    return f"{runs_prefix(job_id)}r{run}"


def run_of_key(key: str) -> int:
    """The run number of a :func:`run_key`."""
    return int(key.rsplit("/r", 1)[1])


def events_prefix(job_id: str) -> str:
    """Where a job's task events live (under ``state/``: a done job's discard keeps them)."""
    return f"{job_id}/state/events/"


def event_key(job_id: str, task_id: str, attempt: int, tag: str) -> str:
    """The key of one delivery's :class:`~mrkit.coordination.events.TaskEvent` (tags: module docstring)."""
    return f"{events_prefix(job_id)}{task_id}/a{attempt}-{tag}.json"


def event_delivery(key: str) -> str:
    """``{task}/a{attempt}-{tag}`` of an event key, or of a claim key (``{task}/a{attempt}-d{n}``): an
    event and the claim of the delivery that wrote it name the same string."""
    if key.endswith(".json"):
        return "/".join(key[: -len(".json")].split("/")[-2:])
    task, attempt, delivery = claim_parts(key)
    return f"{task}/{attempt}-{delivery}"


def attempt_folders(job_id: str) -> list[str]:
    """The folders whose keys name attempt numbers (``…/a{n}…``): a resume starts above them all."""
    return [claims_prefix(job_id), done_prefix(job_id), attempts_prefix(job_id)]


def intermediate_folders(job_id: str) -> list[str]:
    """What a done job's discard deletes (the plan, run records and end records stay)."""
    data = [f"{job_id}/{folder}/" for folder in ("map", "reduce", "input")]
    return [*data, committed_prefix(job_id), attempts_prefix(job_id), f"{job_id}/lambda/"]


# -- the invocation event --------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """A parsed invocation event: the specs to run, where results go, the job member (or None)."""

    specs: list[TaskSpec]
    results: str
    job: dict[str, Any] | None


def job_member(invoker: dict[str, Any], *, batch_size: int = 1, run: int = 1) -> dict[str, Any]:
    """The ``job`` member of a serverless job's events: the invoker of further tasks, the tasks per
    event (only when above 1) and the run (only for a resumed run)."""
    job: dict[str, Any] = {"invoker": invoker}
    if run > 1:
        job["run"] = run
    if batch_size > 1:  # tiny tasks: several per invocation, here and inside the functions
        job["batch_size"] = batch_size
    return job


def event_run(job: dict[str, Any]) -> int:
    """The run an event belongs to (events of a job's first run carry none)."""
    return int(job.get("run", 1))


def event_batch_size(job: dict[str, Any]) -> int:
    return int(job.get("batch_size", 1))


def _event(specs: list[str], results_url: str, job: dict[str, Any] | None) -> dict[str, Any]:
    event: dict[str, Any] = {"mrkit": EVENT_VERSION, "specs": specs, "results": results_url}
    if job is not None:
        event["job"] = job
    return event


def build_event(
    specs: list[TaskSpec], results_url: str, *, job: dict[str, Any] | None = None, sync: bool = False
) -> dict[str, Any]:
    """The event of one invocation: specs by reference, where results go, and (serverless) the job.

    Raises:
        ConfigError: the event exceeds Lambda's payload limit (only a futures call with large
            arguments can: send fewer items per task, or references instead of data).
    """
    event = _event([s.encode().decode() for s in specs], results_url, job)
    size = len(json.dumps(event))
    limit = MAX_SYNC_EVENT if sync else MAX_ASYNC_EVENT
    if size > limit:
        raise ConfigError(
            f"the event of {', '.join(s.task_id for s in specs)} is {size:,} bytes, over "
            f"Lambda's {limit:,}-byte limit: pass references (paths, keys) instead of data, "
            "or fewer items"
        )
    return event


def parse_event(event: dict[str, Any], *, check_version: bool = True) -> Event:
    """The specs, results URL and job member of an event built by :func:`build_event`.

    Raises:
        ConfigError: not an mrkit event (or a newer format than this mrkit understands).
    """
    if check_version and event.get("mrkit") != EVENT_VERSION:
        raise ConfigError(
            f"not an mrkit event (format {event.get('mrkit')!r}, this mrkit reads "
            f"{EVENT_VERSION}); keys: {sorted(event)[:8]}"
        )
    specs = [TaskSpec.decode(raw) for raw in event.get("specs", ())]
    return Event(specs, str(event.get("results", "")), event.get("job"))


def pack(
    specs: list[TaskSpec],
    results_url: str,
    *,
    job: dict[str, Any] | None = None,
    batch_size: int = 1,
    sync: bool = False,
) -> list[list[TaskSpec]]:
    """Group ``specs`` into events of at most ``batch_size`` specs, in order, and never over Lambda's
    payload limit: a batch that would pass it is closed early (a spec too large on its own gets an
    event of its own, which :func:`build_event` then refuses).

    >>> specs = [TaskSpec(job_id="j", task_id=f"call-{i:06d}", kind=TaskKind.CALL, call=b"x" * 70_000)
    ...          for i in range(5)]
    >>> [len(group) for group in pack(specs, "s3://b/p", batch_size=4)]  # ~93 KB each; 256 KB limit
    [2, 2, 1]
    """
    limit = MAX_SYNC_EVENT if sync else MAX_ASYNC_EVENT
    base = len(json.dumps(_event([], results_url, job)))
    groups: list[list[TaskSpec]] = []
    group: list[TaskSpec] = []
    size = base
    for spec in specs:
        item = len(json.dumps(spec.encode().decode())) + (2 if group else 0)  # json.dumps puts ", "
        if group and (len(group) >= batch_size or size + item > limit):
            groups.append(group)
            group, size = [], base
            item -= 2
        group.append(spec)
        size += item
    if group:
        groups.append(group)
    return groups


# -- Lambda's on-failure destination record, and how its runtime reports a crash ----------------------


def function_arn(function: str) -> str:
    """The ARN of a local function (the local runtime's account and region are placeholders)."""
    return f"arn:aws:lambda:local:000000000000:function:{function}"


def log_group(function: str) -> str:
    """The log group Lambda names after a function."""
    return f"/aws/lambda/{function}"


def is_failure_record(event: dict[str, Any]) -> bool:
    return "requestPayload" in event


def failure_record(
    event: dict[str, Any], *, request_id: str, attempts: int, function: str, error: dict[str, Any]
) -> dict[str, Any]:
    """Lambda's destination record for ``event``, whose every delivery failed (the last with ``error``)."""
    return {
        "version": "1.0",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        "requestContext": {
            "requestId": request_id,
            "condition": "RetriesExhausted",
            "approximateInvokeCount": attempts,
            "functionArn": function_arn(function),
        },
        "requestPayload": event,
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "responsePayload": error,
    }


@dataclass(frozen=True)
class FailureRecord:
    """What the handler reads from a destination record."""

    event: dict[str, Any]
    reason: str  # one sentence: the condition, the deliveries, the last error
    error_type: str
    error_message: str
    request_id: str  # the original request's id (a phase change it owned is finished as it)


def parse_failure_record(record: dict[str, Any]) -> FailureRecord:
    context = record.get("requestContext", {})
    error = record.get("responsePayload") or {}
    reason = (
        f"{context.get('condition', 'RetriesExhausted')} after "
        f"{context.get('approximateInvokeCount', '?')} deliveries; last: "
        f"{error.get('errorType', '?')}: {error.get('errorMessage', '')}"
    )
    return FailureRecord(
        record["requestPayload"],
        reason,
        str(error.get("errorType", "")),
        str(error.get("errorMessage", "")),
        str(context.get("requestId", "") or "unknown"),
    )


# How a function's runtime reports a handler process that died: "exit status 3" locally and on AWS,
# "signal SIGSEGV" locally, "signal: segmentation fault" on AWS.
_CRASH_SIGNALS = {
    "SIGSEGV": "segmentation fault",
    "SIGABRT": "aborted",
    "SIGBUS": "bus error",
    "SIGFPE": "floating point exception",
    "SIGILL": "illegal instruction",
}


def crash_description(error_type: str, message: str) -> str | None:
    """How the task's own code ended its invocation, from the runtime's error; None when it did not.

    A ``Runtime.ExitError`` with a non-zero exit status (``os._exit(3)``) or a crash signal (a
    segfault, ``abort()``) is the task's doing: a *failed attempt*, counted against ``max_attempts``.
    SIGKILL is not: it comes from outside (the runtime's timeout, an operator, the OOM killer), so
    such an invocation stays *lost*.

    >>> crash_description("Runtime.ExitError", "Runtime exited with error: exit status 3")
    'exit status 3'
    >>> crash_description("Runtime.ExitError", "Runtime exited with error: signal: segmentation fault")
    'signal SIGSEGV (segmentation fault)'
    >>> crash_description("Runtime.ExitError", "Runtime exited without a response (signal SIGKILL)") is None
    True
    """
    if error_type != "Runtime.ExitError" and "Runtime.ExitError" not in message:
        return None
    status = re.search(r"exit status (\d+)", message)
    if status and status[1] != "0":
        return f"exit status {status[1]}"
    for name, text in _CRASH_SIGNALS.items():
        if name in message or text in message:
            return f"signal {name} ({text})"
    return None


def crashed_result(spec: TaskSpec, crash: str, *, worker: str) -> TaskResult:
    """The failed result of an attempt whose code ended its invocation (see :func:`crash_description`)."""
    from mrkit.execution.watchdog import crash_failure  # the far side's failure vocabulary

    return TaskResult(spec.task_id, spec.attempt, ok=False, worker=worker, failure=crash_failure(crash))
