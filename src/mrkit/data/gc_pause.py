"""Pause CPython's cyclic garbage collector around framework loops that build big structures.

Building a dict of a hundred thousand fresh lists (the reduce side's in-memory grouping) makes
CPython run its cyclic collector again and again over the growing structure: measured on the
``adrevenue`` benchmark, the grouping loop took twice as long with the collector on. Those loops
create no reference cycles and run no user code, so pausing the collector there loses nothing.
On the way out what the block built is moved to the oldest generation (:func:`_promote_young`),
or the first allocation after the pause would make the collector traverse all of it at once.
User functions always run with the collector in the state the user left it, though a map task
runs them under :func:`gc_relaxed`: collected, only less often.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: The youngest generation's threshold (allocations of containers between two collections) while a
#: map task fills its buffer. CPython's default, 700, makes it run a full collection over the
#: buffer each time that buffer grew by a quarter: on a map task of 130,000 distinct keys (the join
#: example's rankings) the mapping loop took 160 ms instead of 125 ms (112 ms with no collector).
RELAXED_THRESHOLD = 10_000
_relaxed_lock = threading.Lock()
_relaxed_depth = 0
_saved_threshold: tuple[int, ...] = ()


@contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic collector for the block, then restore its previous state.

    >>> import gc
    >>> with gc_paused():
    ...     gc.isenabled()
    False
    >>> gc.isenabled()
    True
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            _promote_young()
            gc.enable()


def _promote_young() -> None:
    """Move every tracked object to the oldest generation, without traversing any.

    What the block built is all in the youngest generation, and the first allocation after
    ``gc.enable()`` would make the collector traverse every object of it: 0.1 s after building
    300,000 small lists (``read_output`` of 259k pairs: 46-51 ms of collections, 12 ms with this).
    ``gc.freeze()`` then ``gc.unfreeze()`` moves them to the oldest generation in constant time;
    they are freed by reference counting as before, and cyclic garbage among them waits for the
    next full collection. Skipped when objects are frozen already: a user's ``gc.freeze()`` (a
    pre-fork server's), and a worker forked from the driver, which keeps the driver's objects
    frozen (``process_start.gc_frozen_for_fork``): unfreezing would undo either.
    """
    if gc.get_freeze_count() == 0:
        gc.freeze()
        gc.unfreeze()


@contextmanager
def gc_relaxed() -> Iterator[None]:
    """Run the block with the cyclic collector on, but its youngest generation collected at most
    every :data:`RELAXED_THRESHOLD` container allocations; the previous thresholds come back after.

    For loops that run user code while they build big structures (a map task's buffer): cyclic
    garbage the user's code makes is still collected, and the collector stops re-scanning the
    growing buffer hundreds of times. Nested and concurrent blocks (threads) share one setting:
    the first to enter sets it and the last to leave restores it.

    >>> before = gc.get_threshold()
    >>> with gc_relaxed():
    ...     gc.get_threshold()[0] >= RELAXED_THRESHOLD
    True
    >>> gc.get_threshold() == before
    True
    """
    global _relaxed_depth, _saved_threshold
    with _relaxed_lock:
        if _relaxed_depth == 0:
            _saved_threshold = gc.get_threshold()
            if _saved_threshold[0] and _saved_threshold[0] < RELAXED_THRESHOLD:  # 0: the user disabled it
                gc.set_threshold(RELAXED_THRESHOLD, *_saved_threshold[1:])
        _relaxed_depth += 1
    try:
        yield
    finally:
        with _relaxed_lock:
            _relaxed_depth -= 1
            if _relaxed_depth == 0:
                gc.set_threshold(*_saved_threshold)
