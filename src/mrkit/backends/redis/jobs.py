"""Asynchronous jobs on a Redis fleet: the job's state machine lives in Redis, advanced by workers.

This module is longer than most (about 1,500 lines; the next split is listed in
tests/test_module_sizes.py) because it is one state machine seen from its
three sides — the submitter (:func:`submit_job`), the workers (:func:`process_entry`), and whoever
follows the job by id (:class:`RedisJobHandle`, :func:`job_status`) — and the Lua scripts they share
are only readable next to all three.

States and transitions (``mrkit:{job}:state`` field ``state``; ``phase`` says where a running job is)::

    running/map --last map commits--> running/reduce --last reduce commits--> running/publish
        |                                   |                                      |
        +-- a task out of attempts, or ------+--------------------------------------+--> failed
        |   lost more than max_lost times    |                                      |
        +-- mrkit cancel ID -----------------+--------------------------------------+--> cancelled
                                                   publish_output() then FINISH ---------> done

    failed | cancelled --mrkit resume ID (RESUME, run += 1)--> running/{first phase with a task left}

Every transition is one Lua script, so it is atomic with the facts it depends on:

* **COMMIT** (a task's attempt returned ok): ``HSETNX mrkit:{job}:done:{phase} task attempt`` —
  completion is a set of task ids, never a counter, so a duplicate delivery or a zombie changes
  nothing — then ``XACK``; when ``HLEN`` reaches the phase's task count *and* ``SET NX`` on
  ``mrkit:{job}:trigger:{next}`` succeeds, it ``XADD``\\s the next phase's entries, which the
  submitter signed and parked in ``mrkit:{job}:next:{next}``. The next phase therefore starts exactly
  once, only after every distinct task committed, and cannot be lost between the trigger and the
  enqueue (a worker dying there would otherwise stall the job).
* **FAIL** (user code raised): only the entry's current owner counts a failure (``XPENDING``); it
  re-queues the same signed entry while attempts remain (the attempt *number* is allocated when a task
  starts, ``HINCRBY mrkit:{job}:attempts``, so re-running the same entry never reuses keys), else
  marks the job failed with the driver's one-sentence message.
* **LOST** (a worker reclaimed an entry whose lease expired, ``XAUTOCLAIM``): counts a lost attempt;
  more than ``max_lost`` fails the job.
* **PUBLISH** (a publish entry is about to run): only during the publish phase, and only for the
  first publish entry that starts (``publisher`` in the state hash); a duplicate is acked and dropped.
* **FINISH** (after :func:`~mrkit.coordination.publish.publish_output`): marks the job done. The
  publish step is itself a stream entry, enqueued once by the last reduce's COMMIT, so a publisher
  that dies is replaced like any task (its successor resumes the moves; see :func:`_resume_publish`).

* **RESUME** (:func:`resume_job`, from any process): a ``MULTI`` watched on the state hash puts a
  failed or cancelled job back to running as run ``run + 1``, keeping the tasks whose COMMIT is in
  storage and enqueuing the others, signed for the new run.

Every entry's header carries its ``run`` (1 at submit); every script above takes the entry's run and
acks and drops an entry of another run (``stale``) before anything else, so the late deliveries of a
run that failed never touch the resumed run's completion sets or counters.

A reduce entry seen during the map phase is a duplicate (the real ones are enqueued with the phase
change): it is acked and dropped without using an attempt. A task that finishes after its job ended
(a zombie) deletes what it wrote (:func:`_discard_late_attempt`), unless the job failed or was
cancelled and the zombie won its task's COMMIT: a resume re-uses it.

Scripts refuse to act when the job's state hash is missing: Redis lost it (restarted without
persistence). The worker then drops the task, deletes what it wrote, and says so; nothing is
published. Every key of the job gets a TTL when it ends (``ttl``, default 24 h); a failed or
cancelled job keeps its intermediate data until then, for a resume, which removes the TTLs again.
docs/redis.md lists them all.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mrkit.backends.redis.executor import (
    DEAD,
    GROUP,
    JOBS,
    QUEUES,
    WORKER_GONE_MS,
    key,
    now_ms,
    pack,
    resolve_secret,
    unpack,
)
from mrkit.coordination.handle import JobHandle
from mrkit.coordination.plan import RetryPolicy, new_job_id
from mrkit.coordination.prepare import plan_job, require_job
from mrkit.coordination.publish import open_output, publish_output
from mrkit.errors import (
    AuthenticationError,
    ConfigError,
    JobCancelled,
    JobFailed,
    StorageError,
)
from mrkit.execution.runtime import delete_attempt_runs, storage_for
from mrkit.model import layout
from mrkit.model.task import TaskFailure, TaskKind, TaskSpec
from mrkit.storage import open_storage
from mrkit.storage.base import Storage
from mrkit.storage.redis import connect, glob_escape, redact

DEFAULT_TTL = 86400.0
LOG_MAXLEN = 10_000
POLL_SECONDS = 0.2
REDIS_DOWN_SECONDS = 60.0  # a handle waiting on an unreachable Redis gives up after this

# Every script that acts for an entry takes the entry's run (1 for the submitted run, one more per
# resume) as its last ARGV (``{pos}``) and drops an entry of another run ('stale') before anything
# else; a caller that passes no run (or '') is not checked. ``_STALE`` is spliced in after the script
# has read ``state``, with the stream key.
_STALE = """
if (ARGV[{pos}] or '') ~= '' and (redis.call('HGET', KEYS[1], 'run') or '1') ~= ARGV[{pos}] then
  redis.call('XACK', {stream}, ARGV[1], ARGV[2]); return {stale}
end
"""

# KEYS: state, done hash, tasks stream, trigger, next list. ARGV: group, entry id, task, attempt,
# task count, next phase, now (ms), run.
_COMMIT = (
    """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'lost' end
redis.call('XACK', KEYS[3], ARGV[1], ARGV[2])
"""
    + _STALE.format(stream="KEYS[3]", stale="'stale'", pos=8)
    + """
if state ~= 'running' then return 'ended' end
redis.call('HSETNX', KEYS[2], ARGV[3], ARGV[4])
if redis.call('HLEN', KEYS[2]) < tonumber(ARGV[5]) then return 'recorded' end
if not redis.call('SET', KEYS[4], ARGV[2], 'NX') then return 'recorded' end
local items = redis.call('LRANGE', KEYS[5], 0, -1)
for i = 1, #items, 2 do
  redis.call('XADD', KEYS[3], '*', 'p', items[i], 's', items[i + 1])
end
redis.call('HSET', KEYS[1], 'phase', ARGV[6], ARGV[6] .. '_started', ARGV[7])
return 'advanced'
"""
)

# KEYS: state, done hash, tasks stream, failures hash. ARGV: group, entry id, consumer, task,
# retryable (0/1), max attempts, message prefix, message suffix, traceback, payload, signature, now,
# run.
_FAIL = (
    """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'lost'} end
"""
    + _STALE.format(stream="KEYS[3]", stale="{'stale'}", pos=13)
    + """
if state ~= 'running' then redis.call('XACK', KEYS[3], ARGV[1], ARGV[2]); return {'ended'} end
if redis.call('HEXISTS', KEYS[2], ARGV[4]) == 1 then
  redis.call('XACK', KEYS[3], ARGV[1], ARGV[2]); return {'done'}
end
local p = redis.call('XPENDING', KEYS[3], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[3] then return {'stolen'} end
local n = redis.call('HINCRBY', KEYS[4], ARGV[4], 1)
redis.call('XACK', KEYS[3], ARGV[1], ARGV[2])
if ARGV[5] == '0' or n >= tonumber(ARGV[6]) then
  local msg = ARGV[7] .. n .. (n == 1 and ' attempt' or ' attempts') .. ARGV[8]
  redis.call('HSET', KEYS[1], 'state', 'failed', 'error', msg, 'traceback', ARGV[9], 'ended', ARGV[12],
             'failed_task', ARGV[4])
  return {'failed', msg}
end
redis.call('XADD', KEYS[3], '*', 'p', ARGV[10], 's', ARGV[11])
return {'retry', tostring(n)}
"""
)

# KEYS: state, done hash, tasks stream, lost hash. ARGV: group, entry id, task, max lost, message, now,
# run.
_LOST = (
    """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'lost'} end
