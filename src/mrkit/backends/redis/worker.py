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
4. A heartbeat thread renews the lease of every entry it holds (a Lua script: ``XCLAIM … JUSTID``
   only if ``XPENDING`` says the entry is still ours, so a worker that was presumed dead cannot take
   an entry back from the worker that reclaimed it), and beats its liveness in ``mrkit:workers``
   every ``WORKER_BEAT`` (its supervisor beats for it too). Every ``DEPARTURE_CHECK`` it hands back
   asynchronous jobs' entries held by departed consumers (no beat for ``WORKER_GONE_MS``) and
   reclaims them at once; idle, or every half lease, it reclaims entries whose lease expired
   (``XAUTOCLAIM``). Blocking sessions' entries are reclaimed by their executor, which retries them
   as new attempts.

``--burst``: exit when no live session exists and every job stream is drained (nothing undelivered,
nothing pending). SIGTERM/SIGINT: finish the task in hand, hand back the prefetched ones, deregister,
exit. An asynchronous job's prefetched entries are re-queued as fresh entries (a Lua script: ``XACK``
and ``XADD`` if still ours), so they do not count as lost attempts; other entries get an idle time
past the lease, so that the next claimer takes them at once. ``mrkit worker`` is a supervisor
(:class:`Supervisor`) of K task processes, each a process group leader; it forwards each
SIGTERM/SIGINT to them once (they ignore the terminal's own SIGINT), and a task process whose
supervisor is gone stops after its task.

Poison tasks: a task process runs each attempt under :func:`mrkit.execution.watchdog.watch`; on
``task_timeout`` it reports the attempt as failed (``TaskTimeout``) and ends itself. Before each
attempt it writes the entry to a slot shared with the supervisor, which reports the attempt as failed
(``WorkerCrashed``, naming the exit code or signal) if the process dies under it, then replaces it.

Redis unreachable: the worker retries every second, saying so on stderr; in burst mode it gives up
after 60 s (exit status 1). Tasks it held are reclaimed by others once its liveness beats stop (3-4 s).

User output of asynchronous tasks (prints to stdout/stderr and ``logging`` records) is captured per
task, through per-thread proxies installed once, and appended to the job's log stream.

About 1,100 lines, not split: the loop, its leases and its signal handling share one worker object
and its in-flight bookkeeping; the output capture (some 100 lines) is the one part that could move
to its own module.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from mrkit.backends.redis.wire import (
    DEAD,
    DEAD_MAXLEN,
    DEPARTURE_CHECK,
    GROUP,
    HANDBACK_IDLE_MS,
    QUEUES,
    WORKER_BEAT,
    WORKERS,
    beat,
    hand_back_departed,
    now_ms,
    pack,
    resolve_secret,
    unpack,
)
from mrkit.errors import AuthenticationError, ConfigError, StorageError
from mrkit.execution.runtime import run_task
from mrkit.execution.watchdog import crash_failure, end_process, watch
from mrkit.model.task import TaskFailure, TaskKind, TaskResult, TaskSpec
from mrkit.storage.redis import RedisURL, connect, redact

MAX_BATCH = 64
ATTEMPTS_TTL = 7 * 86400  # blocking jobs' attempt counters outlive any job; the TTL removes them
TINY_TASK_SECONDS = 0.005
FLUSH_SECONDS = 0.01  # buffered blocking-mode results are sent at least this often
BLOCK_MS = 250
QUEUE_REFRESH_SECONDS = 1.0
BURST_GIVE_UP_SECONDS = 60.0
CAPTURE_LIMIT = 64 * 1024  # characters of user output kept per task and stream
# Exception names that mean Redis itself failed under a task (redis-py's classes).
_REDIS_FAILURES = {"ConnectionError", "TimeoutError", "BusyLoadingError", "ReadOnlyError", "MasterDownError"}
SLOT_BYTES = 1024  # the shared slot where a task process names the entry it runs (JSON)

# Hand back entries of KEYS[1] that consumer ARGV[2] read but did not start: ARGV[3..] are triples
# (entry id, field p, field s). Each one still ours is acked and added again at the stream's end, so
# the next reader gets it as a fresh delivery, not as the task of a worker presumed dead.
_REQUEUE = """
local n = 0
for i = 3, #ARGV, 3 do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p > 0 and p[1][2] == ARGV[2] then
    redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
    redis.call('XADD', KEYS[1], '*', 'p', ARGV[i + 1], 's', ARGV[i + 2])
    n = n + 1
  end
end
return n
"""

# Renew the lease of ARGV[3..] on KEYS[1] for consumer ARGV[2], but only of entries it still owns.
_HEARTBEAT = """
local n = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p > 0 and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    n = n + 1
  end
end
return n
"""


@dataclass
class Queue:
    """A live task stream and how to treat it."""

    stream: str
    mode: str  # "session" (blocking executor; it reclaims) or "job" (asynchronous; workers reclaim)
    lease_ms: int
    task_timeout_ms: int = 0  # asynchronous jobs: stop renewing the lease of a task running longer
    last_heartbeat: float = 0.0
    last_reclaim: float = 0.0


# -- capture of user output ------------------------------------------------------------------

_capture = threading.local()
_install_lock = threading.Lock()
_installed = False


class _Proxy(io.TextIOBase):
    """Stands in for sys.stdout/sys.stderr: a thread capturing a task gets its writes, others pass."""

    def __init__(self, original: Any, kind: str) -> None:
        self._original, self._kind = original, kind

    def write(self, text: str) -> int:
        buffers = getattr(_capture, "buffers", None)
        if buffers is None:
            return int(self._original.write(text))
        buffers.add(self._kind, text)
        return len(text)

    def flush(self) -> None:
        if getattr(_capture, "buffers", None) is None:
            self._original.flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self._original, "encoding", "utf-8"))

    def fileno(self) -> int:
        return int(self._original.fileno())


