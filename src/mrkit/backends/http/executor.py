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

Its parts, each a mixin of :class:`HttpExecutor` over the state they share (one lock, one queue,
the slots: :class:`~mrkit.backends.http.slots._ExecutorState`): the worker processes it starts and
their lifecycle (:mod:`.workers`), one exchange with a worker (:mod:`.exchange`, over
:mod:`.connection`), and what it does when an exchange fails (:mod:`.faults`). What driver and
worker agree on (paths, headers, bodies, status codes) is :mod:`mrkit.backends.http.wire`.

This module is about 560 lines: the public API, the slots' threads that take attempts from the
queue, and the reading of an answer, which all hold the one lock the parts share.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

from mrkit.backends.http import wire
from mrkit.backends.http.auth import (
    SECRET_ENV,
    SECRET_FILE_ENV,
    generate_secret,
    load_secret,
)
from mrkit.backends.http.exchange import _Exchanges
from mrkit.backends.http.faults import _Faults
from mrkit.backends.http.slots import HttpTimeouts, _Item, _Lost, _NotSent, _Replayed, _Slot, parse_addresses
from mrkit.backends.http.workers import WORKER_PYTHON_ENV, _WorkerProcesses
from mrkit.errors import AuthenticationError, ConfigError, MrkitError, WorkerLost
from mrkit.execution.base import Executor
from mrkit.model.task import TaskKind, TaskResult, TaskSpec
from mrkit.security import is_loopback

__all__ = ["WORKER_PYTHON_ENV", "HttpExecutor", "HttpTimeouts", "parse_addresses"]

logger = logging.getLogger("mrkit.http")


class HttpExecutor(_WorkerProcesses, _Exchanges, _Faults, Executor):
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
            if status == wire.OK:
                try:
                    result = TaskResult.decode(data)
                except Exception as exc:
                    self._lost(slot, item, _Lost(f"sent an undecodable result ({type(exc).__name__}: {exc})"))
                    return
                if sent_fn:
                    slot.known.add(spec.call_digest)
                item.future.set_result(result)
                return
            if status == wire.CONFLICT and not full:
                full = True  # it forgot the function (or restarted): send it again, with the function
                continue
            if status == wire.LOST:
                # The worker lives, but the task process running the attempt was killed from outside
                # (or stopped); the worker has replaced it. Its answer says how.
                reason = wire.lost_reason(data)
                self._lost(slot, item, _Lost(f"lost the attempt: {reason} (it started a new one)"))
                return
            self._lost(slot, item, _Lost(f"answered HTTP {status}: {wire.excerpt(data)}"))
            return


# Executors that may still have workers when the interpreter exits. Their workers would exit anyway
# (their stdin closes with this process), but stopping them here also reaps them. A WeakSet, so
# registering does not keep an executor alive.
_LIVE: weakref.WeakSet[HttpExecutor] = weakref.WeakSet()


def _shutdown_at_exit() -> None:
    for executor in list(_LIVE):
        executor.shutdown(wait=False)


atexit.register(_shutdown_at_exit)