"""
    + _STALE.format(stream="KEYS[3]", stale="{'stale'}", pos=7)
    + """
if state ~= 'running' then redis.call('XACK', KEYS[3], ARGV[1], ARGV[2]); return {'ended'} end
if redis.call('HEXISTS', KEYS[2], ARGV[3]) == 1 then
  redis.call('XACK', KEYS[3], ARGV[1], ARGV[2]); return {'done'}
end
local n = redis.call('HINCRBY', KEYS[4], ARGV[3], 1)
if n > tonumber(ARGV[4]) then
  local msg = string.gsub(ARGV[5], '{n}', tostring(n))
  redis.call('XACK', KEYS[3], ARGV[1], ARGV[2])
  redis.call('HSET', KEYS[1], 'state', 'failed', 'error', msg, 'ended', ARGV[6], 'failed_task', ARGV[3])
  return {'failed', msg}
end
return {'run', tostring(n)}
"""
)

# KEYS: state, tasks stream, queues. ARGV: group, entry id (or ''), final state, counters, error, now,
# run (or '' from outside: any run). Ends a running job (done, failed or cancelled); returns 0 when it
# had already ended, -2 (changing nothing) for an entry of another run. A cancelled job keeps the phase
# it stopped in, and its error names it, as the in-process driver's JobCancelled does.
_END = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
if (ARGV[7] or '') ~= '' and (redis.call('HGET', KEYS[1], 'run') or '1') ~= ARGV[7] then
  if ARGV[2] ~= '' then redis.call('XACK', KEYS[2], ARGV[1], ARGV[2]) end
  return -2
end
if ARGV[2] ~= '' then redis.call('XACK', KEYS[2], ARGV[1], ARGV[2]) end
if state ~= 'running' then return 0 end
if ARGV[3] == 'cancelled' then
  local phase = redis.call('HGET', KEYS[1], 'phase') or 'map'
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'counters', ARGV[4], 'ended', ARGV[6],
             'error', ARGV[5] .. ' during the ' .. phase .. ' phase')
  redis.call('ZREM', KEYS[3], KEYS[2])
  return 1
end
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'phase', ARGV[3], 'counters', ARGV[4], 'ended', ARGV[6])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[5]) end
redis.call('ZREM', KEYS[3], KEYS[2])
return 1
"""


# KEYS: state, tasks stream. ARGV: group, entry id, run. Lets one publish entry run the publish step:
# the first to start it becomes the job's ``publisher`` (a reclaim of that same entry resumes it);
# a duplicate, a publish entry delivered before the publish phase, or one of an earlier run, is acked
# and dropped.
_PUBLISH = (
    """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'lost' end
"""
    + _STALE.format(stream="KEYS[2]", stale="'stale'", pos=3)
    + """
if state ~= 'running' then redis.call('XACK', KEYS[2], ARGV[1], ARGV[2]); return 'ended' end
if redis.call('HGET', KEYS[1], 'phase') ~= 'publish' then
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[2]); return 'early'
end
local owner = redis.call('HGET', KEYS[1], 'publisher')
if owner and owner ~= ARGV[2] then redis.call('XACK', KEYS[2], ARGV[1], ARGV[2]); return 'taken:' .. owner end
redis.call('HSET', KEYS[1], 'publisher', ARGV[2])
return 'ok'
"""
)


# KEYS: state. Counts an entry a worker refused in the job's stream, if the job exists.
_REFUSED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HINCRBY', KEYS[1], 'refused', 1)
"""


class JobKeys:
    """The Redis keys of one asynchronous job (docs/redis.md describes each)."""

    def __init__(self, job_id: str) -> None:
        self.job = job_id
        for name in ("state", "meta", "tasks", "attempts", "failures", "lost", "workers", "logs"):
            setattr(self, name, key(job_id, name))
        self.state: str
        self.meta: str
        self.tasks: str
        self.attempts: str
        self.failures: str
        self.lost: str
        self.workers: str
        self.logs: str

    def done(self, phase: str) -> str:
        return key(self.job, f"done:{phase}")

    def trigger(self, phase: str) -> str:
        return key(self.job, f"trigger:{phase}")

    def next(self, phase: str) -> str:
        return key(self.job, f"next:{phase}")


def failure_message_parts(phase: str, spec: TaskSpec, failure: TaskFailure) -> tuple[str, str]:
    """The driver's failure sentence, split around its attempt count (``... after `` | `` ...``).

    ``prefix + f"{n} attempt{'s' * (n != 1)}" + suffix`` is exactly the message of
    :meth:`mrkit.coordination.driver.PhaseRunner._fail_job`, so a job fails with the same sentence
    whether the in-process driver or the fleet ran it.
    """
    retry_note = "" if failure.retryable else " (not retried: another attempt would fail the same way)"
    where = spec.split.describe() if spec.split is not None and not failure.where else ""
    detail = failure.sentence() if not where else f"{where}: {failure.sentence()}"
    return f"{phase} task {spec.task_id} of job {spec.job_id} failed after ", f"{retry_note}: {detail}"


def failure_message(phase: str, spec: TaskSpec, failure: TaskFailure, failed: int) -> str:
    """The one-sentence message of a task that failed ``failed`` times (see :func:`failure_message_parts`)."""
    prefix, suffix = failure_message_parts(phase, spec, failure)
    return f"{prefix}{failed} attempt{'s' * (failed != 1)}{suffix}"


def lost_message(phase: str, task_id: str, job_id: str, lost: int | str, reason: str) -> str:
    """The driver's sentence for a task whose worker was lost too often."""
    return f"{phase} task {task_id} of job {job_id} failed: its worker was lost {lost} times (last: {reason})"


# -- submitting --------------------------------------------------------------------------------


