"""Run tasks on HTTP workers: ones the driver starts itself (``http``) or ones already running
(``http://host:port,host:port``). The far side is :mod:`mrkit.backends.http.server`.

The contract (:class:`HttpExecutor`):

* ``submit(spec)`` returns a future of the attempt's :class:`~mrkit.model.task.TaskResult`. A raising
  user function is a *result* (``ok=False``), and so is an attempt that made no progress for
  ``TaskSettings.task_timeout`` (``TaskTimeout``, ended in the worker's task process: this executor
  ``enforces_timeouts``) or whose user code ended its task process (``WorkerCrashed``: exit code,
  signal or ``SystemExit``). The future raises :class:`~mrkit.errors.WorkerLost` only when the
  attempt may have been lost for reasons outside the task: its task process was killed from outside,
  the connection to a worker we did not start broke after the request was sent, the worker stopped
  answering ``/health`` while the attempt ran, it ran past ``HttpTimeouts.task``, or the executor
  shut down. The driver then retries it; first-attempt-wins commits make a duplicate harmless.
* **Repaired losses are ours.** A driver-started worker that dies under an attempt (killed from
  outside: user code runs in its task processes) is restarted and the attempt sent again as
  ``attempt + 1000·k`` (keys of its own), up to :data:`_MAX_RESENDS` times, so a kill storm does
  not use up the driver's ``max_lost``.
* **Metadata only.** The body of ``POST /task`` is the spec's JSON: split URI and byte range, or
  partition number, plus the storage URL. The job's code is fetched by each worker from storage once,
  by digest (:mod:`mrkit.execution.runtime` caches it). A futures-API function travels once per worker
  too: later tasks of the same function omit it (a worker that forgot it answers 409 and gets it).
* **One keep-alive connection and one request in flight per worker**, each served by its own thread
  here; a task is handed to whichever connected worker is free first.
* **Faults.** A task that could not be *delivered* (connection refused or reset before the request
  was out) is not lost: it goes back to the queue for another worker, a bounded number of times. A
  worker the driver started is restarted when it dies or hangs (killed first); one that was already
  running is probed with ``/health`` under exponential backoff (0.1 s doubling to 5 s) and gets
  tasks again once it answers; if none of them has *ever* answered ``HttpTimeouts.first_contact``
  seconds after the first submit, the executor gives up with a ConfigError naming the addresses. A
  request the worker refused as a replay (409) did not run and is sent again, freshly signed. Every
  such event is logged on ``logging.getLogger("mrkit.http")``. When no worker has answered for
  ``HttpTimeouts.unreachable`` seconds, queued tasks fail with WorkerLost (the driver's ``max_lost``
  bounds the retries); three driver-started workers in a row that die before becoming ready make
  :meth:`submit` raise :class:`~mrkit.errors.ConfigError`.
* **Authentication.** Every request is signed and every response verified (:mod:`mrkit.backends.http.auth`)
  before it is decoded. Driver-started workers get a fresh random secret through their stdin (never
  the command line). For existing workers the secret comes from ``secret=``, ``secret_file=``,
  ``$MRKIT_SECRET_FILE`` or ``$MRKIT_SECRET``. A worker that refuses our signature is taken out of
  rotation (logged as an error); when none is left, :meth:`submit` raises
  :class:`~mrkit.errors.AuthenticationError`.
* **Storage.** Driver-started workers are local (``local=True``): they share the driver's temp
  folder. Existing workers are local only if every address is loopback; otherwise ``local=False``
  and the job needs a ``storage=`` URL that every worker reaches (and an output they reach).
* **Lifetime.** Driver-started workers are started on demand (no more than ``workers``, and only as
  many as there are tasks to run), reused across phases and jobs, and stopped by :meth:`shutdown`;
  they also exit on their own when the driver dies (their stdin closes). They need a POSIX system.

Future callbacks run in this executor's connection threads; keep them short (submitting is fine).

This module is about 1,300 lines because the connection threads, the worker processes and the fault
handling share one lock and one queue; splitting them apart would spread that invariant over files.
"""

from __future__ import annotations

import atexit
import http.client
import io
import json
import logging
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

from mrkit.backends.http.auth import (
    HEADER_NONCE,
    HEADER_SIGNATURE,
    SECRET_ENV,
    SECRET_FILE_ENV,
    generate_secret,
    load_secret,
    sign_request,
    verify_response,
)
from mrkit.errors import AuthenticationError, ConfigError, MrkitError, WorkerLost
from mrkit.execution.base import Executor
from mrkit.model.task import TaskKind, TaskResult, TaskSpec
from mrkit.security import is_loopback

logger = logging.getLogger("mrkit.http")

WORKER_PYTHON_ENV = "MRKIT_WORKER_PYTHON"
_MAX_STARTUP_FAILURES = 3  # driver-started workers dying before "ready" this many times in a row: give up
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 5.0
# A driver-started worker that dies under an attempt (killed from outside: its task process runs the
# user code, so the task did not do it) is restarted and the attempt sent again, this many times per
# attempt; beyond that the attempt is lost (WorkerLost) and the driver's max_lost takes over.
_MAX_RESENDS = 10
# A resent attempt gets a number the driver never uses (attempt + k * stride), so that it writes under
# keys of its own: the copy that died may have written (even committed) under the original ones.
_RESEND_STRIDE = 1000
# The worker drops connections idle for 300 s (http_server.IDLE_TIMEOUT); reconnect well before, so a
# request never races the worker closing an idle connection.
_IDLE_RECONNECT = 60.0


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


