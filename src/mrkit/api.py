"""The user-facing entry points: ``mrkit.run``, ``mrkit.submit``, ``mrkit.read_output``.

``run`` plans the job, runs it on the chosen executor, publishes the output atomically and returns a
:class:`Result`; ``submit`` does the same in the background (or, on an asynchronous executor such as
Redis, hands the plan to the fleet and returns at once) and returns a :class:`JobHandle`.

About 410 lines: ``run``'s twenty options are documented here, where users read them (the
planning, driving and publishing it calls live in :mod:`mrkit.coordination`).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from typing import Any

from mrkit.coordination import resume as resuming
from mrkit.coordination.driver import run_plan
from mrkit.coordination.fencing import Epoch, JobFenced
from mrkit.coordination.handle import JobHandle
from mrkit.coordination.options import RunOptions
from mrkit.coordination.plan import RetryPolicy, new_job_id, pickle_job
from mrkit.coordination.prepare import Records as Records  # re-exported: mrkit.api.Records
from mrkit.coordination.prepare import attach_input_mappers, kept_output, plan_job
from mrkit.coordination.progress import Progress
from mrkit.coordination.publish import discard_job, open_output, publish_output
from mrkit.coordination.registry import LocalJobHandle, Recording
from mrkit.coordination.result import Result
from mrkit.coordination.service import job_service
from mrkit.data.output import read_output
from mrkit.errors import ConfigError, MissingExtra
from mrkit.execution.base import Executor, open_executor
from mrkit.model.job import Job, require_job
from mrkit.model.steps import job_steps
from mrkit.multistep import run_steps
from mrkit.storage import LocalStorage, open_storage
from mrkit.storage.base import Storage


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
    resume: bool = False,
    worker_python: str | None = None,
    files: Iterable[str | os.PathLike[str]] | None = None,
    sort_values: bool = False,
    sort_output: bool = False,
    dashboard: bool = False,
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
        job_id: the job's id (default: generated from the job's name and the time). A job run
            under an id given here keeps its intermediate data when it fails or is interrupted,
            so that ``resume`` can continue it: in ``storage=``, in the executor's own storage
            (Redis), else in ``output``'s ``_temporary/`` folder (see docs/faults.md).
        split_size: cut file inputs into map tasks of about this many bytes, each ending at a line
            end, instead of ``n_map`` tasks (``1``: one line per map task; below the default
            1 MiB floor of ``n_map`` splitting).
        resume: continue the failed or interrupted run of ``job_id`` (same job code, inputs,
            n_map, n_reduce and output): every task attempt it committed is re-used and only the
            others run; the output is the same as an uninterrupted run's, and the counters say
            ``map.tasks_resumed`` / ``reduce.tasks_resumed``. An older driver of the job still
            running is fenced (:class:`~mrkit.coordination.fencing.JobFenced`).
        worker_python: ``executor="http"`` only: the interpreter of the workers the driver starts
            (default ``$MRKIT_WORKER_PYTHON``, else ``sys.executable``).
        files: side files shipped with the job to every worker (``Job(files=...)``); a task opens
            one with ``mrkit.context().file("name")``.
        sort_values: each reducer sees the values of its key in sorted order (secondary sort);
            values that cannot be compared fail the task, not retried.
        sort_output: totally ordered output, TeraSort style: keys are range-partitioned from a
            sample of the map output, so ``part-00000 … part-(M-1)`` read in order are sorted by
            key (:mod:`mrkit.coordination.sampling` says what the sample costs).
        dashboard: serve the web dashboard (:mod:`mrkit.dashboard`, on 127.0.0.1) while the run
            lasts, and print the run's page address.

    Returns:
        The :class:`Result`.

    Raises:
        JobFailed: a task failed after its attempts; nothing was published.
        OutputExistsError: ``output`` holds a result and ``overwrite`` is False.
        ResumeRefused: ``resume`` found nothing of the job, or a plan that differs from this one.
        JobFenced: a newer driver of the same job took over (this one published nothing).
        InputError, ConfigError: bad inputs or options.
    """
    # Every keyword of run() is a RunOptions field (tests/test_run_options.py keeps it so): built
    # from the arguments as given, so the option list is written in the signature alone.
    given = {name: value for name, value in locals().items() if name not in ("job", "inputs", "executor")}
    options = RunOptions(**given)
    return run_with(job, inputs, options, executor=executor)


