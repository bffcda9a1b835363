"""Calls of a Python function over many items, as CALL tasks on any executor: what ``mrkit.futures``
is built on.

The worker side (:class:`MapChunk`, :class:`ReduceChunk`, :class:`Fold`) is what a call ships,
cloudpickled once per call: the runtime calls it with one chunk of items, and it returns
``(values, failure)`` rather than raising, so that the exception object itself can travel back. The
caller side (:class:`Call`, :class:`Chunk`, :class:`Feed`, :func:`pump`) numbers and submits the
chunks, resubmits a chunk whose worker was lost (up to ``MAX_LOST_ATTEMPTS`` attempts), sizes chunks
adaptively, keeps a bounded window in flight, and raises a worker's exception again in the caller
with its own type (:class:`RemoteTraceback` as its cause; :class:`CallFailed` when it cannot make
the trip). The API and its contract are in :mod:`mrkit.futures`. About 400 lines: the two sides
share the failure tuple that one builds and the other reads.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import hashlib
import itertools
import pickle
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, wait
from typing import Any

import cloudpickle

from mrkit.errors import ConfigError, JobFailed, WorkerLost
from mrkit.execution import shipping
from mrkit.execution.base import Executor
from mrkit.model.task import TaskKind, TaskResult, TaskSpec

MAX_LOST_ATTEMPTS = 3  # attempts of a chunk whose worker keeps getting lost before the call fails
_TARGET_SECONDS = 0.1  # an adaptive chunk grows until one takes about this long in a worker
_MAX_CHUNK = 65536  # ... but no larger: the caller holds a window of chunks in memory


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


class MapChunk:
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


class ReduceChunk:
    """Map every item of a chunk and fold the values left to right into one partial result."""

    def __init__(
        self, map_fn: Callable[..., Any], reduce_fn: Callable[[Any, Any], Any], *, star: bool
    ) -> None:
        self.map_fn = map_fn
        self.reduce_fn = reduce_fn
        self.star = star  # as for MapChunk

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


class Fold:
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


class Call:
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


class Chunk:
    """One chunk's task: submitted at once, resubmitted when its worker is lost, then settled.

    Once :meth:`settled` returns True, ``values`` holds the results that came back (all of them,
    or those before the failing item) and ``error`` the exception to raise after them, if any.
    """

    __slots__ = ("call", "first", "count", "spec", "future", "values", "error", "result")

    def __init__(self, call: Call, args: tuple[Any, ...], first: int, count: int) -> None:
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


class Feed:
    """Cuts the zipped input into chunks: fixed size when the length is known, else growing."""

    def __init__(self, iterables: tuple[Iterable[Any], ...], chunksize: int | None, workers: int) -> None:
        lengths = []
        for iterable in iterables:
            try:
                lengths.append(len(iterable))  # type: ignore[arg-type]
            except TypeError:
                pass
        # One iterable: its items themselves (see MapChunk). Several: tuples, and the shortest
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

    def observe(self, chunk: Chunk) -> None:
        """Learn from a finished chunk (adaptive sizing only): its size, and its time per item."""
        if not self.fixed and chunk.result is not None and chunk.count:
            self.done_size = max(self.done_size, chunk.count)
            self.per_item = chunk.result.seconds / chunk.count


def pump(call: Call, feed: Feed, ordered: bool) -> Iterator[Chunk]:
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
    pending: deque[Chunk] = deque()

    def fill() -> None:
        running = sum(1 for c in pending if not c.future.done())
        while running < max_running and len(pending) < max_pending:
            taken = feed.take()
            if taken is None:
                return
            first, items = taken
            pending.append(Chunk(call, (items,), first, len(items)))
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
