"""The one runtime every worker calls: ``run_task(spec) -> TaskResult``.

Whatever carried the spec here (a pipe, a Redis stream, an HTTP request, a Lambda event), this is
where a task attempt runs:

* **map**: read the split, run the map hooks into a :class:`~mrkit.data.map_side.MapOutput`, write
  sorted runs under the attempt's own keys, then commit with ``put_if_absent`` on the task's
  ``COMMIT`` key. The first attempt to commit wins; a later one (a duplicate delivery, a zombie, a
  speculative twin) deletes its own files and reports ``committed=False``.
* **map-only** (``n_reduce=0``): the map hooks' pairs, in order, are the task's output part
  (:mod:`mrkit.data.map_only`), written and committed as a reduce task's part is.
* **reduce**: read every map task's commit manifest, merge this partition's runs, reduce, write the
  part file under the attempt's temp key in the output storage, commit the same way.
* **duplicates**: a map or reduce attempt whose task already has a committed attempt (its
  ``COMMIT`` key exists) is not run: it returns at once with ``ok=True, committed=False`` and
  ``counters={"duplicates_skipped": 1}``. Every transport that redelivers gets this for free.
* **call**: the futures API: apply a function to a chunk of argument tuples.

``run_task`` never raises for a failing task: user-code errors and data errors come back as
``ok=False`` with a :class:`~mrkit.model.task.TaskFailure` naming the input position, so that every
transport reports them the same way. Jobs and futures functions are unpickled once per process and
cached by digest; the digest is checked before unpickling.

About 420 lines: the task kinds (map, map-only, reduce, call) share one commit rule, the live
progress counters and the job cache; the data work itself is in :mod:`mrkit.data`.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import pickle
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from mrkit.data.gc_pause import gc_relaxed
from mrkit.data.map_side import MapOutput, UserCodeError, map_split, user_failure
from mrkit.data.reduce_side import fits_in_memory, open_runs, reduce_partition, write_partition
from mrkit.errors import InputError, StorageError
from mrkit.model import layout
from mrkit.model.context import InputInfo, TaskContext, activate
from mrkit.model.job import Job
from mrkit.model.task import InputSplit, TaskFailure, TaskKind, TaskResult, TaskSpec
from mrkit.storage import open_storage
from mrkit.storage.base import Storage

_CACHE_LOCK = threading.Lock()
_STORAGES: dict[str, Storage] = {}
_JOBS: dict[str, Job] = {}
_FUNCTIONS: dict[str, Callable[..., Any]] = {}
_CACHE_LIMIT = 32
# thread id -> [records, bytes] read so far by the map attempt that thread runs (see live_progress).
_LIVE: dict[int, list[int]] = {}


def live_progress() -> tuple[int, int]:
    """``(records, bytes)`` read so far by the map attempts running in this process, summed.

    Updated once per record batch (one block read), so a long map task's progress can be shown
    before it ends: the processes executor sends it to the parent in its heartbeat, the inline
    executor reads it directly. Reduce attempts and finished attempts are not counted.
    """
    records = nbytes = 0
    for counts in list(_LIVE.values()):
        records += counts[0]
        nbytes += counts[1]
    return records, nbytes


def storage_for(url: str) -> Storage:
    """Open (once per process) the storage named by ``url``."""
    with _CACHE_LOCK:
        storage = _STORAGES.get(url)
        if storage is None:
            storage = _STORAGES[url] = open_storage(url)
        return storage


def load_job(storage: Storage, key: str, digest: str) -> Job:
    """Unpickle the job at ``key`` once per process, after checking its SHA-256."""
    with _CACHE_LOCK:
        job = _JOBS.get(digest)
    if job is not None:
        return job
    raw = storage.get(key)
    if hashlib.sha256(raw).hexdigest() != digest:
        raise StorageError(
            f"job code at {storage.url}/{key} does not match its digest; refusing to unpickle it"
        )
    import cloudpickle  # noqa: F401 - registers the reducers cloudpickled code needs

    job = pickle.loads(raw)
    with _CACHE_LOCK:
        if len(_JOBS) >= _CACHE_LIMIT:
            _JOBS.clear()
        _JOBS[digest] = job
    return job


def _load_function(spec: TaskSpec) -> Callable[..., Any]:
    with _CACHE_LOCK:
        fn = _FUNCTIONS.get(spec.call_digest)
    if fn is None:
        if hashlib.sha256(spec.call_fn).hexdigest() != spec.call_digest:
            raise StorageError(
                f"function of {spec.task_id} does not match its digest; refusing to unpickle it"
            )
        import cloudpickle  # noqa: F401

        fn = pickle.loads(spec.call_fn)
        with _CACHE_LOCK:
            if len(_FUNCTIONS) >= _CACHE_LIMIT:
                _FUNCTIONS.clear()
            _FUNCTIONS[spec.call_digest] = fn
    return fn


def run_task(spec: TaskSpec, *, worker: str = "", catch_interrupt: bool = True) -> TaskResult:
    """Run one attempt of ``spec`` here and now.

    Args:
        spec: the task attempt.
        worker: a label for this process (``pid:123``, ``host:port``) reported in the result.
        catch_interrupt: also turn ``KeyboardInterrupt`` into a failure. ``SystemExit`` raised by
            user code always becomes a ``WorkerCrashed`` failure (a failed attempt, counted against
            ``max_attempts``) so that user code cannot end a worker by raising it; so does
            ``KeyboardInterrupt`` unless the host runs tasks in the user's own main thread (the
            inline executor passes False, so that Ctrl-C still stops the program).

    Returns:
        The attempt's :class:`TaskResult`; ``ok=False`` with ``failure`` set when it failed.
    """
    started = time.perf_counter()
    worker = worker or f"pid:{os.getpid()}"
    counters: dict[str, int] = {}
    try:
        if spec.kind is TaskKind.CALL:
            output = _run_call(spec, counters)
            return TaskResult(
                spec.task_id,
                spec.attempt,
                ok=True,
                committed=True,
                counters=counters,
                output=output,
                worker=worker,
                seconds=time.perf_counter() - started,
            )
        storage = storage_for(spec.storage_url)
        if storage.exists(layout.commit_key(spec.job_id, spec.task_id)):
            # A duplicate delivery (a redelivered message, a retry racing a late success): the task
            # already has its output, so this attempt would only be discarded at commit. Skip it.
            return TaskResult(
                spec.task_id,
                spec.attempt,
                ok=True,
                committed=False,
                counters={"duplicates_skipped": 1},
                worker=worker,
                seconds=time.perf_counter() - started,
            )
        job = load_job(storage, spec.job_key, spec.job_digest)
        ctx = TaskContext(
            job_id=spec.job_id,
            task_id=spec.task_id,
            attempt=spec.attempt,
            params=job.params,
            files=getattr(job, "files", {}),  # jobs pickled before side files existed have none
            input=input_info(spec.split) if spec.split is not None else None,
        )
        with activate(ctx):
            if spec.kind is TaskKind.MAP:
                committed = _run_map(spec, job, storage, counters, ctx)
            else:
                committed = _run_reduce(spec, job, storage, counters, ctx)
        return TaskResult(
            spec.task_id,
            spec.attempt,
            ok=True,
            committed=committed,
            counters=counters,
            worker=worker,
            seconds=time.perf_counter() - started,
        )
    except UserCodeError as exc:
        failure = exc.failure
    except InputError as exc:
        # Bad input fails the same way on every attempt: say so, so the driver does not retry it.
        failure = TaskFailure(where="", exc_type=type(exc).__name__, message=str(exc), retryable=False)
    except OSError as exc:
        failure = user_failure("", exc).failure
        if exc.errno == errno.ENOSPC:
            # The bare error names no file: say which storage filled up, and what to do.
            target = spec.output_url if spec.kind is TaskKind.REDUCE else spec.storage_url
            where = exc.filename or target
            failure = dataclasses.replace(
                failure,
                message=f"no space left on the device holding {where} while {spec.task_id} wrote its "
                f"output ({exc}); free some space or choose another storage= / TMPDIR",
            )
    except Exception as exc:
        failure = user_failure("", exc).failure
    except (SystemExit, KeyboardInterrupt) as exc:
        if isinstance(exc, KeyboardInterrupt) and not catch_interrupt:
            raise
        failure = _exit_failure(exc)
    return TaskResult(
        spec.task_id,
        spec.attempt,
        ok=False,
        counters=counters,
        worker=worker,
        seconds=time.perf_counter() - started,
        failure=failure,
    )


def input_info(split: InputSplit) -> InputInfo:
    """What ``mrkit.context().input`` says of ``split``: records a driver stored have no path."""
    stored = split.format == "pickle" and "#" in split.uri
    return InputInfo("" if stored else split.uri, split.start, split.length, split.index)


def _exit_failure(exc: SystemExit | KeyboardInterrupt) -> TaskFailure:
    """The failure of an attempt whose user code raised SystemExit or KeyboardInterrupt."""
    from mrkit.execution.watchdog import crash_failure

    what = f"SystemExit({exc.code!r})" if isinstance(exc, SystemExit) else "KeyboardInterrupt"
    failure = crash_failure(f"user code raised {what}")
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return dataclasses.replace(failure, traceback=tb)


def _run_map(spec: TaskSpec, job: Job, storage: Storage, counters: dict[str, int], ctx: TaskContext) -> bool:
    run = layout.attempt_run(spec.attempt)  # this execution's own files (see layout.attempt_run)
    from mrkit.data.readers import open_split  # the reader module is the heaviest import of the runtime

    assert spec.split is not None, "map task without a split"
    split = spec.split
    if split.mapper >= 0:  # an input with its own mapper (inputs={path: mapper}; one per task)
        job = job.for_input(split.mapper)
    if spec.n_reduce == 0:
        return _run_map_only(spec, job, storage, counters, ctx, open_split(split))
    reader: Any
    if spec.more_splits:  # small files packed into this task: read one after another
        from mrkit.data.pieces import PackedReader

        def now_reading(piece: InputSplit) -> None:
            ctx.input = input_info(piece)

        reader = PackedReader(spec.pieces, now_reading)
    else:
        reader = open_split(split)
    out = MapOutput(
        n_reduce=spec.n_reduce,
        partitioner=job.partitioner,
        combiner=job.combiner,
        memory_bytes=spec.settings.memory_bytes,
        open_part=lambda p: storage.open_write(layout.map_part_key(spec.job_id, spec.task_id, run, p)),
    )
    ident = threading.get_ident()
    try:
        with gc_relaxed():  # the buffer grows to every distinct key of the split: see gc_relaxed
            records = map_split(job, _counted(reader, ident), out, spec.describe_input)
            offsets = out.finish()
    except BaseException:
        out.abort()
        raise
    finally:
        _LIVE.pop(ident, None)
    counters.update(
        records_in=records,
        bytes_in=reader.bytes_read,
        pairs_out=out.pairs_out,
        spills=max(0, out.spills - 1),
        records_skipped=reader.skipped,
    )
    counters.update((f"user.{name}", value) for name, value in ctx.counters.items())
    manifest = {
        "attempt": spec.attempt,
        "parts": {
            str(p): [layout.map_part_key(spec.job_id, spec.task_id, run, p), bounds]
            for p, bounds in offsets.items()
        },
        "counters": counters,
    }
    return _commit(storage, spec, manifest, layout.map_run_prefix(spec.job_id, spec.task_id, run))


def _run_map_only(
    spec: TaskSpec, job: Job, storage: Storage, counters: dict[str, int], ctx: TaskContext, reader: Any
) -> bool:
    """A map task of a map-only job (``n_reduce=0``): its pairs, in the order the mapper emits them,
    are its output part, written and committed as a reduce task's part is (first attempt wins)."""
    from mrkit.data.map_only import map_only_pairs

    assert spec.split is not None
    run = layout.attempt_run(spec.attempt)
    output = storage_for(spec.output_url)
    temp_key = layout.reduce_temp_key(spec.job_id, spec.task_id, run, spec.split.index)
    ident = threading.get_ident()
    try:
        pairs = map_only_pairs(job, _counted(reader, ident), spec.split.describe, counters)
        written = write_partition(lambda: output.open_write(temp_key), pairs, spec.settings.output_format)
    except BaseException:
        output.delete(temp_key)
        raise
    finally:
        _LIVE.pop(ident, None)
    counters.update(
        bytes_in=reader.bytes_read,
        records_out=written,
        bytes_out=output.size(temp_key),
        records_skipped=reader.skipped,
    )
    return _commit_part(storage, output, spec, temp_key, counters, ctx)