class _CaptureHandler(logging.Handler):
    """Routes a task's log records to its capture; outside tasks, warnings still reach stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        buffers = getattr(_capture, "buffers", None)
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        if buffers is not None:
            buffers.add("log", line)
        elif record.levelno >= logging.WARNING:
            sys.__stderr__.write(line) if sys.__stderr__ else None


class Captured:
    """User output of one task, per stream, truncated at ``CAPTURE_LIMIT`` characters each."""

    def __init__(self) -> None:
        self.parts: dict[str, list[str]] = {}
        self.sizes: dict[str, int] = {}

    def add(self, kind: str, text: str) -> None:
        size = self.sizes.get(kind, 0)
        if size < CAPTURE_LIMIT:
            self.parts.setdefault(kind, []).append(text[: CAPTURE_LIMIT - size])
        self.sizes[kind] = size + len(text)

    def items(self) -> Iterator[tuple[str, str]]:
        for kind, parts in self.parts.items():
            text = "".join(parts)
            if self.sizes[kind] > CAPTURE_LIMIT:
                text += f"\n[… {self.sizes[kind] - CAPTURE_LIMIT} more characters not kept]"
            yield kind, text


def install_capture() -> None:
    """Install the stdout/stderr proxies and the logging handler in this process (once)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        sys.stdout = _Proxy(sys.stdout, "stdout")  # type: ignore[assignment]
        sys.stderr = _Proxy(sys.stderr, "stderr")  # type: ignore[assignment]
        handler = _CaptureHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        if root.level > logging.INFO:
            root.setLevel(logging.INFO)  # so that a task's logging.info() is captured too
        _installed = True


