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

The module is longer than our usual (about 700 lines) so that SCOOP's ``from mrkit import futures``
stays one module; if it grows, split it into a package: the worker-side programs (``_MapChunk``,
``_ReduceChunk``, ``_Fold``), the caller-side machinery (``_Call``, ``_Chunk``, ``_Feed``,
``_pump``), the default executor, and the API.
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import functools
import hashlib
import itertools
import pickle
import threading
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any

import cloudpickle

from mrkit.errors import ConfigError, JobFailed, WorkerLost
from mrkit.execution import shipping
from mrkit.execution.base import Executor, open_executor
from mrkit.model.task import TaskKind, TaskResult, TaskSpec

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

MAX_LOST_ATTEMPTS = 3  # attempts of a chunk whose worker keeps getting lost before the call fails
_TARGET_SECONDS = 0.1  # an adaptive chunk grows until one takes about this long in a worker
_MAX_CHUNK = 65536  # ... but no larger: the caller holds a window of chunks in memory
_FAN_IN = 4  # map_reduce: partial results combined by one task of the reduction tree
_HANDFUL = 4  # map_reduce: the caller itself combines at most this many
_MISSING: Any = object()


class CallFailed(JobFailed):
    """Raised when a futures call fails and the original exception cannot be raised again.

    That is: the exception could not be pickled back from the worker, the worker could not run the
    task at all (the function did not unpickle there, a result did not pickle), or the chunk's
    worker was lost ``MAX_LOST_ATTEMPTS`` times. ``str(error)`` is one sentence naming the call, the
    item, the task and the exception; ``error.remote_traceback`` holds the worker's traceback.
    """


class RemoteTraceback(Exception):
    """The ``__cause__`` of an exception raised again from a worker: prints the worker's traceback."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb.rstrip()}\n"""'


# --------------------------------------------------------------------------------------------------
# The worker side. Each call ships one of these (cloudpickled once per call); the runtime calls it
# with the chunk as its only argument. It returns ``(values, failure)`` rather than raising, so that
# the exception object itself (not only its name and message) can travel back.


def _failure(index: int, stage: str, exc: BaseException) -> tuple[Any, ...]:
    """Describe ``exc``, raised at position ``index`` of a chunk, as a picklable tuple."""
    # Drop the first frame (our wrapper) so the traceback starts in the user's code.
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    try:
        blob: bytes | None = cloudpickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # an unpicklable exception (a lock in its args...): the caller gets CallFailed
        blob = None
    return (index, stage, type(exc).__name__, str(exc), text, blob)


class _MapChunk:
    """Apply ``fn`` to every item of a chunk, stopping at the first exception.

    Items are argument tuples when ``star`` (several iterables, or submit), else single arguments:
    a flat list pickles about three times faster than a list of 1-tuples.
    """

    def __init__(self, fn: Callable[..., Any], *, star: bool) -> None:
        self.fn = fn
        self.star = star

    def __call__(self, items: list[Any], kwargs: dict[str, Any] | None = None) -> tuple[Any, ...]:
        out: list[Any] = []
        try:
            if kwargs:
                fn = self.fn
                for args in items:
                    out.append(fn(*args, **kwargs))
            else:
                # map and starmap loop in C; list.extend keeps what was appended before an
                # exception, so len(out) is the index of the failing item.
                out.extend(itertools.starmap(self.fn, items) if self.star else builtins.map(self.fn, items))
        except Exception as exc:
            return out, _failure(len(out), "fn", exc)
        return out, None


class _ReduceChunk:
    """Map every item of a chunk and fold the values left to right into one partial result."""

    def __init__(
        self, map_fn: Callable[..., Any], reduce_fn: Callable[[Any, Any], Any], *, star: bool
    ) -> None:
        self.map_fn = map_fn
        self.reduce_fn = reduce_fn
        self.star = star  # as for _MapChunk

    def __call__(self, items: list[Any]) -> tuple[Any, ...]:
        map_fn, reduce_fn, star = self.map_fn, self.reduce_fn, self.star
        index, stage = 0, "map_fn"
        try:
            acc = map_fn(*items[0]) if star else map_fn(items[0])
            for index in range(1, len(items)):
                stage = "map_fn"
                value = map_fn(*items[index]) if star else map_fn(items[index])
                stage = "reduce_fn"
                acc = reduce_fn(acc, value)
        except Exception as exc:
            return [], _failure(index, stage, exc)
        return [acc], None