def _counted(reader: Any, ident: int) -> Any:
    """The reader's batches, counted into this thread's live progress (records, bytes read)."""
    live = _LIVE[ident] = [0, 0]
    for batch in reader.batches():
        live[0] += len(batch.records)
        live[1] = reader.bytes_read
        yield batch


def _commit_part(
    storage: Storage,
    output: Storage,
    spec: TaskSpec,
    temp_key: str,
    counters: dict[str, int],
    ctx: TaskContext,
) -> bool:
    """Commit an attempt that wrote an output part at ``temp_key`` (first attempt wins; a loser
    deletes its part)."""
    counters.update((f"user.{name}", value) for name, value in ctx.counters.items())
    manifest = {"attempt": spec.attempt, "key": temp_key, "counters": counters}
    committed = storage.put_if_absent(
        layout.commit_key(spec.job_id, spec.task_id), json.dumps(manifest).encode()
    )
    if not committed:
        output.delete(temp_key)
    return committed


def _run_reduce(
    spec: TaskSpec, job: Job, storage: Storage, counters: dict[str, int], ctx: TaskContext
) -> bool:
    run = layout.attempt_run(spec.attempt)  # this execution's own files (see layout.attempt_run)
    parts: list[tuple[str, list[int]]] = []
    for m in range(spec.n_map):
        map_task = layout.task_id("map", m)
        raw = storage.get_or_none(layout.commit_key(spec.job_id, map_task))
        if raw is None:
            raise StorageError(f"{spec.task_id} cannot start: {map_task} of job {spec.job_id} has no commit")
        entry = json.loads(raw)["parts"].get(str(spec.partition))
        if entry is not None:
            parts.append((entry[0], entry[1]))
    runs = open_runs(storage, parts)
    run_bytes = sum(bounds[-1] - bounds[0] for _key, bounds in parts)
    in_memory = fits_in_memory(run_bytes, spec.settings.memory_bytes)
    output = storage_for(spec.output_url)
    temp_key = layout.reduce_temp_key(spec.job_id, spec.task_id, run, spec.partition)
    fmt = spec.settings.output_format
    pairs = reduce_partition(job, runs, counters, in_memory=in_memory)
    written = write_partition(lambda: output.open_write(temp_key), pairs, fmt)
    counters["records_out"] = written
    counters["grouped_in_memory"] = int(in_memory)
    counters["bytes_out"] = output.size(temp_key)
    counters["runs_in"] = len(runs)
    return _commit_part(storage, output, spec, temp_key, counters, ctx)