def _set_stall_timeout(sock: socket.socket, seconds: float) -> None:
    """Make a blocking send or receive on ``sock`` fail after ``seconds`` without progress.

    SO_SNDTIMEO/SO_RCVTIMEO bound each system call in the kernel, so the socket stays in blocking
    mode and the normal path costs no extra system call (a Python-level timeout would add a poll
    before every send and receive). ``sendall`` keeps going while bytes move, and raises once
    ``seconds`` pass with none accepted.
    """
    if os.name == "nt":
        value = struct.pack("L", max(1, int(seconds * 1000)))  # a DWORD of milliseconds
    else:
        whole = int(seconds)
        value = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))  # struct timeval
    for option in (socket.SO_SNDTIMEO, socket.SO_RCVTIMEO):
        sock.setsockopt(socket.SOL_SOCKET, option, value)


class _StallReader(io.RawIOBase):
    """The raw stream an answer is read from: a receive that timed out raises TimeoutError.

    http.client reads through ``socket.SocketIO``, which returns None when a receive would block
    (its non-blocking-socket case); after SO_RCVTIMEO expired it would then take a stalled answer
    for a short one, or return None as its body.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            return self._sock.recv_into(buffer)
        except BlockingIOError:
            raise TimeoutError("its answer stopped arriving midway") from None


class _Response(http.client.HTTPResponse):
    """An HTTPResponse read through :class:`_StallReader`."""

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self.fp.close()  # the SocketIO reader http.client made; it holds no data yet
        self.fp = io.BufferedReader(_StallReader(sock))


class _Connection(http.client.HTTPConnection):
    """An HTTPConnection that sends a request's headers and body in one write, and can wait for input.

    http.client writes headers and body separately; the worker would then wake up for the headers,
    block, and wake up again for the body. :meth:`post` collects what ``request()`` sends and writes
    it once. :meth:`readable` waits for the answer with one ``epoll``/``kqueue`` call on a selector
    kept per connection, leaving the socket in blocking mode: toggling timeouts around a peek would
    cost several system calls per task, each one a chance for another driver thread to take the GIL.
    """

    response_class = _Response
    host_header = ""  # the signed Host: the worker's address as connected, and its port
    stall = 0.0  # seconds a send or receive may make no progress (0: no bound)
    _corked: list[bytes] | None = None
    _selector: selectors.BaseSelector | None = None

    def connect(self) -> None:
        super().connect()
        assert self.sock is not None
        self.sock.settimeout(None)  # an answer takes as long as its task; health checks bound the wait
        if self.stall > 0:
            _set_stall_timeout(self.sock, self.stall)  # ...but once it moves, it must keep moving
        if self._selector is not None:
            self._selector.close()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.sock, selectors.EVENT_READ)

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._selector is not None:
                self._selector.close()
                self._selector = None

    def readable(self, timeout: float) -> bool:
        """True when bytes, or end-of-file, wait to be read; waits at most ``timeout`` seconds."""
        selector = self._selector
        return True if selector is None else bool(selector.select(timeout))

    def send(self, data: Any) -> None:
        if self._corked is not None and isinstance(data, bytes):
            self._corked.append(data)
        else:
            super().send(data)

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> None:
        self._corked = []
        try:
            self.request("POST", path, body, headers)
            data = b"".join(self._corked)
        finally:
            self._corked = None
        super().send(data)


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


class HttpExecutor(Executor):
    """Runs attempts on HTTP workers, started here (``urls=None``) or already running.

    Example::

        with HttpExecutor(workers=2) as executor:                 # starts 2 local workers on demand
            result = executor.submit(spec).result()
        HttpExecutor(["127.0.0.1:8001", "127.0.0.1:8002"], secret_file="secret.txt")

    Args:
        urls: addresses of running workers (``host:port`` or ``http://host:port``); None starts
            ``workers`` local workers with a fresh secret.
        workers: how many workers to start (default: every core); only with ``urls=None``.
        secret, secret_file: the running workers' shared secret (default: ``$MRKIT_SECRET_FILE``,
            then ``$MRKIT_SECRET``); only with ``urls``.
        storage: intermediate storage URL every worker reaches (returned by :meth:`storage_url`);
            required by ``mrkit.run`` when some worker is not on this machine.
        timeouts: :class:`HttpTimeouts`.
        worker_python: the interpreter of driver-started workers (default ``$MRKIT_WORKER_PYTHON``,
            else ``sys.executable``); it must have mrkit and the job's imports installed. Only with
            ``urls=None``.
        name: the executor string it was built from (for messages and reuse).

    Raises:
        ConfigError: for a bad option, a missing secret, or driver-started workers on Windows.
    """

    reports_running = True  # futures turn running() when a connection slot takes their attempt
    # Workers run each attempt in a task process under mrkit.execution.watchdog: a stuck one is ended
    # there and comes back as a TaskTimeout failure (see mrkit.backends.http.tasks).
    enforces_timeouts = True
    # Missing workers are started by the driver: from_name takes n_map, n_reduce and worker_python.
    starts_workers = True

    def __init__(
        self,
        urls: Sequence[str] | None = None,
        *,
        workers: int | None = None,
        secret: bytes | str | None = None,
        secret_file: str | None = None,
        storage: str | None = None,
        timeouts: HttpTimeouts | None = None,
        worker_python: str | None = None,
        name: str | None = None,
    ) -> None:
        self.timeouts = timeouts or HttpTimeouts()
        self._storage = storage
        self._addresses: list[tuple[str, int]] | None = None
        if urls is None:
            if workers is None:
                workers = os.cpu_count() or 1
            if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
                raise ConfigError(f"workers must be a positive integer, got {workers!r}")
            if secret is not None or secret_file is not None:
                raise ConfigError(
                    "secret= and secret_file= are for running workers (http://host:port); "
                    "the workers the driver starts get a fresh secret of their own"
                )
            if os.name != "posix":
                raise ConfigError(
                    "the 'http' executor starts its workers with POSIX pipes; on this system "
                    "start them with `mrkit worker http` and use http://host:port,..."
                )
            self._secret = generate_secret()
            self.worker_python = worker_python or os.environ.get(WORKER_PYTHON_ENV) or sys.executable
            self.name = name or "http"
            self.workers = workers
            self.local = True
        else:
            self._addresses = [a for url in urls for a in parse_addresses(url)]
            if not self._addresses:
                raise ConfigError("give at least one HTTP worker address: http://host:port[,host:port...]")
            if workers is not None and workers != len(self._addresses):
                raise ConfigError(
                    f"workers={workers} does not apply to running HTTP workers: there is one "
                    f"worker per address ({len(self._addresses)} given); list an address twice "
                    "to send it two tasks at once"
                )
            if worker_python is not None:
                raise ConfigError(
                    "worker_python= is for the workers the driver starts ('http'); running workers "
                    "use the interpreter they were started with"
                )
            self.worker_python = ""
            self._secret = self._client_secret(secret, secret_file)
            self.name = name or "http://" + ",".join(f"{h}:{p}" for h, p in self._addresses)
            self.workers = len(self._addresses)
            self.local = all(is_loopback(h) for h, _ in self._addresses)
        # One lock guards the queue and every slot's `busy`/`removed`; never held during I/O or callbacks.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._queue: deque[_Item] = deque()
        self._slots: list[_Slot] = []
        self._closing = False
        self._broken: MrkitError | None = None
        self._stopped = threading.Event()  # set by shutdown(): wakes threads sleeping in a backoff
        self._startup_failures = 0
        self._first_slot_at: float | None = (
            None  # when the first slot was added (first_contact counts from it)
        )
        self._max_bounces = 2 * self.workers + 3
        _LIVE.add(self)

    @staticmethod
    def _client_secret(secret: bytes | str | None, secret_file: str | None) -> bytes:
        if secret is not None:
            return secret.encode() if isinstance(secret, str) else secret
        if secret_file is None and not os.environ.get(SECRET_FILE_ENV) and not os.environ.get(SECRET_ENV):
            raise ConfigError(
                f"HTTP workers need their shared secret: set {SECRET_ENV}, or {SECRET_FILE_ENV} to a file "
                "holding it (secret_file= in Python), as the workers were started with"
            )
        return load_secret(secret_file)

    @classmethod
    def from_name(
        cls,
        name: str,
        *,
        workers: int | None = None,
        n_map: int | None = None,
        n_reduce: int | None = None,
        **options: Any,
    ) -> HttpExecutor:
        """Build from ``http`` or ``http://h1:p1,h2:p2`` (see :func:`mrkit.execution.base.open_executor`).

        Args:
            name: the executor string.
            workers: ``http``: workers to start (default ``max(n_map, n_reduce)`` when either is
                given, as in seed 003, else every core).
            n_map, n_reduce: the job's task counts, for that default.
            options: :class:`HttpExecutor` keyword arguments (``secret_file``, ``storage``, ``timeouts``,
                ``worker_python``).

        Raises:
            ConfigError: for a name that is neither, or a bad option.
        """
        if name == "http":
            if workers is None and (n_map or n_reduce):
                workers = max(n_map or 0, n_reduce or 0)
            return cls(workers=workers, name=name, **options)
        if name.startswith("http://"):
            return cls([name], workers=workers, name=name, **options)
        raise ConfigError(
            f"HttpExecutor is selected by 'http' or 'http://host:port[,host:port...]', got {name!r}"
        )

    # -- public API -------------------------------------------------------------------------------

    def submit(self, spec: TaskSpec) -> Future[TaskResult]:
        """Queue one attempt; the first free worker runs it.

        Returns:
            A future of its :class:`TaskResult`; it raises :class:`WorkerLost` when the attempt was
            lost with its worker (see the module docstring).

        Raises:
            RuntimeError: after :meth:`shutdown`.
            ConfigError: driver-started workers cannot start.
            AuthenticationError: every worker refused our signature.
        """
        future: Future[TaskResult] = Future()
        item = _Item(spec, future)
        with self._lock:
            if self._closing:
                raise RuntimeError("cannot submit to an HttpExecutor after shutdown()")
            if self._broken is not None:
                raise type(self._broken)(str(self._broken))
            unreachable = self._unreachable_locked()
            if not unreachable:
                self._queue.append(item)
                self._grow_locked()
                self._work.notify()
        if unreachable:
            self._fail(item, unreachable)
        return future

    def storage_url(self, job_id: str) -> str | None:
        """The ``storage=`` URL given to the executor, or None (a local temp folder when ``local``)."""
        return self._storage

    def warm_up(self, timeout: float | None = 60.0) -> list[str]:
        """Start (or reach) every worker now and wait until each is ready.

        Returns:
            The addresses (``host:port``) of the ready workers.

        Raises:
            TimeoutError: not every worker was ready within ``timeout`` seconds.
        """
        with self._lock:
            while len(self._slots) < self.workers:
                self._add_slot_locked()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if self._broken is not None:
                    raise type(self._broken)(str(self._broken))
                slots = [s for s in self._slots if not s.removed]
            if all(s.ready for s in slots):
                return [s.label for s in slots]
            if deadline is not None and time.monotonic() > deadline:
                waiting = ", ".join(
                    f"{s.label} ({s.down_reason or 'starting'})" for s in slots if not s.ready
                )
                raise TimeoutError(f"HTTP workers not ready after {timeout}s: {waiting}")
            time.sleep(0.02)

    def worker_info(self) -> list[dict[str, Any]]:
        """One dict per worker: ``address``, ``ready``, ``busy``, and ``pid`` of driver-started ones."""
        with self._lock:
            return [
                {
                    "address": s.label,
                    "ready": s.ready,
                    "busy": s.busy,
                    "pid": s.proc.pid if s.proc is not None else None,
                }
                for s in self._slots
            ]

    def shutdown(self, wait: bool = True) -> None:
        """Stop the workers this executor started and close every connection.

        Queued attempts and attempts still running fail with WorkerLost. Workers that were already
        running are left running.
        """
        with self._lock:
            if self._closing:
                return
            self._closing = True
            items = list(self._queue)
            self._queue.clear()
            slots = list(self._slots)
            self._work.notify_all()
        self._stopped.set()
        for item in items:
            self._fail(item, "the executor shut down before the attempt was sent")
        for slot in slots:
            proc = slot.proc  # read once: the slot's thread may be replacing it
            if proc is not None and proc.stdin is not None:
                try:
                    proc.stdin.close()  # a driver-started worker exits when its stdin closes
                except OSError:
                    pass
            slot.interrupt()
        if wait:
            for slot in slots:
                if slot.thread is not None and slot.thread is not threading.current_thread():
                    slot.thread.join(timeout=10.0)
        for slot in slots:
            self._stop_process(slot, grace=1.0 if wait else 0.0)

    # -- slots and their threads -------------------------------------------------------------------

    def _grow_locked(self) -> None:
        if self._addresses is not None:
            while len(self._slots) < len(self._addresses):
                self._add_slot_locked()
            return
        free = sum(1 for s in self._slots if not s.busy)
        while len(self._slots) < self.workers and len(self._queue) > free:
            self._add_slot_locked()
            free += 1

    def _add_slot_locked(self) -> None:
        index = len(self._slots)
        if self._first_slot_at is None:
            self._first_slot_at = time.monotonic()
        if self._addresses is not None:
            host, port = self._addresses[index]
            slot = _Slot(index, host, port, owned=False)
        else:
            slot = _Slot(index, owned=True)
        slot.thread = threading.Thread(
            target=self._serve_slot, args=(slot,), name=f"mrkit-http-{index}", daemon=True
        )
        self._slots.append(slot)
        slot.thread.start()

    def _serve_slot(self, slot: _Slot) -> None:
        """Body of a slot's thread: keep its worker up, take attempts, run them one at a time."""
        try:
            while not self._closing and not slot.removed and self._broken is None:
                try:
                    if not slot.ready and not self._bring_up(slot):
                        continue
                except Exception as exc:  # a bug or an unexpected OS error: fail loudly, never hang
                    logger.exception("HTTP executor: cannot bring up worker %s", slot.label)
                    self._abort(
                        ConfigError(
                            f"HTTP worker {slot.label} cannot be brought up: {type(exc).__name__}: {exc}"
                        )
                    )
                    return
                item = self._take(slot)
                if item is None:
                    return
                try:
                    self._run(slot, item)
                except BaseException as exc:  # a bug here must not leave a future pending forever
                    logger.exception("HTTP executor: unexpected error running %s", item.spec.task_id)
                    self._fail(item, f"unexpected error in the HTTP executor: {type(exc).__name__}: {exc}")
                    slot.drop_connections()
                    slot.ready = False
                finally:
                    with self._lock:
                        slot.busy = False
        finally:
            slot.drop_connections()

    def _take(self, slot: _Slot) -> _Item | None:
        """The next attempt to run (marked running), or None when the executor stops."""
        while True:
            with self._lock:
                while not self._queue and not self._closing and self._broken is None:
                    self._work.wait()
                if self._closing or self._broken is not None:
                    return None
                item = self._queue.popleft()
                slot.busy = True
            if item.running or item.future.set_running_or_notify_cancel():
                item.running = True
                return item
            with self._lock:  # cancelled while queued: never sent
                slot.busy = False

    def _requeue(self, item: _Item) -> None:
        with self._lock:
            if not self._closing and self._broken is None:
                self._queue.appendleft(item)
                self._work.notify()
                return
        self._fail(item, "the executor shut down before the attempt was sent")

    def _fail(self, item: _Item, message: str, *, worker: str = "", error: Exception | None = None) -> None:
        """Fail ``item``'s future with WorkerLost(``message``) (or ``error``), unless it was cancelled."""
        if not item.running and not item.future.set_running_or_notify_cancel():
            return
        item.running = True
        if error is not None:
            item.future.set_exception(error)
            return
        spec = item.spec
        if message.startswith("task "):
            text = message
        else:
            text = f"task {spec.task_id} attempt {spec.attempt}: {message}"
        item.future.set_exception(WorkerLost(text, task_id=spec.task_id, attempt=spec.attempt, worker=worker))

    def _unreachable_locked(self) -> str:
        """Why no worker can be reached (existing workers, none answering for too long), or ``""``."""
        if self._addresses is None or not self._slots:
            return ""
        if any(s.ready for s in self._slots if not s.removed):
            return ""
        last = max(s.last_ready for s in self._slots)
        if time.monotonic() - last < self.timeouts.unreachable:
            return ""
        reasons = "; ".join(
            f"{s.label}: {s.down_reason or 'not answering'}" for s in self._slots if not s.removed
        )
        return f"no HTTP worker has answered for {self.timeouts.unreachable:g}s ({reasons})"

    def _never_answered(self) -> str:
        """Why to give up on running workers none of which ever answered (a wrong address), or ``""``."""
        with self._lock:
            slots = [s for s in self._slots if not s.removed]
            if (
                self._addresses is None
                or self._first_slot_at is None
                or time.monotonic() - self._first_slot_at < self.timeouts.first_contact
                or not slots
                or any(s.answered or not s.failures for s in slots)
            ):
                return ""
        where = ", ".join(s.label for s in slots)
        reasons = "; ".join(f"{s.label}: {s.down_reason}" for s in slots)
        return (
            f"no HTTP worker answered at {where} within {self.timeouts.first_contact:g}s ({reasons}): "
            "start them with `mrkit worker http --port PORT` or fix the addresses"
        )

    # -- bringing workers up -----------------------------------------------------------------------

    def _bring_up(self, slot: _Slot) -> bool:
        return self._start_worker(slot) if slot.owned else self._probe(slot)

    def _probe(self, slot: _Slot) -> bool:
        """Check an existing worker's /health, at most as often as its backoff allows."""
        wait = slot.down_until - time.monotonic()
        if wait > 0:
            self._stopped.wait(min(wait, 0.5))
            return False
        ok, reason = self._healthy(slot)
        if ok:
            if slot.failures:
                logger.warning("HTTP worker %s answers again; sending it tasks", slot.label)
            slot.answered = True
            slot.failures = 0
            slot.down_reason = ""
            slot.last_ready = time.monotonic()
            slot.ready = True
            return True
        slot.failures += 1
        slot.down_reason = reason
        delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (slot.failures - 1))
        slot.down_until = time.monotonic() + delay
        if slot.failures in (1, 5) or slot.failures % 20 == 0:
            logger.warning(
                "HTTP worker %s is not answering (%s); trying again in %.1fs (attempt %d)",
                slot.label,
                reason,
                delay,
                slot.failures,
            )
        never = self._never_answered()
        if never:
            self._abort(ConfigError(never))
            return False
        with self._lock:
            unreachable = self._unreachable_locked()
            items = list(self._queue) if unreachable else []
            if unreachable:
                self._queue.clear()
        if items:
            logger.error("%s: failing %d queued attempt(s)", unreachable, len(items))
        for item in items:
            self._fail(item, unreachable)
        return False

    def _start_worker(self, slot: _Slot) -> bool:
        """Start (or restart) a driver-started worker; True once it is ready."""
        restarting = slot.started
        if restarting:
            logger.warning("restarting HTTP worker %s", slot.label)
        self._stop_process(slot, grace=0.0)
        try:
            proc, host, port = self._spawn()
        except _NotSent as exc:
            if self._closing:
                return False
            with self._lock:
                self._startup_failures += 1
                failures = self._startup_failures
            logger.warning("an HTTP worker did not start: %s", exc)
            if failures >= _MAX_STARTUP_FAILURES:
                self._abort(
                    ConfigError(
                        f"{failures} HTTP workers in a row failed to start (last one: "
                        f"{exc}); not starting more"
                    )
                )
            else:
                self._stopped.wait(min(_BACKOFF_MAX, _BACKOFF_FIRST * 2**failures))
            return False
        with self._lock:
            self._startup_failures = 0
        slot.proc, slot.host, slot.port = proc, host, port
        slot.started = True
        slot.known.clear()
        slot.ready = True
        slot.last_ready = time.monotonic()
        logger.info(
            "%s HTTP worker pid %d at http://%s",
            "restarted" if restarting else "started",
            proc.pid,
            slot.label,
        )
        return True

    def _spawn(self) -> tuple[subprocess.Popen[bytes], str, int]:
        """Start ``python -m mrkit.backends.http.server --driver`` and wait for the URL it reports.

        The secret goes through the child's stdin (``ps`` shows command lines, not pipes); the
        child reports its URL on a second pipe, so its stdout and stderr stay the driver's, as
        with the ``processes`` executor.

        Raises:
            _NotSent: it died or did not report ready within ``timeouts.startup``.
        """
        ready_r, ready_w = os.pipe()
        try:
            proc = subprocess.Popen(
                [self.worker_python, "-m", "mrkit.backends.http.server", "--driver"],
                stdin=subprocess.PIPE,
                pass_fds=(ready_w,),
                close_fds=True,
            )
        except OSError as exc:
            os.close(ready_r)
            raise _NotSent(f"{self.worker_python} could not be run ({type(exc).__name__}: {exc})") from None
        except BaseException:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)
        try:
            # The driver's sys.path (as `processes` workers get it), so jobs pickled by reference import.
            sys_path = [os.fspath(p) for p in sys.path if isinstance(p, (str, os.PathLike))]
            config = {"secret": self._secret.decode("ascii"), "sys_path": sys_path, "ready_fd": ready_w}
            assert proc.stdin is not None
            try:
                proc.stdin.write(json.dumps(config).encode() + b"\n")
                proc.stdin.flush()
            except OSError:
                pass  # it died at once: reading the ready pipe reports it
            line = self._read_ready(ready_r, proc)
        except BaseException:
            self._reap(proc, grace=0.0)
            raise
        finally:
            os.close(ready_r)
        host, port = parse_addresses(line)[0]
        return proc, host, port

    def _read_ready(self, fd: int, proc: subprocess.Popen[bytes]) -> str:
        deadline = time.monotonic() + self.timeouts.startup
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._reap(proc, grace=0.0)
                    raise _NotSent(
                        f"it did not report ready within {self.timeouts.startup:g}s and was killed"
                    )
                if self._stopped.is_set():
                    self._reap(proc, grace=0.0)
                    raise _NotSent("the executor shut down while it started")
                if not selector.select(min(left, 0.25)):
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:
                    try:
                        proc.wait(timeout=5.0)
                    except subprocess.TimeoutExpired:
                        pass  # it closed the pipe yet lives on: _exit_description says so
                    raise _NotSent(f"it {_exit_description(proc)} before it was ready (its stderr is above)")
                buffer += chunk
        return buffer.decode().strip()

    @staticmethod
    def _reap(proc: subprocess.Popen[bytes], grace: float) -> None:
        if proc.stdin is not None:
            try:
                proc.stdin.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=grace) if grace > 0 else None
        except subprocess.TimeoutExpired:
            pass
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    def _stop_process(self, slot: _Slot, grace: float) -> None:
        slot.drop_connections()
        slot.ready = False
        proc, slot.proc = slot.proc, None
        if proc is not None:
            self._reap(proc, grace)

    def _abort(self, error: MrkitError) -> None:
        """Give up: fail every queued attempt with ``error``; later submits raise it."""
        with self._lock:
            if self._broken is None:
                self._broken = error
            items = list(self._queue)
            self._queue.clear()
            self._work.notify_all()
        logger.error("HTTP executor: %s", error)
        for item in items:
            self._fail(item, "", error=type(error)(str(error)))

    # -- one exchange --------------------------------------------------------------------------------

    def _run(self, slot: _Slot, item: _Item) -> None:
        spec = item.spec
        full = False  # send the futures function even if this worker was sent it before
        while True:
            sent_fn = (
                spec.kind is TaskKind.CALL
                and bool(spec.call_fn)
                and (full or spec.call_digest not in slot.known)
            )
            body = (spec if sent_fn or not spec.call_fn else replace(spec, call_fn=b"")).encode()
            try:
                status, data = self._exchange(slot, body)
            except _NotSent as exc:
                self._not_delivered(slot, item, str(exc))
                return
            except _Replayed as exc:
                self._replayed(slot, item, str(exc))
                return
            except _Lost as exc:
                self._lost(slot, item, exc)
                return
            except AuthenticationError as exc:
                self._refused(slot, item, str(exc))
                return
            slot.last_used = slot.last_ready = time.monotonic()
            if status == 200:
                try:
                    result = TaskResult.decode(data)
                except Exception as exc:
                    self._lost(slot, item, _Lost(f"sent an undecodable result ({type(exc).__name__}: {exc})"))
                    return
                if sent_fn:
                    slot.known.add(spec.call_digest)
                item.future.set_result(result)
                return
            if status == 409 and not full:
                full = True  # it forgot the function (or restarted): send it again, with the function
                continue
            if status == 503:
                # The worker lives, but the task process running the attempt was killed from outside
                # (or stopped); the worker has replaced it. Its answer says how.
                try:
                    reason = str(json.loads(data)["lost"])
                except (ValueError, KeyError, TypeError):
                    reason = data[:200].decode("utf-8", "replace")
                self._lost(slot, item, _Lost(f"lost the attempt: {reason} (it started a new one)"))
                return
            excerpt = data[:200].decode("utf-8", "replace")
            self._lost(slot, item, _Lost(f"answered HTTP {status}: {excerpt}"))
            return

    def _exchange(self, slot: _Slot, body: bytes) -> tuple[int, bytes]:
        """POST one task and wait for the answer, checking the worker's health while it runs.

        Raises:
            _NotSent: the request did not get out whole (the attempt did not run).
            _Lost: the connection broke after the request was out, or the worker stopped answering.
            AuthenticationError: the worker refused our signature, or its answer did not verify.
        """
        conn = self._connection(slot)
        # The Host names the address we reached the worker at, and is signed: the worker refuses a
        # Host that is not one of its own addresses (DNS rebinding), and a request re-aimed elsewhere.
        headers = sign_request(self._secret, "POST", "/task", body, host=conn.host_header)
        nonce = headers[HEADER_NONCE]
        headers["Host"] = conn.host_header
        headers["Content-Type"] = "application/json"
        try:
            conn.post("/task", body, headers)
        except (BlockingIOError, TimeoutError):
            slot.drop_connections()  # SO_SNDTIMEO: it stopped reading (frozen, or cut off)
            raise _NotSent(f"it accepted no bytes of the request for {conn.stall:g}s") from None
        except (OSError, http.client.HTTPException) as exc:
            # sendall() failed, so the worker did not receive the whole request and cannot have run it.
            slot.drop_connections()
            raise _NotSent(f"the request could not be sent ({type(exc).__name__}: {exc})") from None
        self._await_answer(slot, conn)
        try:
            response = conn.getresponse()
            try:
                data = response.read()
                status = response.status
                signature = response.getheader(HEADER_SIGNATURE)
            finally:
                response.close()
        except TimeoutError as exc:
            slot.drop_connections()
            raise _Lost(f"stalled: {exc} (nothing for {conn.stall:g}s)", kill=True) from None
        except (OSError, http.client.HTTPException) as exc:
            slot.drop_connections()
            raise _Lost(self._broken_connection(slot, exc)) from None
        if status == 409 and signature is None:
            # An unsigned 409 is the worker refusing the request itself as a replay (the signed 409
            # asks for a futures function): nothing ran, so a freshly signed copy may go anywhere.
            raise _Replayed(data[:200].decode("utf-8", "replace"))
        if status in (401, 403, 421):
            raise AuthenticationError(
                f"it refused our request (HTTP {status}: {data[:200].decode('utf-8', 'replace')})"
            )
        verify_response(self._secret, status, nonce, data, signature)
        return status, data

    def _connection(self, slot: _Slot) -> _Connection:
        conn = slot.conn
        if conn is not None and (
            conn.sock is None
            or time.monotonic() - slot.last_used > _IDLE_RECONNECT
            # Readable before we asked anything: the worker closed it (end-of-file), or sent bytes
            # nobody asked for. Either way it cannot carry a request.
            or conn.readable(0)
        ):
            conn.close()
            conn = slot.conn = None
        if conn is None:
            conn = _Connection(slot.host, slot.port, timeout=self.timeouts.connect)
            conn.stall = self.timeouts.stall
            try:
                conn.connect()
            except OSError as exc:
                conn.close()
                raise _NotSent(f"cannot connect ({type(exc).__name__}: {exc})") from None
            peer = str(conn.sock.getpeername()[0]) if conn.sock is not None else slot.host
            conn.host_header = f"[{peer}]:{slot.port}" if ":" in peer else f"{peer}:{slot.port}"
            slot.conn = conn
        return conn

    def _await_answer(self, slot: _Slot, conn: _Connection) -> None:
        """Block until the answer starts to arrive, checking ``/health`` every ``health_interval``.

        Waiting for readability leaves the bytes for http.client to parse; each ``health_interval``
        without them is our cue to check on the worker, from this same thread, over a second
        connection (the worker serves it from another thread, so a busy worker still answers).

        Raises:
            _Lost: the worker stopped answering, its process ended, or the attempt ran too long.
        """
        t = self.timeouts
        started = time.monotonic()
        misses = 0
        # Data, end-of-file or an error all make it readable: getresponse() then says which.
        while not conn.readable(t.health_interval):
            if self._closing:
                raise _Lost("was still running the attempt when the executor shut down")
            if t.task is not None and time.monotonic() - started > t.task:
                raise _Lost(f"ran the attempt past task_timeout={t.task:g}s", kill=True)
            if slot.proc is not None and slot.proc.poll() is not None:
                raise _Lost(_exit_description(slot.proc))
            ok, reason = self._healthy(slot)
            misses = 0 if ok else misses + 1
            if misses >= t.health_misses:
                raise _Lost(f"stopped answering /health ({misses} checks in a row: {reason})", kill=True)

    def _healthy(self, slot: _Slot) -> tuple[bool, str]:
        """``(True, "")`` when the worker answers ``GET /health`` in time, else ``(False, why)``."""
        conn = slot.health
        if conn is None:
            conn = slot.health = http.client.HTTPConnection(
                slot.host, slot.port, timeout=self.timeouts.health_timeout
            )
        try:
            conn.request("GET", "/health")
            response = conn.getresponse()
            response.read()
            response.close()
            if response.status == 200:
                return True, ""
            reason = f"/health answered HTTP {response.status}"
        except (OSError, http.client.HTTPException) as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        conn.close()
        slot.health = None
        return False, reason

    def _broken_connection(self, slot: _Slot, exc: BaseException) -> str:
        if slot.proc is not None:
            try:
                slot.proc.wait(timeout=0.5)  # it probably just died: say how
            except subprocess.TimeoutExpired:
                pass
            if slot.proc.poll() is not None:
                return _exit_description(slot.proc)
        return (
            f"closed the connection mid-attempt ({type(exc).__name__}: {exc})"
            if str(exc)
            else f"closed the connection mid-attempt ({type(exc).__name__})"
        )

    # -- what went wrong ---------------------------------------------------------------------------

    def _not_delivered(self, slot: _Slot, item: _Item, reason: str) -> None:
        if self._closing:
            slot.drop_connections()
            self._fail(item, "the executor shut down before the attempt was sent", worker=slot.label)
            return
        item.bounces += 1
        spec = item.spec
        slot.drop_connections()
        slot.ready = False
        if slot.owned:
            how = _exit_description(slot.proc) if slot.proc is not None else "is not running"
            logger.warning(
                "HTTP worker %s %s (%s); restarting it, task %s attempt %d goes to the next free worker",
                slot.label,
                how,
                reason,
                spec.task_id,
                spec.attempt,
            )
        else:
            slot.down_reason = reason
            slot.down_until = time.monotonic()  # probe it at once, then back off
            logger.warning(
                "HTTP worker %s is not up (%s); task %s attempt %d goes to the next free worker",
                slot.label,
                reason,
                spec.task_id,
                spec.attempt,
            )
        if item.bounces > self._max_bounces:
            self._fail(
                item,
                f"could not be delivered to any HTTP worker after {item.bounces} tries "
                f"(last: {slot.label}: {reason})",
                worker=slot.label,
            )
        else:
            self._requeue(item)

    def _lost(self, slot: _Slot, item: _Item, exc: _Lost) -> None:
        spec = item.spec
        message = f"task {spec.task_id} attempt {spec.attempt} lost: HTTP worker {slot.label} {exc}"
        slot.drop_connections()
        if self._closing:
            self._fail(
                item,
                f"task {spec.task_id} attempt {spec.attempt} lost: the executor shut down while "
                f"HTTP worker {slot.label} ran it",
                worker=slot.label,
            )
            return
        if not slot.owned:
            slot.ready = False  # probe it before it gets another task
            slot.down_reason = str(exc)
            slot.down_until = time.monotonic()
            logger.warning("%s; the driver retries the task on the next free worker", message)
        elif not exc.kill and slot.proc is not None and slot.proc.poll() is not None:
            # It died under the attempt, and not by the task's doing: user code runs in the worker's
            # task processes, which report their own deaths. We repair it (restart it), so the loss
            # is ours to absorb: send the attempt again instead of charging the driver's max_lost.
            self._stop_process(slot, grace=0.0)
            if item.resends < _MAX_RESENDS:
                item.resends += 1
                attempt = item.spec.attempt % _RESEND_STRIDE + item.resends * _RESEND_STRIDE
                item.spec = replace(item.spec, attempt=attempt)
                logger.warning(
                    "%s; restarting the worker and sending the task again as attempt %d", message, attempt
                )
                self._requeue(item)
                return
            logger.warning("%s; restarting the worker, and the driver retries the task", message)
        elif exc.kill or slot.proc is None or slot.proc.poll() is not None:
            self._stop_process(slot, grace=0.0)  # not ready: the slot's thread restarts it next
            logger.warning("%s; restarting the worker, and the driver retries the task", message)
        else:
            # The process lives and answers; only the connection broke. It is reopened for the next task.
            logger.warning("%s; the driver retries the task", message)
        self._fail(item, message, worker=slot.label)

    def _replayed(self, slot: _Slot, item: _Item, reason: str) -> None:
        item.bounces += 1
        logger.warning(
            "HTTP worker %s refused task %s attempt %d as a replayed request (%s); sending it again",
            slot.label,
            item.spec.task_id,
            item.spec.attempt,
            reason,
        )
        if item.bounces > self._max_bounces:
            self._fail(
                item, f"HTTP worker {slot.label} refused it {item.bounces} times: {reason}", worker=slot.label
            )
        else:
            self._requeue(item)

    def _refused(self, slot: _Slot, item: _Item, reason: str) -> None:
        slot.drop_connections()
        slot.ready = False
        with self._lock:
            slot.removed = True
            left = [s for s in self._slots if not s.removed]
        logger.error(
            "HTTP worker %s: %s; it gets no more tasks (do the driver and the worker share one "
            "secret, and agree on the time?)",
            slot.label,
            reason,
        )
        if left:
            self._requeue(item)
            return
        error = AuthenticationError(
            f"every HTTP worker refused this driver's requests (last: {slot.label}: "
            f"{reason}): start the workers and the driver with the same secret "
            f"({SECRET_ENV} or --secret-file)"
        )
        self._fail(item, "", error=AuthenticationError(str(error)))
        self._abort(error)


# Executors that may still have workers when the interpreter exits. Their workers would exit anyway
# (their stdin closes with this process), but stopping them here also reaps them. A WeakSet, so
# registering does not keep an executor alive.
_LIVE: weakref.WeakSet[HttpExecutor] = weakref.WeakSet()


def _shutdown_at_exit() -> None:
    for executor in list(_LIVE):
        executor.shutdown(wait=False)


atexit.register(_shutdown_at_exit)