def submit_job(
    executor: Any,
    job: Any,
    inputs: Any,
    *,
    output: str | os.PathLike[str] | None = None,
    n_map: int | None = None,
    n_reduce: int | None = None,
    storage: str | None = None,
    format: str = "tsv",
    memory_mb: float = 256.0,
    overwrite: bool = False,
    policy: RetryPolicy | None = None,
    errors: str = "strict",
    input_format: str = "auto",
    split_size: int | None = None,
    params: dict[str, Any] | None = None,
    job_id: str | None = None,
    ttl: float | None = None,
    workers: int | None = None,
    progress: bool | None = None,
    quiet: bool = False,
) -> RedisJobHandle:
    """Plan ``job``, store its state and first tasks in Redis, and return at once.

    Args:
        executor: the :class:`~mrkit.backends.redis.executor.RedisExecutor` naming the Redis.
        job, inputs, output, n_map, n_reduce, storage, format, memory_mb, overwrite, policy, errors,
            input_format, split_size, params, job_id: as for :func:`mrkit.run`. Local input paths and a local
            ``output`` must be readable (writable) at the same path on every worker.
        ttl: seconds the job's keys are kept after it ends (default: the URL's ``ttl``, else 24 h).
        workers, progress, quiet: accepted for compatibility with :func:`mrkit.run`; unused.

    Returns:
        A :class:`RedisJobHandle`.

    Raises:
        OutputExistsError: ``output`` holds a result and ``overwrite`` is False.
        ConfigError, InputError: bad options or inputs.
    """
    from mrkit.data.output import check_format

    require_job(job)
    policy = policy or RetryPolicy()
    fmt = check_format(format if output is not None else "pickle")
    if params:
        job = job.with_params(params)
    job_id = job_id or new_job_id(job.name)
    if "{" in job_id or "}" in job_id or ":" in job_id:
        raise ConfigError(f"job id {job_id!r} may not contain braces or colons (they delimit Redis keys)")
    ttl_seconds: float = ttl if ttl is not None else getattr(executor, "ttl", DEFAULT_TTL)
    client = executor.client
    if client.exists(key(job_id, "state")):
        raise ConfigError(f"job {job_id} already exists in Redis at {executor.name}; choose another job id")
    inter = open_storage(storage or executor.storage_url(job_id))
    if output is None:
        out_storage = open_storage(f"{inter.url}#{job_id}/output/")
    else:
        out_storage = open_output(os.fspath(output), overwrite=overwrite, inputs=inputs)
    plan = plan_job(
        job,
        inputs,
        job_id=job_id,
        storage=inter,
        output_url=out_storage.url,
        workers=executor.workers,
        n_map=n_map,
        n_reduce=n_reduce,
        fmt=fmt,
        memory_mb=memory_mb,
        overwrite=overwrite,
        policy=policy,
        errors=errors,
        input_format=input_format,
        split_size=split_size,
    )
    k = JobKeys(job_id)
    secret = executor.secret
    maps = [pack(secret, {"op": "task", "job": job_id, "run": 1}, spec.encode()) for spec in plan.map_specs]
    reduces = [
        pack(secret, {"op": "task", "job": job_id, "run": 1}, spec.encode()) for spec in plan.reduce_specs
    ]
    publish = pack(secret, {"op": "publish", "job": job_id, "run": 1}, b"")
    submitted = now_ms()
    state = {
        "state": "running",
        "phase": "map",
        "run": 1,
        "id": job_id,
        "name": plan.name,
        "submitted": submitted,
        "map_started": submitted,
        "n_map": plan.n_map,
        "n_reduce": plan.n_reduce,
        "storage": inter.url,
        "output": out_storage.url,
        "in_memory": int(output is None),
        "format": fmt,
        "overwrite": int(overwrite),
        "max_attempts": policy.max_attempts,
        "max_lost": policy.max_lost,
        "ttl": int(ttl_seconds),
        "input_bytes": plan.input_bytes,
        "lease_ms": int(executor.lease * 1000),
        "task_timeout": policy.task_timeout or 0,
    }
    meta = {"mode": "job", "lease_ms": int(executor.lease * 1000)}
    if policy.task_timeout:
        meta["task_timeout_ms"] = int(policy.task_timeout * 1000)
    pipe = client.pipeline(transaction=True)  # all or nothing: a half-submitted job never exists
    pipe.hset(k.state, mapping=state)
    pipe.hset(k.meta, mapping=meta)
    pipe.xgroup_create(k.tasks, GROUP, id="0", mkstream=True)
    for fields in maps:
        pipe.xadd(k.tasks, fields)
    pipe.rpush(k.next("reduce"), *[v for fields in reduces for v in (fields["p"], fields["s"])])
    pipe.rpush(k.next("publish"), publish["p"], publish["s"])
    pipe.xadd(
        k.logs,
        _log_fields(
            "", 0, "submitter", "event", f"submitted: {plan.n_map} map and {plan.n_reduce} reduce tasks"
        ),
        maxlen=LOG_MAXLEN,
        approximate=True,
    )
    pipe.zadd(JOBS, {job_id: submitted})
    pipe.zadd(QUEUES, {k.tasks: "+inf"})  # a job's stream stays live until the job ends
    pipe.execute()
    return RedisJobHandle(executor.url, job_id)


# -- the worker side ---------------------------------------------------------------------------


def _log_fields(task: str, attempt: int, worker: str, kind: str, text: str) -> dict[str, Any]:
    return {
        "t": f"{time.time():.3f}",
        "task": task,
        "attempt": attempt,
        "worker": worker,
        "kind": kind,
        "text": text,
    }


def log_event(client: Any, job_id: str, task: str, attempt: int, worker: str, kind: str, text: str) -> None:
    """Append one line to the job's log stream (trimmed to about ``LOG_MAXLEN`` entries)."""
    client.xadd(
        key(job_id, "logs"),
        _log_fields(task, attempt, worker, kind, text),
        maxlen=LOG_MAXLEN,
        approximate=True,
        nomkstream=True,
    )


def note_refused(worker: Any, job_id: str, entry_id: bytes, reason: str) -> None:
    """A worker refused an entry of ``job_id``'s stream: log it, and count it in the job's state.

    The count shows in ``mrkit status``: a job whose every entry is refused (submitter and workers
    do not share one secret) would otherwise look like a job no worker has reached yet.
    """
    log_event(
        worker.client, job_id, "", 0, worker.name, "event", f"refused entry {entry_id.decode()}: {reason}"
    )
    worker.scripts["refused"](keys=[key(job_id, "state")])


def entry_run(fields: dict[bytes, bytes]) -> int:
    """The run an entry belongs to (its header's ``run``; 1 for entries of an older mrkit)."""
    head = fields.get(b"p", b"").partition(b"\n")[0]
    try:
        header = json.loads(head)
        return int(header.get("run", 1)) if isinstance(header, dict) else 1
    except (ValueError, TypeError):
        return 1


def process_entry(
    worker: Any,
    stream: str,
    entry_id: bytes,
    fields: dict[bytes, bytes],
    header: dict[str, Any],
    body: bytes,
    reclaimed: bool,
    lease_ms: int,
) -> None:
    """Run one verified entry of an asynchronous job's stream on ``worker`` and advance the job.

    Args:
        worker: the :class:`~mrkit.backends.redis.worker.RedisWorker` (client, name, host, run_spec...).
        stream, entry_id: where the entry is (it is acked here, or left pending for a reclaimer).
        fields: the entry as read (re-queued unchanged when a failed task is retried).
        header, body: its verified content.
        reclaimed: the entry was taken over from a worker whose lease expired.
        lease_ms: the stream's lease, for messages.
    """
    job_id = str(header.get("job", ""))
    k = JobKeys(job_id)
    if stream != k.tasks:
        worker.reject(stream, entry_id, f"entry names job {job_id!r} but sits in {stream}")
        return
    try:
        if header["op"] == "publish":
            _run_publish(worker, k, entry_id, reclaimed, int(header.get("run", 1)))
        else:
            try:
                spec = TaskSpec.decode(body)
            except Exception as exc:  # signed, yet not a task of this mrkit (another version?)
                worker.reject(stream, entry_id, f"undecodable task: {type(exc).__name__}: {exc}")
                return
            if spec.job_id != job_id:
                worker.reject(stream, entry_id, f"task of job {spec.job_id} in the stream of job {job_id}")
                return
            _run_task(worker, k, entry_id, spec, fields, reclaimed, lease_ms)
    finally:
        worker.done_with(stream, entry_id)


