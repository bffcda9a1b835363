"""Run tasks on every local core, in worker processes that may die without taking the job with them.

The contract (:class:`ProcessExecutor`):

* ``submit(spec)`` returns a :class:`concurrent.futures.Future` of the attempt's
  :class:`~mrkit.model.task.TaskResult`. A raising user function is a *result* (``ok=False``), and
  so is an attempt that ended its own worker (``os._exit(n)``, a segfault or abort: a
  ``WorkerCrashed`` failure naming the exit code or signal) or made no progress for
  ``spec.settings.task_timeout`` seconds (a ``TaskTimeout`` failure naming the record). The future
  raises only :class:`~mrkit.errors.WorkerLost`, when the worker was killed from outside (SIGKILL,
  SIGTERM), ran past the executor's own ``task_timeout``, or the executor shut down.
* Timeouts (``enforces_timeouts``): each worker wraps an attempt in
  :func:`mrkit.execution.watchdog.watch`; when it fires, the worker sends the timeout result with a
  "last message" flag and kills its process group. While a watched attempt runs the worker also
  sends a beat every second; a worker silent for its timeout plus ``_SILENCE_GRACE`` seconds (stuck
  in C code that holds the GIL, where its watchdog cannot run) is killed by the parent, and its
  attempt fails with ``TaskTimeout`` too.
* Each worker leads its own process group (``os.setpgrp``), and the group is SIGKILLed whenever the
  worker ends, is killed or replaced: programs its tasks started do not outlive the attempt.
* A dead worker fails exactly the one attempt it was running; a replacement is started at once and
  every other future carries on. This is why neither standard pool is used: ``multiprocessing.Pool``
  never notices that a worker died and leaves its task's result pending forever, and
  ``concurrent.futures.ProcessPoolExecutor`` marks itself broken and fails *every* pending future.
* Workers never outlive the driver: a thread in each one waits on a "lifeline" pipe whose only write
  end is in the driver, and exits the process as soon as the driver is gone, even mid-task.

How it works: each worker is a long-lived process with its own duplex :func:`multiprocessing.Pipe`.
The parent sends a pickled :class:`~mrkit.model.task.TaskSpec`; the worker calls the runner
(:func:`mrkit.execution.runtime.run_task` unless told otherwise) and sends the pickled result back.
Pickle is fine here: both ends are this program, on a pipe nobody else holds (signing is for
peers we do not control). One dispatcher thread in the parent waits with
:func:`multiprocessing.connection.wait` on every worker's pipe *and* its process sentinel, so a death
is noticed even when the worker never wrote a byte. ``submit`` hands a task straight to an idle
worker from the caller's thread; otherwise it queues it, and the dispatcher sends it when a result
frees a worker. That keeps the cost per task to one pipe write, one pipe read and one thread hop.

Cancelling: a queued task's ``Future.cancel()`` succeeds and the task is never sent. A task that was
sent (running, or sent ahead as prefetch) cannot be cancelled: it runs to completion, and its commit
loses the first-writer-wins race to whichever attempt committed first (the coordination layer
relies on that, docs/faults.md).

Future callbacks run in the dispatcher thread; keep them short (submitting more work is fine).

Throughput: with tiny tasks the parent's system calls dominate, so messages are framed by hand and
moved in batches (one read collects several results, one write sends several tasks), and a worker
whose tasks take under 5 ms is sent up to ``prefetch`` more ahead of time. 10,000 tiny tasks run at
roughly 15,000/s on two workers, on a par with ``multiprocessing.Pool.apply_async``.

The worker end and the pipe framing are in :mod:`mrkit.execution.process_worker`. This module
(~880 lines; STYLE 3) is the parent side: the executor, its dispatcher thread and the handling of
dead, silent and timed-out workers, which share one lock and are read together.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import multiprocessing.util  # imported before our atexit hook is registered, so ours runs first
import os
import pickle
import signal
import sys
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from multiprocessing.connection import Connection, wait
from typing import Any

from mrkit.errors import ConfigError, WorkerLost
from mrkit.execution.base import Executor
from mrkit.execution.process_worker import (
    BEAT,
    BEAT_PROGRESS,
    STOP,
    FrameReader,
    send_all,
    split_runner,
    worker_main,
)
from mrkit.model.task import TaskFailure, TaskResult, TaskSpec

DEFAULT_RUNNER = "mrkit.execution.runtime:run_task"

# Tasks are sent ahead to a busy worker (prefetch) only while their pickles add up to at most this.
# The parent writes while holding its lock and the busy worker is not reading, so they must fit in
# the socket buffer (8 KiB on macOS, ~200 KiB on Linux); otherwise the write would block until the
# worker's current task ends -- and if that worker is itself blocked writing a large result back,
# neither side would ever move.
_PREFETCH_MAX_BYTES = 4096
# ...and only to a worker whose last task took less than this. Prefetch hides the pipe round trip
# (~0.1 ms), which matters for tiny tasks only; for long tasks it would just make a second task wait
# behind the first while another worker may be idle.
_PREFETCH_BELOW_SECONDS = 0.005
# A worker that dies before saying hello this many times in a row means workers cannot start at
# all; stop replacing them instead of spinning.
_MAX_STARTUP_FAILURES = 3
# The parent ends a worker whose watched attempt (settings.task_timeout) has sent no beat for its
# timeout plus this long: its watchdog thread cannot run (C code holding the GIL), so nobody else will.
_SILENCE_GRACE = 5.0


def default_start_method() -> str:
    """The start method used when none is given: ``forkserver`` on Linux, ``spawn`` elsewhere.

    Never ``fork``: the driver is multi-threaded (at least our dispatcher thread; often the user's
    threads too), and forking a multi-threaded process copies locks held by other threads in a
    locked state, so the child can deadlock in ``logging``, ``malloc`` or an import lock. Python
    3.12+ warns about exactly this (a ``DeprecationWarning``, an error under our test settings).
    ``forkserver`` forks from a small single-threaded server that has already imported
    :mod:`mrkit.execution.runtime` (preloaded), so a worker starts in milliseconds with the runtime warm;
    ``spawn`` (macOS, Windows) starts a fresh interpreter per worker, which is slower but safe.
    """
    if sys.platform.startswith("linux") and "forkserver" in multiprocessing.get_all_start_methods():
        return "forkserver"
    return "spawn"


# A Unix socket's path must fit in sun_path: 108 bytes with its NUL on Linux, 104 on macOS. The fork
# server listens on <multiprocessing temp dir>/listener-XXXXXXXX (18 more characters).
_SOCKET_PATH_MAX = 103
_LISTENER_SUFFIX = len("/listener-XXXXXXXX")


def _short_socket_dir() -> None:
    """Make multiprocessing put its sockets where their path fits, whatever ``TMPDIR`` is.

    The fork server's socket lives in multiprocessing's temp folder (``TMPDIR/pymp-XXXXXXXX``). With
    a long ``TMPDIR`` (80 characters or so: CI runners, nested build folders) binding it fails with
    ``OSError: AF_UNIX path too long``. Then multiprocessing is given a private folder (mode 0700,
    removed at exit) under ``/tmp`` instead, before the fork server starts.

    Raises:
        ConfigError: when no short writable folder exists; names TMPDIR and the fix.
    """
    from multiprocessing import process, util

    config = process.current_process()._config  # type: ignore[attr-defined]
    current = config.get("tempdir") or os.path.join(tempfile.gettempdir(), "pymp-XXXXXXXX")
    if len(current) + _LISTENER_SUFFIX <= _SOCKET_PATH_MAX:
        return
    for base in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(base) and os.access(base, os.W_OK | os.X_OK):
            break
    else:
        raise ConfigError(
            f"TMPDIR={tempfile.gettempdir()!r} is too long for the processes executor's Unix sockets "
            f"({len(current) + _LISTENER_SUFFIX} > {_SOCKET_PATH_MAX} characters) and /tmp is not "
            "writable: set TMPDIR to a shorter folder (e.g. TMPDIR=/tmp)"
        )
    saved = tempfile.tempdir
    config.pop("tempdir", None)  # a long one made earlier is still removed at exit by its finalizer
    try:
        tempfile.tempdir = base
        util.get_temp_dir()  # mkdtemp (0700) under base, cached for this process, removed at exit
    finally:
        tempfile.tempdir = saved


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start a worker without making it re-import the driver's ``__main__``.

    multiprocessing's spawn and forkserver re-run the main script in every child (as ``__mp_main__``)
    so that pickles can name its functions. mrkit never needs that: jobs and futures functions are
    cloudpickled, by value for ``__main__``. Re-importing it would only re-run a script that lacks an
    ``if __name__ == "__main__":`` guard (starting jobs in the workers) and break scripts read from
    stdin (``python - <<EOF``). Hiding ``__file__``/``__spec__`` while the child is created makes
    multiprocessing's preparation data omit the main module.
    """
    main = sys.modules.get("__main__")
    names = ("__file__", "__spec__")
    saved = {name: main.__dict__[name] for name in names if main is not None and name in main.__dict__}
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            main.__dict__["__spec__"] = None
        yield
    finally:
        if main is not None:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(saved)


