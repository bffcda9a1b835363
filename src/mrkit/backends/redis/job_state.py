"""Asynchronous jobs on a Redis fleet: the job's state machine, its keys and its Lua scripts.

The state machine lives in Redis and is advanced by workers. It is seen from three sides, each in
its own module: the submitter (:mod:`mrkit.backends.redis.jobs`: submit and resume), the workers
(:mod:`mrkit.backends.redis.job_steps`: :func:`~mrkit.backends.redis.job_steps.process_entry`), and
whoever follows the job by id (:mod:`mrkit.backends.redis.job_handle`). This module holds what the
three share: the keys (:class:`JobKeys`), the transitions (the Lua scripts below, :data:`SCRIPTS`)
and the failure sentences.

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
  that dies is replaced like any task (its successor resumes the moves; see ``job_steps._resume_publish``).

* **RESUME** (``jobs.resume_job``, from any process): a ``MULTI`` watched on the state hash puts a
  failed or cancelled job back to running as run ``run + 1``, keeping the tasks whose COMMIT is in
  storage and enqueuing the others, signed for the new run.

Every entry's header carries its ``run`` (1 at submit); every script above takes the entry's run and
acks and drops an entry of another run (``stale``) before anything else, so the late deliveries of a
run that failed never touch the resumed run's completion sets or counters.

A reduce entry seen during the map phase is a duplicate (the real ones are enqueued with the phase
change): it is acked and dropped without using an attempt. A task that finishes after its job ended
(a zombie) deletes what it wrote (``_discard_late_attempt`` in ``job_steps``), unless the job failed or was
cancelled and the zombie won its task's COMMIT: a resume re-uses it.

Scripts refuse to act when the job's state hash is missing: Redis lost it (restarted without
persistence). The worker then drops the task, deletes what it wrote, and says so; nothing is
published. Every key of the job gets a TTL when it ends (``ttl``, default 24 h); a failed or
cancelled job keeps its intermediate data until then, for a resume, which removes the TTLs again.
docs/redis.md lists them all.
"""

from __future__ import annotations

from mrkit.backends.redis.job_events import SCRIPTS as EVENT_SCRIPTS
from mrkit.backends.redis.wire import key
from mrkit.errors import ConfigError

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
# it stopped in, and its error names it, as the in-process driver's JobCancelled does. A cancel from
# outside is refused (2) once a worker started publishing: the output is being committed, and the job
# ends done or failed by its publisher, never cancelled with its output in place.
_END = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
if (ARGV[7] or '') ~= '' and (redis.call('HGET', KEYS[1], 'run') or '1') ~= ARGV[7] then
  if ARGV[2] ~= '' then redis.call('XACK', KEYS[2], ARGV[1], ARGV[2]) end
  return -2
end
if ARGV[2] ~= '' then redis.call('XACK', KEYS[2], ARGV[1], ARGV[2]) end
if state ~= 'running' then return 0 end
if ARGV[3] == 'cancelled' and ARGV[2] == '' and redis.call('HEXISTS', KEYS[1], 'publisher') == 1 then
  return 2
end
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


def check_job_id(job_id: str) -> None:
    """Refuse a job id that would not stay inside its own keys (``mrkit:{id}:name``).

    Raises:
        ConfigError: the id holds a brace or a colon.
    """
    if "{" in job_id or "}" in job_id or ":" in job_id:
        raise ConfigError(f"job id {job_id!r} may not contain braces or colons (they delimit Redis keys)")


class JobKeys:
    """The Redis keys of one asynchronous job (docs/redis.md describes each)."""

    def __init__(self, job_id: str) -> None:
        self.job = job_id
        for name in ("state", "meta", "tasks", "attempts", "failures", "lost", "workers", "logs"):
            setattr(self, name, key(job_id, name))
        for name in ("events", "running", "chain"):
            setattr(self, name, key(job_id, name))
        self.state: str
        self.meta: str
        self.tasks: str
        self.attempts: str
        self.failures: str
        self.lost: str
        self.workers: str
        self.logs: str
        self.events: str  # the attempts' task events (mrkit.backends.redis.job_events)
        self.running: str
        self.chain: str  # the record of a multi-step job of this id (mrkit.backends.redis.chain)

    def done(self, phase: str) -> str:
        return key(self.job, f"done:{phase}")

    def trigger(self, phase: str) -> str:
        return key(self.job, f"trigger:{phase}")

    def next(self, phase: str) -> str:
        return key(self.job, f"next:{phase}")


def lost_message(phase: str, task_id: str, job_id: str, lost: int | str, reason: str) -> str:
    """The driver's sentence for a task whose worker was lost too often."""
    return f"{phase} task {task_id} of job {job_id} failed: its worker was lost {lost} times (last: {reason})"


SCRIPTS = {
    "commit": _COMMIT,
    "fail": _FAIL,
    "lost": _LOST,
    "end": _END,
    "publish": _PUBLISH,
    "refused": _REFUSED,
    **EVENT_SCRIPTS,
}
