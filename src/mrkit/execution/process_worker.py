"""The worker end of :class:`~mrkit.execution.processes.ProcessExecutor`, and the pipe protocol both
ends speak.

A worker process runs :func:`worker_main`: it says hello (``("ready", pid)`` or ``("error",
traceback)``), then runs the pickled :class:`~mrkit.model.task.TaskSpec`\\ s it reads from its pipe
with the runner (:func:`mrkit.execution.runtime.run_task` unless told otherwise) and answers each
with a pickled ``(seconds, result)`` — or ``(seconds, result, True)`` when its watchdog timed the
attempt out and the process is about to end. While a watched attempt runs it also sends
:data:`BEAT` frames. :data:`STOP` asks it to finish and exit. A daemon thread exits the worker as
soon as the driver is gone (the lifeline pipe), and every exit takes the worker's process group
along. Pickle is fine on this pipe: both ends are this program, and nobody else holds it.

A worker forked from the driver itself (the executor's fast start) first undoes what it inherited
(:func:`after_fork_from_driver`).

The parent side (dispatching, replacing dead workers, timeouts seen from outside) is in
:mod:`mrkit.execution.processes`; the two are changed together. About 410 lines: the protocol's
two ends (framing, the worker loop, its beats and exits) read together.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import pickle
import signal
import struct
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from mrkit.errors import ConfigError
from mrkit.model.task import TaskFailure, TaskResult, TaskSpec

# How often a worker checks that its parent process is still the same (see _watch_driver).
_PARENT_POLL_SECONDS = 1.0
STOP = b""  # parent -> worker: finish what you were sent, then exit
BEAT = b"B"  # worker -> parent: "still running Python" (never a pickle), while an attempt runs
# ...followed by the running map attempt's records and bytes read so far (runtime.live_progress):
# the cheapest channel for a progress bar that moves during long tasks.
BEAT_PROGRESS = struct.Struct("<QQ")
BEAT_SECONDS = 1.0

# --------------------------------------------------------------------------------------------------
# Framing
#
# Both ends read a pipe with one os.read() and split the bytes into messages themselves, instead of
# Connection.recv_bytes() (two reads per message); the parent also writes several tasks in one
# os.write(). Every system call releases and re-takes the GIL, which the submitting and waiting
# threads of the driver also want, so with tiny tasks system calls are most of the parent's cost;
# one read also collects several messages at once. The framing is the one Connection.send_bytes()
# writes (a 4-byte big-endian signed length, or -1 and an 8-byte length), so either side may still
# use the Connection methods. Windows pipes are handles, not file descriptors: there we do.
_RAW_IO = sys.platform != "win32"
_READ_SIZE = 1 << 18
_SHORT_HEADER = struct.Struct("!i")
_LONG_HEADER = struct.Struct("!Q")


def _frame(data: bytes) -> bytes:
    """``data`` with the length header Connection.send_bytes() would put before it."""
    if len(data) > 0x7FFFFFFF:
        return _SHORT_HEADER.pack(-1) + _LONG_HEADER.pack(len(data)) + data
    return _SHORT_HEADER.pack(len(data)) + data


def send_all(conn: Connection, messages: list[bytes]) -> None:
    """Send ``messages`` in order, with one write when possible."""
    if not _RAW_IO or len(messages) == 1:
        for data in messages:
            conn.send_bytes(data)
        return
    view = memoryview(b"".join(_frame(data) for data in messages))
    fd = conn.fileno()
    while view:
        view = view[os.write(fd, view) :]


class FrameReader:
    """Reads whole messages from a Connection, as many as one read returns."""

    __slots__ = ("conn", "fd", "buffer")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.fd = conn.fileno()
        self.buffer = bytearray()  # bytes read that do not make a whole message yet

    def read(self) -> list[bytes]:
        """Read once (blocking only while the pipe is empty); return the whole messages so far.

        Raises:
            EOFError: the other end is closed.
        """
        if not _RAW_IO:
            return [self.conn.recv_bytes()]
        chunk = os.read(self.fd, _READ_SIZE)
        if not chunk:
            raise EOFError
        buffer = self.buffer
        buffer += chunk
        frames: list[bytes] = []
        pos, end = 0, len(buffer)
        while end - pos >= 4:
            (size,) = _SHORT_HEADER.unpack_from(buffer, pos)
            start = pos + 4
            if size == -1:  # over 2 GiB: -1, then an 8-byte length
                if end - pos < 12:
                    break
                (size,) = _LONG_HEADER.unpack_from(buffer, start)
                start += 8
            if end - start < size:
                break
            frames.append(bytes(buffer[start : start + size]))
            pos = start + size
        del buffer[:pos]
        return frames


# --------------------------------------------------------------------------------------------------
# The worker side


@dataclass
class Messages:
    """What one read of a worker's pipe said (:func:`decode_messages`).

    Attributes:
        outcomes: one ``(result, None)`` per result frame, or ``(None, exc)`` for one that did not
            unpickle; in the order the attempts were sent.
        slowest: the longest of their run times (inf when one did not unpickle).
        ending: the worker said it sends nothing more (its watchdog ended an attempt).
        live: the running attempt's (records, bytes) from the last beat; ``(0, 0)`` after a result;
            None when nothing says.
    """

    outcomes: list[tuple[Any, BaseException | None]]
    slowest: float = 0.0
    ending: bool = False
    live: tuple[int, int] | None = None


def decode_messages(frames: list[bytes]) -> Messages:
    """Decode the frames a worker sent (results and beats), for the parent."""
    out = Messages([])
    for data in frames:
        if data[:1] == BEAT:  # a pickle never starts with b"B"
            if len(data) == 1 + BEAT_PROGRESS.size:
                out.live = BEAT_PROGRESS.unpack_from(data, 1)
            continue
        out.live = (0, 0)  # a result: its counts now come with it, not from the beats
        try:
            seconds, result, *last = pickle.loads(data)
        except Exception as exc:
            out.outcomes.append((None, exc))
            out.slowest = float("inf")
        else:
            out.outcomes.append((result, None))
            out.slowest = max(out.slowest, seconds)
            out.ending = out.ending or bool(last)
    return out


def resolve_runner(target: str) -> Callable[..., TaskResult]:
    """Import ``"package.module:function"`` and return the function.

    Raises:
        ConfigError: when ``target`` is not of the form ``module:attribute``.
        ImportError, AttributeError: when the module or attribute does not exist.
    """
    module_name, attr = split_runner(target)
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


def split_runner(target: str) -> tuple[str, str]:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"runner must be an import string 'package.module:function', got {target!r}")
    return module_name, attr


def _watch_driver(lifeline: Connection, parent_pid: int) -> None:
    # Runs in a daemon thread of the worker, so that a worker stuck in a long or hung task still
    # exits when the driver dies (an idle one also sees EOF on its task pipe). The lifeline is a
    # pipe whose only write end is in the driver: when the driver dies, the kernel closes it and
    # this read end reports EOF at once, whatever killed the driver. Watching getppid() alone is
    # not enough: under forkserver a worker's parent is the fork server, and the fork server stays
    # alive as long as any of its children does (each child holds its "alive" pipe), so neither
    # would ever go. getppid() is still checked, as a second signal, for drivers that forked and
    # left a copy of the lifeline's write end in some child. _end_worker() takes the worker's
    # process group along, so programs a task started do not outlive the driver either.
    while True:
        try:
            if wait([lifeline], _PARENT_POLL_SECONDS):
                _end_worker()  # EOF (or an error): the driver is gone; abandon the task
        except OSError:
            _end_worker()
        if os.getppid() != parent_pid:
            _end_worker()


def _end_worker() -> None:
    from mrkit.execution.watchdog import end_process  # the far side's helper; see worker_main

    end_process(70)


def _crash_result(spec: TaskSpec, label: str, exc: BaseException) -> TaskResult:
    """A result for an attempt whose runner raised (run_task should not, but a worker must answer)."""
    if isinstance(exc, (SystemExit, KeyboardInterrupt)):
        from mrkit.execution.watchdog import crash_failure

        failure = crash_failure(f"{type(exc).__name__}({exc}) was raised by the task")
    else:
        failure = TaskFailure(
            where=f"worker {label}",
            exc_type=type(exc).__name__,
            message=str(exc),
            traceback=traceback.format_exc(),
        )
    return TaskResult(spec.task_id, spec.attempt, ok=False, worker=label, failure=failure)


def _ignore_signal(signum: int, frame: object) -> None:
    pass


class _Reporter:
    """The worker's only way to write to its pipe, shared by three threads.

    The main thread sends each result; the watchdog thread (:mod:`mrkit.execution.watchdog`) sends a
    ``TaskTimeout`` result for an attempt stuck without progress, then ends the process; the beat
    thread sends :data:`BEAT` every :data:`BEAT_SECONDS` while a watched attempt runs. One lock
    keeps their frames whole, and ``current`` makes sure an attempt is answered exactly once: a
    timeout that fires while the main thread is sending the real result does nothing.
    """

    __slots__ = ("conn", "label", "lock", "current", "started")

    def __init__(self, conn: Connection, label: str) -> None:
        self.conn = conn
        self.label = label
        self.lock = threading.Lock()
        self.current: TaskSpec | None = None  # the attempt running now, until it is answered
        self.started = 0.0

    def begin(self, spec: TaskSpec) -> None:
        with self.lock:
            self.current, self.started = spec, time.perf_counter()

    def answer(self, spec: TaskSpec, payload: bytes) -> None:
        """Send the main thread's result for ``spec`` unless the watchdog already answered for it."""
        with self.lock:
            if self.current is not spec:
                return  # timed out meanwhile: the watchdog answered and is ending this process
            self.current = None
            self.conn.send_bytes(payload)

    def time_out(self, spec: TaskSpec, failure: TaskFailure) -> None:
        """Watchdog callback: answer ``spec`` with ``failure`` and a "this worker ends" flag, then end."""
        from mrkit.execution.watchdog import end_process

        with self.lock:
            if self.current is not spec:
                return  # it finished after all
            self.current = None
            seconds = time.perf_counter() - self.started
            result = TaskResult(
                spec.task_id, spec.attempt, ok=False, worker=self.label, seconds=seconds, failure=failure
            )
            with contextlib.suppress(OSError):
                self.conn.send_bytes(pickle.dumps((seconds, result, True), pickle.HIGHEST_PROTOCOL))
            # Still holding the lock: nothing else may be written before the process is gone.
            end_process()

    def beat_forever(self) -> None:
        # A beat says "this process still runs Python": if user code is stuck in C holding the GIL,
        # neither the watchdog nor this thread runs, and the parent ends the silent worker itself.
        # It also carries the records and bytes read so far, for the parent's progress bar.
        from mrkit.execution.runtime import live_progress

        while True:
            time.sleep(BEAT_SECONDS)
            with self.lock:
                if self.current is not None:
                    try:
                        self.conn.send_bytes(BEAT + BEAT_PROGRESS.pack(*live_progress()))
                    except OSError:
                        return