# --------------------------------------------------------------------------------------------------
# The parent side


class _Item:
    """One submitted attempt: its spec, its future and its pickle (made in the submitting thread)."""

    __slots__ = ("spec", "future", "data", "running")

    def __init__(self, spec: TaskSpec, future: Future[TaskResult], data: bytes) -> None:
        self.spec = spec
        self.future = future
        self.data = data
        self.running = False  # set_running_or_notify_cancel() succeeded: it can no longer be cancelled


class _Worker:
    """The parent's handle on one worker process."""

    __slots__ = (
        "process",
        "live",
        "conn",
        "reader",
        "pid",
        "label",
        "inflight",
        "ready",
        "head_since",
        "last_seconds",
        "kill_reason",
        "kill_failure",
        "ending",
        "last_heard",
        "gone",
    )

    def __init__(self, process: Any, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        self.reader = FrameReader(conn)
        self.pid: int = process.pid
        self.label = f"pid:{process.pid}"
        self.inflight: deque[_Item] = deque()  # sent, in order; the head is the one running
        self.ready = False  # its hello arrived
        self.head_since = 0.0  # when the head of `inflight` started (as far as the parent can tell)
        self.last_seconds = float("inf")  # its slowest task of the last batch, for the prefetch decision
        self.kill_reason = ""  # why the parent killed it, when it did
        self.kill_failure: TaskFailure | None = None  # ...when that makes its attempt a failed one
        self.ending = False  # it said its last result is sent (a timeout): it runs nothing more
        self.last_heard = 0.0  # when its last message arrived (results and beats)
        self.live = (0, 0)  # records, bytes read so far by its running attempt (its last beat)
        self.gone = False


def _exit_description(process: Any) -> str:
    code = process.exitcode
    if code is None:
        return "closed its pipe"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name} (exit code {code})"
    if code == 0:
        # A worker only exits 0 when told to; mid-task that is user code's os._exit(0) (or a C
        # library's exit(0)): still a failed attempt, and the message must say so plainly.
        return "exited mid-task with exit code 0"
    return f"exited with code {code}"


