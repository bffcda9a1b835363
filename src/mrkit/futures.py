"""SCOOP-style futures on any executor: ``map``, ``map_reduce``, ``submit``, ``map_as_completed``.

    from mrkit import futures
    squares = futures.map(lambda x: x * x, range(10_000))          # lazy, ordered, parallel
    total = futures.map_reduce(operator.mul, operator.add, a, b)    # reduced in the workers
    future = futures.submit(pow, 2, 10)                             # a concurrent.futures.Future

The contract:

* **Any executor.** Work reaches workers only through ``Executor.submit`` as CALL tasks, so every
  executor runs it: ``inline``, ``processes`` and the remote ones. ``executor=`` takes a name or an
  :class:`~mrkit.execution.base.Executor`; without it the *default executor* is used: ``processes``
  on every core, created on first use and shut down at exit, or whatever :func:`set_executor` (the
  ``python -m mrkit`` launcher calls it) or :func:`using` chose.
* **Chunks, not items.** Items are batched into chunks, one task each (like ``Pool.map``): with a
  known length, ``len / (4 * workers)`` items per chunk; otherwise chunks start at one item and
  grow (to at most twice the largest finished one) while a chunk takes under a tenth of a second.
  The function is cloudpickled once per call, so lambdas, closures and functions of a script's
  ``__main__`` work, and each worker unpickles it once (the runtime caches it by digest).
* **Lazy like the builtin map.** Nothing runs until the first ``next()``; then the inputs are read
  chunk by chunk, with a bounded window of chunks in flight, so an infinite input is fine.
  :func:`map_reduce` consumes its whole input before it returns.
* **Errors come back as themselves.** An exception raised in a worker is raised again in the
  caller with its own type and message (as ``multiprocessing.Pool`` and ``concurrent.futures``
  do), so ``except ZeroDivisionError`` works. A PEP 678 note, printed under the message, is one
  sentence naming the call, the item index, the exception, the task and the worker::

      futures.map: item 7 raised ZeroDivisionError: division by zero (task call-000002 of job
      futures-…, attempt 1, worker pid:4242)

  The worker's traceback is the exception's ``remote_traceback`` attribute and its ``__cause__`` (a
  :class:`RemoteTraceback`, so it prints above). An exception that cannot make the trip back (it
  does not pickle, or its class does not exist here) becomes a :class:`CallFailed` whose message is
  that sentence. ``map`` raises when the failing item is reached, after yielding the items before.
* **Retries.** A chunk whose worker was lost (killed, crashed, timed out) is run again, up to
  ``MAX_LOST_ATTEMPTS`` attempts in all. An exception raised by the user's function is *not* retried:
  it would most likely fail again, and the function may have had side effects.

Not thread-safe in one respect: the default executor is one per process, not per thread.

The machinery (chunks as CALL tasks, their resubmission, adaptive sizing, exceptions raised again)
is :mod:`mrkit.execution.calls`; this module (about 400 lines, one module so that SCOOP's ``from
mrkit import futures`` works) is the API and the default executor.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, wait
from typing import Any

from mrkit.errors import ConfigError
from mrkit.execution.base import Executor, open_executor
from mrkit.execution.calls import (
    MAX_LOST_ATTEMPTS,
    Call,
    CallFailed,
    Chunk,
    Feed,
    Fold,
    MapChunk,
    ReduceChunk,
    RemoteTraceback,
    pump,
)
from mrkit.model.task import TaskResult

__all__ = [
    "MAX_LOST_ATTEMPTS",
    "CallFailed",
    "RemoteTraceback",
    "get_executor",
    "map",
    "mapReduce",
    "map_as_completed",
    "map_reduce",
    "set_executor",
    "shutdown",
    "submit",
    "using",
]

_FAN_IN = 4  # map_reduce: partial results combined by one task of the reduction tree
_HANDFUL = 4  # map_reduce: the caller itself combines at most this many
_MISSING: Any = object()


# --------------------------------------------------------------------------------------------------
# The default executor


class _Defaults:
    lock = threading.RLock()
    executor: Executor | None = None  # the default; None until first use
    owned = False  # opened here from a name, so ours to shut down
    named: dict[str, Executor] = {}  # executors opened for ``executor="name"`` arguments


def set_executor(executor: str | Executor, workers: int | None = None) -> Executor:
    """Make ``executor`` the default of every futures call that names none.

    A default that this module opened from a name is shut down first (including any call still
    using it); an :class:`Executor` instance you pass stays yours to shut down.

    Args:
        executor: an executor name (``inline``, ``processes``, ``redis://…``) or an Executor.
        workers: parallelism of an executor opened from a name (default: the backend's own).

    Returns:
        The new default executor.

    Raises:
        ConfigError: for an unknown name, or ``workers`` given with an Executor instance.
        MissingExtra: when the named backend needs a package that is not installed.
    """
    if isinstance(executor, Executor):
        if workers is not None:
            raise ConfigError("workers= applies to an executor name; an Executor instance has its own")
        new, owned = executor, False
    else:
        new, owned = open_executor(executor, workers=workers), True
    with _Defaults.lock:
        old, old_owned = _Defaults.executor, _Defaults.owned
        _Defaults.executor, _Defaults.owned = new, owned
    if old is not None and old_owned and old is not new:
        old.shutdown()
    return new


def get_executor() -> Executor:
    """Return the default executor, opening ``processes`` on every core if none was set.

    Raises:
        ConfigError: when the default executor cannot be opened.
    """
    with _Defaults.lock:
        if _Defaults.executor is None:
            _Defaults.executor, _Defaults.owned = open_executor("processes"), True
        return _Defaults.executor


def shutdown(wait: bool = True) -> None:
    """Shut down every executor this module opened; the next call opens a default again.

    Registered to run at interpreter exit. Executor instances you passed in are left running.

    Args:
        wait: wait for the executors' workers to stop.
    """
    with _Defaults.lock:
        opened = list(_Defaults.named.values())
        if _Defaults.executor is not None and _Defaults.owned:
            opened.append(_Defaults.executor)
        _Defaults.named.clear()
        _Defaults.executor, _Defaults.owned = None, False
    for executor in opened:
        executor.shutdown(wait=wait)


atexit.register(shutdown)


@contextlib.contextmanager
def using(executor: str | Executor, workers: int | None = None) -> Iterator[Executor]:
    """Make ``executor`` the default inside a ``with`` block, then restore the previous default.

    An executor opened here from a name is shut down when the block ends.

    Args:
        executor: an executor name or an Executor.
        workers: parallelism of an executor opened from a name.

    Yields:
        The executor in use.

    Raises:
        ConfigError: for an unknown name.
    """
    new = executor if isinstance(executor, Executor) else open_executor(executor, workers=workers)
    with _Defaults.lock:
        saved = _Defaults.executor, _Defaults.owned
        _Defaults.executor, _Defaults.owned = new, False
    try:
        yield new
    finally:
        with _Defaults.lock:
            _Defaults.executor, _Defaults.owned = saved
        if new is not executor:
            new.shutdown()


def _resolve(executor: str | Executor | None) -> Executor:
    if executor is None:
        return get_executor()
    if isinstance(executor, Executor):
        return executor
    with _Defaults.lock:
        current = _Defaults.executor
        if current is not None and _Defaults.owned and current.name == executor:
            return current
        opened = _Defaults.named.get(executor)
        if opened is None:
            opened = _Defaults.named[executor] = open_executor(executor)
        return opened


def _check(label: str, fns: tuple[Callable[..., Any], ...], iterables: tuple[Iterable[Any], ...]) -> None:
    for fn in fns:
        if not callable(fn):
            raise TypeError(f"{label}() needs a callable, got {type(fn).__name__} {fn!r}")
    if not iterables:
        raise TypeError(f"{label}() needs at least one iterable of arguments")


# --------------------------------------------------------------------------------------------------
# The API


def map(  # shadows the builtin on purpose: SCOOP's name, used as futures.map
    fn: Callable[..., Any],
    *iterables: Iterable[Any],
    executor: str | Executor | None = None,
    chunksize: int | None = None,
) -> Iterator[Any]:
    """Like the builtin ``map``, in parallel: ``fn(*args)`` for each ``args`` in ``zip(*iterables)``.

    The result is a lazy iterator: nothing is read or run before the first ``next()``, then chunks
    of items run a bounded window at a time and results are yielded in input order. The shortest
    iterable ends the map, as with ``zip``.

    Args:
        fn: any picklable-by-cloudpickle callable (lambdas and closures are fine); its results must
            be picklable.
        iterables: one per parameter of ``fn``.
        executor: a name or an Executor (default: the default executor).
        chunksize: items per task (default: ``len / (4 * workers)`` for sized inputs, else adaptive).

    Returns:
        An iterator of ``fn``'s results, in order.

    Raises:
        TypeError: at once, for a non-callable ``fn`` or no iterables.
        ConfigError: at once, for an unknown executor name or a bad ``chunksize``.
        Exception: while iterating, the exception ``fn`` raised on an item (see the module
            docstring), or :class:`CallFailed`.
    """
    _check("futures.map", (fn,), iterables)
    call = Call(_resolve(executor), "futures.map", MapChunk(fn, star=len(iterables) > 1))
    feed = Feed(iterables, chunksize, call.executor.workers)
    return _values(pump(call, feed, ordered=True))


def map_as_completed(
    fn: Callable[..., Any],
    *iterables: Iterable[Any],
    executor: str | Executor | None = None,
    chunksize: int | None = None,
) -> Iterator[Any]:
    """Like :func:`map`, but yields each chunk's results as soon as the chunk finishes.

    Results of one chunk keep their order; chunks come in the order they complete. Use it when the
    order does not matter, so a slow item does not hold back the others.

    Args:
        fn, iterables, executor, chunksize: as for :func:`map`.

    Returns:
        An iterator of ``fn``'s results, in completion order.

    Raises:
        As for :func:`map`; a failing chunk raises when it completes, after its earlier items.
    """
    _check("futures.map_as_completed", (fn,), iterables)
    call = Call(_resolve(executor), "futures.map_as_completed", MapChunk(fn, star=len(iterables) > 1))
    feed = Feed(iterables, chunksize, call.executor.workers)
    return _values(pump(call, feed, ordered=False))


def _values(chunks: Iterator[Chunk]) -> Iterator[Any]:
    # chain() yields the items of each chunk's list in C (a generator costs ~80 ns an item); it asks
    # for the next list only after the previous one is used up, so an error still comes in order.
    return itertools.chain.from_iterable(_lists(chunks))


def _lists(chunks: Iterator[Chunk]) -> Iterator[list[Any]]:
    for chunk in chunks:
        yield chunk.values or []
        if chunk.error is not None:
            raise chunk.error


def map_reduce(
    map_fn: Callable[..., Any],
    reduce_fn: Callable[[Any, Any], Any],
    *iterables: Iterable[Any],
    executor: str | Executor | None = None,
    chunksize: int | None = None,
    initializer: Any = _MISSING,
) -> Any:
    """``functools.reduce(reduce_fn, map(map_fn, *iterables))``, with the reduction in the workers.

    Each chunk task maps its items and folds them into one partial result; the partial results are
    then folded by a tree of tasks, ``_FAN_IN`` at a time, until a handful are left for the caller.
    ``reduce_fn`` must be associative, but need not be commutative: order is kept, left to right,
    at every level, so string concatenation or list appending give the sequential answer.

    Args:
        map_fn: called as ``map_fn(*args)`` for each ``args`` in ``zip(*iterables)``.
        reduce_fn: ``reduce_fn(x, y) -> z``, associative.
        iterables: one per parameter of ``map_fn``; the shortest ends the input.
        executor, chunksize: as for :func:`map`.
        initializer: as for ``functools.reduce``: placed before the mapped values (the caller applies
            it once, ``reduce_fn(initializer, total)``) and returned for an empty input.

    Returns:
        The reduced value; for a single item, ``map_fn`` of it.

    Raises:
        TypeError: for an empty input without ``initializer`` (as ``functools.reduce``).
        Exception: the exception ``map_fn`` or ``reduce_fn`` raised, or :class:`CallFailed`.
    """
    _check("futures.map_reduce", (map_fn, reduce_fn), iterables)
    program = ReduceChunk(map_fn, reduce_fn, star=len(iterables) > 1)
    call = Call(_resolve(executor), "futures.map_reduce", program)
    feed = Feed(iterables, chunksize, call.executor.workers)
    partials: list[Any] = []
    for chunk in pump(call, feed, ordered=True):
        if chunk.error is not None:
            raise chunk.error
        partials.extend(chunk.values or ())
    if not partials:
        if initializer is _MISSING:
            raise TypeError("futures.map_reduce() of an empty input with no initializer")
        return initializer
    call.program(Fold(reduce_fn))
    workers = max(1, call.executor.workers)
    while len(partials) > _HANDFUL:
        # One level of the tree: consecutive runs of at least _FAN_IN partials, one task per run,
        # at most one run per worker, so order is kept and every worker can take part.
        runs = min(workers, len(partials) // _FAN_IN) or 1
        size, extra = divmod(len(partials), runs)
        level, start = [], 0
        for r in range(runs):
            end = start + size + (r < extra)
            level.append(Chunk(call, (partials[start:end],), start, end - start))
            start = end
        partials = []
        for chunk in level:
            while not chunk.settled():
                wait([chunk.future])
            if chunk.error is not None:
                raise chunk.error
            partials.extend(chunk.values or ())
    total = functools.reduce(reduce_fn, partials)
    return total if initializer is _MISSING else reduce_fn(initializer, total)


mapReduce = map_reduce  # SCOOP's spelling


def submit(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
    """Run ``fn(*args, **kwargs)`` on the default executor; return a future of its return value.

    The default executor is used because every keyword goes to ``fn``; pick another one with
    :func:`set_executor` or :func:`using`. Cancelling the future cancels the task if it has not
    been sent to a worker yet.

    Args:
        fn: any callable cloudpickle can ship; its result must be picklable.
        args, kwargs: its arguments.

    Returns:
        A :class:`concurrent.futures.Future`; its ``result()`` raises what ``fn`` raised (see the
        module docstring) or :class:`CallFailed`.

    Raises:
        TypeError: for a non-callable ``fn`` or arguments that cannot be pickled.
    """
    if not callable(fn):
        raise TypeError(f"futures.submit() needs a callable, got {type(fn).__name__} {fn!r}")
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    call = Call(get_executor(), "futures.submit", MapChunk(fn, star=True), subject=f"{name}()")
    chunk = Chunk(call, ([args], kwargs), 0, 1)
    outer: Future[Any] = Future()

    def settle(_: Future[TaskResult]) -> None:
        # Runs in the executor's callback thread; a lost worker resubmits from here.
        if not chunk.settled():
            chunk.future.add_done_callback(settle)
            return
        if not outer.set_running_or_notify_cancel():
            return  # cancelled by the caller meanwhile
        if chunk.error is not None:
            outer.set_exception(chunk.error)
        else:
            outer.set_result((chunk.values or [None])[0])

    outer.add_done_callback(lambda f: chunk.future.cancel() if f.cancelled() else None)
    chunk.future.add_done_callback(settle)
    return outer
