"""Parse output parts in a forked child, block by block, while the caller consumes what came before.

:func:`~mrkit.data.output.read_output` hands pairs out in order. On the path users run (one process
runs a job, then reads its output back) the workers have exited by then and the reading process is
the only busy one: a child that parses the rest of the output while the caller consumes its first
block puts a second core to work. Parsing is most of the cost of reading; taking a parsed block
back (one ``pickle.loads`` of its keys and values as two lists) costs about a seventh of it.

:class:`ReadAhead` is the mechanism: a forked child runs a producer of items (here: one per parsed
block) and streams them back over a pipe, in order, then an end marker. The child's main thread
produces; a second thread writes to the pipe, so parsing goes on while the caller is busy with
what it already has. At most :data:`QUEUE_ITEMS` items wait in the child, so its memory stays
bounded however large the output is and however slowly the caller reads.

A child is forked only where that is safe and pays (:func:`can_prefetch`):

* Linux with ``os.fork``, and this process runs exactly one thread
  (:func:`single_threaded`): a fork copies locks that other threads hold, so forking a
  multi-threaded process can deadlock the child;
* the parts live in local storage (a fork shares no socket or connection pool with the child);
* at least :data:`PREFETCH_MIN_BYTES` are left to read (below, the fork costs about what it saves)
  and at least 1/256 of this process's resident memory: a fork copies the page tables, in time
  that grows with the memory mapped, so a notebook holding gigabytes forks only for outputs large
  enough to repay it.

What the parent unpickles comes from a fork of itself through a pipe only the two of them hold:
nothing from a peer. A child that fails in any way (a corrupt block, a signal, a short write) ends
its stream without the end marker; the caller then reads on by itself from the last item it took,
so errors are raised by the same code, with the same sentence, as without a child.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import signal
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from mrkit.data.gc_pause import gc_paused

PREFETCH_MIN_BYTES = 1 << 20
QUEUE_ITEMS = 32  # items parsed ahead and waiting in the child (one 1 MiB block each: ~40 MB at most)
_LEN = struct.Struct("<Q")
_END = 0  # a zero length: the producer ran to its end


def can_prefetch(size: int, local: bool) -> bool:
    """True when ``size`` bytes left to read (in local storage when ``local``) may go to a child."""
    if not (local and size >= PREFETCH_MIN_BYTES and hasattr(os, "fork")):
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


class ReadAhead:
    """A forked child running ``produce()``; :meth:`items` hands its items back, in order.

    The child starts at once. Iterate :meth:`items` (once), then read :attr:`complete`: True when
    the child sent every item ``produce()`` yielded, False when it stopped short (the producer
    raised, the child was killed, a write was cut): the caller then goes on by itself from the last
    item it took. Call :meth:`cancel` when the items are no longer wanted; it kills and reaps the
    child (after a complete read it only reaps).
    """

    def __init__(self, produce: Callable[[], Iterable[Any]]) -> None:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns, and never runs the parent's exit handlers
            os.close(read_end)
            _child_main(produce, write_end)
        os.close(write_end)
        self.pid = pid
        self.complete = False
        self._read_end = read_end

    def items(self) -> Iterator[Any]:
        """The child's items in order; ends early, with :attr:`complete` False, if the child failed."""
        read_end, self._read_end = self._read_end, -1  # the file object below owns (and closes) it
        with open(read_end, "rb") as f:
            read, unpack = f.read, _LEN.unpack
            while True:
                head = read(_LEN.size)
                if len(head) < _LEN.size:
                    break  # EOF without the end marker: the child failed
                (size,) = unpack(head)
                if size == _END:
                    self.complete = True
                    break
                data = read(size)
                if len(data) < size:
                    break
                try:
                    with gc_paused():  # lists of fresh objects: see mrkit.data.gc_pause
                        item = pickle.loads(data)
                except Exception:  # a child cut short mid-write: the caller goes on by itself
                    break
                del data
                yield item
        self.cancel()  # a child that stopped short may still run: kill it; then reap

    def cancel(self) -> None:
        """Stop the child, if it still runs, and reap it."""
        if not self.pid:
            return
        if not self.complete:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self._read_end >= 0:  # not yet handed to items()'s file object (interrupted there)
            os.close(self._read_end)
            self._read_end = -1
        self._reap()

    def _reap(self) -> None:
        if self.pid:
            with contextlib.suppress(ChildProcessError):  # reaped by someone else (SIGCHLD ignored)
                os.waitpid(self.pid, 0)
            self.pid = 0


def _child_main(produce: Callable[[], Iterable[Any]], write_end: int) -> None:
    """Run ``produce()``, stream its items to ``write_end``, and leave the process (os._exit)."""
    code = 1
    try:
        ready: queue.Queue[bytes | None] = queue.Queue(maxsize=QUEUE_ITEMS)
        writer = threading.Thread(target=_write_items, args=(ready, write_end), daemon=True)
        writer.start()
        try:
            for item in produce():
                ready.put(pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL))
            ready.put(b"")  # the end marker: only after every item
            code = 0
        finally:
            ready.put(None)
            writer.join()
    finally:
        os._exit(code)


def _write_items(ready: queue.Queue[bytes | None], write_end: int) -> None:
    """The child's writer thread: length-prefixed items until None. Any failure (a reader gone:
    EPIPE; out of memory) ends the child at once, without a word on the caller's stderr: its parse
    is no longer wanted or cannot be delivered, the producer would block on a full queue, and the
    caller, seeing the stream end without its marker, reads on by itself."""
    try:
        with open(write_end, "wb") as out:
            while (data := ready.get()) is not None:
                out.write(_LEN.pack(len(data)))
                out.write(data)
                out.flush()  # the caller may be waiting for this very item
    except BaseException:
        os._exit(1)