def delete_attempt_files(spec: TaskSpec) -> int:
    """Delete the files every execution of attempt ``spec`` wrote (a map's runs in the job's
    storage, a reduce's part in the output's ``_temporary/``); other attempts' files and the task's
    COMMIT stay. Returns how many keys went."""
    if spec.kind is TaskKind.MAP:
        prefix = layout.map_task_prefix(spec.job_id, spec.task_id)
        return _delete_runs(storage_for(spec.storage_url), prefix, spec.attempt)
    prefix = layout.reduce_task_temp_prefix(spec.job_id, spec.task_id)
    return _delete_runs(storage_for(spec.output_url), prefix, spec.attempt)


def _delete_runs(storage: Storage, task_prefix: str, attempt: int) -> int:
    """Delete every run folder of attempt number ``attempt`` under ``task_prefix``."""
    runs = {
        key[len(task_prefix) :].split("/", 1)[0]
        for key in storage.list(task_prefix)
        if "/" in key[len(task_prefix) :]
    }
    return sum(
        storage.delete_prefix(f"{task_prefix}{run}/") for run in runs if layout.run_attempt(run) == attempt
    )


def _commit(storage: Storage, spec: TaskSpec, manifest: dict[str, Any], attempt_prefix: str) -> bool:
    """First attempt wins: publish ``manifest`` on the task's COMMIT key, else drop our files."""
    won = storage.put_if_absent(layout.commit_key(spec.job_id, spec.task_id), json.dumps(manifest).encode())
    if not won:
        storage.delete_prefix(attempt_prefix)
    return won


def _run_call(spec: TaskSpec, counters: dict[str, int]) -> bytes:
    fn = _load_function(spec)
    chunk = pickle.loads(spec.call)
    results = []
    index = 0
    try:
        for index, args in enumerate(chunk):  # noqa: B007 - index names the item in the except below
            results.append(fn(*args))
    except Exception as exc:
        raise user_failure(f"item {index} of {spec.task_id}", exc) from exc
    counters["call_items"] = len(chunk)
    return pickle.dumps(results, protocol=5)