def _run_task(
    worker: Any,
    k: JobKeys,
    entry_id: bytes,
    spec: TaskSpec,
    fields: dict[bytes, bytes],
    reclaimed: bool,
    lease_ms: int,
) -> None:
    client = worker.client
    phase = spec.kind.value
    pipe = client.pipeline(transaction=False)
    pipe.hmget(k.state, "state", "max_attempts", "max_lost", "phase", "task_timeout", "run")
    pipe.hexists(k.done(phase), spec.task_id)
    state, already = pipe.execute()
    if state[0] is None:
        _job_lost(worker, k.job, spec, entry_id)
        return
    run, current = entry_run(fields), int(state[5] or 1)
    if run != current and state[0] == b"running":
        # An entry of an earlier run of a resumed job (read ahead, redelivered or reclaimed): the
        # resume enqueued its own entry for every task still to run.
        client.xack(k.tasks, GROUP, entry_id)
        log_event(client, k.job, spec.task_id, 0, worker.name, "event", _stale_note(run, current))
        return
    if state[0] != b"running" or already:
        client.xack(k.tasks, GROUP, entry_id)  # ended, or a duplicate of a committed task
        if state[0] != b"running":
            # The job ended (cancelled, or failed) since this entry was read ahead: drop it unrun, and
            # stop reading its stream now rather than at the worker's next look at mrkit:queues.
            worker.queues.pop(k.tasks, None)
        if state[0] == b"cancelled":
            log_event(client, k.job, spec.task_id, 0, worker.name, "event", "dropped: the job was cancelled")
        return
    if spec.kind is TaskKind.REDUCE and state[3] == b"map":
        # The reduce entries are enqueued by the script that records the last map commit, atomically
        # with the phase change: one seen during the map phase is a duplicate. Running it would fail
        # (no map output yet) and use up one of the task's attempts.
        client.xack(k.tasks, GROUP, entry_id)
        log_event(client, k.job, spec.task_id, 0, worker.name, "event", "dropped: delivered before its phase")
        return
    max_attempts, max_lost = int(state[1]), int(state[2])
    if reclaimed:
        reason = (
            f"its lease of {lease_ms / 1000:g}s expired, or its worker sent no liveness beat for "
            f"{WORKER_GONE_MS / 1000:g}s: the worker died, hung or lost Redis"
        )
        if float(state[4] or 0):
            reason += f", or the attempt ran longer than task_timeout={float(state[4]):g}s"
        outcome = worker.scripts["lost"](
            keys=[k.state, k.done(phase), k.tasks, k.lost],
            args=[
                GROUP,
                entry_id,
                spec.task_id,
                max_lost,
                lost_message(phase, spec.task_id, k.job, "{n}", reason),
                now_ms(),
                run,
            ],
        )
        verdict = outcome[0].decode()
        if verdict == "lost":
            _job_lost(worker, k.job, spec, entry_id)
            return
        if verdict == "failed":
            _log_and_end(worker, k, spec, "failed", outcome[1].decode())
            return
        if verdict != "run":
            return
        log_event(client, k.job, spec.task_id, 0, worker.name, "event", f"reclaimed ({reason})")
    worker.job_places[k.job] = (spec.storage_url, spec.output_url)  # to clean up if the job is lost
    pipe = client.pipeline(transaction=False)
    pipe.hincrby(k.attempts, spec.task_id, 1)
    pipe.zadd(k.workers, {worker.name: now_ms()})
    attempt = int(pipe.execute()[0])
    spec = dataclasses.replace(spec, attempt=attempt)
    log_event(client, k.job, spec.task_id, attempt, worker.name, "event", "started")
    result, captured = worker.run_spec(spec, capture=True, entry=(k.tasks, entry_id, {}, fields))
    if result.failure is not None and worker.is_infrastructure_failure(result.failure):
        # Redis (or the storage) failed under the task, not the user's code: leave the entry pending
        # so that its lease expires and it is re-run, without consuming one of the user's attempts.
        raise worker.infrastructure_error(result.failure)
    pipe = client.pipeline(transaction=False)
    for kind, text in captured:
        pipe.xadd(
            k.logs,
            _log_fields(spec.task_id, attempt, worker.name, kind, text),
            maxlen=LOG_MAXLEN,
            approximate=True,
            nomkstream=True,
        )
    if result.ok:
        next_phase = "reduce" if spec.kind is TaskKind.MAP else "publish"
        total = spec.n_map if spec.kind is TaskKind.MAP else spec.n_reduce
        note = "committed" if result.committed else "finished; a previous attempt had committed (discarded)"
        pipe.xadd(
            k.logs,
            _log_fields(spec.task_id, attempt, worker.name, "event", f"{note} in {result.seconds:.3f}s"),
            maxlen=LOG_MAXLEN,
            approximate=True,
            nomkstream=True,
        )
        worker.scripts["commit"](
            keys=[k.state, k.done(phase), k.tasks, k.trigger(next_phase), k.next(next_phase)],
            args=[GROUP, entry_id, spec.task_id, attempt, total, next_phase, now_ms(), run],
            client=pipe,
        )
        verdict = pipe.execute()[-1].decode()
        if verdict == "advanced":
            text = (
                "every map task committed: reduce phase started"
                if next_phase == "reduce"
                else "every reduce task committed: publishing the output"
            )
            log_event(client, k.job, "", 0, worker.name, "event", text)
        elif verdict == "lost":
            _job_lost(worker, k.job, spec, entry_id)
        elif verdict == "ended":
            _discard_late_attempt(client, k, spec, result.committed)
        elif verdict == "stale":
            _drop_stale_attempt(client, k, spec, result.committed, run)
        return
    failure = result.failure
    assert failure is not None
    _record_failure(worker, k, entry_id, fields, spec, failure, max_attempts, pipe)


def fail_attempt(
    worker: Any,
    stream: str,
    entry_id: bytes,
    fields: dict[bytes, bytes],
    spec: TaskSpec,
    failure: TaskFailure,
) -> None:
    """Count the attempt ``spec`` of ``entry_id`` as failed with ``failure`` and re-queue or fail the
    job, as a raising task would: a timed-out attempt (reported by the worker's watchdog) or one whose
    process died under it (reported by the worker's supervisor). A poison task thus fails the job
    after ``max_attempts`` instead of being retried as lost."""
    k = JobKeys(_job_of(stream))
    raw = worker.client.hget(k.state, "max_attempts")
    if raw is None:
        return  # Redis lost the job, or it ended and expired: nothing to count against
    _record_failure(
        worker, k, entry_id, fields, spec, failure, int(raw), worker.client.pipeline(transaction=False)
    )


def _job_of(stream: str) -> str:
    start, end = stream.find("{"), stream.find("}")
    return stream[start + 1 : end] if 0 <= start < end else ""


def _record_failure(
    worker: Any,
    k: JobKeys,
    entry_id: bytes,
    fields: dict[bytes, bytes],
    spec: TaskSpec,
    failure: TaskFailure,
    max_attempts: int,
    pipe: Any,
) -> None:
    client = worker.client
    phase = spec.kind.value
    attempt = spec.attempt
    prefix, suffix = failure_message_parts(phase, spec, failure)
    pipe.xadd(
        k.logs,
        _log_fields(spec.task_id, attempt, worker.name, "event", f"failed: {failure.sentence()}"),
        maxlen=LOG_MAXLEN,
        approximate=True,
        nomkstream=True,
    )
    worker.scripts["fail"](
        keys=[k.state, k.done(phase), k.tasks, k.failures],
        args=[
            GROUP,
            entry_id,
            worker.name,
            spec.task_id,
            int(failure.retryable),
            max_attempts,
            prefix,
            suffix,
            failure.traceback,
            fields[b"p"],
            fields.get(b"s", b""),
            now_ms(),
            entry_run(fields),
        ],
        client=pipe,
    )
    outcome = pipe.execute()[-1]
    verdict = outcome[0].decode()
    if verdict == "failed":
        _log_and_end(worker, k, spec, "failed", outcome[1].decode())
    elif verdict == "lost":
        _job_lost(worker, k.job, spec, entry_id)
    elif verdict == "stale":
        log_event(
            client,
            k.job,
            spec.task_id,
            attempt,
            worker.name,
            "event",
            "failure not counted: " + _stale_note(entry_run(fields), int(client.hget(k.state, "run") or 1)),
        )
    elif verdict == "stolen":
        # Our lease had expired and another worker holds the entry now: its outcome counts, not ours.
        log_event(
            client,
            k.job,
            spec.task_id,
            attempt,
            worker.name,
            "event",
            "failure not counted: the entry was reclaimed by another worker meanwhile",
        )


def _stale_note(run: int, current: int) -> str:
    return f"dropped: an entry of run {run}; the job was resumed as run {current}"


def _drop_stale_attempt(client: Any, k: JobKeys, spec: TaskSpec, committed: bool, run: int) -> None:
    """An attempt of an earlier run finished after the job was resumed: it counts for nothing. A
    COMMIT it won stays (first commit wins: the resumed run's attempt of the task finds it and
    records the task done); the files of an attempt that lost the race are deleted."""
    current = int(client.hget(k.state, "run") or 1)
    log_event(client, k.job, spec.task_id, spec.attempt, "", "event", _stale_note(run, current))
    if not committed:
        _delete_attempt(k, spec)


