"""The user-facing entry points: ``mrkit.run``, ``mrkit.submit``, ``mrkit.read_output``.

``run`` plans the job, runs it on the chosen executor, publishes the output atomically and returns a
:class:`Result`; ``submit`` does the same in the background (or, on an asynchronous executor such as
Redis, hands the plan to the fleet and returns at once) and returns a :class:`JobHandle`.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future
from typing import Any

from mrkit.coordination.driver import run_plan
from mrkit.coordination.handle import JobHandle, LocalJobHandle
from mrkit.coordination.plan import JobPlan, RetryPolicy, build_plan, new_job_id, store_records
from mrkit.coordination.progress import Progress, summary_line
from mrkit.coordination.publish import discard_job, open_output, publish_output
from mrkit.data.output import check_format, read_output
from mrkit.errors import ConfigError
from mrkit.execution.base import Executor, open_executor
from mrkit.model.job import Job
from mrkit.model.task import TaskSettings
from mrkit.storage import LocalStorage, open_storage
from mrkit.storage.base import Storage


def _sizing(executor: str | Executor | None, n_map: int | None, n_reduce: int | None) -> dict[str, Any]:
    """Task counts for the one executor that sizes itself from them: driver-started HTTP workers
    default to ``max(n_map, n_reduce)``, as seed 003 does (``--workers`` overrides it)."""
    return {"n_map": n_map, "n_reduce": n_reduce} if executor == "http" else {}


def _worker_python(executor: str | Executor | None, worker_python: str | None) -> dict[str, Any]:
    """The ``worker_python=`` option, for the one executor that starts Python workers itself."""
    if worker_python is None:
        return {}
    if executor != "http":
        raise ConfigError(
            f"worker_python= applies to executor='http' (workers the driver starts), not {executor!r}"
        )
    return {"worker_python": worker_python}


class Records:
    """Marks an iterable as input *records*, even when its items are strings.

    A str, a path or a list of them is read as files/globs/folders; any other iterable is records.
    Wrap a list of strings in ``Records`` to process the strings themselves:
    ``mrkit.run(job, mrkit.Records(["a b", "b c"]))``.
    """

    def __init__(self, items: Iterable[Any]) -> None:
        self.items = items


class Result:
    """What ``mrkit.run`` returns: the output's pairs, the counters, and where they are.

    Iterate it for ``(key, value)`` pairs; ``dict(result)`` builds a dict.

    Attributes:
        job_id: the job's id.
        output: the published output folder, or None for an in-memory result.
        counters: ``map.*``, ``reduce.*`` and ``user.*`` counters of the committed attempts.
        seconds: wall time of the run.
    """

    def __init__(
        self,
        job_id: str,
        output: str | None,
        counters: dict[str, int],
        seconds: float,
        pairs: list[tuple[Any, Any]] | None = None,
    ) -> None:
        self.job_id = job_id
        self.output = output
        self.counters = counters
        self.seconds = seconds
        self._pairs = pairs

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        if self._pairs is not None:
            return iter(self._pairs)
        assert self.output is not None
        return read_output(self.output)

    def to_dict(self) -> dict[Any, Any]:
        return dict(self)

    def summary(self) -> str:
        return summary_line(self.job_id, self.seconds, self.counters)

    def __repr__(self) -> str:
        where = self.output or "in memory"
        return f"<mrkit.Result {self.job_id} ({where}) in {self.seconds:.2f}s>"


def _is_paths(inputs: Any) -> bool:
    if isinstance(inputs, (str, os.PathLike)):
        return True
    if (
        isinstance(inputs, (list, tuple))
        and inputs
        and all(isinstance(i, (str, os.PathLike)) for i in inputs)
    ):
        return True
    return False


def _plan(
    job: Job,
    inputs: Any,
    *,
    output: str | None,
    n_map: int | None,
    n_reduce: int | None,
    executor: Executor,
    storage: Storage,
    fmt: str,
    memory_mb: float,
    overwrite: bool,
    policy: RetryPolicy,
    errors: str,
    input_format: str,
    job_id: str,
    split_size: int | None = None,
) -> JobPlan:
    if not isinstance(job, Job):
        raise ConfigError(
            f"expected an mrkit.Job, got {type(job).__name__}: define mrkit.Job(mapper=..., reducer=...)"
        )
    if isinstance(inputs, Records) or not _is_paths(inputs):
        items = inputs.items if isinstance(inputs, Records) else inputs
        if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
            raise ConfigError(
                f"inputs must be paths, globs, folders or an iterable of records, got {inputs!r:.80}"
            )
        splits = store_records(storage, job_id, items, n_map or max(2, executor.workers * 2))
    else:
        from mrkit.data.splits import plan_splits

        paths = [os.fspath(p) for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)]
        splits = plan_splits(paths, n_map, format=input_format, errors=errors, split_size=split_size)
    n_reduce = n_reduce or max(1, executor.workers)
    settings = TaskSettings(memory_mb=memory_mb, output_format=fmt, task_timeout=policy.task_timeout)
    return build_plan(
        job,
        splits,
        job_id=job_id,
        storage=storage,
        output_url=output or "",
        n_reduce=n_reduce,
        settings=settings,
        policy=policy,
        overwrite=overwrite,
    )


def run(
    job: Job,
    inputs: Any,
    *,
    output: str | os.PathLike[str] | None = None,
    n_map: int | None = None,
    n_reduce: int | None = None,
    executor: str | Executor = "processes",
    workers: int | None = None,
    storage: str | None = None,
    format: str = "tsv",
    memory_mb: float = 256.0,
    overwrite: bool = False,
    policy: RetryPolicy | None = None,
    errors: str = "strict",
    input_format: str = "auto",
    params: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    quiet: bool = False,
    job_id: str | None = None,
    split_size: int | None = None,
    worker_python: str | None = None,
    files: Iterable[str | os.PathLike[str]] | None = None,
) -> Result:
    """Run ``job`` over ``inputs`` and return its :class:`Result`.

    Args:
        job: an :class:`mrkit.Job` (function or class form).
        inputs: a path, glob, folder, URL or a list of them (read as text/JSON lines/CSV by
            extension), or any iterable of records (wrap strings in :class:`Records`).
        output: folder or storage URL to publish ``part-*`` and ``_SUCCESS`` into; None keeps the
            result in memory (exact Python types).
        n_map: number of map tasks (default: by input size and cores).
        n_reduce: number of reduce partitions (default: the executor's worker count).
        executor: ``processes`` (default, all cores), ``inline``, ``redis://…``, ``http``, …
        workers: parallelism of the executor (default: every core).
        storage: URL for intermediate data (default: the executor's choice, else a temp folder).
        format: output format, ``tsv`` (default), ``jsonl`` or ``pickle``.
        memory_mb: per-task memory budget: map output past it spills to sorted runs; a reduce
            partition whose runs fit in it is grouped in memory, a larger one is streamed.
        overwrite: replace an existing result in ``output``.
        policy: :class:`RetryPolicy` (attempts, speculation, timeouts).
        errors: undecodable input: ``strict`` (fail, default), ``replace`` or ``skip`` (counted).
        input_format: ``auto`` (by extension), ``text``, ``jsonl`` or ``csv``.
        params: merged into ``job.params``.
        progress: draw a progress bar (default: when stderr is a terminal).
        quiet: do not print the summary line.
        job_id: the job's id (default: generated from the job's name and the time).
        split_size: cut file inputs into map tasks of about this many bytes, each ending at a line
            end, instead of ``n_map`` tasks (``1``: one line per map task; below the default
            1 MiB floor of ``n_map`` splitting).
        worker_python: ``executor="http"`` only: the interpreter of the workers the driver starts
            (default ``$MRKIT_WORKER_PYTHON``, else ``sys.executable``).
        files: side files shipped with the job to every worker (``Job(files=...)``); a task opens
            one with ``mrkit.context().file("name")``.

    Returns:
        The :class:`Result`.

    Raises:
        JobFailed: a task failed after its attempts; nothing was published.
        OutputExistsError: ``output`` holds a result and ``overwrite`` is False.
        InputError, ConfigError: bad inputs or options.
    """
    started = time.monotonic()
    policy = policy or RetryPolicy()
    fmt = check_format(format if output is not None else "pickle")
    if params:
        job = job.with_params(params)
    if files:
        job = job.with_files(files)
    owns_executor = not isinstance(executor, Executor)
    ex = open_executor(
        executor,
        workers=workers,
        **_sizing(executor, n_map, n_reduce),
        **_worker_python(executor, worker_python),
    )
    job_id = job_id or new_job_id(job.name)
    temp_dirs: list[str] = []
    created_output = False
    try:
        inter = _intermediate_storage(ex, storage, job_id, temp_dirs)
        if output is None and not ex.local:
            # Remote workers cannot reach our temp folder: keep the in-memory result in the job's storage.
            out_storage: Storage = open_storage(f"{inter.url}#{job_id}/output/")
        elif output is None:
            out_dir = tempfile.mkdtemp(prefix="mrkit-out-")
            temp_dirs.append(out_dir)
            out_storage = LocalStorage(out_dir)
        else:
            out_url = os.fspath(output)
            created_output = "://" not in out_url and not os.path.exists(out_url)
            out_storage = open_output(out_url, overwrite=overwrite, inputs=inputs)
        plan = _plan(
            job,
            inputs,
            output=out_storage.url,
            n_map=n_map,
            n_reduce=n_reduce,
            executor=ex,
            storage=inter,
            fmt=fmt,
            memory_mb=memory_mb,
            overwrite=overwrite,
            policy=policy,
            errors=errors,
            input_format=input_format,
            job_id=job_id,
            split_size=split_size,
        )
        display = Progress(enabled=progress)
        try:
            counters = run_plan(plan, ex, inter, display)
            seconds = time.monotonic() - started
            publish_output(
                inter,
                out_storage,
                job_id,
                plan.n_reduce,
                output_format=fmt,
                overwrite=overwrite,
                summary={"seconds": round(seconds, 3), "counters": counters},
            )
        except BaseException:
            discard_job(inter, out_storage, job_id)
            if created_output and output is not None:
                _remove_if_empty(os.fspath(output))
            raise
        pairs = list(read_output(out_storage.url)) if output is None else None
        discard_job(inter, None, job_id)
        seconds = time.monotonic() - started
        result = Result(
            job_id,
            None if output is None else out_storage.url.removeprefix("file://"),
            counters,
            seconds,
            pairs,
        )
        if not quiet:
            print(result.summary(), file=sys.stderr)
        return result
    except BaseException:
        # Also when the job fails before running anything (a missing input): no empty output folder.
        if created_output and output is not None:
            _remove_if_empty(os.fspath(output))
        raise
    finally:
        if owns_executor:
            ex.shutdown()
        for path in temp_dirs:
            shutil.rmtree(path, ignore_errors=True)


def _intermediate_storage(ex: Executor, storage: str | None, job_id: str, temp_dirs: list[str]) -> Storage:
    url = storage or ex.storage_url(job_id)
    if url:
        return open_storage(url)
    if not ex.local:
        raise ConfigError(
            f"executor {ex.name} runs tasks on other machines: give storage= a URL they all reach"
        )
    path = tempfile.mkdtemp(prefix="mrkit-job-")
    temp_dirs.append(path)
    return LocalStorage(path)


def _remove_if_empty(path: str) -> None:
    for dirpath, _dirs, files in os.walk(path, topdown=False):
        if files:
            return
        try:
            os.rmdir(dirpath)
        except OSError:
            return


def submit(job: Job, inputs: Any, *, executor: str | Executor = "processes", **options: Any) -> JobHandle:
    """Start ``job`` and return a :class:`JobHandle` at once.

    On an asynchronous executor (``redis://…``, ``lambda://…``) the job advances without this
    process: it may exit, and ``mrkit status/result ID`` follow the job from anywhere. On the others
    the job runs in a background thread of this process.

    Args:
        job, inputs, executor: as for :func:`run`.
        options: the other keyword arguments of :func:`run`.
    """
    ex = open_executor(
        executor,
        workers=options.get("workers"),
        **_sizing(executor, options.get("n_map"), options.get("n_reduce")),
    )
    if ex.asynchronous:
        return ex.submit_job(job, inputs, **options)  # type: ignore[attr-defined,no-any-return]
    future: Future[Result] = Future()
    job_id = options.pop("job_id", None) or new_job_id(job.name)

    def target() -> None:
        try:
            future.set_result(run(job, inputs, executor=ex, job_id=job_id, **options))
        except BaseException as exc:  # delivered to the handle's wait()/result()
            future.set_exception(exc)
        finally:
            ex.shutdown()

    thread = threading.Thread(target=target, name="mrkit-submit", daemon=True)
    thread.start()
    return LocalJobHandle(job_id, future, thread)
