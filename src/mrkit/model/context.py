"""The running task's context, for user functions: ``mrkit.context()``.

User functions of the function form have no ``self``; they read the job's ``params`` and bump
counters through the context of the task that calls them. Outside a task, ``context()`` raises.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

_local = threading.local()


@dataclass(frozen=True)
class InputInfo:
    """Where the records of a map task come from: ``mrkit.context().input``.

    Attributes:
        path: the input file's path or URL as the job named it (after glob and folder expansion);
            ``""`` for in-memory records (``mrkit.Records``), which have no file.
        start: the byte offset in ``path`` where this task's split starts (a text split owns every
            line that starts in ``[start, start + length)``).
        length: the split's length in bytes; -1 means to the end of the file (a whole file, e.g. a
            compressed one).
        index: the split's position among the job's splits.

    A mapper that must tell its inputs apart (a reduce-side join of two data sets) reads ``path``,
    e.g. ``"rankings" in mrkit.context().input.path``. In a map task that reads several small files
    packed together (the default plan, :func:`mrkit.data.splits.pack_splits`), it describes the
    split being read at the moment.
    """

    path: str
    start: int = 0
    length: int = -1
    index: int = 0


@dataclass
class TaskContext:
    """What a user function may know about the attempt running it.

    Attributes:
        job_id, task_id, attempt: which attempt this is.
        params: the job's ``params``.
        counters: user counters of this attempt; reported as ``user.<name>`` in the job's counters.
        files: the job's side files (``Job(files=...)``), by base name; open them with :meth:`file`.
        input: in a map task, where its records come from (:class:`InputInfo`); None in a reduce task.
    """

    job_id: str
    task_id: str
    attempt: int
    params: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    files: Mapping[str, bytes] = field(default_factory=dict)
    input: InputInfo | None = None

    def file(self, name: str) -> str:
        """The local path of the job's side file ``name`` (its base name), on whatever worker runs us.

        The file is written once per content into a private temp folder of this machine and shared
        by later tasks; treat it as read-only.

        Raises:
            FileNotFoundError: the job ships no side file of that name (the message lists those it has).
        """
        data = self.files.get(name)
        if data is None:
            have = ", ".join(sorted(self.files)) or "none"
            raise FileNotFoundError(
                f"job {self.job_id} ships no side file {name!r} (it has: {have}); "
                "pass files=[...] to mrkit.Job or mrkit.run, or --file to mrkit run"
            )
        return _materialise(name, data)

    def increment(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to the user counter ``name`` (summed over the job's committed attempts)."""
        self.counters[name] = self.counters.get(name, 0) + amount


def _materialise(name: str, data: bytes) -> str:
    # Keyed by content, so tasks of the same job (and reruns) share one copy, and a job with a
    # different file of the same name never sees a stale one. Written under a temp name and renamed,
    # so that concurrent tasks on one machine never read a half-written file.
    digest = hashlib.sha256(data).hexdigest()[:32]
    folder = os.path.join(tempfile.gettempdir(), f"mrkit-files-{os.getuid()}", digest)
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        os.makedirs(folder, mode=0o700, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=folder, prefix=".part-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temp, path)
    return path


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
