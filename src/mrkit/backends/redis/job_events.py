"""Task events of asynchronous Redis jobs: one :class:`~mrkit.coordination.events.TaskEvent` per attempt.

The workers that run a job's attempts record them, in two keys of the job (``mrkit:{job}:…``, with
the job's other keys: they get its TTL when it ends, and a resume keeps them):

* ``running`` — hash: stream entry id -> the event of the attempt running it (JSON, ``end`` 0),
  written by :data:`START` when the attempt starts (which also draws its attempt number and logs
  ``started``: one round trip, as before);
* ``events`` — stream, field ``e``: the event of every attempt that ended (JSON, never pickle),
  trimmed to about the newest :data:`EVENTS_MAXLEN` with ``MAXLEN ~``. :data:`ENDED` appends it and
  drops the attempt's ``running`` entry; it rides in the pipeline of the COMMIT or FAIL script, so an
  attempt's end costs no extra round trip.

Who records which outcome:

* the attempt's worker, when it returns: ``committed`` (its COMMIT won) or ``discarded`` (another
  attempt's had: a duplicate delivery, a worker presumed dead that finished anyway, or any attempt
  that finishes after the job was published), ``cancelled`` when the job had failed or been
  cancelled meanwhile (an attempt that won its COMMIT then stays ``committed``: a resume re-uses
  it), ``failed`` when its user code raised (``error``: the one-sentence failure);
* the worker's watchdog (``task_timeout``) or supervisor (its task process died): ``failed``, with
  the attempt's times taken from its ``running`` entry;
* whoever reclaims the entry of a worker that died (lease expired, or no liveness beat): ``lost``,
  from the dead attempt's ``running`` entry, ``error`` saying why.

A worker presumed dead that reports after all records its own outcome too; :func:`read_events`
keeps the last event written per attempt. An event holds no secret: phase, task, attempt, times,
``host:pid``, counters, and for a failure its sentence and traceback, both scrubbed (:func:`scrub`:
a failure names its input split, whose URL may carry the Redis password).
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.parse
from typing import Any

from mrkit.coordination.events import TaskEvent, event_of
from mrkit.model.task import TaskResult, TaskSpec

EVENTS_MAXLEN = 100_000  # per job; ``MAXLEN ~`` keeps at least this many of the newest
PAGE = 10_000

# KEYS: state, attempts, workers, running, logs. ARGV: task, worker, now (ms), entry id, the running
# event's JSON without ``attempt``, log time, log maxlen. Draws the attempt number, notes the worker,
# records the attempt as running under its entry id, logs ``started``; returns the attempt number.
_START = """
local n = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
redis.call('HSET', KEYS[4], ARGV[4], '{"attempt":' .. n .. ',' .. string.sub(ARGV[5], 2))
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 and redis.call('PTTL', KEYS[4]) == -1 then redis.call('PEXPIRE', KEYS[4], ttl) end
redis.call('XADD', KEYS[5], 'NOMKSTREAM', 'MAXLEN', '~', ARGV[7], '*', 't', ARGV[6], 'task', ARGV[1],
           'attempt', n, 'worker', ARGV[2], 'kind', 'event', 'text', 'started')
return n
"""

# KEYS: state, events, running. ARGV: entry id, attempt ('' = whichever attempt holds the entry),
# outcome, the event's JSON without ``outcome`` ('' = the running entry's, with ARGV[5] spliced in:
# ``"end":…,"error":…,``), ARGV[5], maxlen. Drops the attempt's running entry (only its own: a
# reclaimer's newer attempt of the same entry stays) and appends its event; nothing for a job Redis
# no longer has. ``committed``/``discarded`` become ``discarded`` once the job is done (the attempt
# finished after the publish) and ``discarded`` becomes ``cancelled`` once it failed or was cancelled.
_ENDED = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 0 end
local rec = redis.call('HGET', KEYS[3], ARGV[1])
local own = '{"attempt":' .. ARGV[2] .. ','
if rec and (ARGV[2] == '' or string.sub(rec, 1, #own) == own) then
  redis.call('HDEL', KEYS[3], ARGV[1])
elseif ARGV[4] == '' then
  return 0
else
  rec = nil
end
local body = ARGV[4]
if body == '' then body = '{' .. ARGV[5] .. string.sub(rec, 2) end
local outcome = ARGV[3]
if state == 'done' and outcome == 'committed' then outcome = 'discarded' end
if state ~= 'running' and state ~= 'done' and outcome == 'discarded' then outcome = 'cancelled' end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 'e',
           '{"outcome":"' .. outcome .. '",' .. string.sub(body, 2))
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 and redis.call('PTTL', KEYS[2]) == -1 then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
"""

SCRIPTS = {"attempt_start": _START, "attempt_ended": _ENDED}


def _json(event: TaskEvent, *omit: str) -> str:
    return json.dumps({k: v for k, v in event.to_dict().items() if k not in omit}, separators=(",", ":"))


def one_line(text: str) -> str:
    """``text`` as one line (an event's ``error`` never holds a newline)."""
    return " ".join(text.split())


