"""Run every task in the calling process, one at a time: the executor for debugging.

It still encodes and decodes every spec and result (STYLE 8), so a value that would not survive a
trip to a real worker fails here too, under a debugger, with a plain traceback.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from mrkit.execution.base import Executor
from mrkit.model.task import TaskResult, TaskSpec


class InlineExecutor(Executor):
    """Runs each task synchronously inside ``submit``; the returned future is already done."""

    name = "inline"
    workers = 1

    @classmethod
    def from_name(cls, name: str, *, workers: int | None = None, **options: Any) -> InlineExecutor:
        return cls()

    def submit(self, spec: TaskSpec) -> Future[TaskResult]:
        from mrkit.worker.runtime import run_task  # the far side; imported late to keep layers one-way

        future: Future[TaskResult] = Future()
        result = run_task(TaskSpec.decode(spec.encode()), worker="inline")
        future.set_result(TaskResult.decode(result.encode()))
        return future
