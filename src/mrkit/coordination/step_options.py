"""How each step of a multi-step job is run, written once for every way of running one.

A multi-step job (:mod:`mrkit.model.steps`) runs step ``k`` as a one-step job of its own. Whether
the steps are driven by this process (:func:`mrkit.multistep.run_steps`) or advance on an
asynchronous backend as a chain of submitted jobs (Redis, serverless, Dask), the same three rules
apply, and they are here:

* :func:`step_options`: the run options of step ``k`` (its ``n_reduce``; an intermediate step writes
  ``pickle`` parts to its intermediate place; only the last one writes the output);
* :func:`intermediate_url`: where step ``k``'s result waits for step ``k + 1``;
* :func:`step_failure`: the sentence a failure of step ``k`` becomes (``step 2 of 3 (top) of job
  J: …``), and :func:`delete_intermediate` for the parts once read.
"""

from __future__ import annotations

import shutil
import tempfile

from mrkit.coordination.options import RunOptions
from mrkit.errors import ConfigError
from mrkit.execution.base import Executor
from mrkit.model.steps import Step


def step_options(
    options: RunOptions,
    step: Step,
    k: int,
    n_steps: int,
    *,
    between: str | None,
    run_id: str,
    submitted: bool = False,
) -> RunOptions:
    """The options of step ``k`` (from 1) of ``n_steps``, from the whole job's ``options``.

    Args:
        options: the job's run options.
        step: the step.
        k, n_steps: its number and the step count.
        between: where an intermediate step writes its result (:func:`intermediate_url`); None for
            the last step, which writes the job's output.
        run_id: the id the step runs under (``{job}-step{k}``).
        submitted: the step is submitted to an asynchronous job service, which takes its id as
            ``job_id``; a step run by this process takes it as ``step_id`` (a named ``job_id``
            would keep its state for a resume, and a multi-step job does not resume yet).

    Returns:
        The step's :class:`RunOptions`. ``params`` and ``files`` are dropped: the step's job
        (:func:`~mrkit.model.steps.step_job`) has them applied already.
    """
    last = between is None
    return options.replace(
        job_id=run_id if submitted else None,
        step_id=None if submitted else run_id,
        # A last step without reducer is map-only: its map tasks write the output.
        n_reduce=0
        if last and step.reducer is None and step.n_reduce is None
        else step.n_reduce or options.n_reduce,
        quiet=True,
        params=None,
        files=None,
        **({} if last else {"output": between, "format": "pickle", "overwrite": True, "sort_output": False}),
        # A later step reads the pickle parts of the one before: one split per part.
        **({} if k == 1 else {"input_format": "auto", "split_size": None}),
    )


def step_label(k: int, n_steps: int, step: Step | None = None, name: str = "") -> str:
    """``step 2 of 3 (top)``: how messages name step ``k`` (``name``: the step's, if no ``step``)."""
    name = step.name if step is not None and step.name else name
    return f"step {k} of {n_steps}" + (f" ({name})" if name else "")


def step_failure(label: str, job_id: str, error: str) -> str:
    """The message of a multi-step job whose step ``label`` failed with ``error``."""
    return f"{label} of job {job_id}: {error}"


def prefixed(counters: dict[str, int], k: int) -> dict[str, int]:
    """Step ``k``'s counters as the whole job reports them: ``step{k}.map.records_in``."""
    return {f"step{k}.{name}": value for name, value in counters.items()}


def job_counters(per_step: dict[str, int], last: dict[str, int]) -> dict[str, int]:
    """The whole job's counters: every step's (``per_step``, already prefixed), and unprefixed its
    two ends: step 1's ``map.*`` (what was read) and the last step's ``reduce.*`` (``last``)."""
    ends = {n.removeprefix("step1."): v for n, v in per_step.items() if n.startswith("step1.map.")}
    ends.update({n: v for n, v in last.items() if n.startswith("reduce.")})
    return {**ends, **per_step}


def intermediate_url(ex: Executor | None, options: RunOptions, job_id: str, k: int, base: str = "") -> str:
    """Where step ``k``'s result waits for step ``k + 1``: the job's storage (``storage=``, else
    ``base``, else the executor's), under ``{job_id}/step{k}/``; a new temp folder when the workers
    share this machine's files and no storage is named.

    Raises:
        ConfigError: no storage is named and the executor runs tasks on other machines.
    """
    base = options.storage or base or (ex.storage_url(job_id) if ex is not None else "") or ""
    if base:
        joint = base.rstrip("/") + "/" if "#" in base else base + "#"
        return f"{joint}{job_id}/step{k}/"
    if ex is None or not ex.local:
        name = ex.name if ex is not None else "this executor"
        raise ConfigError(f"executor {name} runs tasks on other machines: give storage= a URL they all reach")
    return tempfile.mkdtemp(prefix=f"mrkit-{job_id}-step{k}-")


def delete_intermediate(url: str) -> None:
    """Remove an intermediate result (a temp folder, or its keys in the job's storage)."""
    if "://" not in url:
        shutil.rmtree(url, ignore_errors=True)
        return
    from mrkit.storage import open_storage

    with open_storage(url) as storage:
        storage.delete_prefix("")