_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:]*):[^\s/@]+@")


def scrub(text: str, worker: Any, *urls: str) -> str:
    """``text`` without the secrets ``worker`` knows: any URL's password becomes ``***`` (as
    :func:`~mrkit.storage.redis.redact` writes it), and so does any occurrence of the passwords of
    ``urls`` and the worker's URL, of ``MRKIT_REDIS_PASSWORD``, and of the shared signing secret."""
    if not text:
        return text
    text = _USERINFO.sub(r"\1:***@", text)
    known = [os.environ.get("MRKIT_REDIS_PASSWORD", ""), worker.secret.decode(errors="ignore")]
    for url in (getattr(worker, "url", ""), *urls):
        password = urllib.parse.urlsplit(url).password or "" if url else ""
        known += [password, urllib.parse.unquote(password)]
    for secret in sorted(set(known), key=len, reverse=True):
        if len(secret) >= 4:  # shorter would mangle every message, and is no secret anyway
            text = text.replace(secret, "***")
    return text


def start_attempt(worker: Any, k: Any, spec: TaskSpec, entry_id: bytes, log_maxlen: int) -> tuple[int, float]:
    """Start an attempt of ``spec`` from ``entry_id`` on ``worker``: draw its number, record it as
    running, log ``started`` (one round trip). Returns the attempt number and its start time."""
    started = time.time()
    running = TaskEvent(spec.kind.value, spec.task_id, 0, started, worker=worker.name)
    attempt = worker.scripts["attempt_start"](
        keys=[k.state, k.attempts, k.workers, k.running, k.logs],
        args=[
            spec.task_id,
            worker.name,
            int(started * 1000),
            entry_id,
            _json(running, "attempt", "outcome", "end", "error"),
            f"{started:.3f}",
            log_maxlen,
        ],
    )
    return int(attempt), started


def record_end(
    pipe: Any,
    worker: Any,
    k: Any,
    entry_id: bytes,
    spec: TaskSpec,
    result: TaskResult,
    started: float,
) -> None:
    """Queue on ``pipe`` the event of the attempt ``spec`` that returned ``result`` (see the module
    docstring for its outcome); the caller's COMMIT or FAIL script follows in the same pipeline."""
    outcome = "committed" if result.ok and result.committed else "discarded" if result.ok else "failed"
    urls = (spec.storage_url, spec.output_url, *(piece.uri for piece in spec.pieces))
    error = scrub(one_line(result.failure.sentence()), worker, *urls) if result.failure is not None else ""
    event = event_of(spec.kind.value, spec, outcome, result, start=started, error=error, worker=worker.name)
    event.traceback = scrub(event.traceback, worker, *urls)
    worker.scripts["attempt_ended"](
        keys=[k.state, k.events, k.running],
        args=[entry_id, spec.attempt, outcome, _json(event, "outcome"), "", EVENTS_MAXLEN],
        client=pipe,
    )


def record_from_running(
    pipe: Any, worker: Any, k: Any, entry_id: bytes, outcome: str, error: str, attempt: int | str = ""
) -> None:
    """Queue on ``pipe`` the end of the attempt recorded as running ``entry_id`` (``attempt``, or
    whichever holds it), as ``outcome`` now with ``error``: a lost attempt (from its reclaimer), or
    one failed by a watchdog or supervisor. Nothing when no such attempt is recorded."""
    splice = json.dumps({"end": time.time(), "error": scrub(one_line(error), worker)}, separators=(",", ":"))
    splice = splice[1:-1] + ","
    worker.scripts["attempt_ended"](
        keys=[k.state, k.events, k.running],
        args=[entry_id, attempt, outcome, "", splice, EVENTS_MAXLEN],
        client=pipe,
    )


def read_events(client: Any, k: Any) -> list[TaskEvent]:
    """The job's events: every attempt that ended and every one still running (``end`` 0), one per
    attempt (the last written wins), in start order. Empty once the job's keys expired."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(k.running)  # before the stream: an attempt ending meanwhile is then seen twice, not lost
    pipe.xrange(k.events, "-", "+", count=PAGE)
    running, page = pipe.execute()
    found: dict[tuple[str, int], TaskEvent] = {}
    for raw in running.values():
        _add(found, raw)
    ended: dict[tuple[str, int], TaskEvent] = {}
    while page:
        for _entry_id, fields in page:
            _add(ended, fields.get(b"e", b""))
        if len(page) < PAGE:
            break
        page = client.xrange(k.events, b"(" + page[-1][0], "+", count=PAGE)
    found.update(ended)
    return sorted(found.values(), key=lambda e: (e.start, e.task, e.attempt))


def _add(into: dict[tuple[str, int], TaskEvent], raw: bytes) -> None:
    try:
        event = TaskEvent.from_dict(json.loads(raw))
    except (ValueError, TypeError):
        return  # not an event of this mrkit: skip it rather than fail the whole read
    into.pop((event.task, event.attempt), None)  # re-inserted: dict order is the order written
    into[(event.task, event.attempt)] = event
