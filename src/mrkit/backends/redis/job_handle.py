"""Following an asynchronous Redis job by its id: status, logs, events, result, cancel, the list of jobs.

:class:`RedisJobHandle` works from any process that reaches the Redis (``mrkit status/logs/result/
cancel ID --executor redis://…``); :func:`job_status` is the status dict every side reports, and
:func:`cancel_job`/:func:`fail_job` end a job from outside the fleet.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mrkit.backends.redis.job_events import read_events
from mrkit.backends.redis.job_state import POLL_SECONDS, REDIS_DOWN_SECONDS, SCRIPTS, JobKeys
from mrkit.backends.redis.job_steps import cleanup_job, log_event
from mrkit.backends.redis.wire import DEAD, GROUP, JOBS, QUEUES, now_ms, resolve_secret, unpack
from mrkit.coordination.events import TaskEvent
from mrkit.coordination.handle import JobHandle
from mrkit.errors import (
    AuthenticationError,
    ConfigError,
    JobCancelled,
    JobFailed,
    StorageError,
)
from mrkit.model.status import JobStatus
from mrkit.storage.redis import connect, redact

# -- following a job ---------------------------------------------------------------------------

_ID_TIME = re.compile(r"-(\d{8}-\d{6})-[0-9a-f]{6,}$")


def missing_job(client: Any, job_id: str, url: str) -> tuple[str, str]:
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
        state, why = missing_job(client, job_id, url)
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


def list_jobs(url: str, limit: int = 100) -> list[JobStatus]:
    """Status of the newest ``limit`` jobs of the Redis at ``url``; forgets jobs whose keys expired.

    Raises:
        StorageError: Redis cannot be reached (one sentence naming it).
    """
    with reaching(url):
        return _list_jobs(url, limit)


def _list_jobs(url: str, limit: int) -> list[JobStatus]:
    client = connect(url)
    ids = [i.decode() for i in client.zrevrange(JOBS, 0, limit - 1)]
    out: list[JobStatus] = []
    gone = []
    for job_id in ids:
        status = job_status(client, job_id, url)
        if status["state"] == "unknown" and not client.exists(JobKeys(job_id).chain):
            gone.append(job_id)  # (a multi-step job has no state of its own: its chain, chain.py)
        else:
            out.append(JobStatus.from_dict({"executor": redact(url), **status}))
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

    def status(self) -> JobStatus:
        """See :func:`job_status`.

        Raises:
            StorageError: Redis cannot be reached (one sentence naming it).
        """
        with reaching(self.url):
            return JobStatus.from_dict(
                {"executor": redact(self.url), **job_status(self.client, self.id, self.url)}
            )

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
                _, why = missing_job(self.client, self.id, self.url)
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
        """Cancel the job if it is still running; True when this call cancelled it (see
        :func:`cancel_job`: False once a worker publishes the output). Tasks already running
        finish, but nothing they do counts; the intermediate data stays, for a resume."""
        with reaching(self.url):
            return cancel_job(self.client, self.id)

    def events(self) -> list[TaskEvent]:
        """The job's task events (:mod:`mrkit.backends.redis.job_events`): every attempt that ended,
        and those still running (``end`` 0), in start order; empty once the job's keys expired.

        Raises:
            StorageError: Redis cannot be reached (one sentence naming it).
        """
        with reaching(self.url):
            return read_events(self.client, self.keys)

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

    Once a worker has started publishing the output, cancelling is refused (False): the output is
    being committed, and the job ends done (or failed) by its publisher, never cancelled with its
    output published.

    Returns:
        True when this call cancelled it; False when it had already ended or is publishing.

    Raises:
        JobFailed: Redis has no such job.
    """
    return _end_from_outside(client, job_id, "cancelled", f"job {job_id} was cancelled")


def _end_from_outside(client: Any, job_id: str, final: str, message: str) -> bool:
    """End a running job from a handle (not a worker): record it, log it, give its keys a TTL."""
    k = JobKeys(job_id)
    script = client.register_script(SCRIPTS["end"])
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
        cleanup_job(client, job_id, state, failed=True)
    return outcome == 1
