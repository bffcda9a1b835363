"""Where code runs: ``Executor.submit(TaskSpec) -> concurrent.futures.Future[TaskResult]``.

An executor knows nothing of MapReduce: it ships a :class:`~mrkit.model.task.TaskSpec` to a worker,
the worker calls :func:`mrkit.execution.runtime.run_task`, and the :class:`~mrkit.model.task.TaskResult`
comes back on the future. A future fails only when the *infrastructure* failed
(:class:`~mrkit.errors.WorkerLost`); a raising user function is a result with ``ok=False``, so that
the coordinator can tell the two apart (docs/faults.md: failed and lost attempts have separate bounds).

A backend implements ``submit`` (and ``shutdown`` when it holds resources); the base adds the
context manager, ``map`` and the hooks the driver asks about. Executors are named by strings and
imported only when named (STYLE 9)::

    inline                      InlineExecutor       this process, one task at a time (debugging)
    processes                   ProcessExecutor      all local cores (default)
    redis://…, rediss://…       RedisExecutor        a worker fleet through Redis Streams (extra: redis)
    http, http://h:p,h:p        HttpExecutor         HTTP workers, spawned or existing
    lambda://fn, lambda-local   LambdaExecutor       serverless functions (extra: lambda)
    dask, dask://h:p, tls://h:p DaskExecutor         a Dask distributed cluster (extra: dask);
                                                     a ``distributed.Client`` object works too
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from typing import Any

from mrkit.errors import ConfigError
from mrkit.model.task import TaskResult, TaskSpec


class Executor:
    """Base class of executors.

    Attributes:
        name: the string that selects it (``processes``, ``redis://…``).
        workers: how many tasks it runs at once (used to pick default task counts).
        local: True when tasks run on this machine and may use a local temp folder for
            intermediate data; remote executors return False and provide ``storage_url``.
        asynchronous: True when a job can advance without the submitting process (Redis, Lambda).
        reports_running: True when the futures it returns report ``running()`` once an attempt
            leaves its queue for a worker; the driver then times attempts from that moment
            instead of from submission.
        queue_ahead: how many attempts beyond ``workers`` the driver keeps submitted, so that a
            worker finds its next attempt queued beside it when one ends instead of waiting for a
            round trip to the driver (Dask: one per worker thread). Only with ``reports_running``,
            so that waiting in that queue never counts as running time.
        enforces_timeouts: True when the side that runs an attempt enforces
            ``TaskSettings.task_timeout`` itself (:mod:`mrkit.execution.watchdog`: time *without
            progress*, the stuck process ended and replaced) and resolves the future with a
            ``TaskTimeout`` failure; the driver then does not abandon attempts on its own clock.
        starts_workers: True when the executor starts Python worker processes of its own choosing
            on demand (``http``): its ``from_name`` then takes ``worker_python`` (the interpreter
            to start) and ``n_map``/``n_reduce`` (the job's task counts, which size its default
            number of workers, as seed 003 does). :func:`open_executor` passes them to no other.
    """

    name: str = "executor"
    workers: int = 1
    local: bool = True
    asynchronous: bool = False
    reports_running: bool = False
    queue_ahead: int = 0
    enforces_timeouts: bool = False
    starts_workers: bool = False

    def submit(self, spec: TaskSpec) -> Future[TaskResult]:
        """Start one attempt of one task; the future resolves to its :class:`TaskResult`.

        The future raises :class:`~mrkit.errors.WorkerLost` when the worker died or stopped
        answering. Cancelling the future asks the executor to drop the attempt if it can.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement submit()")

    def start(self) -> None:
        """Start the workers now rather than at the first :meth:`submit` (optional; idempotent).

        ``mrkit.run`` calls it as soon as it has the executor, before it starts threads of its
        own: the ``processes`` executor then forks its first workers from a still single-threaded
        driver, which is its fast start. Executors without anything to start do nothing.
        """

    def storage_url(self, job_id: str) -> str | None:
        """Storage URL for a job's intermediate data, or None to use a local temp folder."""
        return None

    def shutdown(self, wait: bool = True) -> None:
        """Stop the workers this executor started; pending futures fail with WorkerLost."""

    def map(self, specs: Iterable[TaskSpec]) -> Iterator[TaskResult]:
        """Submit every spec, then yield their results in order (a convenience for tests)."""
        futures = [self.submit(spec) for spec in specs]
        for future in futures:
            yield future.result()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} workers={self.workers}>"


