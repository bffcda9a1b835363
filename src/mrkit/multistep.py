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

The per-step rules (options, intermediate place, failure sentence, counters) are
:mod:`mrkit.coordination.step_options`, shared with the asynchronous form: on Redis, serverless and
Dask, ``mrkit.submit`` runs a multi-step job as a chain of one-step jobs that the backend advances
itself (:mod:`mrkit.coordination.chain`); on the other executors it runs :func:`run_steps` in a
background thread.

Not yet: ``resume=True`` (refused in one sentence), here and for a chain.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from mrkit.coordination.options import RunOptions
from mrkit.coordination.plan import new_job_id
from mrkit.coordination.prepare import StepOutput
from mrkit.coordination.result import Result
from mrkit.coordination.step_options import (
    delete_intermediate,
    intermediate_url,
    job_counters,
    prefixed,
    step_failure,
    step_label,
    step_options,
)
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
    ex.start()  # before the registry's cancel watch starts a thread: see Executor.start
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
            step_opts = step_options(
                options, step, k, len(steps), between=between, run_id=record.start_step(k)
            )
            try:
                result = run_one(one, current, step_opts, executor=ex)
            except JobFailed as exc:
                raise (JobCancelled if isinstance(exc, JobCancelled) else JobFailed)(
                    step_failure(step_label(k, len(steps), step), job_id, str(exc)),
                    job_id=job_id,
                    task_id=exc.task_id,
                    remote_traceback=exc.remote_traceback,
                    counters={**counters, **prefixed(exc.counters, k)},
                    status=exc.status,
                ) from exc
            counters.update(prefixed(result.counters, k))
            while handed:  # the result of the step before this one has been read
                delete_intermediate(handed.pop())
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
            delete_intermediate(url)
        if owns_executor:
            ex.shutdown()
        if error is not None:
            record.end(started, error, counters)
    final = Result(
        job_id,
        result.output,
        job_counters(counters, result.counters),
        time.monotonic() - started,
        None if result.output is not None else list(result),
    )
    record.end(started, None, final.counters)
    if not options.quiet:
        print(final.summary() + f" ({len(steps)} steps)", file=sys.stderr)
    return final
