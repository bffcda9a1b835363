"""The Redis fleet worker: ``mrkit worker redis://host:port/db [--concurrency K] [--burst] [--name N]``.

One worker process is one consumer of the group ``workers`` on every live task stream listed in
``mrkit:queues`` (docs/redis.md). Its loop:

1. ``XREADGROUP … COUNT n BLOCK 250ms STREAMS <every live stream> > …``. ``n`` adapts: 1 while tasks
   take more than 5 ms (a long task must not sit on work another worker could start), doubling up to
   64 while they are tiny (one round trip per batch instead of per task).
2. Verify each entry's signature (:mod:`mrkit.security`) *before* decoding it. An entry that does not
   verify is never decoded, unpickled or run: it is acked, copied to ``mrkit:dead`` with the reason,
   and logged on stderr.
3. Run it with :func:`mrkit.execution.runtime.run_task`. A blocking-mode task (its header names a reply
   stream) gets its signed result ``XADD``\\ed there and is ``XACK``\\ed in the same pipeline. An
   asynchronous job's task goes to :mod:`mrkit.backends.redis.jobs`, which records completion
   and advances the job atomically (the worker hosts the job's coordination; nobody else does).
4. A heartbeat thread renews the leases of the entries it holds (:mod:`~mrkit.backends.redis.leases`)
   and beats its liveness in ``mrkit:workers`` every ``WORKER_BEAT``. Every ``DEPARTURE_CHECK`` it
   hands back asynchronous jobs' entries held by departed consumers (no beat for ``WORKER_GONE_MS``)
   and reclaims them at once; idle, or every half lease, it reclaims entries whose lease expired
   (``XAUTOCLAIM``). Blocking sessions' entries are reclaimed by their executor, which retries them
   as new attempts.

``--burst``: exit when no live session exists and every job stream is drained (nothing undelivered,
nothing pending). SIGTERM/SIGINT: finish the task in hand, hand back the prefetched ones, deregister,
exit. ``mrkit worker`` runs K of these loops as task processes under a supervisor
(:mod:`~mrkit.backends.redis.supervisor`); in a task process each attempt runs under
:func:`mrkit.execution.watchdog.watch`, which on ``task_timeout`` reports the attempt as failed
(``TaskTimeout``) and ends the process.

Redis unreachable: the worker retries every second, saying so on stderr; in burst mode it gives up
after 60 s (exit status 1). Tasks it held are reclaimed by others once its liveness beats stop (3-4 s).
User output of asynchronous tasks is captured per task (:mod:`~mrkit.backends.redis.capture`) and
appended to the job's log stream.

About 580 lines: the loop, its reading and its running of entries share one worker object.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
import threading
import time
from contextlib import nullcontext
from typing import Any

from mrkit.backends.redis.capture import capture_output
from mrkit.backends.redis.leases import Entry, Leases, Queue
from mrkit.backends.redis.wire import (
    DEAD,
    DEAD_MAXLEN,
    DEPARTURE_CHECK,
    GROUP,
    QUEUES,
    WORKER_BEAT,
    WORKERS,
    beat,
    hand_back_departed,
    now_ms,
    pack,
    unpack,
)
from mrkit.errors import AuthenticationError, StorageError
from mrkit.execution.runtime import run_task
from mrkit.execution.watchdog import end_process, watch
from mrkit.model.task import TaskFailure, TaskKind, TaskResult, TaskSpec
from mrkit.storage.redis import connect, redact

MAX_BATCH = 64
ATTEMPTS_TTL = 7 * 86400  # blocking jobs' attempt counters outlive any job; the TTL removes them
TINY_TASK_SECONDS = 0.005
FLUSH_SECONDS = 0.01  # buffered blocking-mode results are sent at least this often
BLOCK_MS = 250
QUEUE_REFRESH_SECONDS = 1.0
BURST_GIVE_UP_SECONDS = 60.0
# Exception names that mean Redis itself failed under a task (redis-py's classes).
_REDIS_FAILURES = {"ConnectionError", "TimeoutError", "BusyLoadingError", "ReadOnlyError", "MasterDownError"}
SLOT_BYTES = 1024  # the shared slot where a task process names the entry it runs (JSON)

# -- the worker ------------------------------------------------------------------------------


def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.ConnectionError, redis.TimeoutError)


class RedisWorker:
    """One consumer of every live task stream of one Redis.

    Args:
        url: the Redis URL.
        name: this consumer's name (unique among the fleet; default ``host:pid``).
        burst: return from :meth:`run` when no work is left.
        secret: the shared secret (see :func:`~mrkit.backends.redis.executor.resolve_secret`).
        capture_output: capture user output of asynchronous tasks (needs :func:`install_capture`).
    """

    def __init__(
        self,
        url: str,
        *,
        name: str | None = None,
        burst: bool = False,
        secret: bytes = b"",
        capture_output: bool = True,
        slot: Any = None,
    ) -> None:
        self.url = url
        # A task process of a supervisor (:func:`serve`): ``slot`` is the shared buffer where it
        # writes the entry it runs, so that the supervisor can report the attempt as failed if the
        # process dies under it. Only such a process enforces task_timeout by ending itself.
        self.slot = slot
        self._current: tuple[str, bytes, dict[str, Any], dict[bytes, bytes], TaskSpec] | None = None
        self.label = redact(url)
        self.host = socket.gethostname()
        self.name = name or f"{self.host}:{os.getpid()}"
        self.burst = burst
        self.secret = secret
        self.capture_output = capture_output
        self.client = connect(url)
        self.queues: dict[str, Queue] = {}
        self.tasks_done = 0
        self.job_places: dict[str, tuple[str, str]] = {}  # job -> (storage URL, output URL) of tasks run
        self._queues_at = 0.0
        self._departures_at = 0.0
        self._count = 1
        self._stop = threading.Event()
        self._running: tuple[str, bytes, float] | None = None  # the job entry being run, since when
        self._in_task = False  # an entry's task is running (blocking or job)
        self.leases = Leases(self.client, self.name, self.queues)
        from mrkit.backends.redis.job_state import SCRIPTS

        self.scripts = {name: self.client.register_script(text) for name, text in SCRIPTS.items()}
        # Blocking-mode results not yet sent: reply stream -> [(sid, result bytes)], and the entries
        # to ack per task stream. One flush sends one signed entry per reply stream and one XACK per
        # task stream, however many tasks finished since the last flush.
        self._replies: dict[str, list[tuple[int, bytes]]] = {}
        self._acks: dict[str, list[bytes]] = {}
        self._replies_since = 0.0

    # -- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to return after the task in hand (from another thread; a signal handler
        goes through :func:`~mrkit.backends.redis.supervisor._stop_relay`: this takes a lock)."""
        self._stop.set()

    def run(self) -> int:
        """Consume tasks until stopped (or, in burst mode, until no work is left).

        Returns:
            The number of entries processed.

        Raises:
            StorageError: burst mode and Redis stayed unreachable for ``BURST_GIVE_UP_SECONDS``.
        """
        beater = threading.Thread(target=self._heartbeat_loop, name="mrkit-heartbeat", daemon=True)
        beater.start()
        down_since: float | None = None
        try:
            while not self._stop.is_set():
                try:
                    if not self._step():
                        break
                    if down_since is not None:
                        print(
                            f"mrkit worker {self.name}: reconnected to Redis at {self.label}", file=sys.stderr
                        )
                    down_since = None
                except _redis_errors() as exc:
                    self.leases.forget()
                    self._replies, self._acks = {}, {}
                    if down_since is None:
                        down_since = time.monotonic()
                        print(
                            f"mrkit worker {self.name}: Redis at {self.label} unreachable ({exc}); "
                            "retrying every second",
                            file=sys.stderr,
                        )
                    elif self.burst and time.monotonic() - down_since > BURST_GIVE_UP_SECONDS:
                        raise StorageError(
                            f"Redis at {self.label} unreachable for {BURST_GIVE_UP_SECONDS:g}s; "
                            "burst worker gives up"
                        ) from None
                    self._stop.wait(1.0)
        finally:
            self._stop.set()
            self.leases.hand_back()
            beater.join(timeout=2)
            try:
                self.client.zrem(WORKERS, self.name)
            except _redis_errors():
                pass
        return self.tasks_done

    def _step(self) -> bool:
        """One read-and-process round; False when a burst worker should exit."""
        now = time.monotonic()
        if now - self._queues_at >= QUEUE_REFRESH_SECONDS or not self.queues:
            self._refresh_queues()
        if not self.queues:
            if self.burst:
                return False
            self._stop.wait(BLOCK_MS / 1000)
            return True
        entries = self._read()
        departed = self._departed() if now - self._departures_at >= DEPARTURE_CHECK else set()
        if not entries:
            entries = self._reclaim(force=True, now=departed)
        elif departed or now - min(q.last_reclaim for q in self.queues.values()) > 5.0:
            entries += self._reclaim(force=False, now=departed)
        if entries:
            self._process(entries)
            return True
        return not (self.burst and self._drained())

    def _refresh_queues(self) -> None:
        self._queues_at = time.monotonic()
        live = [s.decode() for s in self.client.zrangebyscore(QUEUES, now_ms(), "+inf")]
        gone = [self.queues.pop(stream) for stream in list(self.queues) if stream not in live]
        jobs = [_scope(q.stream) for q in gone if q.mode == "job"]
        if jobs:
            # A job's stream leaves the queue list when the job ends, which leaves its state behind
            # (with a TTL). No state at all means Redis lost the job: say so, once, here.
            pipe = self.client.pipeline(transaction=False)
            for job in jobs:
                pipe.exists(f"mrkit:{{{job}}}:state")
            for job, exists in zip(jobs, pipe.execute(), strict=True):
                places = self.job_places.pop(job, None)
                if not exists:
                    from mrkit.backends.redis.job_steps import job_lost

                    job_lost(self.name, job, *(places or ("", "")), "its tasks are dropped")
        new = [s for s in live if s not in self.queues]
        if new:
            pipe = self.client.pipeline(transaction=False)
            for stream in new:
                pipe.hgetall(_meta_key(stream))
            for stream, meta in zip(new, pipe.execute(), strict=True):
                if meta:
                    self.queues[stream] = Queue(
                        stream,
                        meta.get(b"mode", b"job").decode(),
                        int(meta.get(b"lease_ms", b"30000")),
                        int(meta.get(b"task_timeout_ms", b"0")),
                    )
        beat(self.client, self.name)

    def _departed(self) -> set[str]:
        """Hand back the entries of job streams held by departed workers (no liveness beat for
        ``WORKER_GONE_MS``: SIGKILLed with their supervisor, machine lost, cut off from Redis); returns
        the streams that had some, to reclaim at once. Sessions' entries are their executor's."""
        self._departures_at = time.monotonic()
        streams = [q.stream for q in self.queues.values() if q.mode == "job"]
        counts = hand_back_departed(self.client, streams)
        return {stream for stream, n in zip(streams, counts, strict=True) if n}

    def _read(self) -> list[Entry]:
        import redis

        try:
            reply = self.client.xreadgroup(
                GROUP, self.name, {q: ">" for q in self.queues}, count=self._count, block=BLOCK_MS
            )
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
                raise
            self._refresh_queues()  # a stream vanished (its session ended, or Redis lost it)
            for stream in list(self.queues):
                if not self.client.exists(stream):
                    del self.queues[stream]
            return []
        out = []
        for stream, items in reply or ():
            name = stream.decode()
            for entry_id, fields in items:
                if fields:  # an entry deleted after delivery comes back without fields
                    out.append((name, entry_id, fields, False))
        self.leases.track(out)
        return out

    def _reclaim(self, *, force: bool, now: set[str] | frozenset[str] = frozenset()) -> list[Entry]:
        # As many as this worker reads at once: a long task's entries must not queue up behind
        # each other here while other workers are idle.
        return self.leases.reclaim(force=force, now=now, count=max(1, min(8, self._count)))

    def _drained(self) -> bool:
        """Burst mode: no live blocking session, and every job stream has nothing left to do."""
        if any(q.mode == "session" for q in self.queues.values()):
            return False
        pipe = self.client.pipeline(transaction=False)
        streams = list(self.queues)
        for stream in streams:
            pipe.xinfo_groups(stream)
        for groups in pipe.execute(raise_on_error=False):
            if isinstance(groups, Exception):
                continue  # the stream is gone
            for group in groups:
                if group.get("name") in (GROUP, GROUP.encode()) and (
                    group.get("pending") or group.get("lag") != 0
                ):
                    return False
        return True

    # -- processing -----------------------------------------------------------------------

    def done_with(self, stream: str, entry_id: bytes) -> None:
        """Stop heartbeating an entry (it was acked, or handed on)."""
        self.leases.release(stream, entry_id)

    def _process(self, entries: list[Entry]) -> None:
        started = time.perf_counter()
        done = 0
        for i, (stream, entry_id, fields, reclaimed) in enumerate(entries):
            if self._stop.is_set():
                self.leases.requeue_unstarted(
                    entries[i:], _redis_errors()
                )  # anything left is handed back by run()
                break
            self._process_one(stream, entry_id, fields, reclaimed)
            done += 1
            if self._replies and time.perf_counter() - self._replies_since > FLUSH_SECONDS:
                self._flush()
        self._flush()
        if done:
            per_task = (time.perf_counter() - started) / done
            self._count = min(MAX_BATCH, self._count * 2) if per_task < TINY_TASK_SECONDS else 1

    def _process_one(self, stream: str, entry_id: bytes, fields: dict[bytes, bytes], reclaimed: bool) -> None:
        try:
            header, body = unpack(self.secret, fields, f"entry {entry_id.decode()} of {stream}")
            op = header.get("op")
            if op not in ("task", "publish"):
                raise ValueError(f"unknown operation {op!r}")
        except (AuthenticationError, ValueError) as exc:
            self.reject(stream, entry_id, str(exc))
            return
        self.tasks_done += 1
        self._in_task = True
        try:
            self._run_entry(stream, entry_id, fields, header, body, reclaimed)
        finally:
            self._in_task = False

    def _running_task(self) -> bool:
        """True while an entry's task runs in this process (a second stop signal then abandons it)."""
        return self._in_task

    def _run_entry(
        self,
        stream: str,
        entry_id: bytes,
        fields: dict[bytes, bytes],
        header: dict[str, Any],
        body: bytes,
        reclaimed: bool,
    ) -> None:
        queue = self.queues.get(stream)
        if header.get("reply"):
            self._run_blocking(stream, entry_id, header, body)
        else:
            from mrkit.backends.redis import job_steps  # the worker hosts asynchronous jobs' steps

            self._running = (stream, entry_id, time.monotonic())
            try:
                job_steps.process_entry(
                    self,
                    stream,
                    entry_id,
                    fields,
                    header,
                    body,
                    reclaimed,
                    queue.lease_ms if queue else 30000,
                )
            finally:
                self._running = None

    def chain_published(self, job_id: str) -> None:
        """``job_id`` published: a step of a multi-step job submits the next (redis/chain.py)."""
        from mrkit.backends.redis import chain, jobs

        try:
            chain.after_publish(self.url, self.secret, job_id, jobs.submit_job)
        except Exception as exc:  # the step is done; the next handle that looks recovers the chain
            print(f"mrkit worker {self.name}: advancing after job {job_id}: {exc!r}", file=sys.stderr)

    def _run_blocking(self, stream: str, entry_id: bytes, header: dict[str, Any], body: bytes) -> None:
        try:
            spec = TaskSpec.decode(body)
        except Exception as exc:
            self.reject(stream, entry_id, f"undecodable task: {type(exc).__name__}: {exc}")
            return
        if spec.kind is not TaskKind.CALL:
            # The attempt number names the attempt's keys. The driver's numbers are unique per launch,
            # but an entry duplicated in the stream (a pipeline retried after a dropped connection)
            # would run the same number twice, and the loser of the commit would delete the winner's
            # files with its own. Numbers drawn here, per run, are unique whatever the stream holds.
            pipe = self.client.pipeline(transaction=False)
            attempts = f"mrkit:{{{spec.job_id}}}:attempts"
            pipe.hincrby(attempts, spec.task_id, 1)
            pipe.expire(attempts, ATTEMPTS_TTL)
            spec = dataclasses.replace(spec, attempt=int(pipe.execute()[0]))
        result, _ = self.run_spec(spec, capture=False, entry=(stream, entry_id, header, {}))
        if result.failure is not None and self.is_infrastructure_failure(result.failure):
            raise self.infrastructure_error(result.failure)  # left pending: the executor retries it
        if not self._replies:
            self._replies_since = time.perf_counter()
        self._replies.setdefault(str(header["reply"]), []).append(
            (int(header.get("sid", 0)), result.encode())
        )
        self._acks.setdefault(stream, []).append(entry_id)

    def run_spec(
        self,
        spec: TaskSpec,
        *,
        capture: bool,
        entry: tuple[str, bytes, dict[str, Any], dict[bytes, bytes]] | None = None,
    ) -> tuple[TaskResult, list[tuple[str, str]]]:
        """Run one attempt here; return its result and the user output captured (when asked).

        ``entry`` (stream, entry id, header, fields) is the stream entry the attempt came from. In a
        task process of a supervisor, the attempt runs under :func:`~mrkit.execution.watchdog.watch`:
        after ``task_timeout`` seconds without progress, the watchdog thread reports the entry as a
        failed attempt (``TaskTimeout``, naming the record) and ends this process, which the
        supervisor replaces; and the entry is written to the shared slot first, so that the
        supervisor reports it as failed (``WorkerCrashed``) if the user code ends the process.

        A map task whose local input file does not exist on this host fails with a message naming
        the path and the host, not retried: inputs given as local paths must exist on every worker.
        """
        captured: list[tuple[str, str]] = []
        if self.slot is not None and entry is not None:
            self._current = (*entry, spec)
            self.slot.value = json.dumps(
                {"stream": entry[0], "entry": entry[1].decode(), "attempt": spec.attempt}
            ).encode()
        try:
            with watch(spec, self._on_timeout) if self.slot is not None else nullcontext():
                if capture and self.capture_output:
                    with capture_output() as out:
                        result = run_task(spec, worker=self.name)
                    captured = list(out.items())
                else:
                    result = run_task(spec, worker=self.name)
        finally:
            if self.slot is not None:
                self.slot.value = b""
                self._current = None
        local = () if result.ok else (p.uri for p in spec.pieces if "://" not in p.uri and "#" not in p.uri)
        missing = next((uri for uri in local if not os.path.exists(uri)), None)
        if missing is not None:
            failure = TaskFailure(
                where="",
                exc_type="InputError",
                retryable=False,
                message=(
                    f"input {missing} is not readable on worker {self.name} (host {self.host}): inputs "
                    "given as local paths must exist at the same path on every worker; put them in a "
                    "folder every worker mounts, or pass the records themselves"
                ),
                traceback=result.failure.traceback if result.failure else "",
            )
            result = dataclasses.replace(result, failure=failure)
        return result, captured

    def _on_timeout(self, failure: TaskFailure) -> None:
        """The watchdog's verdict on the attempt in hand (its thread): report it as failed, then end
        this process (its group too: user grandchildren), which the supervisor replaces."""
        current = self._current
        try:
            self._flush()  # results of earlier entries of the batch, so they are not lost with us
            if current is not None:
                self.report_failure(*current, failure)
        except Exception as exc:  # Redis gone: the entry's lease expires and it is retried as lost
            print(f"mrkit worker {self.name}: could not report a timed-out task: {exc}", file=sys.__stderr__)
        finally:
            if self.slot is not None:
                self.slot.value = b""  # reported: the supervisor must not report it again
            end_process()

    def report_failure(
        self,
        stream: str,
        entry_id: bytes,
        header: dict[str, Any],
        fields: dict[bytes, bytes],
        spec: TaskSpec,
        failure: TaskFailure,
    ) -> None:
        """Report the attempt ``spec`` of ``entry_id`` as failed with ``failure`` (a timeout, or a
        crash seen by the supervisor), exactly as if ``run_task`` had returned it: it counts against
        ``max_attempts``. Works from another thread or process than the one that ran it."""
        if header.get("reply"):
            result = TaskResult(
                task_id=spec.task_id, attempt=spec.attempt, ok=False, worker=self.name, failure=failure
            )
            fields_out = pack(self.secret, {"sids": [int(header.get("sid", 0))]}, result.encode())
            pipe = self.client.pipeline(transaction=False)
            pipe.xadd(str(header["reply"]), fields_out, nomkstream=True)
            pipe.xack(stream, GROUP, entry_id)
            pipe.execute(raise_on_error=False)
        else:
            from mrkit.backends.redis import job_steps

            job_steps.fail_attempt(self, stream, entry_id, fields, spec, failure)
        self.done_with(stream, entry_id)

    @staticmethod
    def is_infrastructure_failure(failure: TaskFailure) -> bool:
        """True when a task failed because Redis failed under it, not because of the user's code."""
        return failure.exc_type in _REDIS_FAILURES and "redis" in failure.traceback

    @staticmethod
    def infrastructure_error(failure: TaskFailure) -> BaseException:
        import redis

        return redis.ConnectionError(f"Redis failed under a task: {failure.sentence()}")

    @staticmethod
    def is_infrastructure_error(exc: BaseException) -> bool:
        return isinstance(exc, _redis_errors())

    def _flush(self) -> None:
        """Send the buffered results (one signed entry per reply stream) and acks, in one round trip."""
        if not self._replies and not self._acks:
            return
        replies, acks = self._replies, self._acks
        self._replies, self._acks = {}, {}
        pipe = self.client.pipeline(transaction=False)
        for reply, items in replies.items():
            fields = pack(
                self.secret, {"sids": [sid for sid, _ in items]}, b"\n".join(body for _, body in items)
            )
            # NOMKSTREAM: if the executor is gone, its result stream is too; do not re-create it.
            pipe.xadd(reply, fields, nomkstream=True)
        for stream, ids in acks.items():
            pipe.xack(stream, GROUP, *ids)
        pipe.execute(raise_on_error=False)
        for stream, ids in acks.items():
            for entry_id in ids:
                self.done_with(stream, entry_id)

    def reject(self, stream: str, entry_id: bytes, reason: str) -> None:
        """Refuse an entry without running it: ack it, dead-letter it, say so on stderr."""
        print(
            f"mrkit worker {self.name}: REFUSED entry {entry_id.decode()} of {stream}: {reason}",
            file=sys.stderr,
        )
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(stream, GROUP, entry_id)
        pipe.xadd(
            DEAD,
            {"stream": stream, "id": entry_id, "reason": reason, "worker": self.name, "time": now_ms()},
            maxlen=DEAD_MAXLEN,
            approximate=True,
        )
        pipe.execute()
        self.done_with(stream, entry_id)
        job = _scope(stream)
        if job and self.queues.get(stream, Queue(stream, "session", 0)).mode == "job":
            from mrkit.backends.redis import job_steps

            job_steps.note_refused(self, job, entry_id, reason)

    # -- leases ---------------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        last_registered = 0.0
        while not self._stop.wait(0.5):
            try:
                if time.monotonic() - last_registered >= WORKER_BEAT * 0.9:
                    beat(self.client, self.name)
                    last_registered = time.monotonic()
                # A supervisor's task process (slot) has a watchdog that ends an overrunning task.
                self.leases.renew(self._running, enforce_timeout=self.slot is None)
            except Exception:
                continue  # Redis down or the stream gone: the main loop reports it


def _scope(stream: str) -> str:
    """``mrkit:{job-1}:tasks`` -> ``job-1``."""
    start, end = stream.find("{"), stream.find("}")
    return stream[start + 1 : end] if 0 <= start < end else ""


def _meta_key(stream: str) -> str:
    return stream[: stream.rfind(":")] + ":meta"
