"""Running a multi-step job (:mod:`mrkit.model.steps`): one map → reduce per step, in order.

:func:`run_steps` runs step 1 over the job's inputs, then each next step over the previous step's
result: its ``(key, value)`` pairs, with their exact Python types. An intermediate step's reduce
tasks write ``pickle`` parts into the job's storage (:func:`intermediate_url`), never to the
user's output; the next step's map tasks read those parts straight from there, one split per part
(:class:`~mrkit.coordination.prepare.StepOutput`: the driver only hashes each part, so that nothing
is unpickled that the plan does not vouch for), and the parts are deleted once read. Only the last
step writes the output.

* Every step runs on the run's executor, opened once for all steps. A last step without reducer
  (and without its own ``n_reduce``) is map-only: its map tasks write the output parts.
* Counters: each step's under ``step{K}.`` (``step1.map.records_in``); unprefixed, the job's two
  ends: step 1's ``map.*`` (what was read) and the last step's ``reduce.*`` (what was written).
* A failure names its step: *step 2 of 3 (top) of job X: map task …*; nothing is published.
* Job ids: the result carries the job's id (``job_id=``, else a new one); each step runs as a job of
  its own id, ``{job}-step{k}`` (named in progress and in the last step's ``_SUCCESS``). The job
  registry holds the job under its id, read through its steps (``mrkit status/plot/cancel ID``:
  :mod:`mrkit.coordination.step_record`).

Not yet: ``resume=True`` (refused in one sentence), and asynchronous multi-step jobs on Redis,
serverless and Dask (``mrkit.submit`` refuses; on the other executors it runs these steps in a
background thread).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from mrkit.coordination.options import RunOptions
from mrkit.coordination.plan import new_job_id
from mrkit.coordination.prepare import StepOutput
from mrkit.coordination.result import Result
from mrkit.coordination.step_record import StepsRecording
from mrkit.errors import ConfigError, JobCancelled, JobFailed
from mrkit.execution.base import Executor
from mrkit.model.job import Job
from mrkit.model.steps import Step, step_job


def run_steps(
    job: Job,
    steps: list[Step],
    inputs: Any,
    options: RunOptions,
    *,
    executor: str | Executor,
    run_one: Callable[..., Result],
) -> Result:
    """Run ``steps`` of ``job`` in order (see the module docstring) and return the last one's result.

    Args:
        job: the multi-step job (its params and side files, already applied by ``options``).
        steps: its checked steps (:func:`~mrkit.model.steps.job_steps`).
        inputs, options, executor: as for :func:`mrkit.run`.
        run_one: runs one one-step job: ``run_one(job, inputs, options, executor=...)``.

    Raises:
        ConfigError: ``resume=True``.
        JobFailed: a step failed; the message starts with the step.
    """
    if options.resume:
        raise ConfigError(
            f"resume=True does not apply to the multi-step job {job.name!r} yet: run it again from the start"
        )
    started = time.monotonic()
    job_id = options.job_id or new_job_id(job.name)
    owns_executor = not isinstance(executor, Executor)
    ex = options.open_executor(executor)
    counters: dict[str, int] = {}
    current = inputs
    handed: list[str] = []  # the intermediate results still stored, deleted once read
    record = StepsRecording(job_id, job.name, ex.name, len(steps))  # the whole job, in the registry
    error: BaseException | None = None
    try:
        for k, step in enumerate(steps, 1):
            if record.cancelled.is_set():
                raise JobCancelled(
                    f"job {job_id} was cancelled before step {k} of {len(steps)}; nothing was published",
                    job_id=job_id,
                    counters=counters,
                )
            last = k == len(steps)
            one = step_job(job, step, k)
            between = None if last else intermediate_url(ex, options, job_id, k)
            step_options = options.replace(
                # Each step runs as a job of its own id, {job}-step{k}, recorded in the registry and
                # linked to the job's record; not a named job_id, which would keep its state for a
                # resume (a multi-step job does not resume yet) in the output folder.
                job_id=None,
                step_id=record.start_step(k),
                # A last step without reducer is map-only: its map tasks write the output.
                n_reduce=0
                if last and step.reducer is None and step.n_reduce is None
                else step.n_reduce or options.n_reduce,
                quiet=True,
                params=None,  # applied to the job already (step_job merged the step's over them)
                files=None,
                **(
                    {}
                    if last
                    else {"output": between, "format": "pickle", "overwrite": True, "sort_output": False}
                ),
                **({} if k == 1 else {"input_format": "auto", "split_size": None}),
            )
            try:
                result = run_one(one, current, step_options, executor=ex)
            except JobFailed as exc:
                label = f"step {k} of {len(steps)}" + (f" ({step.name})" if step.name else "")
                raise (JobCancelled if isinstance(exc, JobCancelled) else JobFailed)(
                    f"{label} of job {job_id}: {exc}",
                    job_id=job_id,
                    task_id=exc.task_id,
                    remote_traceback=exc.remote_traceback,
                    counters={**counters, **{f"step{k}.{n}": v for n, v in exc.counters.items()}},
                    status=exc.status,
                ) from exc
            counters.update({f"step{k}.{name}": value for name, value in result.counters.items()})
            while handed:  # the result of the step before this one has been read
                _delete(handed.pop())
            if between is not None:
                handed.append(between)
                current = StepOutput(between)
            else:
                current = result
    except BaseException as exc:
        error = exc
        raise
    finally:
        for url in handed:
            _delete(url)
        if owns_executor:
            ex.shutdown()
        if error is not None:
            record.end(started, error, counters)
    ends = {n: v for n, v in counters.items() if n.startswith("step1.map.")}
    ends = {n.removeprefix("step1."): v for n, v in ends.items()}
    ends.update({n: v for n, v in result.counters.items() if n.startswith("reduce.")})
    final = Result(
        job_id,
        result.output,
        {**ends, **counters},
        time.monotonic() - started,
        None if result.output is not None else list(result),
    )
    record.end(started, None, final.counters)
    if not options.quiet:
        print(final.summary() + f" ({len(steps)} steps)", file=sys.stderr)
    return final


def intermediate_url(ex: Executor, options: RunOptions, job_id: str, k: int) -> str:
    """Where step ``k``'s result waits for step ``k + 1``: the job's storage (``storage=``, else the
    executor's), under ``{job_id}/step{k}/``; a new temp folder when the workers share this
    machine's files and no storage is named."""
    base = options.storage or ex.storage_url(job_id)
    if base:
        joint = base.rstrip("/") + "/" if "#" in base else base + "#"
        return f"{joint}{job_id}/step{k}/"
    if not ex.local:
        raise ConfigError(
            f"executor {ex.name} runs tasks on other machines: give storage= a URL they all reach"
        )
    return tempfile.mkdtemp(prefix=f"mrkit-{job_id}-step{k}-")


def _delete(url: str) -> None:
    """Remove an intermediate result (a temp folder, or its keys in the job's storage)."""
    if "://" not in url:
        shutil.rmtree(url, ignore_errors=True)
        return
    from mrkit.storage import open_storage

    with open_storage(url) as storage:
        storage.delete_prefix("")