def after_fork_from_driver(inherited: Iterable[Any]) -> None:
    """Make a worker forked from the driver look like one started fresh (see the executor's fast start).

    * Closes ``inherited``: the driver's ends of pipes that only the driver may hold (the workers'
      lifeline, the dispatcher's wake-up pipe, the other workers' task pipes), so that EOF on them
      still means what the driver relies on. Closed through their objects, so that no finalizer
      closes the same number again after the kernel reused it.
    * Puts every Python signal handler the driver installed back to the default, and drops the
      driver's wake-up fd (an asyncio loop's): a forkserver child has neither.
    * Reseeds NumPy's global generator when the driver imported it: forked children would otherwise
      all draw the same "random" numbers (``random`` reseeds itself after a fork; NumPy does not).
    """
    for conn in inherited:
        with contextlib.suppress(OSError):
            conn.close()
    for signum in signal.valid_signals():
        handler = signal.getsignal(signum)
        if callable(handler) and handler is not signal.default_int_handler:
            with contextlib.suppress(OSError, ValueError):
                signal.signal(signum, signal.SIG_DFL)
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    np_random = sys.modules.get("numpy.random")
    if np_random is not None:
        with contextlib.suppress(Exception):
            np_random.seed()


def worker_main(
    conn: Connection,
    lifeline: Connection,
    runner: str,
    sys_path: list[str],
    environ: dict[str, str],
    inherited: Sequence[Connection] = (),
) -> None:
    """Body of a worker process: say hello, then run tasks from ``conn`` until told to stop.

    ``inherited``: for a worker forked from the driver itself (the executor's fast start), the
    driver's connections it inherited and must close (:func:`after_fork_from_driver`).
    """
    if inherited:
        after_fork_from_driver(inherited)
    # Its own process group, so that killing the group ends the programs its tasks started too
    # (subprocess.Popen in a mapper): see end_process() and ProcessExecutor._kill(). It also keeps
    # the terminal's Ctrl-C away from workers: the driver decides what happens to running tasks.
    if hasattr(os, "setpgrp"):
        os.setpgrp()
    # Ctrl-C may still be sent to a worker directly; ignore it. A no-op handler rather than SIG_IGN:
    # an ignored signal stays ignored across exec, so programs a task runs (subprocess) could not
    # be interrupted; a handler is reset to the default there.
    signal.signal(signal.SIGINT, _ignore_signal)
    # A forkserver child inherits the server's sys.path and environment, captured when the server
    # started (first use in this driver); use the driver's current ones, as spawn would.
    sys.path[:] = sys_path
    if dict(os.environ) != environ:
        os.environ.clear()
        os.environ.update(environ)
    watcher = threading.Thread(
        target=_watch_driver, args=(lifeline, os.getppid()), name="mrkit-watch", daemon=True
    )
    watcher.start()
    pid = os.getpid()
    label = f"pid:{pid}"
    try:
        run = resolve_runner(runner)
        # The worker side of this module: imported here, in the worker, not by the driver's module.
        from mrkit.execution.watchdog import watch
    except BaseException:
        conn.send_bytes(pickle.dumps(("error", traceback.format_exc())))
        return
    conn.send_bytes(pickle.dumps(("ready", pid)))
    reporter = _Reporter(conn, label)
    threading.Thread(target=reporter.beat_forever, name="mrkit-beat", daemon=True).start()
    reader, loads, dumps = FrameReader(conn), pickle.loads, pickle.dumps
    perf_counter = time.perf_counter
    protocol = pickle.HIGHEST_PROTOCOL
    pending: deque[bytes] = deque()  # tasks read but not yet run (several arrive together)
    while True:
        if not pending:
            try:
                pending.extend(reader.read())
            except (EOFError, OSError):
                return  # the driver is gone
            continue
        data = pending.popleft()
        if data == STOP:
            return
        spec = loads(data)
        reporter.begin(spec)
        started = perf_counter()
        try:
            with watch(spec, functools.partial(reporter.time_out, spec)):
                result = run(spec, worker=label)
        except BaseException as exc:  # SystemExit/KeyboardInterrupt from a task are its failure too
            result = _crash_result(spec, label, exc)
        # The worker times its own tasks: the parent's clock also counts its own delays, which grow
        # under load, and would switch prefetch off exactly when it helps most.
        seconds = perf_counter() - started
        try:
            payload = dumps((seconds, result), protocol)
        except Exception as exc:
            payload = dumps((seconds, _crash_result(spec, label, exc)), protocol)
        try:
            reporter.answer(spec, payload)
        except OSError:
            return  # the driver is gone