def _delete_attempt(k: JobKeys, spec: TaskSpec) -> None:
    storage = storage_for(spec.storage_url)
    if spec.kind is TaskKind.MAP:
        delete_attempt_runs(storage, layout.map_task_prefix(k.job, spec.task_id), spec.attempt)
    else:
        prefix = layout.reduce_task_temp_prefix(k.job, spec.task_id)
        delete_attempt_runs(storage_for(spec.output_url), prefix, spec.attempt)


def _discard_late_attempt(client: Any, k: JobKeys, spec: TaskSpec, committed: bool) -> None:
    """A task finished after its job ended (a zombie, or a task running when the job was cancelled):
    delete what this attempt wrote after the job's cleanup, and give any key it created a TTL.

    Safe when the job was published: its output parts were moved away from the attempts' keys. A
    failed or cancelled job keeps its data for :func:`resume_job`: there an attempt that won its
    task's COMMIT is kept (a resume re-uses it), and only a losing attempt's files are deleted.
    """
    try:
        if committed and client.hget(k.state, "state") in (b"failed", b"cancelled"):
            return
        storage = storage_for(spec.storage_url)
        if spec.kind is TaskKind.MAP:
            delete_attempt_runs(storage, layout.map_task_prefix(k.job, spec.task_id), spec.attempt)
        else:
            prefix = layout.reduce_task_temp_prefix(k.job, spec.task_id)
            delete_attempt_runs(storage_for(spec.output_url), prefix, spec.attempt)
        if committed:  # the commit key was won after the cleanup had deleted the winner's
            storage.delete(layout.commit_key(k.job, spec.task_id))
    finally:
        expire_job(client, k.job)


def _run_publish(worker: Any, k: JobKeys, entry_id: bytes, reclaimed: bool, run: int) -> None:
    client = worker.client
    verdict = worker.scripts["publish"](keys=[k.state, k.tasks], args=[GROUP, entry_id, run]).decode()
    if verdict == "lost":
        print(
            f"mrkit worker {worker.name}: job {k.job} was lost: Redis has no record of it any more "
            "(restarted without persistence?); nothing was published",
            file=sys.stderr,
        )
        client.xack(k.tasks, GROUP, entry_id)
        return
    if verdict in ("early", "ended", "stale") or verdict.startswith("taken:"):
        if verdict != "ended":
            why = {"early": "before its phase", "stale": f"an entry of run {run}"}.get(
                verdict, f"publish step already taken by entry {verdict[6:]}"
            )
            log_event(client, k.job, "", 0, worker.name, "event", f"dropped a publish entry: {why}")
        return
    state = {kk.decode(): v.decode() for kk, v in client.hgetall(k.state).items()}
    started = time.time()
    log_event(client, k.job, "", 0, worker.name, "event", "publishing" + (" (resumed)" if reclaimed else ""))
    try:
        storage = storage_for(state["storage"])
        output = storage_for(state["output"])
        counters = collect_counters(client, k, storage, state)
        seconds = (now_ms() - int(state["submitted"])) / 1000
        summary = {"seconds": round(seconds, 3), "counters": counters}
        n_reduce, fmt, overwrite = int(state["n_reduce"]), state["format"], state["overwrite"] == "1"
        if reclaimed:
            _resume_publish(storage, output, k.job, n_reduce, fmt, summary)
        else:
            publish_output(
                storage, output, k.job, n_reduce, output_format=fmt, overwrite=overwrite, summary=summary
            )
    except Exception as exc:
        if worker.is_infrastructure_error(exc):
            raise
        message = (
            f"publishing the output of job {k.job} failed on worker {worker.name} "
            f"(host {worker.host}): {type(exc).__name__}: {exc}"
        )
        if _end(worker, k, entry_id, "failed", {}, message, run) == -2:
            return
        _log_and_end(worker, k, None, "failed", message, ended=True)
        return
    counters["publish.millis"] = int((time.time() - started) * 1000)
    ended = _end(worker, k, entry_id, "done", counters, "", run)
    if ended in (-1, -2):
        return
    log_event(
        client,
        k.job,
        "",
        0,
        worker.name,
        "event",
        f"done in {seconds:.2f}s: output at {redact(state['output'])}",
    )
    _cleanup(client, k.job, state, failed=False)


def _resume_publish(
    storage: Storage, output: Storage, job_id: str, n_reduce: int, fmt: str, summary: dict[str, Any]
) -> None:
    """Finish a publish whose worker died: move the parts not yet moved, then write ``_SUCCESS``.

    ``publish_output`` is not re-run because its overwrite step would delete parts already moved.
    """
    for p in range(n_reduce):
        manifest = json.loads(storage.get(layout.commit_key(job_id, layout.task_id("reduce", p))))
        if output.exists(manifest["key"]):
            output.move(manifest["key"], layout.part_key(p))
        elif not output.exists(layout.part_key(p)):
            raise StorageError(f"part {p} of job {job_id} is neither at {manifest['key']} nor in place")
    info = {"job_id": job_id, "format": fmt, "parts": n_reduce, **summary}
    output.put(layout.SUCCESS_KEY, json.dumps(info, indent=1, sort_keys=True).encode())
    output.delete_prefix(f"_temporary/{job_id}/")


def collect_counters(client: Any, k: JobKeys, storage: Storage, state: dict[str, str]) -> dict[str, int]:
    """The job's counters, as the in-process driver reports them: committed attempts' manifests
    (never a duplicate's), plus attempts launched, failed and lost per phase."""
    from mrkit.coordination.driver import PhaseStats

    pipe = client.pipeline(transaction=False)
    for name in (k.attempts, k.failures, k.lost):
        pipe.hgetall(name)
    attempts, failures, lost = ({kk.decode(): int(v) for kk, v in h.items()} for h in pipe.execute())
    counters: dict[str, int] = {}
    now = now_ms()
    bounds = {
        "map": (int(state["map_started"]), int(state.get("reduce_started", now))),
        "reduce": (int(state.get("reduce_started", now)), int(state.get("publish_started", now))),
    }
    for phase, n in (("map", int(state["n_map"])), ("reduce", int(state["n_reduce"]))):
        tasks = [layout.task_id(phase, i) for i in range(n)]
        stats = PhaseStats(
            tasks=n,
            launched=sum(attempts.get(t, 0) for t in tasks),
            failed=sum(failures.get(t, 0) for t in tasks),
            lost=sum(lost.get(t, 0) for t in tasks),
            resumed=int(state[f"resumed_{phase}"]) if f"resumed_{phase}" in state else None,
        )
        for task in tasks:
            raw = storage.get_or_none(layout.commit_key(k.job, task))
            for name, value in (json.loads(raw)["counters"] if raw else {}).items():
                stats.counters[name] = stats.counters.get(name, 0) + value
        counters.update(stats.as_counters(phase))
        counters[f"{phase}.millis"] = bounds[phase][1] - bounds[phase][0]
    return counters


def _end(
    worker: Any,
    k: JobKeys,
    entry_id: bytes | str,
    final: str,
    counters: dict[str, int],
    error: str,
    run: int,
) -> int:
    return int(
        worker.scripts["end"](
            keys=[k.state, k.tasks, QUEUES],
            args=[GROUP, entry_id, final, json.dumps(counters), error, now_ms(), run],
        )
    )


def _log_and_end(
    worker: Any, k: JobKeys, spec: TaskSpec | None, final: str, message: str, ended: bool = False
) -> None:
    """The job just failed (its state says so): log it, dequeue it, delete its data, set TTLs."""
    client = worker.client
    if not ended:
        client.zrem(QUEUES, k.tasks)
    log_event(client, k.job, spec.task_id if spec else "", 0, worker.name, "event", f"job {final}: {message}")
    state = {kk.decode(): v.decode() for kk, v in client.hgetall(k.state).items()}
    _cleanup(client, k.job, state, failed=True)


