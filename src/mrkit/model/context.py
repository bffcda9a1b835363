"""The running task's context, for user functions: ``mrkit.context()``.

User functions of the function form have no ``self``; they read the job's ``params`` and bump
counters through the context of the task that calls them. Outside a task, ``context()`` raises.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

_local = threading.local()


@dataclass
class TaskContext:
    """What a user function may know about the attempt running it.

    Attributes:
        job_id, task_id, attempt: which attempt this is.
        params: the job's ``params``.
        counters: user counters of this attempt; reported as ``user.<name>`` in the job's counters.
    """

    job_id: str
    task_id: str
    attempt: int
    params: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)

    def increment(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to the user counter ``name`` (summed over the job's committed attempts)."""
        self.counters[name] = self.counters.get(name, 0) + amount


def context() -> TaskContext:
    """The context of the task attempt running the caller.

    Raises:
        RuntimeError: when called outside a running task.
    """
    ctx = getattr(_local, "ctx", None)
    if ctx is None:
        raise RuntimeError("mrkit.context() is only available inside a running map or reduce task")
    return ctx  # type: ignore[no-any-return]


@contextlib.contextmanager
def activate(ctx: TaskContext) -> Iterator[TaskContext]:
    """Make ``ctx`` the current context for the duration of the block."""
    previous = getattr(_local, "ctx", None)
    _local.ctx = ctx
    try:
        yield ctx
    finally:
        _local.ctx = previous
