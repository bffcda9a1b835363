"""What the HTTP executor's parts share: its timeouts, an attempt, a worker slot, the exchange's outcomes.

:class:`HttpTimeouts` is the executor's public configuration (importable from
:mod:`mrkit.backends.http.executor` too). :class:`_ExecutorState` declares the state and the few
methods that the executor's parts (:mod:`.executor`, :mod:`.workers`, :mod:`.exchange`,
:mod:`.faults`) share: one lock, one queue, the slots.
"""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass

from mrkit.backends.http.connection import _Connection
from mrkit.errors import ConfigError, MrkitError
from mrkit.model.task import TaskResult, TaskSpec


@dataclass(frozen=True)
class HttpTimeouts:
    """How long the executor waits for HTTP workers, and when it gives up on one.

    Attributes:
        startup: seconds a driver-started worker has to report that it is ready.
        connect: seconds to open a TCP connection to a worker.
        health_interval: while an attempt runs, its worker's ``/health`` is checked this often.
        health_timeout: a ``/health`` answer slower than this counts as a miss.
        health_misses: consecutive misses after which the worker is lost: the attempt fails with
            WorkerLost, and the worker is restarted (driver-started) or probed with backoff.
        unreachable: with no worker answering for this long, queued attempts fail with WorkerLost.
        first_contact: running workers (``http://…``) none of which has answered once this many
            seconds after the first task was submitted: the executor gives up with a ConfigError
            ("no HTTP worker answered at …"), since retrying cannot help a wrong address.
        task: seconds an attempt may run before it is lost and a driver-started worker running it
            is killed and restarted (None: no limit). The driver's ``RetryPolicy.task_timeout`` is
            not the same: it stops waiting for the attempt and launches another, but the abandoned
            attempt keeps its worker busy until it ends (its future cannot be cancelled once running).

    A request or an answer that stops moving mid-transfer for :attr:`stall` seconds also gives up
    on the worker (a frozen worker stops reading a large request; one frozen mid-answer stops
    sending), as a worker that misses ``/health`` ``health_misses`` times in a row does.

    Example:
        >>> HttpTimeouts(health_interval=0.2, health_timeout=0.5, health_misses=2).health_misses
        2
        >>> HttpTimeouts().stall
        12.0
    """

    startup: float = 30.0
    connect: float = 5.0
    health_interval: float = 1.0
    health_timeout: float = 3.0
    health_misses: int = 3
    unreachable: float = 30.0
    first_contact: float = 3.0
    task: float | None = None

    def __post_init__(self) -> None:
        for name in (
            "startup",
            "connect",
            "health_interval",
            "health_timeout",
            "unreachable",
            "first_contact",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"HttpTimeouts.{name} must be > 0 seconds, got {getattr(self, name)!r}")
        if self.health_misses < 1:
            raise ConfigError(f"HttpTimeouts.health_misses must be at least 1, got {self.health_misses!r}")
        if self.task is not None and not self.task > 0:
            raise ConfigError(f"HttpTimeouts.task must be > 0 seconds or None, got {self.task!r}")

    @property
    def stall(self) -> float:
        """Seconds a transfer may make no progress: ``health_misses × (health_interval + health_timeout)``."""
        return self.health_misses * (self.health_interval + self.health_timeout)


class _NotSent(Exception):
    """The request did not reach the worker whole: the attempt did not run and can go elsewhere."""


class _Replayed(Exception):
    """The worker refused the request as a replay (409): it did not run; send it again, freshly signed."""


class _Lost(Exception):
    """The attempt may have run and its outcome is unknown; ``kill`` asks to restart our worker."""

    def __init__(self, reason: str, *, kill: bool = False) -> None:
        super().__init__(reason)
        self.kill = kill


class _Item:
    """One submitted attempt."""

    __slots__ = ("spec", "future", "running", "bounces", "resends")

    def __init__(self, spec: TaskSpec, future: Future[TaskResult]) -> None:
        self.spec = spec
        self.future = future
        self.running = False  # set_running_or_notify_cancel() succeeded: it can no longer be cancelled
        self.bounces = 0  # times it could not be delivered
        self.resends = 0  # times it was sent again after its driver-started worker died under it


class _Slot:
    """One worker as this executor sees it, served by one thread with its own connections."""

    def __init__(self, index: int, host: str = "", port: int = 0, *, owned: bool) -> None:
        self.index = index
        self.host = host
        self.port = port
        self.owned = owned
        self.proc: subprocess.Popen[bytes] | None = None
        self.conn: _Connection | None = None  # tasks
        self.health: http.client.HTTPConnection | None = None  # /health checks, not to disturb the above
        self.ready = False
        self.answered = (
            False  # it answered once (existing workers): "unreachable" rather than "wrong address"
        )
        self.started = False  # a worker process was started for it once (driver-started workers)
        self.busy = False  # holds an item (guarded by the executor's lock)
        self.removed = False  # refused our signature: out of rotation for good
        self.known: set[str] = set()  # futures function digests this worker process has been sent
        self.last_used = 0.0
        self.last_ready = time.monotonic()
        self.failures = 0  # consecutive failed probes (existing workers)
        self.down_until = 0.0
        self.down_reason = ""
        self.thread: threading.Thread | None = None

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}" if self.port else f"http-worker-{self.index}"

    def drop_connections(self) -> None:
        for conn in (self.conn, self.health):
            if conn is not None:
                conn.close()
        self.conn = self.health = None

    def interrupt(self) -> None:
        """Unblock this slot's thread if it waits on a response (called from another thread)."""
        conn = self.conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _exit_description(proc: subprocess.Popen[bytes]) -> str:
    code = proc.poll()
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def parse_addresses(name: str) -> list[tuple[str, int]]:
    """``http://h1:p1,h2:p2`` (each item may repeat ``http://``) -> ``[("h1", p1), ("h2", p2)]``.

    Raises:
        ConfigError: for an item without a host or a numeric port.
    """
    body = name[len("http://") :] if name.startswith("http://") else name
    out: list[tuple[str, int]] = []
    for item in body.split(","):
        item = item.strip().removeprefix("http://").rstrip("/")
        host, sep, port = item.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"bad HTTP worker address {item!r} in {name!r}: expected "
                "http://host:port[,host:port...], e.g. http://127.0.0.1:8001,127.0.0.1:8002"
            )
        out.append((host, int(port)))
    return out


class _ExecutorState:
    """The state the executor's parts share (set by :class:`~.executor.HttpExecutor`), and the methods
    one part calls on another, declared here for the type checker."""

    name: str
    timeouts: HttpTimeouts
    worker_python: str
    _secret: bytes
    _addresses: list[tuple[str, int]] | None
    _lock: threading.Lock
    _work: threading.Condition
    _queue: deque[_Item]
    _slots: list[_Slot]
    _closing: bool
    _broken: MrkitError | None
    _stopped: threading.Event
    _startup_failures: int
    _max_bounces: int

    def _fail(self, item: _Item, message: str, *, worker: str = "", error: Exception | None = None) -> None:
        raise NotImplementedError

    def _requeue(self, item: _Item) -> None:
        raise NotImplementedError

    def _abort(self, error: MrkitError) -> None:
        raise NotImplementedError

    def _unreachable_locked(self) -> str:
        raise NotImplementedError

    def _never_answered(self) -> str:
        raise NotImplementedError

    def _healthy(self, slot: _Slot) -> tuple[bool, str]:
        raise NotImplementedError

    def _stop_process(self, slot: _Slot, grace: float) -> None:
        raise NotImplementedError