def _cleanup(client: Any, job_id: str, state: dict[str, str], *, failed: bool) -> None:
    """Delete a done job's intermediate data, then give every remaining key of the job its TTL.

    A failed or cancelled job keeps its intermediate data (its committed tasks' files, under
    ``{job}/`` in its storage and ``_temporary/{job}/`` beside its output) so that
    :func:`resume_job` can re-use them: in Redis (the default storage) they expire with the job's
    other keys; elsewhere they stay until a resumed run finishes or the user deletes them.
    """
    try:
        if not failed:
            storage = storage_for(state["storage"])
            for sub in ("map/", "reduce/", "input/"):
                storage.delete_prefix(f"{job_id}/{sub}")
            storage.delete(layout.job_key(job_id))
    finally:
        expire_job(client, job_id, int(state.get("ttl", DEFAULT_TTL)))


def expire_job(client: Any, job_id: str, ttl: int | None = None) -> int:
    """Set the TTL of every key of ``job_id`` that has none; returns how many were set."""
    if ttl is None:
        raw = client.hget(key(job_id, "state"), "ttl")
        ttl = int(raw) if raw else int(DEFAULT_TTL)
    keys = list(client.scan_iter(match=f"mrkit:{{{glob_escape(job_id)}}}:*", count=1000))
    pipe = client.pipeline(transaction=False)
    for name in keys:
        pipe.expire(name, ttl, nx=True)  # NX (Redis 7.0): keep an expiry already set
    pipe.execute()
    return len(keys)


def _job_lost(worker: Any, job_id: str, spec: TaskSpec, entry_id: bytes) -> None:
    job_lost(worker.name, job_id, spec.storage_url, spec.output_url, f"dropping {spec.task_id}")


def job_lost(worker_name: str, job_id: str, storage_url: str, output_url: str, what: str) -> None:
    """Redis has no state for the job (it restarted without persistence): say so, and delete what this
    worker's tasks wrote since (no TTL would ever remove it). Nothing is published.

    Args:
        worker_name: for the message.
        job_id: the lost job.
        storage_url, output_url: where its tasks wrote (from a task spec of the job; may be empty).
        what: what the worker does about it, for the message (``dropping map-00003``).
    """
    print(
        f"mrkit worker {worker_name}: job {job_id} was lost: Redis has no record of it any more "
        f"(restarted without persistence?); {what}",
        file=sys.stderr,
    )
    try:
        if storage_url:
            storage_for(storage_url).delete_prefix(f"{job_id}/")
        if output_url:
            storage_for(output_url).delete_prefix(f"_temporary/{job_id}/")
    except Exception as exc:  # best effort: the job is gone either way
        print(f"mrkit worker {worker_name}: could not delete the lost job's data: {exc}", file=sys.stderr)


# -- following a job ---------------------------------------------------------------------------

_ID_TIME = re.compile(r"-(\d{8}-\d{6})-[0-9a-f]{6}$")


def _missing_job(client: Any, job_id: str, url: str) -> tuple[str, str]:
    """Why Redis has no state for ``job_id``: ``("lost", why)`` or ``("unknown", why)``."""
    where = redact(url)
    match = _ID_TIME.search(job_id)
    try:
        uptime = int(client.info("server")["uptime_in_seconds"])
    except Exception:
        uptime = -1
    if match and uptime >= 0:
        submitted = time.mktime(time.strptime(match.group(1), "%Y%m%d-%H%M%S"))
        if submitted < time.time() - uptime:
            return "lost", (
                f"job {job_id} was lost: Redis at {where} has no record of it, and it was submitted "
                f"before Redis last started ({uptime}s ago) — Redis restarted without persistence "
                "(or the job ended more than its TTL ago); nothing was published"
            )
    return "unknown", (
        f"Redis at {where} has no job {job_id}: it never existed there, or it ended more than its TTL ago"
    )


def job_status(client: Any, job_id: str, url: str) -> dict[str, Any]:
    """The status of ``job_id`` as a JSON-able dict.

    Keys: ``id``, ``state`` (running, done, failed, cancelled, lost, unknown), ``phase``, ``name``,
    ``tasks`` ({phase: {done, total}}), ``attempts``/``failures``/``lost`` ({phase: count}),
    ``in_flight``, ``workers``, ``submitted``/``ended`` (unix seconds), ``seconds``, ``output``,
    ``refused`` (entries of its stream workers refused to run), ``error`` (when failed, lost or
    unknown), ``counters`` (when done).
    """
    k = JobKeys(job_id)
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(k.state)
    pipe.hlen(k.done("map"))
    pipe.hlen(k.done("reduce"))
    for name in (k.attempts, k.failures, k.lost):
        pipe.hgetall(name)
    pipe.zrange(k.workers, 0, -1)
    pipe.xpending(k.tasks, GROUP)
    raw, done_map, done_reduce, attempts, failures, lost, workers, pending = pipe.execute(
        raise_on_error=False
    )
    if not raw:
        state, why = _missing_job(client, job_id, url)
        return {"id": job_id, "state": state, "error": why}
    s = {kk.decode(): v.decode() for kk, v in raw.items()}

    def per_phase(h: Any) -> dict[str, int]:
        out = {"map": 0, "reduce": 0}
        for task, n in h.items() if isinstance(h, dict) else ():
            out[task.decode().split("-", 1)[0]] = out.get(task.decode().split("-", 1)[0], 0) + int(n)
        return out

    ended = int(s["ended"]) if "ended" in s else None
    status: dict[str, Any] = {
        "id": job_id,
        "name": s.get("name", ""),
        "state": s["state"],
        "phase": s.get("phase", ""),
        "tasks": {
            "map": {"done": int(done_map), "total": int(s["n_map"])},
            "reduce": {"done": int(done_reduce), "total": int(s["n_reduce"])},
        },
        "attempts": per_phase(attempts),
        "failures": per_phase(failures),
        "lost": per_phase(lost),
        "in_flight": int(pending["pending"]) if isinstance(pending, dict) else 0,
        "workers": [w.decode() for w in workers] if isinstance(workers, list) else [],
        "submitted": int(s["submitted"]) / 1000,
        "ended": ended / 1000 if ended else None,
        "seconds": ((ended or now_ms()) - int(s["submitted"])) / 1000,
        "output": redact(s["output"]) if s.get("in_memory") != "1" else None,
        "refused": int(s.get("refused", 0)),
    }
    if s.get("error"):
        status["error"] = s["error"]
    if s.get("counters"):
        status["counters"] = json.loads(s["counters"])
    return status


@contextmanager
def reaching(url: str) -> Iterator[None]:
    """Turn a refused connection to the Redis at ``url`` (or refused credentials) into one sentence
    naming it.

    Raises:
        StorageError: Redis cannot be reached, or refused the credentials.
    """
    import redis

    try:
        yield
    except redis.AuthenticationError as exc:
        raise StorageError(f"Redis at {redact(url)} refused the credentials: {exc}") from None
    except redis.ConnectionError as exc:
        # (Not redis.TimeoutError: a Redis that hangs is reached, and its TimeoutError says so.)
        raise StorageError(f"cannot reach Redis at {redact(url)}: {exc}") from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc) or "NOPERM" in str(exc):
            raise StorageError(f"Redis at {redact(url)} refused the credentials: {exc}") from None
        raise


def list_jobs(url: str, limit: int = 100) -> list[dict[str, Any]]:
    """Status of the newest ``limit`` jobs of the Redis at ``url``; forgets jobs whose keys expired.

    Raises:
        StorageError: Redis cannot be reached (one sentence naming it).
    """
    with reaching(url):
        return _list_jobs(url, limit)


def _list_jobs(url: str, limit: int) -> list[dict[str, Any]]:
    client = connect(url)
    ids = [i.decode() for i in client.zrevrange(JOBS, 0, limit - 1)]
    out, gone = [], []
    for job_id in ids:
        status = job_status(client, job_id, url)
        if status["state"] == "unknown":
            gone.append(job_id)
        else:
            out.append(status)
    if gone:
        client.zrem(JOBS, *gone)
    return out


