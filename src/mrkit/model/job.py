"""What a job is: the user's map, combine, partition and reduce functions, in one object.

A job is written in one of three equivalent forms (README.md, "Four ways to write a job"):

* functions: ``mrkit.Job(mapper=f, reducer=g, combiner=g)``;
* a class: ``class WordCount(mrkit.Job)`` defining ``mapper``/``combiner``/``reducer``/``partitioner``
  as methods, plus the optional hooks ``mapper_init``/``mapper_final`` (in-mapper combining) and
  ``mapper_split`` (one call per map task, for whole-split speed);
* a JSON job file naming one of the above (see :mod:`mrkit.model.jobfile`).

Either way the runtime calls ``job.mapper(record)``, ``job.reducer(key, values)`` and so on: for the
class form those are bound methods, for the function form the plain functions stored on the
instance. Nothing here runs anything; the job never knows where it will run (STYLE 11).

Contracts of the user functions:

``mapper(record)``
    yields ``(key, value)`` pairs, returns an iterable of pairs, or returns ``None`` (emits nothing).
``mapper_init()`` / ``mapper_final()``
    called once per map task before the first / after the last record; ``mapper_final`` may yield or
    return pairs like ``mapper``.
``mapper_split(records)``
    replaces ``mapper`` when defined: called once per map task with an iterator of its records (its
    split, or the small files packed into it: :func:`mrkit.data.splits.pack_splits`), returns
    or yields pairs.
``combiner(key, values)`` / ``reducer(key, values)``
    ``values`` is an iterator. A generator function yields output ``(key, value)`` pairs; a plain
    function's return value becomes the single value for ``key``.
``partitioner(key, n_reduce)``
    returns the reduce partition in ``range(n_reduce)``; the default is a stable digest of the key.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from mrkit.errors import ConfigError

Pair = tuple[Any, Any]

FUNCTION_SLOTS = (  # the user functions a job (or a multi-step job's Step) may define
    "mapper",
    "combiner",
    "reducer",
    "partitioner",
    "mapper_init",
    "mapper_final",
    "mapper_split",
)


class Job:
    """A MapReduce job: user functions plus the parameters they read.

    Args:
        mapper: ``mapper(record) -> iterable of (key, value) | None``.
        reducer: ``reducer(key, values) -> value`` or a generator yielding ``(key, value)``; when
            omitted every value is emitted unchanged under its key.
        combiner: same contract as ``reducer``; run on map output before the shuffle. It must not
            change the job's result (it may run zero, one or several times per key).
        partitioner: ``partitioner(key, n_reduce) -> int``; default: stable digest of the key.
        mapper_init, mapper_final, mapper_split: optional hooks (module docstring).
        params: a JSON-able mapping the user functions read as ``self.params`` (class form) or
            ``mrkit.context().params`` (either form).
        name: a label shown in progress, logs and status; default: the class or mapper name.
        steps: a multi-step job: a list of :class:`mrkit.Step` instead of the functions above
            (:mod:`mrkit.model.steps`; the class form overrides :meth:`steps`).
        files: small side files the user functions read (a stop-word list): read now, shipped
            inside the job to every worker, and opened there with ``mrkit.context().file(name)``,
            which returns a local path to a copy (``name`` is the file's base name). At most
            :data:`MAX_SIDE_FILE_BYTES` in all.

    Raises:
        ConfigError: when a side file is missing, not a file, named twice or too big; when a
            function is not callable, or an introspectable function cannot be called with its
            slot's arguments (a reducer taking one argument, a combiner taking three): that would
            fail every attempt the same way. A job with no mapper is refused when it is run, unless
            each of its inputs brings its own (``inputs={path: mapper}``).

    Example:
        >>> job = Job(mapper=lambda line: [(w, 1) for w in line.split()], reducer=lambda k, vs: sum(vs))
        >>> job.has_combiner
        False
    """

    mapper: Callable[..., Any] | None = None
    combiner: Callable[..., Any] | None = None
    reducer: Callable[..., Any] | None = None
    partitioner: Callable[..., int] | None = None
    mapper_init: Callable[[], Any] | None = None
    mapper_final: Callable[[], Any] | None = None
    mapper_split: Callable[..., Any] | None = None
    input_mappers: tuple[Callable[..., Any], ...] = ()
    sort_values: bool = False  # the reducer sees each key's values sorted (the run's sort_values)

    def __init__(
        self,
        mapper: Callable[..., Any] | None = None,
        reducer: Callable[..., Any] | None = None,
        combiner: Callable[..., Any] | None = None,
        partitioner: Callable[..., int] | None = None,
        *,
        mapper_init: Callable[[], Any] | None = None,
        mapper_final: Callable[[], Any] | None = None,
        mapper_split: Callable[..., Any] | None = None,
        params: Mapping[str, Any] | None = None,
        name: str | None = None,
        files: Iterable[str | os.PathLike[str]] = (),
        steps: Iterable[Any] | None = None,
    ) -> None:
        given = {
            "mapper": mapper,
            "reducer": reducer,
            "combiner": combiner,
            "partitioner": partitioner,
            "mapper_init": mapper_init,
            "mapper_final": mapper_final,
            "mapper_split": mapper_split,
        }
        for slot, fn in given.items():
            if fn is None:
                continue
            if not callable(fn):
                raise ConfigError(f"Job {slot}= must be callable, got {type(fn).__name__}: {fn!r}")
            # Stored on the instance, a plain function is called without `self`; the class form's
            # methods stay bound. The runtime calls both the same way.
            setattr(self, slot, fn)
        self.params: dict[str, Any] = dict(params or {})
        self._steps = None if steps is None else list(steps)
        self.name = name or self._default_name()
        self.files: dict[str, bytes] = read_side_files(files)
        # No mapper at all is allowed here: a join job's mappers may come with its inputs
        # (inputs={path: mapper}); plan time refuses a job that has no mapper for some input.
        for slot in FUNCTION_SLOTS:
            check_signature(self.name, slot, getattr(self, slot, None))

    def _default_name(self) -> str:
        if type(self) is not Job:
            return type(self).__name__
        first = (self._steps or [None])[0]
        fn = self.mapper or self.mapper_split or self.reducer or getattr(first, "mapper", None)
        return getattr(fn, "__name__", "job")

    def steps(self) -> list[Any] | None:
        """The :class:`~mrkit.model.steps.Step` list of a multi-step job (``steps=``, or override
        this in the class form); None for a job of one map → reduce."""
        return getattr(self, "_steps", None)

    # -- derived facts the runtime needs, computed once per task, never per record ---------------

    @property
    def has_combiner(self) -> bool:
        return self.combiner is not None

    def with_params(self, params: Mapping[str, Any]) -> Job:
        """Return a copy of this job whose ``params`` are updated with ``params``."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.params = {**self.params, **dict(params)}
        return clone

    def with_files(self, files: Iterable[str | os.PathLike[str]]) -> Job:
        """Return a copy of this job that also ships the side ``files`` (see ``files=`` above)."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.files = read_side_files(files, dict(getattr(self, "files", {})))
        return clone

    def with_sorted_values(self) -> Job:
        """Return a copy of this job whose reducer sees each key's values sorted."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.sort_values = True
        return clone

    @property
    def has_mapper(self) -> bool:
        """True when the job maps records itself (``mapper`` or ``mapper_split``)."""
        return self.mapper is not None or self.mapper_split is not None

    def require_mapper(self, what: str = "its inputs") -> None:
        """Refuse, in one sentence, a job that has no mapper for ``what``.

        Raises:
            ConfigError: neither ``mapper`` nor ``mapper_split`` is defined.
        """
        if not self.has_mapper:
            raise ConfigError(
                f"job {self.name!r} defines neither mapper nor mapper_split to read {what}: give "
                "mrkit.Job(mapper=...), define a mapper method on the class, or give a mapper per "
                "input (inputs={path: mapper})"
            )

    def with_input_mappers(self, mappers: Iterable[Callable[..., Any]]) -> Job:
        """Return a copy of this job that reads input ``i`` with ``mappers[i]`` (Hadoop's
        ``MultipleInputs``): the splits of that input name it (``InputSplit.mapper``), and
        :meth:`for_input` gives the job a map task of theirs runs.

        Raises:
            ConfigError: a mapper is not callable, or cannot take one record.
        """
        found = tuple(mappers)
        for i, fn in enumerate(found):
            if not callable(fn):
                raise ConfigError(
                    f"the mapper of input {i} must be callable, got {type(fn).__name__}: {fn!r}"
                )
            check_signature(self.name, "mapper", fn)
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.input_mappers = found
        return clone

    def for_input(self, index: int) -> Job:
        """The job as a map task of input ``index`` runs it: that input's mapper instead of the
        job's own mapper hooks (``mapper_split``, ``mapper_init``, ``mapper_final`` are the job's
        own mapper's); combiner, partitioner and reducer are shared."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.mapper = self.input_mappers[index]
        clone.mapper_split = clone.mapper_init = clone.mapper_final = None
        return clone

    def __repr__(self) -> str:
        slots = [s for s in FUNCTION_SLOTS if getattr(self, s, None) is not None]
        return f"<mrkit.Job {self.name} ({', '.join(slots)})>"


MAX_SIDE_FILE_BYTES = 8 << 20  # side files travel inside the job's pickle, to every worker


def read_side_files(
    paths: Iterable[str | os.PathLike[str]], files: dict[str, bytes] | None = None
) -> dict[str, bytes]:
    """Read the side files ``paths`` into ``{base name: bytes}`` (added to ``files``).

    Raises:
        ConfigError: a file is missing or not a regular file, two have the same base name, or they
            hold more than :data:`MAX_SIDE_FILE_BYTES` together.
    """
    files = dict(files or {})
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for path in paths:
        path = os.fspath(path)
        name = os.path.basename(path)
        if not os.path.isfile(path):
            what = "is not a file" if os.path.exists(path) else "does not exist"
            raise ConfigError(f"side file {path} {what}: files= (--file) names files to ship with the job")
        if name in files:
            raise ConfigError(f"two side files are named {name!r}: their base names must differ")
        total = sum(map(len, files.values())) + os.path.getsize(path)
        if total > MAX_SIDE_FILE_BYTES:
            raise ConfigError(
                f"side file {path} is too big: side files ship inside the job and may hold "
                f"{MAX_SIDE_FILE_BYTES >> 20} MiB in all ({total:,} bytes asked); read bigger data as "
                "an input or from shared storage"
            )
        with open(path, "rb") as f:
            files[name] = f.read()
    return files


# The positional arguments the runtime passes to each slot, named as in the error message.
_SLOT_ARGUMENTS = {
    "mapper": ("record",),
    "combiner": ("key", "values"),
    "reducer": ("key", "values"),
    "partitioner": ("key", "n_reduce"),
    "mapper_init": (),
    "mapper_final": (),
    "mapper_split": ("records",),
}


def check_signature(job_name: str, slot: str, fn: Callable[..., Any] | None) -> None:
    """Raise :class:`ConfigError` when ``fn`` cannot be called as the runtime calls ``slot``.

    Functions :func:`inspect.signature` cannot read (some builtins and C callables) are not
    checked; a wrong call then fails the task at run time, without retries.

    >>> check_signature("wc", "reducer", lambda key, values: 0)
    >>> check_signature("wc", "reducer", lambda key: 0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mrkit.errors.ConfigError: job 'wc' reducer must take (key, values), but <lambda>(key) cannot: ...
    """
    if fn is None:
        return
    arguments = _SLOT_ARGUMENTS[slot]
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*arguments)
    except TypeError as exc:
        name = getattr(fn, "__name__", type(fn).__name__)
        raise ConfigError(
            f"job {job_name!r} {slot} must take ({', '.join(arguments)}), but {name}{signature} cannot: {exc}"
        ) from None


def returns_pairs(fn: Callable[..., Any]) -> bool:
    """True when ``fn`` is a generator function, i.e. it yields ``(key, value)`` pairs.

    A reducer or combiner that is a plain function returns the value for its key instead. Bound
    methods and ``functools.partial`` objects are unwrapped first.

    >>> def total(k, vs): return sum(vs)
    >>> def pairs(k, vs): yield k, sum(vs)
    >>> returns_pairs(total), returns_pairs(pairs)
    (False, True)
    """
    target = getattr(fn, "__func__", fn)
    while hasattr(target, "func"):  # functools.partial
        target = target.func
    # A callable object counts by its class's __call__.
    return inspect.isgeneratorfunction(target) or inspect.isgeneratorfunction(type(target).__call__)


def reduce_values(
    fn: Callable[..., Any], key: Any, values: Iterable[Any], yields_pairs: bool
) -> Iterator[Pair]:
    """Apply a reducer or combiner to one key and iterate the ``(key, value)`` pairs it produces."""
    if yields_pairs:
        return iter(fn(key, iter(values)))
    return iter(((key, fn(key, iter(values))),))


def identity_reducer(key: Any, values: Iterable[Any]) -> Iterator[Pair]:
    """The default reducer: emit every value unchanged under its key."""
    for value in values:
        yield key, value


def require_job(job: Any) -> Job:
    """``job`` itself when it is an :class:`~mrkit.model.job.Job`; else a one-sentence ConfigError."""
    if not isinstance(job, Job):
        raise ConfigError(
            f"expected an mrkit.Job, got {type(job).__name__}: define mrkit.Job(mapper=..., reducer=...)"
        )
    return job