class _Fold:
    """Fold a run of consecutive partial results, left to right (one node of the reduction tree)."""

    def __init__(self, reduce_fn: Callable[[Any, Any], Any]) -> None:
        self.reduce_fn = reduce_fn

    def __call__(self, values: list[Any]) -> tuple[Any, ...]:
        try:
            return [functools.reduce(self.reduce_fn, values)], None
        except Exception as exc:
            return [], _failure(0, "fold", exc)


# --------------------------------------------------------------------------------------------------
# The caller side


class _Call:
    """One API call: its job id, its task numbering, its executor and the function it ships."""

    def __init__(self, executor: Executor, label: str, program: Any, subject: str = "") -> None:
        self.executor = executor
        self.label = label
        self.subject = subject  # how messages name a failing call of the function (default: by item)
        self.job_id = f"futures-{uuid.uuid4().hex}"
        self._count = itertools.count()
        self.program(program)

    def program(self, program: Any) -> None:
        """Ship ``program`` with the tasks made from now on (pickled here, once)."""
        self.call_fn = shipping.dumps(program, remote=not self.executor.local)
        self.call_digest = hashlib.sha256(self.call_fn).hexdigest()

    def spec(self, args: tuple[Any, ...], first: int) -> TaskSpec:
        """A CALL task that runs the program once with ``args`` (items from index ``first``)."""
        try:
            payload = pickle.dumps([args], protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # plain pickle is much faster on data, cloudpickle handles lambdas & co.
            try:
                payload = cloudpickle.dumps([args], protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                raise TypeError(
                    f"{self.label}: cannot pickle the arguments from item {first} on to send "
                    f"them to a worker: {type(exc).__name__}: {exc}"
                ) from exc
        return TaskSpec(
            job_id=self.job_id,
            task_id=f"call-{next(self._count):06d}",
            kind=TaskKind.CALL,
            call_fn=self.call_fn,
            call_digest=self.call_digest,
            call=payload,
        )


class _Chunk:
    """One chunk's task: submitted at once, resubmitted when its worker is lost, then settled.

    Once :meth:`settled` returns True, ``values`` holds the results that came back (all of them,
    or those before the failing item) and ``error`` the exception to raise after them, if any.
    """

    __slots__ = ("call", "first", "count", "spec", "future", "values", "error", "result")

    def __init__(self, call: _Call, args: tuple[Any, ...], first: int, count: int) -> None:
        self.call = call
        self.first = first  # index of its first item in the whole input
        self.count = count
        self.spec = call.spec(args, first)
        self.values: list[Any] | None = None
        self.error: BaseException | None = None
        self.result: TaskResult | None = None
        self.future = call.executor.submit(self.spec)

    def settled(self) -> bool:
        """True once the outcome is known; resubmits (and returns False) when the worker was lost."""
        if self.values is not None:
            return True
        if not self.future.done():
            return False
        try:
            result = self.future.result()
        except WorkerLost as exc:
            if self.spec.attempt < MAX_LOST_ATTEMPTS:
                spec = self.spec.next_attempt()
                try:
                    self.future = self.call.executor.submit(spec)
                except Exception as again:  # the executor shut down meanwhile: that is the outcome
                    self._settle([], again)
                    return True
                self.spec = spec
                return False
            self._settle(
                [],
                CallFailed(
                    f"{self.call.label}: task {self.spec.task_id} of job {self.call.job_id} "
                    f"(items {self.first}-{self.first + self.count - 1}) lost its worker "
                    f"{self.spec.attempt} times; last: {exc}",
                    job_id=self.call.job_id,
                    task_id=self.spec.task_id,
                ),
            )
            return True
        except Exception as exc:  # the executor itself failed (shut down, cannot start workers)
            self._settle([], exc)
            return True
        self.result = result
        if not result.ok:
            failure = result.failure
            sentence = failure.sentence() if failure is not None else "no reason given"
            self._settle(
                [],
                CallFailed(
                    f"{self.call.label}: task {result.task_id} of job {self.call.job_id} failed in worker "
                    f"{result.worker or '?'}: {sentence}",
                    job_id=self.call.job_id,
                    task_id=result.task_id,
                    remote_traceback=failure.traceback if failure is not None else "",
                ),
            )
            return True
        try:
            values, failure_tuple = pickle.loads(result.output)[0]
        except Exception as exc:
            self._settle(
                [],
                CallFailed(
                    f"{self.call.label}: the results of task {result.task_id} of job {self.call.job_id} "
                    f"cannot be unpickled here: {type(exc).__name__}: {exc}",
                    job_id=self.call.job_id,
                    task_id=result.task_id,
                ),
            )
            return True
        self._settle(values, None if failure_tuple is None else self._rebuild(failure_tuple))
        return True

    def _settle(self, values: list[Any], error: BaseException | None) -> None:
        self.values = values
        self.error = error

    def _rebuild(self, failure: tuple[Any, ...]) -> BaseException:
        index, stage, exc_type, message, tb, blob = failure
        item = self.first + index
        culprit = {
            "fn": self.call.subject or f"item {item}",
            "map_fn": f"map_fn on item {item}",
            "reduce_fn": f"reduce_fn combining item {item}",
            "fold": "reduce_fn combining partial results",
        }[stage]
        where = (
            f"task {self.spec.task_id} of job {self.call.job_id}, attempt {self.spec.attempt}, "
            f"worker {self.result.worker if self.result else '?'}"
        )
        sentence = f"{self.call.label}: {culprit} raised {exc_type}: {message} ({where})"
        exc: BaseException | None = None
        if blob is not None:
            try:
                exc = pickle.loads(blob)
            except Exception:  # its class does not exist here, or its __init__ wants other arguments
                exc = None
        if not isinstance(exc, BaseException):
            exc = CallFailed(
                sentence, job_id=self.call.job_id, task_id=self.spec.task_id, remote_traceback=tb
            )
        else:
            with contextlib.suppress(AttributeError, TypeError):
                exc.remote_traceback = tb  # type: ignore[attr-defined]
            if hasattr(exc, "add_note"):  # Python 3.11+
                exc.add_note(sentence)
        exc.__cause__ = RemoteTraceback(tb)
        exc.__suppress_context__ = True
        return exc


class _Feed:
    """Cuts the zipped input into chunks: fixed size when the length is known, else growing."""

    def __init__(self, iterables: tuple[Iterable[Any], ...], chunksize: int | None, workers: int) -> None:
        lengths = []
        for iterable in iterables:
            try:
                lengths.append(len(iterable))  # type: ignore[arg-type]
            except TypeError:
                pass
        # One iterable: its items themselves (see _MapChunk). Several: tuples, and the shortest
        # ends the input, as with the builtin map.
        self.star = len(iterables) > 1
        self.args: Iterator[Any] = zip(*iterables, strict=False) if self.star else iter(iterables[0])
        if chunksize is not None:
            if not isinstance(chunksize, int) or isinstance(chunksize, bool) or chunksize < 1:
                raise ConfigError(f"chunksize must be a positive integer or None, got {chunksize!r}")
            self.fixed = chunksize
        elif lengths:  # as Pool.map: about four chunks per worker
            self.fixed = max(1, -(-min(lengths) // (4 * max(1, workers))))
        else:
            self.fixed = 0
        self.done_size = 0  # adaptive: the largest chunk that has finished
        self.per_item: float | None = None  # adaptive: seconds per item measured in a worker
        self.taken = 0
        self.exhausted = False

    def take(self) -> tuple[int, list[Any]] | None:
        """The next chunk as ``(index of its first item, items)``, or None at the end."""
        if self.exhausted:
            return None
        size = self.fixed or self._next_size()
        items = list(itertools.islice(self.args, size))
        if len(items) < size:
            self.exhausted = True  # islice stops early only at the end: never pull an input again
            if not items:
                return None
        first = self.taken
        self.taken += len(items)
        return first, items

    def _next_size(self) -> int:
        # At most twice the largest *finished* chunk: growth follows results, so a consumer that
        # wants five items of an infinite input does not pull thousands while the first is running.
        size = 2 * self.done_size
        if self.per_item:
            size = min(size, int(_TARGET_SECONDS / self.per_item))
        return max(1, min(size, _MAX_CHUNK))

    def observe(self, chunk: _Chunk) -> None:
        """Learn from a finished chunk (adaptive sizing only): its size, and its time per item."""
        if not self.fixed and chunk.result is not None and chunk.count:
            self.done_size = max(self.done_size, chunk.count)
            self.per_item = chunk.result.seconds / chunk.count


def _pump(call: _Call, feed: _Feed, ordered: bool) -> Iterator[_Chunk]:
    """Run ``feed``'s chunks as tasks of ``call``, a bounded window at a time; yield them settled.

    In input order when ``ordered``, else in completion order. Unsettled chunks are cancelled when
    the consumer stops early (a closed generator), so an abandoned ``map`` leaves no queued work.
    """
    workers = max(1, call.executor.workers)
    # Four chunks per worker in flight: with the default chunk size that is a whole sized input, sent
    # at once as Pool.map does (one round trip per chunk would idle the workers), and it keeps
    # every worker busy while the caller is between next() calls. Finished chunks held for an
    # ordered consumer that waits on a slow head are capped at twice that.
    max_running, max_pending = 4 * workers, 8 * workers
    pending: deque[_Chunk] = deque()

    def fill() -> None:
        running = sum(1 for c in pending if not c.future.done())
        while running < max_running and len(pending) < max_pending:
            taken = feed.take()
            if taken is None:
                return
            first, items = taken
            pending.append(_Chunk(call, (items,), first, len(items)))
            running += 1

    try:
        while True:
            fill()
            if not pending:
                return
            ready = [c for c in ((pending[0],) if ordered else pending) if c.settled()]
            if not ready:
                for c in pending:
                    if c.settled():  # (resubmits lost chunks early) settled ones wait for their turn
                        feed.observe(c)
                waiting = [c.future for c in pending if not c.future.done()]
                if waiting:
                    wait(waiting, return_when=FIRST_COMPLETED)
                continue
            for chunk in ready:
                pending.remove(chunk)
                feed.observe(chunk)
                yield chunk
    finally:
        for chunk in pending:
            chunk.future.cancel()


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
    call = _Call(_resolve(executor), "futures.map", _MapChunk(fn, star=len(iterables) > 1))
    feed = _Feed(iterables, chunksize, call.executor.workers)
    return _values(_pump(call, feed, ordered=True))


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
    call = _Call(_resolve(executor), "futures.map_as_completed", _MapChunk(fn, star=len(iterables) > 1))
    feed = _Feed(iterables, chunksize, call.executor.workers)
    return _values(_pump(call, feed, ordered=False))


def _values(chunks: Iterator[_Chunk]) -> Iterator[Any]:
    # chain() yields the items of each chunk's list in C (a generator costs ~80 ns an item); it asks
    # for the next list only after the previous one is used up, so an error still comes in order.
    return itertools.chain.from_iterable(_lists(chunks))


def _lists(chunks: Iterator[_Chunk]) -> Iterator[list[Any]]:
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
    program = _ReduceChunk(map_fn, reduce_fn, star=len(iterables) > 1)
    call = _Call(_resolve(executor), "futures.map_reduce", program)
    feed = _Feed(iterables, chunksize, call.executor.workers)
    partials: list[Any] = []
    for chunk in _pump(call, feed, ordered=True):
        if chunk.error is not None:
            raise chunk.error
        partials.extend(chunk.values or ())
    if not partials:
        if initializer is _MISSING:
            raise TypeError("futures.map_reduce() of an empty input with no initializer")
        return initializer
    call.program(_Fold(reduce_fn))
    workers = max(1, call.executor.workers)
    while len(partials) > _HANDFUL:
        # One level of the tree: consecutive runs of at least _FAN_IN partials, one task per run,
        # at most one run per worker, so order is kept and every worker can take part.
        runs = min(workers, len(partials) // _FAN_IN) or 1
        size, extra = divmod(len(partials), runs)
        level, start = [], 0
        for r in range(runs):
            end = start + size + (r < extra)
            level.append(_Chunk(call, (partials[start:end],), start, end - start))
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
    call = _Call(get_executor(), "futures.submit", _MapChunk(fn, star=True), subject=f"{name}()")
    chunk = _Chunk(call, ([args], kwargs), 0, 1)
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