def format_log(fields: dict[bytes, bytes]) -> str:
    """One log entry as text: ``12:00:01.123 map-00003 a1 [host:12] event: started``."""
    f = {kk.decode(): v.decode(errors="replace") for kk, v in fields.items()}
    stamp = time.strftime("%H:%M:%S", time.localtime(float(f.get("t", 0)))) + f".{f.get('t', '0.000')[-3:]}"
    task = f.get("task") or "job"
    attempt = f" a{f['attempt']}" if f.get("attempt", "0") != "0" else ""
    text = f.get("text", "").rstrip("\n").replace("\n", "\n    ")
    return f"{stamp} {task}{attempt} [{f.get('worker', '')}] {f.get('kind', '')}: {text}"


class RedisJobHandle(JobHandle):
    """Follows an asynchronous job by id, from any process that reaches its Redis.

    Args:
        url: the Redis URL the job was submitted to.
        job_id: the job's id (printed by ``mrkit submit``).
    """

    def __init__(self, url: str, job_id: str) -> None:
        self.url = url
        self.id = job_id
        self.client = connect(url)
        self.keys = JobKeys(job_id)
        self._refusals_checked = 0  # the job's ``refused`` count when its refusals were last read

    def status(self) -> dict[str, Any]:
        """See :func:`job_status`.

        Raises:
            StorageError: Redis cannot be reached (one sentence naming it).
        """
        with reaching(self.url):
            return job_status(self.client, self.id, self.url)

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the job ends and return its :class:`mrkit.Result`.

        Raises:
            JobFailed: the job failed, was lost, or is unknown; ``JobCancelled`` if it was cancelled.
            TimeoutError: ``timeout`` passed first.
            StorageError: Redis stayed unreachable for ``REDIS_DOWN_SECONDS``.
        """
        import redis

        deadline = None if timeout is None else time.monotonic() + timeout
        down_since: float | None = None
        while True:
            try:
                raw = self.client.hmget(self.keys.state, "state", "error", "traceback", "failed_task")
                down_since = None
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > REDIS_DOWN_SECONDS:
                    raise StorageError(
                        f"Redis at {redact(self.url)} unreachable for {REDIS_DOWN_SECONDS:g}s "
                        f"while waiting for job {self.id}: {exc}"
                    ) from None
                raw = [b"?"]
            state = raw[0].decode() if raw[0] else None
            if state is None:
                _, why = _missing_job(self.client, self.id, self.url)
                raise JobFailed(why, job_id=self.id)
            if state == "done":
                return self._result()
            if state in ("failed", "cancelled"):
                error = raw[1].decode() if raw[1] else f"job {self.id} {state}"
                cls = JobCancelled if state == "cancelled" else JobFailed
                raise cls(
                    error,
                    job_id=self.id,
                    task_id=raw[3].decode() if raw[3] else "",
                    remote_traceback=raw[2].decode() if raw[2] else "",
                )
            if state == "running":
                lost_task = self._refused_task()
                if lost_task:
                    fail_job(self.client, self.id, lost_task)
                    raise JobFailed(lost_task, job_id=self.id)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.id} still running after {timeout}s")
            time.sleep(
                POLL_SECONDS if deadline is None else max(0.0, min(POLL_SECONDS, deadline - time.monotonic()))
            )

    def _refused_task(self) -> str:
        """Why the job can never complete, if a worker refused one of its real task entries.

        Workers refuse (ack and dead-letter) entries whose signature does not verify with their
        secret. An entry injected by someone else is rightly refused and changes nothing; but an
        entry that verifies with *this* side's secret was a task of the job, now gone for good: the
        submitter and that worker do not share one secret. Only the submitter's side can tell the
        two apart, so it is checked here, when the job's ``refused`` count has grown.
        """
        refused = int(self.client.hget(self.keys.state, "refused") or 0)
        if refused == self._refusals_checked:
            return ""
        self._refusals_checked = refused
        try:
            secret = resolve_secret(self.url)
        except ConfigError:
            return ""  # no secret here: nothing to tell genuine entries by
        stream = self.keys.tasks.encode()
        for _dead_id, dead in self.client.xrange(DEAD):
            if dead.get(b"stream") != stream:
                continue
            found = self.client.xrange(self.keys.tasks, dead[b"id"], dead[b"id"])
            if not found:
                continue  # trimmed away: nothing to check it against
            try:
                unpack(secret, found[0][1], "a task")
            except (AuthenticationError, ValueError):
                continue  # not signed by this side: an injected entry, rightly refused
            return (
                f"job {self.id} cannot complete: worker {dead[b'worker'].decode()} refused its task "
                f"entry {dead[b'id'].decode()} ({dead[b'reason'].decode()}), and a refused entry is "
                "never run: the submitter and every worker must share one secret (MRKIT_SECRET or "
                "--secret-file) and run the same mrkit version; resubmit once they do"
            )
        return ""

    def _result(self) -> Any:
        from mrkit.coordination.result import Result
        from mrkit.data.output import read_output

        s = {kk.decode(): v.decode() for kk, v in self.client.hgetall(self.keys.state).items()}
        counters = json.loads(s.get("counters") or "{}")
        seconds = (int(s["ended"]) - int(s["submitted"])) / 1000
        if s.get("in_memory") == "1":
            return Result(self.id, None, counters, seconds, list(read_output(s["output"])))
        return Result(self.id, s["output"].removeprefix("file://"), counters, seconds)

    def cancel(self) -> bool:
        """Cancel the job if it is still running; True when this call cancelled it.

        Tasks already running finish, but nothing they do counts; intermediate data is deleted.
        """
        with reaching(self.url):
            return cancel_job(self.client, self.id)

    def logs(self, follow: bool = False) -> Iterator[str]:
        """Yield the job's log lines; with ``follow``, keep yielding new ones until the job ends.

        Raises:
            StorageError: Redis cannot be reached (one sentence naming it).
        """
        with reaching(self.url):
            yield from self._logs(follow)

    def _logs(self, follow: bool) -> Iterator[str]:
        last = b"-"
        while True:
            batch = self.client.xrange(self.keys.logs, min=last, max="+", count=1000)
            if last != b"-" and batch and batch[0][0] == last:
                batch = batch[1:]
            for entry_id, fields in batch:
                last = entry_id
                yield format_log(fields)
            if batch:
                continue
            if not follow:
                return
            state = self.client.hget(self.keys.state, "state")
            if state != b"running":
                tail = self.client.xrange(self.keys.logs, min=last, max="+", count=1000)
                for entry_id, fields in tail:
                    if entry_id != last:
                        yield format_log(fields)
                return
            time.sleep(POLL_SECONDS)


def fail_job(client: Any, job_id: str, message: str) -> bool:
    """Mark the running job ``job_id`` failed with ``message`` and delete its intermediate data.

    Returns:
        True when this call failed it; False when it had already ended.
    """
    return _end_from_outside(client, job_id, "failed", message)


def cancel_job(client: Any, job_id: str) -> bool:
    """Mark ``job_id`` cancelled if it is running; its intermediate data is kept for :func:`resume_job`.

    The job keeps its phase (``map``, ``reduce`` or ``publish``), and its error says where it stopped
    (``job ID was cancelled during the map phase``). Entries workers had read ahead are dropped
    unrun when they reach them (logged ``dropped: the job was cancelled``); a task already running
    finishes, and its result is discarded.

    Returns:
        True when this call cancelled it; False when it had already ended.

    Raises:
        JobFailed: Redis has no such job.
    """
    return _end_from_outside(client, job_id, "cancelled", f"job {job_id} was cancelled")


def _end_from_outside(client: Any, job_id: str, final: str, message: str) -> bool:
    """End a running job from a handle (not a worker): record it, log it, give its keys a TTL."""
    k = JobKeys(job_id)
    script = client.register_script(_END)
    outcome = int(
        script(keys=[k.state, k.tasks, QUEUES], args=[GROUP, "", final, "{}", message, now_ms(), ""])
    )
    if outcome == -1:
        verb = "cancel" if final == "cancelled" else "fail"
        raise JobFailed(f"Redis has no job {job_id} to {verb}", job_id=job_id)
    if outcome == 1:
        state = {kk.decode(): v.decode() for kk, v in client.hgetall(k.state).items()}
        who = "submitter" if final == "failed" else "canceller"
        log_event(client, job_id, "", 0, who, "event", state.get("error", message))
        _cleanup(client, job_id, state, failed=True)
    return outcome == 1


# -- resuming a failed or cancelled job ---------------------------------------------------------


def resume_job(executor: Any, job_id: str) -> RedisJobHandle:
    """Put the failed or cancelled job ``job_id`` back to running as its next run.

    Every task whose COMMIT (and the files it names) is still in the job's storage is kept; the
    others are enqueued again, signed for the new run, and get fresh attempt numbers (the
    ``attempts`` hash keeps counting) and a fresh attempt budget (``failures`` and ``lost`` are
    reset). The job restarts in the first phase with a task to run (``publish`` when every task
    committed). Entries of an earlier run that arrive later are dropped by every script (their
    ``run`` differs from the state's). The job's keys lose their TTL until it ends again.

    Args:
        executor: the :class:`~mrkit.backends.redis.executor.RedisExecutor` naming the Redis.
        job_id: the job's id.

    Returns:
        A :class:`RedisJobHandle` on the resumed job.

    Raises:
        ResumeRefused: Redis has no such job (never submitted there, or its keys expired), it is
            still running or done (nothing to resume), its data is gone, or it changed meanwhile.
    """
    from mrkit.coordination.resume import ResumeRefused, commit_is_whole

    client, k, secret = executor.client, JobKeys(job_id), executor.secret
    s = {kk.decode(): v.decode() for kk, v in client.hgetall(k.state).items()}
    if not s:
        _, why = _missing_job(client, job_id, executor.url)
        raise ResumeRefused(f"cannot resume: {why}")
    if s["state"] in ("running", "done"):
        raise ResumeRefused(f"job {job_id} is {s['state']}: nothing to resume")
    storage, output = storage_for(s["storage"]), storage_for(s["output"])
    if not storage.exists(layout.job_key(job_id)):
        raise ResumeRefused(
            f"cannot resume job {job_id}: its code is gone from {redact(s['storage'])} (the job failed "
            "on an mrkit that deleted a failed job's data, or someone deleted it); submit it again"
        )
    n = {"map": int(s["n_map"]), "reduce": int(s["n_reduce"])}
    kept = {
        phase: [
            t
            for t in (layout.task_id(phase, i) for i in range(n[phase]))
            if commit_is_whole(storage, output, job_id, t)
        ]
        for phase in ("map", "reduce")
    }
    start = next((p for p in ("map", "reduce") if len(kept[p]) < n[p]), "publish")
    if start == "map":
        kept["reduce"] = []  # the reduce phase starts afresh; a reduce commit found later still wins
    old_run = int(s.get("run", 1))
    run = old_run + 1
    specs = _task_specs(client, k, secret)
    missing = [t for p in ("map", "reduce") for t in _task_ids(n[p], p) if t not in specs]
    if missing:
        raise ResumeRefused(
            f"cannot resume job {job_id}: no entry signed with this side's secret holds task "
            f"{missing[0]} (is MRKIT_SECRET or --secret-file the submitter's?)"
        )

    def entry(op: str, body: bytes) -> dict[str, bytes | str]:
        return pack(secret, {"op": op, "job": job_id, "run": run}, body)

    todo = (
        [specs[t] for t in _task_ids(n[start], start) if t not in kept[start]] if start != "publish" else []
    )
    first = [entry("task", body) for body in todo] if start != "publish" else [entry("publish", b"")]
    reduces = [entry("task", specs[t]) for t in _task_ids(n["reduce"], "reduce")]
    publish = entry("publish", b"")
    now = now_ms()
    with client.pipeline(transaction=True) as pipe:
        pipe.watch(k.state)
        current = pipe.hmget(k.state, "state", "run")
        if current[0] not in (b"failed", b"cancelled") or int(current[1] or 1) != old_run:
            raise ResumeRefused(
                f"job {job_id} changed while it was being resumed (resumed elsewhere?); nothing done"
            )
        pipe.multi()
        pipe.hdel(k.state, "error", "traceback", "failed_task", "ended", "counters", "publisher")
        fields: dict[str, Any] = {
            "state": "running",
            "phase": start,
            "run": run,
            "resumed": now,
            "resumed_map": len(kept["map"]),
            "resumed_reduce": len(kept["reduce"]),
        }
        pipe.hset(k.state, mapping=fields)
        if start != "map":
            pipe.hsetnx(k.state, f"{start}_started", now)
        pipe.delete(
            k.failures, k.lost, k.done("map"), k.done("reduce"), k.trigger("reduce"), k.trigger("publish")
        )
        pipe.delete(k.next("reduce"), k.next("publish"))
        for phase in ("map", "reduce"):
            if kept[phase]:
                pipe.hset(k.done(phase), mapping={t: "resumed" for t in kept[phase]})
        if start != "map":
            pipe.set(k.trigger("reduce"), "resumed")
        if start == "publish":
            pipe.set(k.trigger("publish"), "resumed")
        pipe.rpush(k.next("reduce"), *[v for f in reduces for v in (f["p"], f["s"])])
        pipe.rpush(k.next("publish"), publish["p"], publish["s"])
        for f in first:
            pipe.xadd(k.tasks, f)
        pipe.xadd(
            k.logs,
            _log_fields(
                "",
                0,
                "resumer",
                "event",
                f"resumed as run {run} in the {start} phase: kept {len(kept['map'])} map and "
                f"{len(kept['reduce'])} reduce tasks, enqueued {len(first)} entries",
            ),
            maxlen=LOG_MAXLEN,
            approximate=True,
        )
        pipe.zadd(JOBS, {job_id: int(s["submitted"])})
        pipe.zadd(QUEUES, {k.tasks: "+inf"})
        try:
            pipe.execute()
        except Exception as exc:
            import redis

            if isinstance(exc, redis.WatchError):
                raise ResumeRefused(
                    f"job {job_id} changed while it was being resumed (resumed elsewhere?); nothing done"
                ) from None
            raise
    names = list(client.scan_iter(match=f"mrkit:{{{glob_escape(job_id)}}}:*", count=1000))
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.persist(name)  # the job runs again: its keys get their TTL when it ends again
    pipe.execute()
    return RedisJobHandle(executor.url, job_id)


def _task_ids(count: int, phase: str) -> list[str]:
    return [layout.task_id(phase, i) for i in range(count)]


def _task_specs(client: Any, k: JobKeys, secret: bytes) -> dict[str, bytes]:
    """The encoded :class:`TaskSpec` of each task of the job, from its stream (maps) and its parked
    reduce entries, each verified with ``secret``."""
    found: dict[str, bytes] = {}
    raw = [fields for _id, fields in client.xrange(k.tasks)]
    items = client.lrange(k.next("reduce"), 0, -1)
    raw += [{b"p": items[i], b"s": items[i + 1]} for i in range(0, len(items) - 1, 2)]
    for fields in raw:
        try:
            header, body = unpack(secret, fields, "a task entry")
        except (AuthenticationError, ValueError):
            continue  # not signed with this side's secret: an injected entry, never run
        if header.get("op") != "task":
            continue
        found.setdefault(TaskSpec.decode(body).task_id, body)
    return found


SCRIPTS = {
    "commit": _COMMIT,
    "fail": _FAIL,
    "lost": _LOST,
    "end": _END,
    "publish": _PUBLISH,
    "refused": _REFUSED,
}
