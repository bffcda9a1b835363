"""A worker fleet coordinated through Redis Streams: ``executor="redis://host:port/db"``.

Two ways to use the fleet, one wire protocol (docs/redis.md has the key scheme and the user guide):

* **Blocking** (``mrkit.run(..., executor="redis://…")``, ``futures.map(..., executor="redis://…")``):
  :class:`RedisExecutor` is an ordinary :class:`~mrkit.execution.base.Executor`. On first use it
  opens a *session*: a task stream ``mrkit:{session}:tasks`` with the consumer group ``workers``, a
  result stream ``mrkit:{session}:results``, and an entry in ``mrkit:queues`` so that workers read
  it. ``submit(spec)`` signs the spec and hands it to a sender thread, which ``XADD``\\s everything
  queued in one pipeline; workers ``XREADGROUP``, run, ``XADD`` the signed result and ``XACK``; a
  listener thread ``XREAD``\\s results and resolves the futures. The in-process driver keeps doing
  retries and speculation, exactly as with local processes.
* **Asynchronous** (``mrkit.submit(..., executor="redis://…")`` / ``mrkit submit``): ``submit_job``
  hands the whole plan to the fleet (:mod:`mrkit.backends.redis.jobs`), which advances it
  without the submitter.

Leases (blocking mode): a worker heartbeats the entries it holds, and beats its own liveness in
``mrkit:workers`` every ``WORKER_BEAT`` second (its supervisor beats for it too, so user code holding
the GIL cannot silence it). Every ``DEPARTURE_CHECK`` second the executor hands back the entries
held by consumers whose liveness beat is older than ``WORKER_GONE_MS`` (:func:`hand_back_departed`:
a SIGKILLed fleet, a machine lost, a worker cut off from Redis), so a departed worker is noticed in
3 to 4 s; an entry idle longer than the lease (``?lease=SECONDS`` in the URL, default 30) is the
backstop for a worker that is alive but silent. The executor claims such entries (``XAUTOCLAIM``),
acks them and fails their futures with :class:`WorkerLost`, so the driver retries them as new
attempts under new keys — never the same attempt twice, so a zombie that finishes late only loses the
first-writer-wins commit, and its late result is ignored (futures are resolved once, by submission
number). docs/redis.md has the arithmetic.

Running: a future turns ``running()`` when a worker has taken its entry (the listener reads the
group's pending entries, ``XPENDING``, every ``RUNNING_POLL`` seconds while some wait), so that the
driver's ``task_timeout`` and straggler clocks start then, not while the entry waits in the stream.
A worker reads entries ahead only while its tasks take under 5 ms, so an entry taken is an entry
started, give or take that.

Security: every task and every result is signed with the shared secret (HMAC-SHA256 over the exact
payload bytes; :mod:`mrkit.security`); each side verifies before decoding or unpickling anything.
Without a secret (no ``MRKIT_SECRET``), the empty key is used, which only checks integrity: that is
allowed only when Redis is on loopback, where every peer is this machine.

Wire format of a stream entry: field ``p`` is ``header-JSON + b"\\n" + body`` and field ``s`` its
signature. A task's body is ``TaskSpec.encode()``; a result's is ``TaskResult.encode()``.

The key scheme, the entry format and the liveness beats every side shares are in
:mod:`mrkit.backends.redis.wire`. About 550 lines, not split: the sender and listener threads share
the executor's pending table and lock.
"""

from __future__ import annotations

import itertools
import os
import socket
import sys
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import Future, InvalidStateError
from typing import Any

from mrkit.backends.redis.wire import (
    DEAD,
    DEAD_MAXLEN,
    DEPARTURE_CHECK,
    GROUP,
    QUEUES,
    WORKER_ALIVE_MS,
    WORKER_GONE_MS,
    WORKERS,
    hand_back_departed,
    key,
    live_workers,
    now_ms,
    pack,
    resolve_secret,
    unpack,
)
from mrkit.errors import AuthenticationError, ConfigError, StorageError, WorkerLost
from mrkit.execution.base import Executor
from mrkit.model.task import TaskResult, TaskSpec
from mrkit.storage.redis import RedisURL, connect, redact

DEFAULT_LEASE = 30.0  # seconds an entry may go without a heartbeat before it is presumed lost
SESSION_TTL = 60.0  # a session's keys expire this long after its executor stops refreshing them
SESSION_REFRESH = 5.0
RECONNECT_SECONDS = 60.0  # how long the executor retries a lost Redis before failing every task
NO_WORKER_NOTICE = 10.0  # seconds tasks wait with no live worker before the executor says so
RUNNING_POLL = 0.25  # seconds between two looks for entries workers have taken (futures -> running)
RUNNING_SCAN = 1000  # entries held by workers read per look (workers hold a few each)