# name or URL scheme -> "module:Class"; each class has `from_name(name, workers=..., **options)`.
EXECUTORS: dict[str, str] = {
    "inline": "mrkit.execution.inline:InlineExecutor",
    "processes": "mrkit.execution.processes:ProcessExecutor",
    "redis": "mrkit.backends.redis.executor:RedisExecutor",
    "rediss": "mrkit.backends.redis.executor:RedisExecutor",
    "http": "mrkit.backends.http.executor:HttpExecutor",
    "lambda": "mrkit.backends.aws_lambda.executor:LambdaExecutor",
    "lambda-local": "mrkit.backends.aws_lambda.executor:LocalLambdaExecutor",
    "dask": "mrkit.backends.dask.executor:DaskExecutor",
    "tls": "mrkit.backends.dask.executor:DaskExecutor",
}
# Client objects of other libraries that name an executor, by their class's module and name.
CLIENTS: dict[str, str] = {"distributed.client.Client": "dask"}


def executor_key(name: str) -> str:
    """The registry key for an executor string: its URL scheme, or the name before any ``?options``.

    >>> executor_key("redis://h:6379/0"), executor_key("lambda-local?storage=s3://b/p")
    ('redis', 'lambda-local')
    """
    head = name.split("?", 1)[0]  # a URL in the options (storage=s3://…) is not the executor's scheme
    return head.split("://", 1)[0] if "://" in head else head


def open_executor(
    name: str | Executor | Any = None,
    *,
    workers: int | None = None,
    n_map: int | None = None,
    n_reduce: int | None = None,
    worker_python: str | None = None,
    **options: Any,
) -> Executor:
    """Return the executor named ``name`` (an :class:`Executor` is returned as is).

    Args:
        name: ``inline``, ``processes`` (default), ``redis://…``, ``http``, ``http://h:p,…``,
            ``lambda://fn``, ``lambda-local``, ``dask``, ``dask://h:p``, ``tls://h:p``, or a
            ``distributed.Client``.
        workers: parallelism (default: every core for ``processes``).
        n_map, n_reduce: the job's task counts, for an executor that sizes the workers it starts
            from them (``starts_workers``); ignored by the others.
        worker_python: the interpreter of the workers an executor starts (``starts_workers``).
        options: backend options.

    Raises:
        ConfigError: for an unknown name, listing the valid ones, or ``worker_python`` given to an
            executor that starts no workers.
        MissingExtra: when the backend needs a package that is not installed.
    """
    if isinstance(name, Executor):
        if worker_python is not None and not name.starts_workers:
            raise ConfigError(
                f"worker_python= applies to executors that start workers (http), not {name.name!r}"
            )
        return name
    if name is not None and not isinstance(name, str):
        return _from_client(name, workers=workers, **options)
    name = name or "processes"
    target = EXECUTORS.get(executor_key(name))
    if target is None:
        raise ConfigError(
            f"unknown executor {name!r}; choose one of: inline, processes, redis://host:port/db, "
            "http, http://host:port[,host:port], lambda://function, lambda-local, dask, "
            "dask://host:port, tls://host:port"
        )
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if cls.starts_workers:
        options.update(n_map=n_map, n_reduce=n_reduce)
        if worker_python is not None:
            options["worker_python"] = worker_python
    elif worker_python is not None:
        raise ConfigError(f"worker_python= applies to executors that start workers (http), not {name!r}")
    return cls.from_name(name, workers=workers, **options)  # type: ignore[no-any-return]


def _from_client(client: object, *, workers: int | None, **options: Any) -> Executor:
    """An executor over a client object of a library listed in :data:`CLIENTS` (the caller's own:
    shutting the executor down leaves it open)."""
    cls_name = f"{type(client).__module__}.{type(client).__qualname__}"
    key = CLIENTS.get(cls_name)
    if key is None:
        raise ConfigError(f"executor must be a name, an Executor or a distributed.Client, got a {cls_name}")
    module_name, class_name = EXECUTORS[key].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls.from_client(client, workers=workers, **options)  # type: ignore[no-any-return]