class ProcessExecutor(Executor):
    """Runs task attempts in a fixed number of local worker processes, replacing any that die.

    Example::

        with ProcessExecutor(workers=4, task_timeout=600) as executor:
            future = executor.submit(spec)
            result = future.result()        # TaskResult, or raises WorkerLost

    Workers start lazily, all at once, on the first ``submit`` (or eagerly with :meth:`warm_up`).
    Each worker sees the driver's ``sys.path`` and environment as they were when *it* started.

    Hash salts: with ``forkserver`` every worker is forked from the one fork server, so all workers
    share the server's ``str`` hash salt (drawn when the server started, different from the
    driver's); with ``spawn`` each worker draws its own. ``PYTHONHASHSEED`` fixes all of them, but
    under forkserver only if it was set before the server started. Either way ``hash()`` must not
    decide where a key goes: partitioners use digests.
    """

    name = "processes"
    local = True
    reports_running = True  # futures turn running() when their attempt is sent to a worker
    enforces_timeouts = True  # settings.task_timeout: each worker's watchdog, and a backstop here

    def __init__(
        self,
        *,
        workers: int | None = None,
        task_timeout: float | None = None,
        start_method: str | None = None,
        runner: str = DEFAULT_RUNNER,
        prefetch: int = 4,
        shutdown_grace: float = 1.0,
    ) -> None:
        """Configure the executor; no process starts until the first submit or :meth:`warm_up`.

        Args:
            workers: number of worker processes (default ``os.cpu_count()``).
            task_timeout: a hard limit in seconds of wall-clock time per attempt, whatever its
                progress: a longer one has its worker killed and its future fails with WorkerLost.
                None (default) waits forever. The job's ``RetryPolicy.task_timeout`` (time
                *without progress*, a failed attempt) is separate and enforced in the workers.
            start_method: ``forkserver`` (default on Linux) or ``spawn`` (default elsewhere); see
                :func:`default_start_method`. ``fork`` is accepted but unsafe in a threaded driver.
            runner: import string of the function workers call, ``run(spec, worker=label)``.
            prefetch: how many extra small tasks may be sent ahead to a worker whose tasks are tiny
                (0 disables). Sent-ahead tasks can no longer be cancelled.
            shutdown_grace: seconds :meth:`shutdown` lets running tasks finish before killing them.

        Raises:
            ConfigError: for a bad value, naming the valid ones.
        """
        if workers is None:
            workers = os.cpu_count() or 1
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ConfigError(f"workers must be a positive integer, got {workers!r}")
        if task_timeout is not None and not task_timeout > 0:
            raise ConfigError(f"task_timeout must be > 0 seconds or None, got {task_timeout!r}")
        methods = multiprocessing.get_all_start_methods()
        start_method = start_method or default_start_method()
        if start_method not in methods:
            raise ConfigError(f"start_method must be one of {', '.join(methods)}; got {start_method!r}")
        split_runner(runner)
        if not isinstance(prefetch, int) or prefetch < 0:
            raise ConfigError(f"prefetch must be an integer >= 0, got {prefetch!r}")
        if not shutdown_grace >= 0:
            raise ConfigError(f"shutdown_grace must be >= 0 seconds, got {shutdown_grace!r}")

        self.workers = workers
        self.task_timeout = task_timeout
        self.start_method = start_method
        self.runner = runner
        self.prefetch = prefetch
        self.shutdown_grace = shutdown_grace
        self._ctx = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # Preload (in the fork server, once) what every worker imports anyway, keeping whatever
            # preload list is already set ('__main__' by default). This is process-global and only
            # takes effect if the server has not started yet; a running server is simply reused.
            import multiprocessing.forkserver as forkserver  # Unix only, hence imported here

            server = getattr(forkserver, "_forkserver", None)
            # '__main__' (multiprocessing's default) is left out on purpose: see _main_module_hidden.
            current = [m for m in getattr(server, "_preload_modules", []) if m != "__main__"]
            wanted = [__name__, "mrkit.execution.runtime"]
            self._ctx.set_forkserver_preload(current + [m for m in wanted if m not in current])

        # One lock guards everything below; it is never held while a future's callbacks run.
        self._lock = threading.Lock()
        self._ready_cv = threading.Condition(self._lock)
        self._queue: deque[_Item] = deque()  # submitted, not yet sent
        self._workers: list[_Worker] = []
        self._idle: list[_Worker] = []  # workers with nothing in flight (invariant: then _queue is empty)
        self._started = False
        self._closing = False
        self._broken = ""  # why workers cannot start, once known
        self._startup_failures = 0
        self._generation = 0  # bumped when the worker set changes, so the dispatcher rebuilds its wait list
        self._stop_at = 0.0  # shutdown: when stragglers get SIGTERM (and SIGKILL 0.5 s later)
        self._dispatcher: threading.Thread | None = None
        self._wake_r: Connection | None = None
        self._wake_w: Connection | None = None
        self._lifeline_r: Connection | None = None
        self._lifeline_w: Connection | None = None
        _LIVE.add(self)

    @classmethod
    def from_name(cls, name: str, *, workers: int | None = None, **options: Any) -> ProcessExecutor:
        """Build from the executor string ``processes`` (see :func:`mrkit.execution.base.open_executor`).

        Raises:
            ConfigError: when ``name`` is not ``processes`` or an option is bad.
        """
        if name != "processes":
            raise ConfigError(f"ProcessExecutor is selected by the name 'processes', got {name!r}")
        return cls(workers=workers, **options)

    # -- public API -----------------------------------------------------------------------------

    def live_progress(self) -> tuple[int, int]:
        """``(records, bytes)`` read so far by the map attempts running now, from the workers' beats.

        Beats come every :data:`~mrkit.execution.process_worker.BEAT_SECONDS`, so this lags by up
        to a second; finished attempts are not included (their counts come with their results).
        """
        with self._lock:
            live = [w.live for w in self._workers]
        return sum(r for r, _ in live), sum(b for _, b in live)

    def submit(self, spec: TaskSpec) -> Future[TaskResult]:
        """Queue one attempt; it runs on the first free worker.

        Args:
            spec: the attempt to run.

        Returns:
            A future of its :class:`TaskResult`; it raises :class:`WorkerLost` if the worker died or
            timed out, or the executor shut down first.

        Raises:
            RuntimeError: after :meth:`shutdown`.
            ConfigError: when workers cannot start (the runner cannot be imported).
        """
        future: Future[TaskResult] = Future()
        # Pickle in the caller's thread, outside the lock: the dispatcher only moves bytes.
        item = _Item(spec, future, pickle.dumps(spec, pickle.HIGHEST_PROTOCOL))
        with self._lock:
            if self._closing:
                raise RuntimeError("cannot submit to a ProcessExecutor after shutdown()")
            if self._broken:
                raise ConfigError(self._broken)
            if not self._started:
                self._start_locked()
            if self._idle:
                # Straight to an idle worker from this thread: no hop through the dispatcher.
                future.set_running_or_notify_cancel()
                item.running = True
                self._send_locked(self._idle.pop(), [item])
            else:
                self._queue.append(item)
        return future

    def warm_up(self, timeout: float | None = 60.0) -> None:
        """Start every worker now and wait until each has imported its runner.

        Args:
            timeout: seconds to wait (None: forever).

        Raises:
            RuntimeError: after :meth:`shutdown`.
            ConfigError: when the runner cannot be imported in a worker.
            WorkerLost: when the workers are not ready within ``timeout``.
        """
        with self._lock:
            if self._closing:
                raise RuntimeError("cannot warm up a ProcessExecutor after shutdown()")
            if not self._started:
                self._start_locked()
            ready = self._ready_cv.wait_for(
                lambda: self._broken or self._closing or all(w.ready for w in self._workers), timeout
            )
            if self._broken:
                raise ConfigError(self._broken)
            if not ready:
                raise WorkerLost(f"{self.workers} {self.start_method} workers did not start in {timeout} s")

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (empty before they start and after shutdown)."""
        with self._lock:
            return [w.pid for w in self._workers]

    def shutdown(self, wait: bool = True) -> None:
        """Stop the workers; queued attempts fail, running ones get ``shutdown_grace`` seconds.

        Each worker is sent a stop message after what it was sent, so it exits cleanly once its
        running task ends. Queued futures fail at once with ``WorkerLost("executor shut down …")``.
        Workers still running after ``shutdown_grace`` get SIGTERM, then SIGKILL 0.5 s later, and
        their futures fail the same way. Calling it again is harmless.

        Args:
            wait: block until every worker has exited (at most about ``shutdown_grace + 0.5`` s).
        """
        with self._lock:
            first = not self._closing
            self._closing = True
            queued = list(self._queue)
            self._queue.clear()
            if first and self._started:
                self._stop_at = time.monotonic() + self.shutdown_grace
                for w in self._workers:
                    try:
                        w.conn.send_bytes(STOP)
                    except OSError:
                        pass  # already dead; the dispatcher will see its sentinel
                self._wake_locked()
            self._ready_cv.notify_all()
        for item in queued:
            spec = item.spec
            _fail(item, f"executor shut down before task {spec.task_id} attempt {spec.attempt} started")
        dispatcher = self._dispatcher
        if wait and dispatcher is not None and dispatcher is not threading.current_thread():
            dispatcher.join()

    # -- starting workers (lock held) -----------------------------------------------------------

    def _start_locked(self) -> None:
        # All workers start together: Process.start() returns once the child exists (forkserver:
        # after one fork; spawn: after fork+exec), and they import and say hello in parallel.
        if self.start_method == "forkserver":
            _short_socket_dir()
        self._started = True
        self._wake_r, self._wake_w = multiprocessing.Pipe(duplex=False)
        # Every worker gets the read end; only this process ever holds the write end (spawn and
        # forkserver pass a child only the descriptors in its arguments), see _watch_driver().
        self._lifeline_r, self._lifeline_w = self._ctx.Pipe(duplex=False)
        for _ in range(self.workers):
            self._idle.append(self._start_worker_locked())
        self._ready_cv.notify_all()
        self._dispatcher = threading.Thread(target=self._dispatch, name="mrkit-dispatcher", daemon=True)
        self._dispatcher.start()

    def _start_worker_locked(self) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        # Not a daemon process: daemonic processes may not start children, and user code in a task
        # may well use multiprocessing. Our atexit hook stops workers before multiprocessing's own
        # hook would join them.
        process = self._ctx.Process(  # type: ignore[attr-defined]
            target=worker_main,
            name="mrkit-worker",
            args=(child_conn, self._lifeline_r, self.runner, list(sys.path), dict(os.environ)),
        )
        with _main_module_hidden():
            process.start()
        # Only the child may hold its end: if the parent kept it, a dead child would never read as EOF.
        child_conn.close()
        w = _Worker(process, parent_conn)
        self._workers.append(w)
        self._generation += 1
        return w

    # -- sending (lock held) ---------------------------------------------------------------------

    def _send_locked(self, w: _Worker, items: list[_Item]) -> None:
        if not w.inflight:
            w.head_since = time.monotonic()
        w.inflight.extend(items)
        try:
            send_all(w.conn, [item.data for item in items])
        except OSError:
            pass  # the worker died; its sentinel fires and _on_exit() settles these items

    def _refill_locked(self, w: _Worker) -> None:
        """Send queued tasks to ``w``: one to run, plus ``prefetch`` small ones if its tasks are tiny."""
        queue = self._queue
        batch: list[_Item] = []
        n = len(w.inflight)
        # Bytes sent ahead and probably still unread in the pipe: every in-flight task but the head.
        ahead = sum(len(item.data) for item in w.inflight) - len(w.inflight[0].data) if n else 0
        while queue:
            if n and (
                n > self.prefetch
                or w.last_seconds >= _PREFETCH_BELOW_SECONDS
                or ahead + len(queue[0].data) > _PREFETCH_MAX_BYTES
            ):
                break
            item = queue.popleft()
            if not item.running:
                if not item.future.set_running_or_notify_cancel():
                    continue  # cancelled while queued: never sent
                item.running = True
            if n:
                ahead += len(item.data)
            batch.append(item)
            n += 1
        if batch:
            self._send_locked(w, batch)
        elif not w.inflight:
            self._idle.append(w)

    def _wake_locked(self) -> None:
        if self._wake_w is not None:
            try:
                self._wake_w.send_bytes(b"!")
            except OSError:
                pass

    # -- the dispatcher thread ---------------------------------------------------------------------

    def _dispatch(self) -> None:
        try:
            self._dispatch_loop()
        except BaseException as exc:  # a bug here must not leave futures pending forever
            self._abort(f"the dispatcher thread of {self!r} crashed: {type(exc).__name__}: {exc}")
            raise
        finally:
            with self._lock:
                for conn in (self._wake_r, self._wake_w, self._lifeline_r, self._lifeline_w):
                    if conn is not None:
                        conn.close()
                self._wake_r = self._wake_w = self._lifeline_r = self._lifeline_w = None

    def _dispatch_loop(self) -> None:
        assert self._wake_r is not None
        wake_r = self._wake_r
        generation = -1
        by_object: dict[Any, _Worker] = {}
        objects: list[Any] = []
        while True:
            with self._lock:
                if not self._workers and (self._closing or self._broken):
                    return
                if generation != self._generation:
                    generation = self._generation
                    by_object = {}
                    for w in self._workers:
                        by_object[w.conn] = w
                        by_object[w.process.sentinel] = w
                    objects = [wake_r, *by_object]
                timeout = self._check_deadlines_locked()
            for obj in wait(objects, timeout):
                if obj is wake_r:
                    while wake_r.poll():
                        wake_r.recv_bytes()
                    continue
                w = by_object[obj]
                if w.gone:
                    continue
                if obj is w.conn:
                    try:
                        frames = w.reader.read()
                    except (EOFError, OSError):
                        self._on_exit(w)
                    else:
                        if frames:
                            self._on_messages(w, frames, refill=True)
                else:  # its sentinel: the process ended
                    self._on_exit(w)

    def _check_deadlines_locked(self) -> float | None:
        """Kill workers past their deadline; return how long the dispatcher may sleep.

        Two deadlines: the executor's own ``task_timeout`` (wall clock since the attempt started;
        the attempt is lost), and the backstop for attempts with ``settings.task_timeout``, which
        their worker's watchdog enforces: a worker that has sent nothing, not even a beat, for that
        timeout plus :data:`_SILENCE_GRACE` is stuck where its watchdog cannot run, and its attempt
        fails with a ``TaskTimeout`` like one its watchdog had ended.
        """
        now = time.monotonic()
        if self._closing:
            if now >= self._stop_at + 0.5:
                for w in self._workers:
                    w.kill_reason = w.kill_reason or "was still running at shutdown and was killed"
                    _kill(w)
                return 0.1
            if now >= self._stop_at:
                for w in self._workers:
                    w.kill_reason = w.kill_reason or "was still running at shutdown and was terminated"
                    w.process.terminate()
                return self._stop_at + 0.5 - now
            return self._stop_at - now
        # Waiting at most this long is enough even with no deadline yet: any task sent meanwhile
        # gets a deadline at least this far away, so nobody needs to wake us for it.
        timeout = self.task_timeout if self.task_timeout is not None else _SILENCE_GRACE
        for w in self._workers:
            if not (w.inflight and w.ready) or w.kill_reason or w.ending:
                continue
            if self.task_timeout is not None:
                left = w.head_since + self.task_timeout - now
                if left <= 0:
                    w.kill_reason = f"ran past task_timeout={self.task_timeout:g}s and was killed"
                    _kill(w)
                    continue
                timeout = min(timeout, left)
            watched = w.inflight[0].spec.settings.task_timeout
            if watched:
                left = max(w.head_since, w.last_heard) + watched + _SILENCE_GRACE - now
                if left <= 0:
                    from mrkit.execution.watchdog import timeout_failure

                    w.kill_reason = (
                        f"sent nothing for {watched + _SILENCE_GRACE:g} s while running an attempt with "
                        f"task_timeout={watched:g}s (stuck where its watchdog cannot run) and was killed"
                    )
                    w.kill_failure = timeout_failure(watched, "code that holds the GIL (no heartbeat)")
                    _kill(w)
                    continue
                timeout = min(timeout, left)
        return max(timeout, 0.01)

    def _on_messages(self, w: _Worker, frames: list[bytes], *, refill: bool) -> None:
        if not w.ready:
            self._on_hello(w, frames[0])
            frames = frames[1:]
            if not frames:
                return
        outcomes: list[tuple[Any, BaseException | None]] = []
        slowest = 0.0
        ending = False
        live = None
        for data in frames:
            if data[:1] == BEAT:  # a pickle never starts with b"B"
                if len(data) == 1 + BEAT_PROGRESS.size:
                    live = BEAT_PROGRESS.unpack_from(data, 1)
                continue
            live = (0, 0)  # a result: its counts now come with it, not from the beats
            try:
                seconds, result, *last = pickle.loads(data)
            except Exception as exc:
                outcomes.append((None, exc))
                slowest = float("inf")
            else:
                outcomes.append((result, None))
                slowest = max(slowest, seconds)
                ending = ending or bool(last)
        with self._lock:
            w.last_heard = time.monotonic()
            w.ending = w.ending or ending
            if live is not None:
                w.live = live
            done = [w.inflight.popleft() for _ in range(min(len(outcomes), len(w.inflight)))]
            if done:
                w.last_seconds = slowest
                if w.inflight:
                    w.head_since = time.monotonic()
                if refill and not w.gone and not w.ending:
                    self._refill_locked(w)
        # Outside the lock: callbacks run here and may call submit().
        for item, (result, error) in zip(done, outcomes, strict=False):
            if error is not None:
                item.future.set_exception(error)
            else:
                item.future.set_result(result)

    def _on_hello(self, w: _Worker, data: bytes) -> None:
        kind, detail = pickle.loads(data)
        with self._lock:
            if kind == "ready":
                w.ready = True
                self._startup_failures = 0
                if w.inflight:
                    w.head_since = time.monotonic()  # the clock of task_timeout starts now
                self._ready_cv.notify_all()
                return
        self._abort(f"a worker could not import its runner {self.runner!r}:\n{detail}", config=True)

    def _on_exit(self, w: _Worker) -> None:
        """A worker's process ended (or closed its pipe): settle its attempts, start a replacement."""
        # Results it managed to send before dying still count.
        # poll() first: read only what is there, even if a grandchild still holds the pipe open.
        try:
            while w.conn.poll():
                frames = w.reader.read()
                if frames:
                    self._on_messages(w, frames, refill=False)
        except (EOFError, OSError):
            pass
        # Programs its tasks started die with it. Before join(): until the worker is reaped its pid
        # cannot be reused, so the group id still names its group and no one else's.
        _kill_group(w.pid)
        w.process.join(timeout=2.0)
        if w.process.exitcode is None:  # it closed its pipe yet lives on: make it so
            _kill(w)
            w.process.join(timeout=2.0)
        description = _exit_description(w.process)
        lost: list[tuple[_Item, str]] = []
        failed: list[tuple[_Item, TaskFailure]] = []
        with self._lock:
            w.gone = True
            w.conn.close()
            self._workers.remove(w)
            if w in self._idle:
                self._idle.remove(w)
            self._generation += 1
            items = list(w.inflight)
            w.inflight.clear()
            if self._closing or self._broken:
                for item in items:
                    spec = item.spec
                    lost.append(
                        (
                            item,
                            f"executor shut down: task {spec.task_id} attempt {spec.attempt} "
                            f"on worker {w.label} {w.kill_reason or description}",
                        )
                    )
            else:
                if items and not w.ending:
                    # Only the head was running; the ones sent ahead never started: run them elsewhere.
                    # (A worker that said it was ending had answered its running attempt already.)
                    head = items.pop(0)
                    how = description
                    if w.kill_reason:
                        how = f"{w.kill_reason} (exit code {w.process.exitcode})"
                    if w.kill_failure is not None:
                        failed.append((head, w.kill_failure))
                    elif not w.kill_reason and w.ready and _ended_by_task(w.process.exitcode):
                        from mrkit.execution.watchdog import crash_failure

                        failed.append((head, crash_failure(f"worker {w.label} {description}")))
                    else:
                        lost.append(
                            (
                                head,
                                f"task {head.spec.task_id} attempt {head.spec.attempt} lost: "
                                f"worker {w.label} {how}",
                            )
                        )
                if items:
                    self._queue.extendleft(reversed(items))
                if not w.ready:
                    self._startup_failures += 1
                if self._startup_failures >= _MAX_STARTUP_FAILURES:
                    self._broken = (
                        f"{_MAX_STARTUP_FAILURES} workers in a row died before starting "
                        f"(last one {description}); not starting more"
                    )
                else:
                    self._refill_locked(self._start_worker_locked())
            try:
                w.process.close()
            except ValueError:
                pass
        for item, message in lost:
            _fail(item, message, worker=w.label)
        for item, failure in failed:
            spec = item.spec
            result = TaskResult(spec.task_id, spec.attempt, ok=False, worker=w.label, failure=failure)
            if item.running or item.future.set_running_or_notify_cancel():
                item.running = True
                item.future.set_result(result)
        if self._broken:
            self._abort(self._broken, config=True)

    def _abort(self, message: str, *, config: bool = False) -> None:
        """Give up: fail every queued and running attempt with ``message`` and kill every worker."""
        with self._lock:
            self._broken = self._broken or message
            items = list(self._queue)
            self._queue.clear()
            for w in self._workers:
                items.extend(w.inflight)
                w.inflight.clear()
                w.kill_reason = w.kill_reason or "was stopped"
                _kill(w)
            self._ready_cv.notify_all()
        for item in items:
            _fail(item, message, config=config)


