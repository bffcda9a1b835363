"""The task processes of an HTTP worker: user code runs here, never in the server itself.

An HTTP worker (:mod:`mrkit.backends.http.server`) hands each task to a child process of its own, a
*task process*, and relays the result. A task process is a process group leader, is reused for
task after task (the job's code is unpickled once per process), and can be ended and replaced
without losing the server, its port or its connections. That is what makes these cases
recoverable:

* **No progress for ``task_timeout`` s**: :func:`mrkit.execution.watchdog.watch` fires in the task
  process, which writes a ``TaskTimeout`` result naming the record, then ends its process group.
  The server relays the result (a *failed* attempt, counted against ``max_attempts``) and starts a
  new task process for the next task.
* **User code ended its process** (``os._exit(3)``, a segfault, ``SystemExit``): the server answers a
  ``WorkerCrashed`` failure naming the exit code, signal or exception (counted against
  ``max_attempts``: a task that does it every time is a poison task).
* **The task process was killed from outside** (SIGKILL, SIGTERM: the OOM killer, an operator) or
  stopped (SIGSTOP) for :data:`STOPPED_GRACE` s: the attempt is *lost* (:class:`TaskLost`); the
  driver retries it without charging the user's attempts (bounded by ``max_lost``).
* **The server dies**: each task process holds the read end of a pipe whose only write end is in
  the server; the kernel closes it when the server dies, for whatever reason, and a thread of the
  task process then ends its process group at once, so nothing of an abandoned attempt runs on.

Wire format between the two, over private pipes (stdout and stderr stay the user's): frames of an
8-byte big-endian length and a payload; the first frame to the child is a JSON config
``{"label", "sys_path"}``, then each request is ``TaskSpec.encode()`` and each answer
``TaskResult.encode()``.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import struct
import subprocess
import sys
import threading
import time

from mrkit.execution.watchdog import crash_failure, end_process, watch
from mrkit.model.task import TaskFailure, TaskResult, TaskSpec

STOPPED_GRACE = 1.0  # seconds a task process may stay stopped (SIGSTOP) before the attempt is lost
_POLL = 0.25
# Signals that come from outside the task (an operator, the OOM killer, a supervisor): lost, not failed.
_OUTSIDE_SIGNALS = (signal.SIGKILL, signal.SIGTERM)
_LENGTH = struct.Struct(">Q")


class TaskLost(Exception):
    """The task process vanished for a reason outside the task; the attempt's outcome is unknown."""


def _write_frame(fd: int, payload: bytes) -> None:
    data = memoryview(_LENGTH.pack(len(payload)) + payload)
    while data:
        data = data[os.write(fd, data) :]


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int) -> bytes | None:
    """One frame's payload, or None at end-of-file."""
    head = _read_exact(fd, _LENGTH.size)
    if head is None:
        return None
    return _read_exact(fd, _LENGTH.unpack(head)[0])