def run_with(job: Job, inputs: Any, options: RunOptions, *, executor: str | Executor = "processes") -> Result:
    """:func:`run` with its options as one :class:`RunOptions` (what ``run`` and ``submit`` call).

    An executor given as an object stays the caller's (not shut down); one named here is opened for
    the run and shut down after it.
    """
    job = options.apply(job)
    steps = job_steps(job)
    if steps is not None:
        if not options.dashboard:
            return run_steps(job, steps, inputs, options, executor=executor, run_one=run_with)
        # One page for the whole job (the registry reads it through its steps), not one per step.
        job_id = options.job_id or new_job_id(job.name)
        options = options.replace(job_id=job_id, dashboard=False)
        board = serve_run_dashboard(job_id)
        try:
            return run_steps(job, steps, inputs, options, executor=executor, run_one=run_with)
        finally:
            board.stop()
    started = time.monotonic()
    job, planned = attach_input_mappers(job, inputs)
    fmt = options.output_format
    output, storage, overwrite, resume = options.output, options.storage, options.overwrite, options.resume
    owns_executor = not isinstance(executor, Executor)
    ex = options.open_executor(executor)
    # Before this run starts threads of its own (dashboard, cancel watch): the processes executor
    # then forks its workers from a single-threaded driver (its fast start).
    ex.start()
    named = options.job_id is not None
    job_id = options.job_id or options.step_id or new_job_id(job.name)
    board = serve_run_dashboard(job_id) if options.dashboard else None
    temp_dirs: list[str] = []
    created_output = output is not None and "://" not in os.fspath(output) and not os.path.exists(output)
    keep_state = False
    state: LocalStorage | None = None  # a named job's state folder in the output, once opened
    try:
        # A named job with a local output keeps its state beside it, where a resume finds it.
        state_dir = _state_dir(ex, storage, output, job_id) if named else None
        if state_dir is None:
            inter = _intermediate_storage(ex, storage, job_id, temp_dirs)
        if output is None and not ex.local:
            # Remote workers cannot reach our temp folder: keep the in-memory result in the job's storage.
            out_storage: Storage = kept_output(inter, job_id)
        elif output is None:
            out_dir = tempfile.mkdtemp(prefix="mrkit-out-")
            temp_dirs.append(out_dir)
            out_storage = LocalStorage(out_dir)
        else:
            out_storage = open_output(os.fspath(output), overwrite=overwrite, inputs=inputs)
        if state_dir is not None:
            inter = state = LocalStorage(state_dir)
        # Resumable: named, with state in a place that outlives this process, and a lasting output.
        resumable = (
            named
            and bool(state or storage or ex.storage_url(job_id))
            and (output is not None or not ex.local)
        )
        keep_state = resume  # a refused resume must leave the state it found alone
        code, stored = _prepare_resume(job, inter, out_storage, job_id, resume=resume, resumable=resumable)
        epoch = None if resume else Epoch.claim(inter, job_id, out_storage)
        if resumable and not resume:
            resuming.clear_state(inter, out_storage, job_id)
        plan = plan_job(
            job,
            planned,
            options,
            job_id=job_id,
            storage=inter,
            output_url=out_storage.url,
            workers=ex.workers,
            code=code,
        )
        if stored is not None and code is not None:
            resuming.check_plan(stored, plan, code)
        elif resumable and code is not None:
            resuming.save_plan(inter, plan, code)
        keep_state = resumable
        epoch = epoch or Epoch.claim(inter, job_id, out_storage)
        display = Progress(enabled=options.progress)
        record = Recording(job_id, job.name, ex.name, plan)  # in the registry, with its events
        try:
            counters = run_plan(
                plan,
                ex,
                inter,
                display,
                record.cancelled,
                reuse=(lambda specs: resuming.committed(inter, out_storage, specs)) if resume else None,
                guard=lambda: epoch.check(force=False),
                events=record.events,
            )
            epoch.check()  # a zombie driver must not publish over its successor's output
            seconds = time.monotonic() - started
            phase, n_parts = plan.output_phase
            publish_output(
                inter,
                out_storage,
                job_id,
                n_parts,
                phase=phase,
                output_format=fmt,
                overwrite=overwrite,
                summary={"seconds": round(seconds, 3), "counters": counters, "epoch": epoch.number},
            )
        except BaseException as exc:
            record.end(started, exc)
            # A resumable job keeps its state for a resume; a fenced driver deletes nothing of its
            # successor's; anything else leaves no trace.
            if not keep_state and not isinstance(exc, JobFenced):
                discard_job(inter, out_storage, job_id)
            if created_output and output is not None:
                _remove_if_empty(os.fspath(output))
            raise
        record.end(started, None, counters)
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
        if not options.quiet:
            print(result.summary() + _dashboard_note(ex), file=sys.stderr)
        return result
    except BaseException:
        if not keep_state and state is not None:
            discard_job(state, out_storage, job_id)  # a named job that failed before it ran
        if state is not None:
            _remove_if_empty(state.root)  # e.g. the _temporary/ folder a refused resume opened
        # Also when the job fails before running anything (a missing input): no empty output folder.
        if created_output and output is not None:
            _remove_if_empty(os.fspath(output))
        raise
    finally:
        if board is not None:
            board.stop()
        if owns_executor:
            ex.shutdown()
        for path in temp_dirs:
            shutil.rmtree(path, ignore_errors=True)


def serve_run_dashboard(job_id: str) -> Any:
    """Serve the dashboard beside the run ``job_id`` and print its page's address."""
    try:
        from mrkit.dashboard.server import DashboardServer
    except ImportError as exc:
        raise MissingExtra("dashboard=True", "dashboard", exc.name or "starlette") from None
    board = DashboardServer().start()
    print(f"mrkit: dashboard of job {job_id} at {board.job_url('local', job_id)}", file=sys.stderr)
    return board


