"""The processes executor's handles on its workers and their attempts, and how a worker's end is judged.

Seen from the parent (:class:`~mrkit.execution.processes.ProcessExecutor`): an :class:`Item` is one
submitted attempt; a :class:`WorkerHandle` is one worker process with the attempts sent to it. When
a worker ends, :func:`settle_attempts` says what becomes of them: the running one *failed* (its task
ended the process, or its watchdog could not run) or was *lost* (killed from outside: it does not
count against ``max_attempts``), and the ones sent ahead never started and run elsewhere.
:func:`check_deadlines` kills workers past a deadline. The executor holds its lock around both.
:func:`stop_at_exit` stops every executor's workers as the interpreter exits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Any

from mrkit.errors import ConfigError, WorkerLost
from mrkit.execution.process_worker import FrameReader
from mrkit.model.task import TaskFailure, TaskResult, TaskSpec

# The parent ends a worker whose watched attempt (settings.task_timeout) has sent no beat for its
# timeout plus this long: its watchdog thread cannot run (C code holding the GIL), so nobody else will.
SILENCE_GRACE = 5.0


class Item:
    """One submitted attempt: its spec, its future and its pickle (made in the submitting thread)."""

    __slots__ = ("spec", "future", "data", "running")

    def __init__(self, spec: TaskSpec, future: Future[TaskResult], data: bytes) -> None:
        self.spec = spec
        self.future = future
        self.data = data
        self.running = False  # set_running_or_notify_cancel() succeeded: it can no longer be cancelled


class WorkerHandle:
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
        self.inflight: deque[Item] = deque()  # sent, in order; the head is the one running
        self.ready = False  # its hello arrived
        self.head_since = 0.0  # when the head of `inflight` started (as far as the parent can tell)
        self.last_seconds = float("inf")  # its slowest task of the last batch, for the prefetch decision
        self.kill_reason = ""  # why the parent killed it, when it did
        self.kill_failure: TaskFailure | None = None  # ...when that makes its attempt a failed one
        self.ending = False  # it said its last result is sent (a timeout): it runs nothing more
        self.last_heard = 0.0  # when its last message arrived (results and beats)
        self.live = (0, 0)  # records, bytes read so far by its running attempt (its last beat)
        self.gone = False


def exit_description(process: Any) -> str:
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


def ended_by_task(exitcode: int | None) -> bool:
    """True when a worker's exit is its task's doing (``os._exit(n)``, SIGSEGV, SIGABRT...).

    SIGKILL and SIGTERM come from outside (an operator, the OOM killer, a shutdown): the worker was
    lost, and the attempt does not count against ``max_attempts``.
    """
    return exitcode is not None and exitcode not in (-signal.SIGKILL, -signal.SIGTERM)


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by worker ``pid`` (its tasks' programs), if there is one."""
    if hasattr(os, "killpg"):
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)


def kill(w: WorkerHandle) -> None:
    """SIGKILL worker ``w`` and every process its tasks started."""
    with contextlib.suppress(ValueError, OSError):  # ValueError: its Process object is closed
        if w.process.exitcode is None:  # alive, so not reaped: its pid still names its group
            kill_group(w.pid)
        w.process.kill()


def fail_item(item: Item, message: str, *, worker: str = "", config: bool = False) -> None:
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