def _describe_signal(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _stopped(pid: int) -> bool:
    """True when ``pid`` is stopped (SIGSTOP, a debugger); False when unknown (no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IndexError):
        return False


class TaskProcess:
    """One task process as the server sees it; runs one task at a time (:meth:`run`).

    Args:
        label: the worker label reported in results (``host:port``).
        sys_path: the task process's ``sys.path`` (the server's, so jobs pickled by reference import).

    Raises:
        OSError: the interpreter could not be started.
    """

    def __init__(self, label: str, sys_path: list[str]) -> None:
        self.label = label
        req_r, self._req_w = os.pipe()
        self._res_r, res_w = os.pipe()
        life_r, self._life_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mrkit.backends.http.tasks", str(req_r), str(res_w), str(life_r)],
                stdin=subprocess.DEVNULL,
                pass_fds=(req_r, res_w, life_r),
                close_fds=True,
                # Its own session, so its own process group: end_process() then takes the user's
                # grandchildren with it, and the terminal's Ctrl-C (meant for the server or the
                # driver) does not reach it. (process_group=0 needs Python 3.11.)
                start_new_session=True,
            )
        except BaseException:
            for fd in (self._req_w, self._res_r, self._life_w):
                os.close(fd)
            raise
        finally:
            for fd in (req_r, res_w, life_r):
                os.close(fd)
        self.dead = False
        with contextlib.suppress(OSError):  # it died at once: run() reports how
            _write_frame(self._req_w, json.dumps({"label": label, "sys_path": sys_path}).encode())

    def run(self, spec: TaskSpec) -> TaskResult:
        """Run ``spec`` in this process and return its result.

        A timed-out attempt and one whose user code ended the process come back as failed results
        (``TaskTimeout``, ``WorkerCrashed``); the process is then dead (:attr:`dead`).

        Raises:
            TaskLost: the process was killed from outside or stopped for :data:`STOPPED_GRACE` s.
        """
        try:
            _write_frame(self._req_w, spec.encode())
        except OSError:
            pass  # it is gone: the answer's end-of-file says how
        payload = self._await_answer()
        if payload is None:
            self.dead = True
            return self._ended(spec)
        result = TaskResult.decode(payload)
        if result.failure is not None and result.failure.exc_type in ("TaskTimeout", "WorkerCrashed"):
            self.close()  # it ends itself after reporting; make sure, and reap it
        return result

    def _await_answer(self) -> bytes | None:
        stopped_since: float | None = None
        with selectors.DefaultSelector() as selector:
            selector.register(self._res_r, selectors.EVENT_READ)
            while not selector.select(_POLL):
                if _stopped(self.proc.pid):
                    now = time.monotonic()
                    stopped_since = stopped_since or now
                    if now - stopped_since >= STOPPED_GRACE:
                        self.close()
                        raise TaskLost(f"its task process was stopped for {STOPPED_GRACE:g}s (SIGSTOP?)")
                else:
                    stopped_since = None
        return _read_frame(self._res_r)

    def _ended(self, spec: TaskSpec) -> TaskResult:
        try:
            code = self.proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:  # it closed the pipe yet lives on: end it
            self.close()
            code = self.proc.returncode
        self.close()
        if code < 0 and -code in _OUTSIDE_SIGNALS:
            raise TaskLost(f"its task process was killed by {_describe_signal(-code)}")
        how = f"was killed by {_describe_signal(-code)}" if code < 0 else f"exited with code {code}"
        return TaskResult(
            spec.task_id,
            spec.attempt,
            ok=False,
            worker=self.label,
            failure=crash_failure(f"its process {how}"),
        )

    def close(self) -> None:
        """End the task process and its process group (idempotent)."""
        self.dead = True
        for fd in (self._req_w, self._res_r, self._life_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._req_w = self._res_r = self._life_w = -1
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5.0)


class TaskProcesses:
    """The server's task processes: an idle one is reused, a dead one replaced, more started on demand.

    Args:
        label: the worker label reported in results.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self._lock = threading.Lock()
        self._idle: list[TaskProcess] = []
        self._all: set[TaskProcess] = set()
        self._closed = False

    def prestart(self) -> None:
        """Start one task process now, so that the first task does not wait for an interpreter."""
        self._release(self._acquire())

    def run(self, spec: TaskSpec) -> TaskResult:
        """Run ``spec`` in an idle task process (started if none is idle).

        Raises:
            TaskLost: see :meth:`TaskProcess.run`.
            OSError: no task process could be started.
        """
        process = self._acquire()
        try:
            return process.run(spec)
        finally:
            self._release(process)

    def _acquire(self) -> TaskProcess:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        process = TaskProcess(self.label, [p for p in sys.path if isinstance(p, str)])
        with self._lock:
            self._all.add(process)
        return process

    def _release(self, process: TaskProcess) -> None:
        with self._lock:
            if process.dead or self._closed:
                self._all.discard(process)
            else:
                self._idle.append(process)
                return
        process.close()

    def close(self) -> None:
        """End every task process, idle or running."""
        with self._lock:
            self._closed = True
            processes = list(self._all)
            self._all.clear()
            self._idle.clear()
        for process in processes:
            process.close()


# --------------------------------------------------------------------------------------------------
# The task process itself


def _end_with_server(life_fd: int) -> None:
    # Daemon thread: the server holds the only write end of this pipe. End-of-file means it is gone
    # (it died, or closed us): end this process group now, mid-task or not.
    def wait() -> None:
        with contextlib.suppress(OSError):
            while os.read(life_fd, 1):
                pass
        end_process(0)

    threading.Thread(target=wait, name="mrkit-task-lifeline", daemon=True).start()


def main(argv: list[str]) -> int:
    """Entry point of a task process (internal): ``python -m mrkit.backends.http.tasks REQ RES LIFE``."""
    req_fd, res_fd, life_fd = (int(a) for a in argv[:3])
    for fd in (req_fd, res_fd, life_fd):
        os.set_inheritable(fd, False)  # user subprocesses must not hold our pipes open
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server's to handle; it ends us by closing the pipe
    _end_with_server(life_fd)
    # Import what the first task would before reading the config, so the first task is not the slow one.
    import cloudpickle  # noqa: F401

    import mrkit.data.readers  # noqa: F401
    from mrkit.execution.runtime import run_task

    config = _read_frame(req_fd)
    if config is None:
        return 0
    settings = json.loads(config)
    sys.path[:] = settings["sys_path"]
    label = settings["label"]

    answer_lock = threading.Lock()

    def answer(result: TaskResult) -> None:
        with answer_lock:
            _write_frame(res_fd, result.encode())

    while True:
        payload = _read_frame(req_fd)
        if payload is None:
            return 0
        spec = TaskSpec.decode(payload)

        def on_timeout(failure: TaskFailure, spec: TaskSpec = spec) -> None:
            with contextlib.suppress(Exception):
                answer(TaskResult(spec.task_id, spec.attempt, ok=False, worker=label, failure=failure))
            end_process()

        try:
            with watch(spec, on_timeout):
                result = run_task(spec, worker=label)
        except (SystemExit, KeyboardInterrupt) as exc:
            # User code asked this process to end (run_task may already report these as failures).
            what = (
                f"{type(exc).__name__}({exc.code!r})" if isinstance(exc, SystemExit) else type(exc).__name__
            )
            answer(
                TaskResult(
                    spec.task_id,
                    spec.attempt,
                    ok=False,
                    worker=label,
                    failure=crash_failure(f"it raised {what}"),
                )
            )
            end_process(0)
        answer(result)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