@contextmanager
def capture_output() -> Iterator[Captured]:
    """Capture this thread's user output (after :func:`install_capture`) for the block."""
    captured = Captured()
    previous = getattr(_capture, "buffers", None)
    _capture.buffers = captured
    try:
        yield captured
    finally:
        _capture.buffers = previous


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
        self._inflight: dict[str, set[bytes]] = {}
        self._inflight_lock = threading.Lock()
        self._running: tuple[str, bytes, float] | None = None  # the job entry being run, since when
        self._in_task = False  # an entry's task is running (blocking or job)
        self._heartbeat = self.client.register_script(_HEARTBEAT)
        self._requeue = self.client.register_script(_REQUEUE)
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
        """Ask :meth:`run` to return after the task in hand (safe from a signal handler or thread)."""
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
                    with self._inflight_lock:
                        self._inflight.clear()  # their leases expire; whoever is alive reclaims them
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
            self._hand_back()
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

    def _read(self) -> list[tuple[str, bytes, dict[bytes, bytes], bool]]:
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
        self._track(out)
        return out

    def _reclaim(
        self, *, force: bool, now: set[str] | frozenset[str] = frozenset()
    ) -> list[tuple[str, bytes, dict[bytes, bytes], bool]]:
        """Take over asynchronous jobs' entries whose lease expired or that were handed back
        (``XAUTOCLAIM``); the streams in ``now`` are looked at whatever their timers say."""
        clock = time.monotonic()
        out: list[tuple[str, bytes, dict[bytes, bytes], bool]] = []
        for queue in list(self.queues.values()):
            if queue.mode != "job":
                continue
            if queue.stream not in now:
                if not force and clock - queue.last_reclaim < queue.lease_ms / 2000:
                    continue
                if force and clock - queue.last_reclaim < min(1.0, queue.lease_ms / 4000):
                    continue
            queue.last_reclaim = clock
            # As many as this worker reads at once: a long task's entries must not queue up behind
            # each other here while other workers are idle.
            count = max(1, min(8, self._count))
            reply = self.client.xautoclaim(queue.stream, GROUP, self.name, queue.lease_ms, "0-0", count=count)
            for entry_id, fields in reply[1]:
                if fields:
                    out.append((queue.stream, entry_id, fields, True))
        self._track(out)
        return out

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

    def _track(self, entries: list[tuple[str, bytes, dict[bytes, bytes], bool]]) -> None:
        with self._inflight_lock:
            for stream, entry_id, _, _ in entries:
                self._inflight.setdefault(stream, set()).add(entry_id)

    def done_with(self, stream: str, entry_id: bytes) -> None:
        """Stop heartbeating an entry (it was acked, or handed on)."""
        with self._inflight_lock:
            ids = self._inflight.get(stream)
            if ids is not None:
                ids.discard(entry_id)

    def _process(self, entries: list[tuple[str, bytes, dict[bytes, bytes], bool]]) -> None:
        started = time.perf_counter()
        done = 0
        for i, (stream, entry_id, fields, reclaimed) in enumerate(entries):
            if self._stop.is_set():
                self._requeue_unstarted(entries[i:])  # anything left is handed back by run()
                break
            self._process_one(stream, entry_id, fields, reclaimed)
            done += 1
            if self._replies and time.perf_counter() - self._replies_since > FLUSH_SECONDS:
                self._flush()
        self._flush()
        if done:
            per_task = (time.perf_counter() - started) / done
            self._count = min(MAX_BATCH, self._count * 2) if per_task < TINY_TASK_SECONDS else 1

    def _requeue_unstarted(self, entries: list[tuple[str, bytes, dict[bytes, bytes], bool]]) -> None:
        """Give back asynchronous jobs' entries read ahead but not started, as fresh entries.

        Handing them back by lease expiry (:meth:`_hand_back`) would count a lost attempt for each,
        as if this worker had died: a fleet restarted a few times while it runs tiny tasks would use
        up their ``max_lost``. Entries that were themselves reclaimed keep that path, so that the loss
        of the worker they came from is still counted; blocking sessions' entries too (their executor
        knows its tasks by entry id).
        """
        by_stream: dict[str, list[Any]] = {}
        for stream, entry_id, fields, reclaimed in entries:
            queue = self.queues.get(stream)
            if queue is not None and queue.mode == "job" and not reclaimed:
                by_stream.setdefault(stream, []).extend(
                    (entry_id, fields.get(b"p", b""), fields.get(b"s", b""))
                )
        for stream, args in by_stream.items():
            try:
                self._requeue(keys=[stream], args=[GROUP, self.name, *args])
            except _redis_errors():
                return  # still in flight: handed back by lease expiry instead
            for entry_id in args[::3]:
                self.done_with(stream, entry_id)

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
        split = spec.split
        if (
            not result.ok
            and split is not None
            and "://" not in split.uri
            and "#" not in split.uri
            and not os.path.exists(split.uri)
        ):
            failure = TaskFailure(
                where="",
                exc_type="InputError",
                retryable=False,
                message=(
                    f"input {split.uri} is not readable on worker {self.name} (host {self.host}): inputs "
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
            now = time.monotonic()
            try:
                if now - last_registered >= WORKER_BEAT * 0.9:
                    beat(self.client, self.name)
                    last_registered = now
                with self._inflight_lock:
                    held = {s: list(ids) for s, ids in self._inflight.items() if ids}
                running = self._running
                for stream, ids in held.items():
                    queue = self.queues.get(stream)
                    if (
                        self.slot is None  # a supervisor's task process: its watchdog ends the task
                        and queue is not None
                        and queue.task_timeout_ms
                        and running is not None
                        and running[0] == stream
                        and running[1] in ids
                        and (now - running[2]) * 1000 > queue.task_timeout_ms
                    ):
                        # The job's task_timeout: let this task's lease expire, so that another worker
                        # takes it over as lost, as the in-process driver abandons an attempt.
                        ids.remove(running[1])
                        if not ids:
                            continue
                    lease_s = (queue.lease_ms if queue else 30000) / 1000
                    if queue is not None and now - queue.last_heartbeat < lease_s / 4:
                        continue
                    if queue is not None:
                        queue.last_heartbeat = now
                    self._heartbeat(keys=[stream], args=[GROUP, self.name, *ids])
            except Exception:
                continue  # Redis down or the stream gone: the main loop reports it

    def _hand_back(self) -> None:
        """Give back entries read but not started, so that the next claimer takes them at once."""
        with self._inflight_lock:
            held = {s: list(ids) for s, ids in self._inflight.items() if ids}
            self._inflight.clear()
        for stream, ids in held.items():
            try:
                self.client.xclaim(stream, GROUP, self.name, 0, ids, idle=HANDBACK_IDLE_MS, justid=True)
            except Exception:
                pass


def _scope(stream: str) -> str:
    """``mrkit:{job-1}:tasks`` -> ``job-1``."""
    start, end = stream.find("{"), stream.find("}")
    return stream[start + 1 : end] if 0 <= start < end else ""


def _meta_key(stream: str) -> str:
    return stream[: stream.rfind(":")] + ":meta"


# -- the command -------------------------------------------------------------------------------


def serve(
    url: str,
    *,
    concurrency: int | None = None,
    burst: bool = False,
    name: str | None = None,
    secret_file: str | None = None,
) -> None:
    """Run a supervisor of ``concurrency`` task processes on the Redis at ``url`` until stopped (or
    drained in burst mode).

    Each task process is one consumer (a :class:`RedisWorker`) and a process group leader. The
    supervisor replaces a task process that died: one whose attempt timed out (its watchdog reported
    it, then ended the process and its group), one whose user code ended it (``os._exit``, a signal),
    or one killed from outside. In the second case the supervisor reports the attempt it held (read
    from a shared slot the process writes before each attempt) as a failed attempt naming the exit
    code or signal, at once, so that a poison task uses up ``max_attempts`` in seconds; a process
    killed with SIGKILL from outside is a lost worker instead. Either way the entries the dead
    process still held are handed back for immediate reclaim, not left to their lease.

    Args:
        url: ``redis://[[user]:password@]host:port/db`` or ``rediss://…``.
        concurrency: task processes (default: every core).
        burst: exit when no work is left.
        name: worker name shown in ``mrkit status`` (default ``host:pid``; ``name/i`` for several).
        secret_file: file holding the shared secret (else ``MRKIT_SECRET``).

    Raises:
        ConfigError: a bad URL, no secret for a non-loopback Redis, or Redis refuses the credentials.
        StorageError: Redis cannot be reached.
    """
    if concurrency is not None and concurrency < 1:
        raise ConfigError(f"--concurrency must be at least 1, got {concurrency}")
    secret = resolve_secret(url, secret_file)
    _check_connection(url)
    concurrency = concurrency or os.cpu_count() or 1
    base = name or f"{socket.gethostname()}:{os.getpid()}"
    names = [base] if concurrency == 1 else [f"{base}/{i}" for i in range(concurrency)]
    Supervisor(url, names, burst, secret).run()


class Supervisor:
    """The ``mrkit worker`` process: starts, watches and replaces its task processes (:func:`serve`)."""

    RESTART_PAUSE = 0.5  # seconds before replacing a process that died within a second of starting

    def __init__(self, url: str, names: list[str], burst: bool, secret: bytes) -> None:
        self.url, self.names, self.burst, self.secret = url, names, burst, secret
        # fork: the children need nothing but this module, and the supervisor runs no thread.
        self.ctx: Any = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        self.slots = [self.ctx.Array("c", SLOT_BYTES, lock=False) for _ in names]
        self.children: list[Any] = [None] * len(names)
        self.started = [0.0] * len(names)
        self.stopping = False
        self.failed: list[int] = []
        self.stop_requests = 0  # SIGTERM/SIGINT received: each child gets one SIGTERM per request
        self.asked_to_stop: dict[int, int] = {}  # child pid -> SIGTERMs sent to it
        self._reporter: RedisWorker | None = None

    def _start(self, i: int) -> None:
        self.slots[i].value = b""
        child = self.ctx.Process(
            target=_serve_one,
            args=(self.url, self.names[i], self.burst, self.secret, os.getpid(), self.slots[i]),
            daemon=False,
        )
        child.start()
        self.children[i], self.started[i] = child, time.monotonic()
        if self.stopping:
            # A stop request arrived while this replacement was being started, after forward()
            # had looked at the children: ask it too, or the supervisor would wait for it forever.
            self._ask_to_stop(child)

    def _ask_to_stop(self, child: Any) -> None:
        """SIGTERM ``child`` until it has had one per stop request (a second request means "stop
        now", abandoning the task in hand), never more."""
        if child.pid is None or not child.is_alive():
            return
        while self.asked_to_stop.get(child.pid, 0) < self.stop_requests:
            self.asked_to_stop[child.pid] = self.asked_to_stop.get(child.pid, 0) + 1
            os.kill(child.pid, signal.SIGTERM)

    def run(self) -> None:
        for name in self.names:
            # Entries still pending for these names belong to a predecessor that used them (a fleet
            # restarted with the same --name after a kill): it is gone, so they are reclaimable now.
            try:
                self._hand_back(name)
            except Exception:
                pass  # Redis unreachable: the children say so
        for i in range(len(self.names)):
            self._start(i)
        last_beat = 0.0
        supervisor = os.getpid()

        def forward(signum: int, _frame: Any) -> None:
            if os.getpid() != supervisor:
                # A task process just forked, asked to stop before it installed its own handler
                # (this one is inherited with the fork): it has nothing to finish, so it ends.
                os._exit(0)
            # Always SIGTERM: the children ignore SIGINT (and are group leaders, so a terminal's
            # Ctrl-C does not reach them): each sees one request to stop per Ctrl-C, not two (a
            # second one means "stop now", which would abandon the task in hand).
            self.stopping = True
            self.stop_requests += 1
            for child in self.children:
                if child is not None:
                    self._ask_to_stop(child)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while any(child is not None for child in self.children):
                time.sleep(0.1)
                if time.monotonic() - last_beat >= WORKER_BEAT:
                    last_beat = time.monotonic()
                    self._beat()
                for i, child in enumerate(self.children):
                    if child is not None and not child.is_alive():
                        child.join()
                        self._ended(i, child.exitcode)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.failed:
            raise StorageError(
                f"{len(self.failed)} of {len(self.names)} worker processes failed (exit codes {self.failed})"
            )

    def _beat(self) -> None:
        """Beat the liveness of the task processes alive: this process runs no user code, so a task
        holding the GIL (or busy in C) for seconds is not taken for a departed worker."""
        alive = [self.names[i] for i, c in enumerate(self.children) if c is not None and c.is_alive()]
        try:
            beat(self._worker(self.names[0]).client, *alive)
        except Exception:
            pass  # Redis unreachable: the task processes say so; departure is then what others see

    def _ended(self, i: int, code: int) -> None:
        """Task process ``i`` exited with ``code`` (negative: killed by that signal)."""
        held = self.slots[i].value
        self.slots[i].value = b""
        self.children[i] = None
        try:
            self._worker(self.names[i]).client.zrem(WORKERS, self.names[i])  # no beat of ours outlives it
        except Exception:
            pass
        if not held and code >= 0:
            if code:  # the worker itself failed (Redis unreachable in burst mode, say): no restart
                self.failed.append(code)
            return
        try:
            if held and code != -signal.SIGKILL:
                self._report_crash(self.names[i], json.loads(held), code)
            self._hand_back(self.names[i])
        except Exception as exc:  # Redis unreachable: the leases expire and others reclaim
            print(f"mrkit worker {self.names[i]}: could not report its end: {exc}", file=sys.__stderr__)
        print(f"mrkit worker {self.names[i]}: task process {_describe_exit(code)}", file=sys.__stderr__)
        if self.stopping:
            return
        if time.monotonic() - self.started[i] < 1.0:
            time.sleep(self.RESTART_PAUSE)  # a process that dies at once must not spin
            if self.stopping:  # asked to stop meanwhile
                return
        self._start(i)

    def _worker(self, name: str) -> RedisWorker:
        if self._reporter is None:
            self._reporter = RedisWorker(self.url, name=name, secret=self.secret, capture_output=False)
        self._reporter.name = name
        return self._reporter

    def _report_crash(self, name: str, held: dict[str, Any], code: int) -> None:
        """Report the attempt a dead task process held as failed, naming how the process ended."""
        worker = self._worker(name)
        stream, entry_id = str(held["stream"]), str(held["entry"]).encode()
        found = worker.client.xrange(stream, entry_id, entry_id)
        if not found:
            return  # acked and trimmed meanwhile: nothing to report
        fields = found[0][1]
        header, body = unpack(self.secret, fields, f"entry {entry_id.decode()} of {stream}")
        spec = dataclasses.replace(TaskSpec.decode(body), attempt=int(held["attempt"]))
        worker.report_failure(stream, entry_id, header, fields, spec, crash_failure(_describe_exit(code)))

    def _hand_back(self, name: str) -> None:
        """Make every entry still pending for consumer ``name`` reclaimable at once (it is dead)."""
        client = self._worker(name).client
        for raw in client.zrangebyscore(QUEUES, now_ms(), "+inf"):
            stream = raw.decode()
            pending = client.xpending_range(stream, GROUP, min="-", max="+", count=1000, consumername=name)
            ids = [entry["message_id"] for entry in pending]
            if ids:
                client.xclaim(stream, GROUP, name, 0, ids, idle=HANDBACK_IDLE_MS, justid=True)


def _describe_exit(code: int) -> str:
    """``exit code 3`` or ``killed by signal 11 (SIGSEGV)``."""
    if code >= 0:
        return f"exit code {code}"
    try:
        signame = signal.Signals(-code).name
    except ValueError:
        signame = "unknown"
    return f"killed by signal {-code} ({signame})"


def _serve_one(
    url: str, name: str | None, burst: bool, secret: bytes, parent: int | None = None, slot: Any = None
) -> None:
    """One worker in this process; ``parent``: the pid of the supervisor that started it, if any."""
    if slot is not None and hasattr(os, "setpgrp"):
        os.setpgrp()  # a group leader: ending it after a timeout ends the user's grandchildren too
    install_capture()
    worker = RedisWorker(url, name=name, burst=burst, secret=secret, slot=slot)

    signals = 0

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal signals
        signals += 1
        if signals > 1 and worker._running_task():
            raise KeyboardInterrupt  # a second signal while a task runs: stop now, abandoning it
        if signals == 1:
            print(f"mrkit worker {worker.name}: stopping after the current task", file=sys.__stderr__)
        # A stop already under way (a burst worker that drained, a parent gone) needs nothing more:
        # raising here would turn a clean exit into a traceback and exit status 1.
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    if parent is None:
        signal.signal(signal.SIGINT, on_signal)
    else:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor forwards Ctrl-C as one SIGTERM
        threading.Thread(
            target=_watch_parent, args=(worker, parent), name="mrkit-parent", daemon=True
        ).start()
    print(
        f"mrkit worker {worker.name}: consuming {worker.label}{' (burst)' if burst else ''}",
        file=sys.__stderr__,
    )
    done = worker.run()
    print(f"mrkit worker {worker.name}: exiting after {done} entries", file=sys.__stderr__)


def _watch_parent(worker: RedisWorker, parent: int) -> None:
    """Stop a pool's worker after the task in hand when the pool process is gone (SIGKILLed, say):
    nobody would forward signals to it any more, and it must not consume tasks as an orphan."""
    while not worker._stop.wait(1.0):
        if os.getppid() != parent:
            print(
                f"mrkit worker {worker.name}: the worker pool's process is gone; stopping",
                file=sys.__stderr__,
            )
            worker.stop()
            return


def _check_connection(url: str) -> None:
    client = connect(url)  # first: MissingExtra (pip install 'mrkit[redis]') if redis-py is missing
    import redis

    parsed = RedisURL.parse(url)
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise ConfigError(f"Redis at {redact(parsed.url)} refused the credentials: {exc}") from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc) or "NOPERM" in str(exc):
            raise ConfigError(f"Redis at {redact(parsed.url)} refused the credentials: {exc}") from None
        raise
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StorageError(f"cannot reach Redis at {redact(parsed.url)}: {exc}") from None