def settle_attempts(
    w: WorkerHandle, description: str, *, shutting_down: bool
) -> tuple[list[tuple[Item, str]], list[tuple[Item, TaskFailure]], list[Item]]:
    """What the attempts of the ended worker ``w`` become: ``(lost, failed, to_run_again)``.

    While the executor shuts down (or gave up), every attempt is lost with "executor shut down".
    Only the head of ``w.inflight`` was running; the ones sent ahead never started and run again
    elsewhere. The head *failed* when the parent killed it with a verdict (a silent watched attempt),
    or when its own task ended the process (:func:`ended_by_task`); otherwise it was *lost* (killed
    from outside, or by the executor's own ``task_timeout``). A worker that said it was ending had
    answered its running attempt already. Empties ``w.inflight``.
    """
    items = list(w.inflight)
    w.inflight.clear()
    lost: list[tuple[Item, str]] = []
    failed: list[tuple[Item, TaskFailure]] = []
    if shutting_down:
        for item in items:
            spec, why = item.spec, w.kill_reason or description
            said = f"executor shut down: task {spec.task_id} attempt {spec.attempt} on worker {w.label} {why}"
            lost.append((item, said))
        return lost, failed, []
    if items and not w.ending:
        head = items.pop(0)
        how = description
        if w.kill_reason:
            how = f"{w.kill_reason} (exit code {w.process.exitcode})"
        if w.kill_failure is not None:
            failed.append((head, w.kill_failure))
        elif not w.kill_reason and w.ready and ended_by_task(w.process.exitcode):
            from mrkit.execution.watchdog import crash_failure

            failed.append((head, crash_failure(f"worker {w.label} {description}")))
        else:
            lost.append(
                (head, f"task {head.spec.task_id} attempt {head.spec.attempt} lost: worker {w.label} {how}")
            )
    return lost, failed, items


def check_deadlines(workers: list[WorkerHandle], task_timeout: float | None) -> float:
    """Kill the workers past a deadline; return how long the dispatcher may sleep.

    Two deadlines: the executor's own ``task_timeout`` (wall clock since the attempt started; the
    attempt is lost), and the backstop for attempts with ``settings.task_timeout``, which their
    worker's watchdog enforces: a worker that has sent nothing, not even a beat, for that timeout
    plus :data:`SILENCE_GRACE` is stuck where its watchdog cannot run, and its attempt fails with a
    ``TaskTimeout`` like one its watchdog had ended.
    """
    now = time.monotonic()
    # Waiting at most this long is enough even with no deadline yet: any task sent meanwhile
    # gets a deadline at least this far away, so nobody needs to wake us for it.
    timeout = task_timeout if task_timeout is not None else SILENCE_GRACE
    for w in workers:
        if not (w.inflight and w.ready) or w.kill_reason or w.ending:
            continue
        if task_timeout is not None:
            left = w.head_since + task_timeout - now
            if left <= 0:
                w.kill_reason = f"ran past task_timeout={task_timeout:g}s and was killed"
                kill(w)
                continue
            timeout = min(timeout, left)
        watched = w.inflight[0].spec.settings.task_timeout
        if watched:
            left = max(w.head_since, w.last_heard) + watched + SILENCE_GRACE - now
            if left <= 0:
                from mrkit.execution.watchdog import timeout_failure

                w.kill_reason = (
                    f"sent nothing for {watched + SILENCE_GRACE:g} s while running an attempt with "
                    f"task_timeout={watched:g}s (stuck where its watchdog cannot run) and was killed"
                )
                w.kill_failure = timeout_failure(watched, "code that holds the GIL (no heartbeat)")
                kill(w)
                continue
            timeout = min(timeout, left)
    return max(timeout, 0.01)


def stop_stragglers(workers: list[WorkerHandle], stop_at: float) -> float:
    """At shutdown: terminate the workers still running at ``stop_at`` (the grace's end), kill them
    half a second later; return how long the dispatcher may sleep."""
    now = time.monotonic()
    if now >= stop_at + 0.5:
        for w in workers:
            w.kill_reason = w.kill_reason or "was still running at shutdown and was killed"
            kill(w)
        return 0.1
    if now >= stop_at:
        for w in workers:
            w.kill_reason = w.kill_reason or "was still running at shutdown and was terminated"
            w.process.terminate()
        return stop_at + 0.5 - now
    return stop_at - now


def stop_at_exit(executors: Iterable[Any]) -> None:
    """Stop every worker of ``executors`` (each a ``ProcessExecutor``) as the interpreter exits.

    Bounded: ``shutdown()`` kills stragglers after ``shutdown_grace`` + 0.5 s, and the wait for each
    dispatcher thread ends a little after that.
    """
    live = list(executors)
    for executor in live:
        executor.shutdown(wait=False)
    for executor in live:
        dispatcher = executor._dispatcher
        if dispatcher is not None:
            dispatcher.join(timeout=executor.shutdown_grace + 2.0)
        for w in list(executor._workers):
            kill(w)