def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.ConnectionError, redis.TimeoutError)


class RedisExecutor(Executor):
    """Runs task attempts on the ``mrkit worker`` processes that read the same Redis.

    Args:
        url: ``redis://[[user]:password@]host:port/db`` or ``rediss://…``; mrkit options in the
            query: ``lease`` (seconds, default 30), ``ttl`` (seconds an asynchronous job's keys are
            kept after it ends, default 86400).
        workers: attempts to keep in flight (default: the live workers counted in Redis, at least 2).
        secret: the shared secret (default: ``MRKIT_SECRET``; none allowed only on loopback).

    Raises:
        ConfigError: a bad URL or option, or no secret for a non-loopback Redis.
        MissingExtra: redis-py is not installed.
    """

    local = False
    asynchronous = True
    reports_running = True  # futures turn running() when a worker takes their entry (module docstring)
    enforces_timeouts = True  # `mrkit worker` task processes end a stuck attempt and report it failed

    def __init__(self, url: str, *, workers: int | None = None, secret: bytes | None = None) -> None:
        parsed = RedisURL.parse(url)
        self.name = redact(url)
        self.url = url
        self.redis_url = parsed.url  # what RedisStorage and redis-py are given (mrkit options removed)
        self.lease = parsed.number("lease", DEFAULT_LEASE)
        self.ttl = parsed.number("ttl", 86400.0)
        self.secret = resolve_secret(url, secret=secret)
        self.client = connect(url)
        if workers is None:
            try:
                workers = max(2, live_workers(self.client))
            except _redis_errors() as exc:
                raise StorageError(f"cannot reach Redis at {self.name}: {exc}") from None
        self.workers = workers
        self.session = f"session-{uuid.uuid4().hex[:16]}"
        self.stream = key(self.session, "tasks")
        self.results = key(self.session, "results")
        self.meta = key(self.session, "meta")
        self._lock = threading.Condition()
        self._sids = itertools.count(1)
        self._outbox: list[tuple[int, dict[str, Any]]] = []
        # sid -> (future, spec, entry id once sent); insertion order is stream order, for trimming
        self._pending: OrderedDict[int, list[Any]] = OrderedDict()
        self._by_entry: dict[bytes, int] = {}
        # Refusals of entries whose id the sender has not recorded yet (a worker may refuse an entry
        # before XADD's reply is back): entry id -> (reason, worker), matched when it is recorded.
        self._early_dead: OrderedDict[bytes, tuple[str, str]] = OrderedDict()
        self._threads: list[threading.Thread] = []
        self._opened = False
        self._closing = False
        self._broken = ""
        self._idle_since: float | None = None  # since when tasks wait and no worker is alive

    @classmethod
    def from_name(cls, name: str, *, workers: int | None = None, **options: Any) -> RedisExecutor:
        """Open the executor named by a ``redis://`` or ``rediss://`` URL (options: ``secret``)."""
        secret = options.pop("secret", None)
        if options:
            raise ConfigError(f"unknown options for the Redis executor: {sorted(options)}; it takes secret=")
        return cls(name, workers=workers, secret=secret)

    # -- the executor interface -------------------------------------------------------------

    def storage_url(self, job_id: str) -> str:
        """Intermediate data of blocking jobs goes to this Redis (``mrkit:{job}:data:…``)."""
        return self.redis_url

    def open_session(self) -> None:
        """Register this executor's task stream so that workers read it (done by the first submit).

        Raises:
            StorageError: Redis cannot be reached.
        """
        with self._lock:
            if self._opened:
                return
            if self._closing:
                raise WorkerLost(f"executor {self.name} was shut down")
            try:
                pipe = self.client.pipeline(transaction=True)
                pipe.hset(
                    self.meta,
                    mapping={
                        "mode": "session",
                        "lease_ms": int(self.lease * 1000),
                        "owner": f"{socket.gethostname()}:{os.getpid()}",
                    },
                )
                pipe.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
                pipe.xadd(self.results, {"hello": "1"})  # the stream must exist for NOMKSTREAM replies
                for k in (self.meta, self.stream, self.results):
                    pipe.expire(k, int(SESSION_TTL))
                pipe.zadd(QUEUES, {self.stream: now_ms() + int(SESSION_TTL * 1000)})
                pipe.execute()
            except _redis_errors() as exc:
                raise StorageError(f"cannot reach Redis at {self.name}: {exc}") from None
            self._opened = True
            for target, label in ((self._send_loop, "sender"), (self._listen_loop, "listener")):
                thread = threading.Thread(target=target, name=f"mrkit-redis-{label}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def submit(self, spec: TaskSpec) -> Future[TaskResult]:
        """Queue one attempt for the fleet; the future resolves when a worker's result arrives.

        Raises:
            StorageError: Redis lost this session's data (it restarted without persistence).
            WorkerLost: the executor was shut down.
        """
        if self._broken:
            raise StorageError(self._broken)
        self.open_session()
        future: Future[TaskResult] = Future()
        body = spec.encode()
        with self._lock:
            if self._closing:
                raise WorkerLost(f"executor {self.name} was shut down", task_id=spec.task_id)
            sid = next(self._sids)
            fields = pack(
                self.secret, {"op": "task", "sid": sid, "reply": self.results, "job": spec.job_id}, body
            )
            self._pending[sid] = [future, spec, None]
            self._outbox.append((sid, fields))
            if len(self._outbox) == 1:
                self._lock.notify()
        return future

    def shutdown(self, wait: bool = True) -> None:
        """Stop the threads, remove the session from Redis, fail pending futures with WorkerLost."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._lock.notify_all()
        for thread in self._threads:
            thread.join(timeout=5)
        self._fail_all(f"executor {self.name} was shut down")
        if self._opened:
            try:
                pipe = self.client.pipeline(transaction=False)
                pipe.zrem(QUEUES, self.stream)
                pipe.delete(self.stream, self.results, self.meta)
                pipe.execute()
            except _redis_errors():
                pass  # Redis is gone: the keys expire on their own (SESSION_TTL)

    # -- the sender thread: one pipelined round trip for everything submitted meanwhile ---------

    def _send_loop(self) -> None:
        while True:
            with self._lock:
                while not self._outbox and not self._closing:
                    self._lock.wait()
                if self._closing:
                    return
                batch, self._outbox = self._outbox, []
            ids = self._with_retries(lambda batch=batch: self._xadd_batch(batch))
            if ids is None:
                return
            refused = []
            with self._lock:
                for (sid, _), entry_id in zip(batch, ids, strict=True):
                    slot = self._pending.get(sid)
                    if slot is None:
                        continue
                    dead = self._early_dead.pop(entry_id, None) if self._early_dead else None
                    if dead is None:
                        slot[2] = entry_id
                        self._by_entry[entry_id] = sid
                    else:
                        refused.append((self._pending.pop(sid), *dead))
            for slot, reason, worker in refused:
                self._refused(slot, reason, worker)

    def _xadd_batch(self, batch: list[tuple[int, dict[str, Any]]]) -> list[bytes]:
        pipe = self.client.pipeline(transaction=False)
        for _, fields in batch:
            pipe.xadd(self.stream, fields)
        return list(pipe.execute())

    # -- the listener thread: results, dead letters, leases, liveness --------------------------

    def _listen_loop(self) -> None:
        last_result = b"0-0"
        last_dead = b"$"
        next_chores = time.monotonic() + min(self.lease / 2, SESSION_REFRESH)
        next_running = time.monotonic()
        next_departures = time.monotonic() + DEPARTURE_CHECK
        while not self._closing:
            try:
                if last_dead == b"$":
                    found = self.client.xrevrange(DEAD, count=1)
                    last_dead = found[0][0] if found else b"0-0"
                reply = self.client.xread({self.results: last_result, DEAD: last_dead}, count=2000, block=200)
                for stream, entries in reply or ():
                    if stream.decode() == self.results:
                        for entry_id, fields in entries:
                            last_result = entry_id
                            self._on_result(fields)
                    else:
                        for entry_id, fields in entries:
                            last_dead = entry_id
                            self._on_dead(fields)
                if time.monotonic() >= next_running:
                    next_running = time.monotonic() + RUNNING_POLL
                    self._mark_running()
                if time.monotonic() >= next_departures:
                    next_departures = time.monotonic() + DEPARTURE_CHECK
                    if self._pending and any(hand_back_departed(self.client, [self.stream])):
                        self._reclaim(departed=True)  # at once, not at the next chores
                if time.monotonic() >= next_chores:
                    next_chores = time.monotonic() + min(self.lease / 2, SESSION_REFRESH)
                    try:
                        self._chores(last_result)
                    except _redis_errors():
                        raise
                    except Exception as exc:  # housekeeping failed; results can still arrive
                        print(
                            f"mrkit: Redis executor housekeeping failed: {type(exc).__name__}: {exc}",
                            file=sys.stderr,
                        )
            except _redis_errors() as exc:
                if not self._wait_for_redis(exc):
                    return
            except Exception as exc:  # never let the listener die silently: pending futures would hang
                self._break(f"the Redis executor's listener failed: {type(exc).__name__}: {exc}")
                return

    def _on_result(self, fields: dict[bytes, bytes]) -> None:
        """One result entry: a worker's results for several tasks (``sids`` and one line of body each)."""
        if b"p" not in fields:
            return  # the stream's first entry (created with the session)
        try:
            header, body = unpack(self.secret, fields, "a task result")
            sids = [int(sid) for sid in header["sids"]]
            bodies = body.split(b"\n")  # JSON never holds a raw newline: one result per line
            if len(bodies) != len(sids):
                raise ValueError(f"{len(sids)} task numbers but {len(bodies)} results")
        except (AuthenticationError, ValueError, KeyError, TypeError) as exc:
            print(f"mrkit: ignoring a result entry on {self.results}: {exc}", file=sys.stderr)
            return
        with self._lock:
            slots = [self._pending.pop(sid, None) for sid in sids]
            for slot in slots:
                if slot is not None and slot[2] is not None:
                    self._by_entry.pop(slot[2], None)
        for slot, raw in zip(slots, bodies, strict=True):
            if slot is None:
                continue  # a zombie's late result, or the result of an attempt already failed as lost
            try:
                result = TaskResult.decode(raw)
            except Exception as exc:
                spec = slot[1]
                _settle(
                    slot[0],
                    exc=WorkerLost(f"undecodable result for {spec.task_id}: {exc}", task_id=spec.task_id),
                )
                continue
            _settle(slot[0], result=result)

    def _mark_running(self) -> None:
        """Turn ``running()`` the futures whose entries a worker has taken (they are in the group's
        pending entries list). The work is per entry held by a worker, not per future waiting, so a
        long queue costs nothing here. Runs on the listener thread, the only one that resolves
        futures in normal operation."""
        with self._lock:
            if not self._pending:
                return
        from redis.exceptions import ResponseError

        try:
            taken = self.client.xpending_range(self.stream, GROUP, min="-", max="+", count=RUNNING_SCAN)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                return  # Redis lost the stream: the next chores say so and fail what is in flight
            raise
        with self._lock:
            sids = [self._by_entry.get(entry["message_id"], 0) for entry in taken]  # sids start at 1
            futures = [self._pending[sid][0] for sid in sids if sid in self._pending]
        for future in futures:
            if future.running() or future.done():
                continue
            try:
                future.set_running_or_notify_cancel()  # False when the driver cancelled it: fine
            except RuntimeError:  # shutdown() failed it from another thread meanwhile
                pass

    def _on_dead(self, fields: dict[bytes, bytes]) -> None:
        """A worker refused one of our entries (its signature did not verify): fail that attempt."""
        if fields.get(b"stream", b"").decode() != self.stream:
            return
        entry_id = fields.get(b"id", b"")
        reason = fields.get(b"reason", b"").decode(errors="replace")
        worker = fields.get(b"worker", b"").decode(errors="replace")
        with self._lock:
            sid = self._by_entry.pop(entry_id, None)
            slot = self._pending.pop(sid, None) if sid is not None else None
            if sid is None:
                # Not recorded yet (or not ours: an injected entry); the sender matches it later.
                self._early_dead[entry_id] = (reason, worker)
                while len(self._early_dead) > DEAD_MAXLEN:
                    self._early_dead.popitem(last=False)
        if slot is not None:
            self._refused(slot, reason, worker)

    @staticmethod
    def _refused(slot: list[Any], reason: str, worker: str) -> None:
        _settle(
            slot[0],
            exc=WorkerLost(
                f"worker {worker} refused task {slot[1].task_id}: {reason}",
                task_id=slot[1].task_id,
                attempt=slot[1].attempt,
                worker=worker,
            ),
        )

    def _chores(self, last_result: bytes) -> None:
        """Refresh the session, detect data loss, reclaim expired leases, trim both streams."""
        pipe = self.client.pipeline(transaction=False)
        pipe.exists(self.meta)
        pipe.zcount(WORKERS, now_ms() - WORKER_ALIVE_MS, "+inf")
        pipe.zadd(QUEUES, {self.stream: now_ms() + int(SESSION_TTL * 1000)})
        for k in (self.meta, self.stream, self.results):
            pipe.expire(k, int(SESSION_TTL))
        exists, alive = pipe.execute()[:2]
        self._notice_no_workers(int(alive))
        if not exists:
            self.client.zrem(QUEUES, self.stream)
            self._break(
                f"Redis at {self.name} lost this executor's task stream (it restarted without "
                "persistence, or the keys were deleted): the tasks in flight are lost"
            )
            return
        self._reclaim()
        with self._lock:
            oldest = next((slot[2] for slot in self._pending.values() if slot[2] is not None), None)
        pipe = self.client.pipeline(transaction=False)
        # Everything before the oldest unresolved entry was acked: trim by MINID, never MAXLEN, which
        # could drop entries no worker has read yet. (Nothing unresolved: the sender may be adding one
        # right now, so leave the stream alone until next time.)
        if oldest is not None:
            pipe.xtrim(self.stream, minid=oldest, approximate=True)
        pipe.xtrim(self.results, minid=last_result, approximate=True)
        pipe.execute()

    def _notice_no_workers(self, alive: int) -> None:
        """Say so (once per idle spell) when tasks have waited ``NO_WORKER_NOTICE`` seconds and no
        worker is alive: a run on a fleet nobody started waits for one, silently otherwise."""
        if alive or not self._pending:
            self._idle_since = None
            return
        now = time.monotonic()
        if self._idle_since is None:
            self._idle_since = now
        elif now - self._idle_since >= NO_WORKER_NOTICE:
            print(
                f"mrkit: {len(self._pending)} tasks are waiting and no worker consumes Redis at "
                f"{self.name}; start some with: mrkit worker {self.name}",
                file=sys.stderr,
            )
            self._idle_since = float("inf")  # once, until a worker shows up

    def _reclaim(self, departed: bool = False) -> None:
        """Fail the futures of entries whose lease expired or whose worker departed (WorkerLost)."""
        min_idle = int(self.lease * 1000)
        start: Any = "0-0"
        while True:
            # Not JUSTID: redis-py then drops the cursor from the reply, and we need it to page.
            reply = self.client.xautoclaim(self.stream, GROUP, "executor", min_idle, start, count=100)
            start, ids = reply[0], [entry_id for entry_id, _ in reply[1]]
            if ids:
                self.client.xack(self.stream, GROUP, *ids)
            for entry_id in ids:
                with self._lock:
                    sid = self._by_entry.pop(entry_id, None)
                    slot = self._pending.pop(sid, None) if sid is not None else None
                if slot is not None:
                    spec = slot[1]
                    why = (
                        f"sent no liveness beat for {WORKER_GONE_MS / 1000:g}s"
                        if departed
                        else f"sent no heartbeat for {self.lease:g}s"
                    )
                    _settle(
                        slot[0],
                        exc=WorkerLost(
                            f"the worker running {spec.task_id} (attempt {spec.attempt}) {why}: "
                            "it died, hung or lost Redis",
                            task_id=spec.task_id,
                            attempt=spec.attempt,
                        ),
                    )
            if start in (b"0-0", "0-0"):
                return

    def _wait_for_redis(self, exc: BaseException) -> bool:
        """Retry a lost connection for ``RECONNECT_SECONDS``; False (and every task failed) after that."""
        deadline = time.monotonic() + RECONNECT_SECONDS
        print(f"mrkit: lost Redis at {self.name} ({exc}); reconnecting", file=sys.stderr)
        while not self._closing and time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                self.client.ping()
                return True
            except _redis_errors():
                continue
        if not self._closing:
            self._break(f"Redis at {self.name} has been unreachable for {RECONNECT_SECONDS:g}s: {exc}")
        return False

    def _with_retries(self, fn: Any) -> Any:
        while not self._closing:
            try:
                return fn()
            except _redis_errors() as exc:
                if not self._wait_for_redis(exc):
                    return None
        return None

    def _break(self, reason: str) -> None:
        self._broken = reason
        self._fail_all(reason)

    def _fail_all(self, reason: str) -> None:
        with self._lock:
            slots = list(self._pending.values())
            self._pending.clear()
            self._by_entry.clear()
            self._outbox.clear()
        for future, spec, _ in slots:
            _settle(future, exc=WorkerLost(reason, task_id=spec.task_id, attempt=spec.attempt))


def _settle(
    future: Future[TaskResult], *, result: TaskResult | None = None, exc: BaseException | None = None
) -> None:
    """Resolve ``future`` unless the driver cancelled it meanwhile (a speculative twin won)."""
    if future.done():
        return
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)  # type: ignore[arg-type]
    except InvalidStateError:  # cancelled between done() and set_*(): nobody wants this result
        pass
