"""End an attempt that makes no progress for ``task_timeout`` seconds, naming where it stopped.

Every host of :func:`mrkit.execution.runtime.run_task` (a process-pool worker, an HTTP worker's task
child, a Redis fleet worker, a Lambda handler) wraps the call in :func:`watch`::

    with watch(spec, on_timeout=report_and_exit):
        result = run_task(spec)

When ``spec.settings.task_timeout`` is set, one daemon thread per process samples the attempt's
position every ``min(1, timeout / 4)`` seconds. The timeout counts time *without progress*: a long
map task that keeps reading records is never abandoned, a mapper stuck on one record is. When it
expires, ``on_timeout(failure)`` is called from the watchdog thread with a
:class:`~mrkit.model.task.TaskFailure` (``exc_type="TaskTimeout"``, ``where`` = the record or key
being processed). ``on_timeout`` must end the attempt: report the failure, then end the process that
runs the user code (:func:`end_process`), since a Python thread cannot be stopped from outside. The
host's parent then replaces the process.

Why sample frames instead of counting records: a counter bumped per record costs every record of
every job; reading the running thread's frame (``sys._current_frames``) costs nothing until it is
sampled, and finds the exact record (the loop locals of ``map_split``) or key (``reduce_partition``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from mrkit.model.task import TaskFailure, TaskSpec

_MAP_FRAMES = ("map_split", "_map_whole_split")
_REDUCE_FRAME = "reduce_partition"


def timeout_failure(seconds: float, where: str = "") -> TaskFailure:
    """The failure of an attempt that made no progress for ``seconds`` (retryable: it may be load)."""
    return TaskFailure(
        where=where,
        exc_type="TaskTimeout",
        message=f"timed out after {seconds:g} s without progress (task_timeout)",
    )


def crash_failure(description: str, where: str = "") -> TaskFailure:
    """The failure of an attempt whose user code ended its own worker (``os._exit``, a signal...).

    Such an attempt counts against ``max_attempts`` like a raising function (a *poison* task), not as
    an infrastructure loss.
    """
    return TaskFailure(
        where=where, exc_type="WorkerCrashed", message=f"the task ended its worker: {description}"
    )


def position(thread_id: int) -> tuple[object, str]:
    """``(progress marker, description)`` of the attempt running in thread ``thread_id``.

    The marker changes whenever the attempt moves on (another record slice, another key); the
    description names the record (``/d/a.txt bytes 0-1048576, record 17 (byte 1234)``) or key.
    Both are empty-ish (``None``, ``""``) when the thread is in none of the known loops.
    """
    frame: Any = sys._current_frames().get(thread_id)
    while frame is not None:
        name = frame.f_code.co_name
        local = frame.f_locals
        try:
            if name == "map_split" and "batch" in local:
                return _map_position(local)
            if name == "_map_whole_split":
                counted = local.get("counted") or [0]
                return ("split", counted[0]), "mapper_split"
            if name == _REDUCE_FRAME:
                key = local.get("key")
                return ("reduce", local.get("keys")), f"reducer on key {_short(key)}"
        except Exception:  # a frame read mid-update: no position this time
            return None, ""
        frame = frame.f_back
    return None, ""


def _map_position(local: dict[str, Any]) -> tuple[object, str]:
    from mrkit.data.map_side import _index_of

    batch, lo, chunk, record = local["batch"], local.get("lo", 0), local.get("chunk"), local.get("record")
    index = lo + (_index_of(chunk, record) if chunk is not None else 0)
    marker = (id(batch), index)
    try:
        return marker, f"mapper on {batch.locate(index)}"
    except Exception:
        return marker, f"mapper on record {index} of its batch"


def _short(key: Any) -> str:
    text = repr(key)
    return text if len(text) <= 80 else text[:77] + "..."


class _Watch:
    __slots__ = ("spec", "thread_id", "timeout", "on_timeout", "marker", "since", "fired")

    def __init__(self, spec: TaskSpec, timeout: float, on_timeout: Callable[[TaskFailure], None]) -> None:
        self.spec = spec
        self.thread_id = threading.get_ident()
        self.timeout = timeout
        self.on_timeout = on_timeout
        self.marker: object = None
        self.since = time.monotonic()
        self.fired = False


class _Watchdog:
    """One daemon thread per process that checks every watched attempt."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._watches: dict[int, _Watch] = {}
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def add(self, w: _Watch) -> None:
        with self._lock:
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._loop, name="mrkit-watchdog", daemon=True)
                self._thread.start()
            self._watches[id(w)] = w
            self._wake.notify()

    def remove(self, w: _Watch) -> None:
        with self._lock:
            self._watches.pop(id(w), None)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._watches:
                    self._wake.wait()
                watches = list(self._watches.values())
            interval = min(1.0, min(w.timeout for w in watches) / 4)
            time.sleep(interval)
            now = time.monotonic()
            for w in watches:
                if w.fired:
                    continue
                marker, where = position(w.thread_id)
                if marker is not None and marker != w.marker:
                    w.marker, w.since = marker, now
                    continue
                if now - w.since >= w.timeout:
                    with self._lock:
                        if id(w) not in self._watches:
                            continue  # it finished meanwhile
                    w.fired = True
                    w.on_timeout(timeout_failure(w.timeout, where))


_WATCHDOG = _Watchdog()


@contextlib.contextmanager
def watch(spec: TaskSpec, on_timeout: Callable[[TaskFailure], None]) -> Iterator[None]:
    """Watch the attempt ``spec`` run in this thread while the block runs (nothing without a timeout).

    Args:
        spec: the attempt; ``spec.settings.task_timeout`` (seconds without progress) arms the watch.
        on_timeout: called once, from the watchdog thread, with the timeout failure; it must end
            the attempt (usually: report the failure, then :func:`end_process`).
    """
    timeout = spec.settings.task_timeout
    if not timeout:
        yield
        return
    w = _Watch(spec, timeout, on_timeout)
    _WATCHDOG.add(w)
    try:
        yield
    finally:
        _WATCHDOG.remove(w)


def end_process(code: int = 70) -> None:
    """End this process and every process it started in its process group, at once.

    User code may start grandchildren (``subprocess.Popen("sleep 600")``); when the host made this
    process a group leader (``os.setpgrp()`` at start), they go with it.
    """
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    if hasattr(os, "killpg") and os.getpgrp() == os.getpid():
        with contextlib.suppress(Exception):
            os.killpg(os.getpid(), signal.SIGKILL)  # this process included: nothing of the group survives
    os._exit(code)