def _dashboard_note(ex: Executor) -> str:
    """``"; dashboard http://…"`` for an executor whose cluster has a dashboard that outlives the run
    (a Dask scheduler of yours), else ``""``: a local cluster started for the run is gone with it."""
    link = getattr(ex, "lasting_dashboard_link", None)
    return f"; dashboard {link}" if link else ""


def _state_dir(
    ex: Executor, storage: str | None, output: str | os.PathLike[str] | None, job_id: str
) -> str | None:
    """``OUTPUT/_temporary``: where a named job on a local executor keeps its intermediate data so
    that it outlives the driver (None: ``storage=`` or the executor names a place, or no local output)."""
    if storage or ex.storage_url(job_id) or output is None or "://" in os.fspath(output):
        return None
    return os.path.join(os.path.abspath(os.fspath(output)), "_temporary")


def _prepare_resume(
    job: Job, inter: Storage, output: Storage, job_id: str, *, resume: bool, resumable: bool
) -> tuple[bytes | None, dict[str, Any] | None]:
    """The job's pickled code and, when resuming, the stored plan (after checking the code).

    Raises:
        ResumeRefused: ``resume`` but the job is not resumable, nothing of it is stored, or its
            code differs from the stored job's.
    """
    if not resumable:
        if resume:
            raise resuming.ResumeRefused(
                f"cannot resume job {job_id}: give it its id (job_id=, --job-id) and a place that "
                "outlives the run (output= a folder, or storage=)"
            )
        return None, None
    code = pickle_job(job)
    if not resume:
        return code, None
    stored = resuming.stored_plan(inter, job_id, inter.url)
    resuming.check_code(stored, code, job_id)
    return resuming.stored_code(inter, job_id) or code, stored


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

    On an asynchronous executor (``redis://…``, ``lambda://…``, ``dask://…``) the job advances
    without this process: it may exit, and ``mrkit status/result ID`` follow the job from anywhere;
    a multi-step job advances there from step to step as a chain of one-step jobs
    (:mod:`mrkit.coordination.chain`). On the others the job runs in a background thread of this
    process.

    Args:
        job, inputs, executor: as for :func:`run`.
        options: the other keyword arguments of :func:`run`.
    """
    opts = RunOptions.from_keywords("mrkit.submit", **options)
    ex = opts.open_executor(executor)
    owns_executor = not isinstance(executor, Executor)
    service = job_service(ex)
    if service is not None:
        if opts.dashboard:
            raise ConfigError(
                f"dashboard=True serves the page of a run of this process; follow a job submitted to "
                f"{ex.name} with: mrkit dashboard --executor URL"
            )
        if opts.resume:
            raise ConfigError(
                f"resume=True does not apply to mrkit.submit on {ex.name}: resume a failed asynchronous "
                "job with mrkit.resume(ID, executor=...) (mrkit resume ID), or drive it from this process "
                "with mrkit.run(..., job_id=ID, resume=True)"
            )
        return service.submit_job(job, inputs, opts)  # the executor stays open: the handle uses it
    future: Future[Result] = Future()
    job_id = opts.job_id or new_job_id(require_job(job).name)
    opts = opts.replace(job_id=job_id)

    def target() -> None:
        try:
            future.set_result(run_with(job, inputs, opts, executor=ex))
        except BaseException as exc:  # delivered to the handle's wait()/result()
            future.set_exception(exc)
        finally:
            if owns_executor:  # one the caller passed in stays theirs, as with run()
                ex.shutdown()

    thread = threading.Thread(target=target, name="mrkit-submit", daemon=True)
    thread.start()
    return LocalJobHandle(job_id, future, thread)


def resume(job_id: str, *, executor: str | Executor) -> JobHandle:
    """Put the failed or cancelled asynchronous job ``job_id`` back to running and return its handle.

    Every task that committed is kept (``map.tasks_resumed`` / ``reduce.tasks_resumed`` count them);
    the others run again with fresh attempt numbers and a fresh attempt budget, and the job then
    publishes the output an uninterrupted run gives. Deliveries of the earlier run that arrive late
    are dropped. See docs/faults.md ("Resume") and, for serverless jobs, docs/serverless.md.

    Args:
        job_id: the job's id (printed by ``mrkit submit``; ``job_id=`` names it).
        executor: the asynchronous executor the job was submitted to: ``redis://…``, or
            ``lambda://FUNCTION?storage=s3://…`` / ``lambda-local…`` with the storage it was
            submitted with.

    Returns:
        A :class:`JobHandle` on the resumed job (``wait()`` for its result).

    Raises:
        ResumeRefused: (a ``ConfigError``) the executor cannot resume asynchronous jobs, the job is
            unknown or expired, still running or done, or its data is gone.
    """
    ex = open_executor(executor, workers=1)
    service = job_service(ex)
    if service is None:
        ex.shutdown()
        raise resuming.ResumeRefused(
            f"executor {ex.name} runs jobs in the calling process, not as asynchronous jobs: resume "
            "the job with mrkit.run(..., job_id=ID, resume=True), which drives it from this process"
        )
    return service.resume_job(job_id)
