"""Run every task in the calling process, one at a time: the executor for debugging.

It still encodes and decodes every spec and result (STYLE 8), so a value that would not survive a
trip to a real worker fails here too, under a debugger, with a plain traceback.

Timeouts: an attempt with ``settings.task_timeout`` is watched (:mod:`mrkit.execution.watchdog`, time
*without progress*). When it is stuck and runs in the main thread with Python's default Ctrl-C
handler, the watchdog sends that thread a SIGINT: the stuck Python code (or ``time.sleep``) is
interrupted and the attempt fails with ``TaskTimeout``, as on the other executors. Anywhere else
(another thread, a custom SIGINT handler, C code that ignores signals) inline cannot stop a stuck
attempt; use ``processes`` for untrusted or hanging code.
"""

from __future__ import annotations

import signal
import threading
from concurrent.futures import Future
from typing import Any

from mrkit.execution.base import Executor
from mrkit.model.task import TaskFailure, TaskResult, TaskSpec


class InlineExecutor(Executor):
    """Runs each task synchronously inside ``submit``; the returned future is already done."""

    name = "inline"
    workers = 1
    enforces_timeouts = True  # as far as it can: see the module docstring

    @classmethod
    def from_name(cls, name: str, *, workers: int | None = None, **options: Any) -> InlineExecutor:
        return cls()

    def live_progress(self) -> tuple[int, int]:
        """``(records, bytes)`` read so far by the attempt running now (for the progress bar's thread)."""
        from mrkit.execution.runtime import live_progress

        return live_progress()

    def submit(self, spec: TaskSpec) -> Future[TaskResult]:
        from mrkit.execution.runtime import run_task  # the far side; imported late to keep layers one-way
        from mrkit.execution.watchdog import watch

        future: Future[TaskResult] = Future()
        decoded = TaskSpec.decode(spec.encode())
        main = threading.current_thread() is threading.main_thread()
        interruptible = main and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        fired: list[TaskFailure] = []
        ident = threading.get_ident()

        def on_timeout(failure: TaskFailure) -> None:
            if interruptible:
                fired.append(failure)
                signal.pthread_kill(ident, signal.SIGINT)  # a real signal also ends a blocking sleep

        try:
            with watch(decoded, on_timeout):
                # Ctrl-C must stop the user's program here, so KeyboardInterrupt is not caught.
                result = run_task(decoded, worker="inline", catch_interrupt=False)
        except KeyboardInterrupt:
            if not fired:
                raise
            result = TaskResult(spec.task_id, spec.attempt, ok=False, worker="inline", failure=fired[0])
        future.set_result(TaskResult.decode(result.encode()))
        return future
