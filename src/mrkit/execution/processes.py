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
  sends a beat every second; a worker silent for its timeout plus ``SILENCE_GRACE`` seconds (stuck
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

The worker end and the pipe framing are in :mod:`mrkit.execution.process_worker`; starting workers
safely in :mod:`~mrkit.execution.process_start`; the parent's handles on workers and the verdicts on
dead, silent and timed-out ones in :mod:`~mrkit.execution.process_handles`. This module (about 590
lines: the executor, its dispatcher thread and its lock, read together) is the parent side.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import multiprocessing.util  # imported before our atexit hook is registered, so ours runs first
import os
import pickle
import sys
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future
from multiprocessing.connection import Connection, wait
from typing import Any

from mrkit.data.prefetch import single_threaded
from mrkit.errors import ConfigError, WorkerLost
from mrkit.execution.base import Executor
from mrkit.execution.process_handles import (
    Item,
    WorkerHandle,
    check_deadlines,
    exit_description,
    fail_item,
    kill,
    kill_group,
    settle_attempts,
    stop_at_exit,
    stop_stragglers,
)
from mrkit.execution.process_start import (
    default_start_method,
    gc_frozen_for_fork,
    preload_in_forkserver,
    short_socket_dir,
    start_worker,
)
from mrkit.execution.process_worker import STOP, decode_messages, send_all, split_runner
from mrkit.model.task import TaskResult, TaskSpec

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


class ProcessExecutor(Executor):
    """Runs task attempts in a fixed number of local worker processes, replacing any that die.

    Example::

        with ProcessExecutor(workers=4, task_timeout=600) as executor:
            future = executor.submit(spec)
            result = future.result()        # TaskResult, or raises WorkerLost

    Workers start lazily, all at once, on the first ``submit`` (or eagerly with :meth:`start` or
    :meth:`warm_up`). Each worker sees the driver's ``sys.path`` and environment as they were when
    *it* started. How they start (and so their ``str`` hash salts) is :mod:`.process_start`'s
    contract; ``fast_started`` says whether the first ones were forked from the driver itself.
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
                Left to the default on Linux, the first workers are forked from the driver when it
                is single-threaded at that moment (the fast start); given, it is used for all.
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
        # The fast start (process_start) only when the user left the start method to us.
        fast_start = start_method is None and sys.platform.startswith("linux") and "fork" in methods
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
        self._fork_ctx = multiprocessing.get_context("fork") if fast_start else None
        self.fast_started = False  # whether the first workers were forked from this process
        if start_method == "forkserver":
            preload_in_forkserver(self._ctx, [__name__, "mrkit.execution.runtime"])

        # One lock guards everything below; it is never held while a future's callbacks run.
        self._lock = threading.Lock()
        self._ready_cv = threading.Condition(self._lock)
        self._queue: deque[Item] = deque()  # submitted, not yet sent
        self._workers: list[WorkerHandle] = []
        self._idle: list[WorkerHandle] = []  # nothing in flight (invariant: then _queue is empty)
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

    def start(self) -> None:
        """Start the workers now, not waiting for them (a no-op once started; see
        :meth:`Executor.start`). Raises RuntimeError after :meth:`shutdown`."""
        with self._lock:
            self._started_locked("start")

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
        item = Item(spec, future, pickle.dumps(spec, pickle.HIGHEST_PROTOCOL))
        with self._lock:
            self._started_locked("submit to")
            if self._broken:
                raise ConfigError(self._broken)
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
            self._started_locked("warm up")
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
            fail_item(item, f"executor shut down before task {spec.task_id} attempt {spec.attempt} started")
        dispatcher = self._dispatcher
        if wait and dispatcher is not None and dispatcher is not threading.current_thread():
            dispatcher.join()

    # -- starting workers (lock held) -----------------------------------------------------------

    def _started_locked(self, doing: str) -> None:
        """Start the workers unless they are (``doing``: what the caller was asked to do, for the
        message after :meth:`shutdown`, when this raises RuntimeError)."""
        if self._closing:
            raise RuntimeError(f"cannot {doing} a ProcessExecutor after shutdown()")
        if not self._started:
            self._start_locked()

    def _start_locked(self) -> None:
        # All workers start together: Process.start() returns once the child exists (forkserver:
        # after one fork; spawn: after fork+exec), and they import and say hello in parallel.
        # Checked before this method starts the dispatcher thread: a fork must see one thread.
        fork = self._fork_ctx is not None and single_threaded()
        self._started = True
        self._wake_r, self._wake_w = multiprocessing.Pipe(duplex=False)
        # Every worker gets the read end; only this process ever holds the write end (spawn and
        # forkserver pass a child only the descriptors in its arguments; a forked child closes
        # what it inherited), see _watch_driver().
        self._lifeline_r, self._lifeline_w = self._ctx.Pipe(duplex=False)
        with gc_frozen_for_fork() if fork else contextlib.nullcontext():
            for _ in range(self.workers):
                self._idle.append(self._start_worker_locked(fork=fork))
        self.fast_started = fork
        self._ready_cv.notify_all()
        self._dispatcher = threading.Thread(target=self._dispatch, name="mrkit-dispatcher", daemon=True)
        self._dispatcher.start()

    def _start_worker_locked(self, fork: bool = False) -> WorkerHandle:
        """Start one worker: forked from this process (``fork``, the fast start) or with the start
        method (every replacement of a dead worker: by then the dispatcher thread runs)."""
        ctx, driver_only = self._ctx, []
        if fork:
            assert self._fork_ctx and self._lifeline_w and self._wake_r and self._wake_w
            ctx = self._fork_ctx
            driver_only = [self._lifeline_w, self._wake_r, self._wake_w, *(w.conn for w in self._workers)]
        elif self.start_method == "forkserver":
            short_socket_dir()  # before the fork server first starts (cheap once it did)
        assert self._lifeline_r is not None
        w = WorkerHandle(*start_worker(ctx, self._lifeline_r, self.runner, driver_only))
        self._workers.append(w)
        self._generation += 1
        return w

    # -- sending (lock held) ---------------------------------------------------------------------

    def _send_locked(self, w: WorkerHandle, items: list[Item]) -> None:
        if not w.inflight:
            w.head_since = time.monotonic()
        w.inflight.extend(items)
        try:
            send_all(w.conn, [item.data for item in items])
        except OSError:
            pass  # the worker died; its sentinel fires and _on_exit() settles these items

    def _refill_locked(self, w: WorkerHandle) -> None:
        """Send queued tasks to ``w``: one to run, plus ``prefetch`` small ones if its tasks are tiny."""
        queue = self._queue
        batch: list[Item] = []
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
        by_object: dict[Any, WorkerHandle] = {}
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
        """Kill workers past their deadline (:func:`check_deadlines`; at shutdown, the stragglers);
        return how long the dispatcher may sleep."""
        if self._closing:
            return stop_stragglers(self._workers, self._stop_at)
        return check_deadlines(self._workers, self.task_timeout)

    def _on_messages(self, w: WorkerHandle, frames: list[bytes], *, refill: bool) -> None:
        if not w.ready:
            self._on_hello(w, frames[0])
            frames = frames[1:]
            if not frames:
                return
        said = decode_messages(frames)
        outcomes = said.outcomes
        with self._lock:
            w.last_heard = time.monotonic()
            w.ending = w.ending or said.ending
            if said.live is not None:
                w.live = said.live
            done = [w.inflight.popleft() for _ in range(min(len(outcomes), len(w.inflight)))]
            if done:
                w.last_seconds = said.slowest
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

    def _on_hello(self, w: WorkerHandle, data: bytes) -> None:
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

    def _on_exit(self, w: WorkerHandle) -> None:
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
        kill_group(w.pid)
        w.process.join(timeout=2.0)
        if w.process.exitcode is None:  # it closed its pipe yet lives on: make it so
            kill(w)
            w.process.join(timeout=2.0)
        description = exit_description(w.process)
        with self._lock:
            w.gone = True
            w.conn.close()
            self._workers.remove(w)
            if w in self._idle:
                self._idle.remove(w)
            self._generation += 1
            lost, failed, items = settle_attempts(
                w, description, shutting_down=bool(self._closing or self._broken)
            )
            if not (self._closing or self._broken):
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
            fail_item(item, message, worker=w.label)
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
                kill(w)
            self._ready_cv.notify_all()
        for item in items:
            fail_item(item, message, config=config)


# Executors that may still have workers when the interpreter exits. A WeakSet, so registering does not
# keep an executor alive; a running one stays alive through its dispatcher thread anyway.
_LIVE: weakref.WeakSet[ProcessExecutor] = weakref.WeakSet()


# Runs before multiprocessing's own exit hook (registered when multiprocessing.util was imported,
# earlier), which would otherwise join our workers forever.
atexit.register(stop_at_exit, _LIVE)
