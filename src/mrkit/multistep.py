"""Running a multi-step job (:mod:`mrkit.model.steps`): one map → reduce per step, in order.

:func:`run_steps` runs step 1 over the job's inputs, then each next step over the previous step's
result: its ``(key, value)`` pairs, with their exact Python types (the intermediate steps write the
``pickle`` format and publish nothing; their pairs become the next step's input records, stored as
pickled chunks in the job's storage like any in-memory input). Only the last step writes the output.

* Every step runs on the run's executor, opened once for all steps. A last step without reducer
  (and without its own ``n_reduce``) is map-only: its map tasks write the output parts.
* Counters: each step's under ``step{K}.`` (``step1.map.records_in``); unprefixed, the job's two
  ends: step 1's ``map.*`` (what was read) and the last step's ``reduce.*`` (what was written).
* A failure names its step: *step 2 of 3 (top) of job X: map task …*; nothing is published.
* Job ids: the result carries the job's id (``job_id=``, else a new one); each step runs as a job of
  its own id (``{name}-step{K}-…``, named in progress and in the last step's ``_SUCCESS``).

Not yet: ``resume=True`` (refused in one sentence), and asynchronous multi-step jobs on Redis,
serverless and Dask (``mrkit.submit`` refuses; on the other executors it runs these steps in a
background thread). The intermediate pairs pass through the driver's memory between steps.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from mrkit.coordination.options import RunOptions
from mrkit.coordination.plan import new_job_id
from mrkit.coordination.result import Result
from mrkit.errors import ConfigError, JobFailed
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
    try:
        for k, step in enumerate(steps, 1):
            last = k == len(steps)
            one = step_job(job, step, k)
            step_options = options.replace(
                # Each step runs as a job of its own id: a named step would keep its state for a
                # resume (a multi-step job does not resume yet), in the output folder.
                job_id=None,
                # A last step without reducer is map-only: its map tasks write the output.
                n_reduce=0
                if last and step.reducer is None and step.n_reduce is None
                else step.n_reduce or options.n_reduce,
                quiet=True,
                params=None,  # applied to the job already (step_job merged the step's over them)
                files=None,
                **({} if last else {"output": None, "overwrite": False, "sort_output": False}),
                **({} if k == 1 else {"input_format": "auto", "split_size": None}),
            )
            try:
                result = run_one(one, current, step_options, executor=ex)
            except JobFailed as exc:
                label = f"step {k} of {len(steps)}" + (f" ({step.name})" if step.name else "")
                raise JobFailed(
                    f"{label} of job {job_id}: {exc}",
                    job_id=job_id,
                    task_id=exc.task_id,
                    remote_traceback=exc.remote_traceback,
                    counters={**counters, **{f"step{k}.{n}": v for n, v in exc.counters.items()}},
                    status=exc.status,
                ) from exc
            counters.update({f"step{k}.{name}": value for name, value in result.counters.items()})
            current = result
    finally:
        if owns_executor:
            ex.shutdown()
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
    if not options.quiet:
        print(final.summary() + f" ({len(steps)} steps)", file=sys.stderr)
    return final
