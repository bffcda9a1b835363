"""Parse an output part in a forked child while the caller consumes the part before it.

:func:`~mrkit.data.output.read_output` hands pairs out part by part. On the path users run (one
process runs a job, then reads its output back) the workers have exited by then and the reading
process is the only busy one: parsing part k+1 in a child while the caller consumes part k puts the
second core to work. Parsing is most of the cost of reading a part; taking the child's parse back
(one ``pickle.loads`` of the pairs) costs about a fifth of it.

A child is forked only where that is safe and pays:

* Linux with ``os.fork``, and this process runs exactly one thread
  (:func:`single_threaded`): a fork copies locks that other
  threads hold, so forking a multi-threaded process can deadlock the child;
* the part lives in local storage (a fork shares no socket or connection pool with the child);
* the part has between :data:`PREFETCH_MIN_BYTES` (below, the fork costs about what it saves) and
  :data:`PREFETCH_MAX_BYTES` (a prefetched part is held whole until it is consumed; larger parts
  are read block by block by the caller, as before, so memory stays bounded);
* the part is at least 1/256 of this process's resident memory: a fork copies the page tables, in
  time that grows with the memory mapped, so a notebook holding gigabytes forks only for parts
  large enough to repay it.

What the parent unpickles comes from a fork of itself through a pipe only the two of them hold:
nothing from a peer. A child that fails in any way (a corrupt part, a signal, a short write)
yields nothing, and the caller parses that part itself: errors are raised by the same code, with
the same sentence, as without a child.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
from collections.abc import Callable
from typing import Any

from mrkit.data.gc_pause import gc_paused

PREFETCH_MIN_BYTES = 1 << 20
PREFETCH_MAX_BYTES = 32 << 20


def can_prefetch(size: int, local: bool) -> bool:
    """True when a part of ``size`` bytes (in local storage when ``local``) may be read by a child."""
    if not (local and PREFETCH_MIN_BYTES <= size <= PREFETCH_MAX_BYTES and hasattr(os, "fork")):
        return False
    return single_threaded() and size * 256 >= resident_bytes()


def resident_bytes() -> int:
    """This process's resident memory in bytes (Linux ``/proc``; 0 where it cannot be read)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def single_threaded() -> bool:
    """True when this process runs exactly one thread, native threads included (Linux only).

    ``threading.active_count()`` does not see threads that C libraries start (BLAS pools, gRPC,
    a JVM); the kernel's task list does. Without ``/proc`` the answer is False: never guess.
    (The processes executor's fast start asks the same before it forks the driver.)
    """
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


class Prefetch:
    """A forked child running ``parse()``; :meth:`result` takes its pairs (or None) back.

    The child starts at once. Call :meth:`result` once, or :meth:`cancel` when the result is no
    longer wanted (the caller stopped reading): either reaps the child.
    """

    def __init__(self, parse: Callable[[], list[tuple[Any, Any]]]) -> None:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: parse, send, and leave without running the parent's exit handlers
            code = 1
            try:
                os.close(read_end)
                data = pickle.dumps(parse(), protocol=pickle.HIGHEST_PROTOCOL)
                with open(write_end, "wb") as out:
                    out.write(data)
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        self.pid = pid
        self._read_end = read_end

    def result(self) -> list[tuple[Any, Any]] | None:
        """The child's pairs, or None when it failed (then the caller parses the part itself)."""
        read_end, self._read_end = self._read_end, -1  # the file object below owns (and closes) it
        with open(read_end, "rb") as f:
            data = f.read()
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:  # reaped by someone else (SIGCHLD ignored, or a handler's waitpid)
            status = 0  # unknown: a short or empty write fails to unpickle below
        self.pid = 0
        if status != 0 or not data:
            return None
        try:
            with gc_paused():  # a list of fresh tuples: see mrkit.data.gc_pause
                pairs: list[tuple[Any, Any]] = pickle.loads(data)
        except Exception:  # a child cut short mid-write: the caller parses the part itself
            return None
        return pairs

    def cancel(self) -> None:
        """Stop the child and reap it (its result is not wanted)."""
        if not self.pid:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        if self._read_end >= 0:  # not yet handed to result()'s file object (interrupted there)
            os.close(self._read_end)
            self._read_end = -1
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        self.pid = 0