def _ended_by_task(exitcode: int | None) -> bool:
    """True when a worker's exit is its task's doing (``os._exit(n)``, SIGSEGV, SIGABRT...).

    SIGKILL and SIGTERM come from outside (an operator, the OOM killer, a shutdown): the worker was
    lost, and the attempt does not count against ``max_attempts``.
    """
    return exitcode is not None and exitcode not in (-signal.SIGKILL, -signal.SIGTERM)


def _kill_group(pid: int) -> None:
    """SIGKILL the process group led by worker ``pid`` (its tasks' programs), if there is one."""
    if hasattr(os, "killpg"):
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)


def _kill(w: _Worker) -> None:
    """SIGKILL worker ``w`` and every process its tasks started."""
    with contextlib.suppress(ValueError, OSError):  # ValueError: its Process object is closed
        if w.process.exitcode is None:  # alive, so not reaped: its pid still names its group
            _kill_group(w.pid)
        w.process.kill()


def _fail(item: _Item, message: str, *, worker: str = "", config: bool = False) -> None:
    """Fail ``item``'s future unless it was cancelled while queued."""
    if not item.running and not item.future.set_running_or_notify_cancel():
        return
    item.running = True
    exc: Exception = (
        ConfigError(message)
        if config
        else WorkerLost(message, task_id=item.spec.task_id, attempt=item.spec.attempt, worker=worker)
    )
    item.future.set_exception(exc)


# Executors that may still have workers when the interpreter exits. A WeakSet, so registering does not
# keep an executor alive; a running one stays alive through its dispatcher thread anyway.
_LIVE: weakref.WeakSet[ProcessExecutor] = weakref.WeakSet()


def _shutdown_at_exit() -> None:
    # Bounded: shutdown() kills stragglers after shutdown_grace + 0.5 s, and we stop waiting for the
    # dispatcher a little after that. Runs before multiprocessing's own exit hook (registered when
    # multiprocessing.util was imported, earlier), which would otherwise join our workers forever.
    for executor in list(_LIVE):
        executor.shutdown(wait=False)
    for executor in list(_LIVE):
        dispatcher = executor._dispatcher
        if dispatcher is not None:
            dispatcher.join(timeout=executor.shutdown_grace + 2.0)
        for w in list(executor._workers):
            _kill(w)


atexit.register(_shutdown_at_exit)
