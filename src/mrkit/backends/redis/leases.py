"""The entries one fleet worker holds, and their leases.

A worker reads task entries with ``XREADGROUP`` (or takes them over with ``XAUTOCLAIM``); from then
on Redis counts each as pending for it, and another worker may reclaim an entry whose idle time
passes the stream's lease. :class:`Leases` keeps the set of entries this worker holds and does the
three things that keep that safe: it renews their leases (a Lua script that ``XCLAIM``\\s only entries
``XPENDING`` still names this worker for, so a worker presumed dead cannot take an entry back from
the one that reclaimed it), it reclaims expired or handed-back entries of asynchronous jobs, and when
the worker stops it gives back what it read but did not start: asynchronous jobs' entries as fresh
entries (so they do not count as lost attempts), the rest with an idle time past the lease so that
the next claimer takes them at once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from mrkit.backends.redis.wire import GROUP, HANDBACK_IDLE_MS

#: An entry as the worker handles it: (stream, entry id, fields, reclaimed from another consumer).
Entry = tuple[str, bytes, dict[bytes, bytes], bool]

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


class Leases:
    """The entries consumer ``name`` holds on the streams in ``queues`` (the worker's own dict,
    shared, so that a stream the worker drops is dropped here too). Thread-safe: the worker's loop
    tracks and releases entries while its heartbeat thread renews them."""

    def __init__(self, client: Any, name: str, queues: dict[str, Queue]) -> None:
        self.client, self.name, self.queues = client, name, queues
        self._held: dict[str, set[bytes]] = {}
        self._lock = threading.Lock()
        self._renew = client.register_script(_HEARTBEAT)
        self._requeue = client.register_script(_REQUEUE)

    def track(self, entries: list[Entry]) -> None:
        """Hold ``entries`` (just read or reclaimed): renew their leases until released."""
        with self._lock:
            for stream, entry_id, _, _ in entries:
                self._held.setdefault(stream, set()).add(entry_id)

    def release(self, stream: str, entry_id: bytes) -> None:
        """Stop renewing an entry (it was acked, or handed on)."""
        with self._lock:
            ids = self._held.get(stream)
            if ids is not None:
                ids.discard(entry_id)

    def forget(self) -> None:
        """Redis was lost: hold nothing; the leases expire and whoever is alive reclaims the entries."""
        with self._lock:
            self._held.clear()

    def renew(self, running: tuple[str, bytes, float] | None, *, enforce_timeout: bool) -> None:
        """Renew the leases due (a quarter of each stream's lease after the last renewal).

        ``running`` is the asynchronous job entry being run and since when. With ``enforce_timeout``
        (a worker without a watchdog of its own), an entry running past its job's ``task_timeout``
        is no longer renewed, so that another worker takes it over as lost, as the in-process driver
        abandons an attempt.
        """
        now = time.monotonic()
        with self._lock:
            held = {s: list(ids) for s, ids in self._held.items() if ids}
        for stream, ids in held.items():
            queue = self.queues.get(stream)
            if (
                enforce_timeout
                and queue is not None
                and queue.task_timeout_ms
                and running is not None
                and running[0] == stream
                and running[1] in ids
                and (now - running[2]) * 1000 > queue.task_timeout_ms
            ):
                ids.remove(running[1])
                if not ids:
                    continue
            lease_s = (queue.lease_ms if queue else 30000) / 1000
            if queue is not None and now - queue.last_heartbeat < lease_s / 4:
                continue
            if queue is not None:
                queue.last_heartbeat = now
            self._renew(keys=[stream], args=[GROUP, self.name, *ids])

    def reclaim(self, *, force: bool, now: set[str] | frozenset[str], count: int) -> list[Entry]:
        """Take over asynchronous jobs' entries whose lease expired or that were handed back
        (``XAUTOCLAIM``, at most ``count`` per stream); the streams in ``now`` are looked at whatever
        their timers say, the others every half lease (``force``: every quarter, at most 1 s)."""
        clock = time.monotonic()
        out: list[Entry] = []
        for queue in list(self.queues.values()):
            if queue.mode != "job":
                continue
            if queue.stream not in now:
                if not force and clock - queue.last_reclaim < queue.lease_ms / 2000:
                    continue
                if force and clock - queue.last_reclaim < min(1.0, queue.lease_ms / 4000):
                    continue
            queue.last_reclaim = clock
            reply = self.client.xautoclaim(queue.stream, GROUP, self.name, queue.lease_ms, "0-0", count=count)
            for entry_id, fields in reply[1]:
                if fields:
                    out.append((queue.stream, entry_id, fields, True))
        self.track(out)
        return out

    def requeue_unstarted(self, entries: list[Entry], redis_errors: tuple[type[BaseException], ...]) -> None:
        """Give back asynchronous jobs' entries read ahead but not started, as fresh entries.

        Handing them back by lease expiry (:meth:`hand_back`) would count a lost attempt for each,
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
            except redis_errors:
                return  # still held: handed back by lease expiry instead
            for entry_id in args[::3]:
                self.release(stream, entry_id)

    def hand_back(self) -> None:
        """Give back every entry still held, with an idle time past the lease: the next claimer
        takes them at once (the worker is stopping)."""
        with self._lock:
            held = {s: list(ids) for s, ids in self._held.items() if ids}
            self._held.clear()
        for stream, ids in held.items():
            try:
                self.client.xclaim(stream, GROUP, self.name, 0, ids, idle=HANDBACK_IDLE_MS, justid=True)
            except Exception:
                pass
