"""Asynchronous multi-step jobs: a chain of one-step jobs that advances without its submitter.

On a job service (Redis, serverless, Dask) the multi-step job ``J`` is a *chain*: step ``k`` runs as
the backend's ordinary one-step job ``J-step{k}``
(:func:`~mrkit.coordination.step_record.step_run_id`), with the options
:func:`~mrkit.coordination.step_options.step_options` gives it, exactly as
:func:`mrkit.multistep.run_steps` runs it. What is written once here, for every backend:

* :class:`ChainSpec`: what the chain needs to submit its later steps (the job, its run options,
  its worker count); the backend stores it signed, beside the chain's plain fields
  (:class:`ChainRecord`: step count and labels, current step, state, error), and unpickles it only
  once the signature verified.
* :func:`submit_chain`: stores the record, then submits step 1.
* :func:`advance`: called when step ``k`` published (by the worker or invocation that published
  it, and by any handle that finds the chain stuck after step ``k`` ended): submits step ``k + 1``
  over ``StepOutput(step k's intermediate place)``, or ends the chain done after the last step.
  Exactly once: a claim per step (:meth:`ChainStore.claim`) keeps duplicate publish deliveries from
  planning twice, and the backend's submit creates ``J-step{k+1}`` atomically (a second submit of
  the same id is refused), so a recovery after a crash between the claim and the submit never
  runs a step twice.
* :class:`~mrkit.coordination.chain_handle.ChainHandle` follows the whole job. A failed or
  cancelled step ends the chain with ``step K of N (name) of job J: …``.

A backend supplies the storage of the record (:class:`ChainStore`) and the handle of a step job.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from mrkit.coordination.handle import JobHandle
from mrkit.coordination.options import RunOptions
from mrkit.coordination.plan import new_job_id
from mrkit.coordination.prepare import StepOutput
from mrkit.coordination.resume import ResumeRefused
from mrkit.coordination.step_options import (
    delete_intermediate,
    intermediate_url,
    step_failure,
    step_label,
    step_options,
)
from mrkit.coordination.step_record import step_run_id
from mrkit.errors import AuthenticationError, ConfigError
from mrkit.execution import shipping
from mrkit.model.job import Job
from mrkit.model.steps import Step, job_steps, step_job

POLL_SECONDS = 0.2
#: A claim to submit the next step older than this, with that step still missing, is taken to be
#: its claimer's crash: the next advance submits the step (the backend's atomic create keeps it once).
CLAIM_GRACE_SECONDS = 30.0
ENDED = ("done", "failed", "cancelled")
_STEP_HOOKS = ("mapper", "combiner", "reducer", "partitioner")


@dataclass(frozen=True)
class ChainSpec:
    """What a chain needs to submit its steps (pickled, stored signed by the backend).

    Attributes:
        job: the multi-step job, with the run's params and files applied.
        options: the run's options (``job_id`` set to the chain's id).
        workers: the submitting executor's worker count (each step's default ``n_reduce``).
        base: the storage of the intermediate results (``storage=``, else the executor's).
    """

    job: Job
    options: RunOptions
    workers: int
    base: str

    @property
    def steps(self) -> list[Step]:
        return job_steps(self.job) or []

    def encode(self) -> bytes:
        """The spec as bytes; the job travels as its workers load it (:func:`pickle_job`)."""
        # The steps' functions are the job's code too: shipped by value when local (as pickle_job
        # ships a one-step job's hooks), so that any side that advances the chain can load it.
        hooks = [getattr(step, name, None) for step in self.steps for name in _STEP_HOOKS]
        code = shipping.dumps(self.job, roots=(*hooks, *(getattr(self.job, n, None) for n in _STEP_HOOKS)))
        return pickle.dumps((code, self.options, self.workers, self.base), protocol=5)

    @staticmethod
    def decode(data: bytes) -> ChainSpec:
        """Unpickle a spec; call only on bytes whose signature verified."""
        code, options, workers, base = pickle.loads(data)
        return ChainSpec(pickle.loads(code), options, workers, base)


@dataclass(frozen=True)
class ChainRecord:
    """The plain fields of a chain (nothing here is unpickled): readable without the secret."""

    id: str
    name: str
    labels: tuple[str, ...]  # "step 1 of 2 (count)", per step
    step: int = 1  # the step submitted last
    state: str = "running"
    error: str = ""
    submitted: float = field(default_factory=time.time)
    ended: float | None = None

    @property
    def n_steps(self) -> int:
        return len(self.labels)


class ChainStore(Protocol):
    """A chain's record in its backend (Redis keys, or documents in the job's object store)."""

    job_id: str

    def create(self, record: ChainRecord, spec: ChainSpec) -> None:
        """Store a new chain; raise ConfigError if the id is taken."""
        ...

    def read(self) -> ChainRecord | None:
        """The chain's plain fields, or None when there is no such chain."""
        ...

    def spec(self) -> ChainSpec:
        """The chain's spec, after verifying its signature (AuthenticationError otherwise)."""
        ...

    def claim(self, k: int) -> float | None:
        """Claim the submit of step ``k``: None when this call claimed it, else when it was claimed."""
        ...

    def set_step(self, k: int) -> None:
        """Record that step ``k`` was submitted (never moves back)."""
        ...

    def finish(self, state: str, error: str) -> bool:
        """End the running chain as ``state``; True when this call ended it."""
        ...

    def discard(self) -> None:
        """Delete the chain's record (its step 1 could not be submitted)."""
        ...


#: submit(job, inputs, options) -> handle: the backend's one-step submit.
Submit = Callable[[Job, Any, RunOptions], JobHandle]


def submit_chain(
    store_for: Callable[[str], ChainStore],
    submit: Submit,
    job: Job,
    steps: list[Step],
    inputs: Any,
    options: RunOptions,
    *,
    workers: int,
    base: str,
    handle_for: Callable[[str], JobHandle],
) -> str:
    """Store the chain of the multi-step ``job`` (options applied), submit its step 1, return its id.

    Args:
        store_for: the backend's :class:`ChainStore` of a job id.
        submit: the backend's one-step submit.
        job, steps, inputs, options: the job (options applied), its steps, inputs and run options.
        workers, base: see :class:`ChainSpec`.
        handle_for: the backend's handle of a one-step job id.

    Returns:
        The chain's id (its handle: :class:`~mrkit.coordination.chain_handle.ChainHandle`).

    Raises:
        ConfigError: a taken id; and whatever step 1's submit raises (nothing is left).
    """
    job_id = options.job_id or new_job_id(job.name)
    # Params, files and sorted values are in ``job`` already. A step's default n_reduce is one per
    # worker of the submitting executor, as in run_steps: fixed here, for the steps submitted later.
    n_reduce = options.n_reduce if options.n_reduce is not None else max(1, workers)
    options = options.replace(job_id=job_id, params=None, files=None, sort_values=False, n_reduce=n_reduce)
    labels = tuple(step_label(k, len(steps), step) for k, step in enumerate(steps, 1))
    store = store_for(job_id)
    spec = ChainSpec(job, options, workers, base)
    store.create(ChainRecord(job_id, job.name, labels), spec)
    try:
        _submit_step(spec, job_id, 1, inputs, submit)
    except BaseException:
        store.discard()
        raise
    return job_id


def _submit_step(spec: ChainSpec, job_id: str, k: int, inputs: Any, submit: Submit) -> JobHandle:
    steps = spec.steps
    between = None if k == len(steps) else intermediate_url(None, spec.options, job_id, k, spec.base)
    opts = step_options(
        spec.options,
        steps[k - 1],
        k,
        len(steps),
        between=between,
        run_id=step_run_id(job_id, k),
        submitted=True,
    )
    return submit(step_job(spec.job, steps[k - 1], k), inputs, opts)


def advance(store: ChainStore, k: int, submit: Submit, handle_for: Callable[[str], JobHandle]) -> None:
    """Step ``k`` of the chain published: submit step ``k + 1``, or end the chain after the last.

    Safe to call any number of times, from any process (see the module docstring). A step that
    cannot be submitted (its planning fails) fails the chain with the step-named sentence.
    """
    record = store.read()
    if record is None or record.state != "running" or record.step > k:
        return
    job_id, n = store.job_id, record.n_steps
    if k >= n:
        if store.finish("done", ""):
            delete_between(store, k - 1)
        return
    claimed = store.claim(k + 1)
    if claimed is not None and (
        time.time() - claimed < CLAIM_GRACE_SECONDS or step_exists(handle_for, step_run_id(job_id, k + 1))
    ):
        return  # another delivery submits it (or did)
    try:
        spec = store.spec()
    except AuthenticationError:
        return  # a side without the secret cannot advance the chain (its workers do)
    except Exception as exc:  # a spec this side cannot load (a module it lacks): the step cannot run
        _fail_step(store, record, k + 1, f"{type(exc).__name__}: {exc}")
        return
    inputs = StepOutput(intermediate_url(None, spec.options, job_id, k, spec.base))
    try:
        _submit_step(spec, job_id, k + 1, inputs, submit)
    except ConfigError as exc:
        if not step_exists(handle_for, step_run_id(job_id, k + 1)):
            _fail_step(store, record, k + 1, str(exc), spec)
            return
        # else: submitted by a recovery meanwhile; the atomic create kept it once
    except Exception as exc:
        _fail_step(store, record, k + 1, f"{type(exc).__name__}: {exc}", spec)
        return
    store.set_step(k + 1)
    if k >= 2:
        delete_between(store, k - 1, spec)  # read by step k, which has ended
    after = store.read()
    if after is not None and after.state == "cancelled":  # cancelled while this step was submitted
        handle_for(step_run_id(job_id, k + 1)).cancel()


def chain_resume_refused(job_id: str) -> ConfigError:
    """The refusal of ``mrkit.resume`` for a chain (a multi-step job does not resume yet)."""
    return ResumeRefused(
        f"job {job_id} is a multi-step job, and resuming one is not supported yet: submit it again"
    )


def step_exists(handle_for: Callable[[str], JobHandle], run_id: str) -> bool:
    """True when the backend knows the one-step job ``run_id`` (a step that was submitted)."""
    try:
        return handle_for(run_id).status().state not in ("unknown", "lost")
    except Exception:
        return False


def _fail_step(
    store: ChainStore, record: ChainRecord, k: int, why: str, spec: ChainSpec | None = None
) -> None:
    """Fail the chain at step ``k`` (it could not be submitted) and delete what step ``k`` would
    have read, if this call ended the chain."""
    if store.finish("failed", step_failure(record.labels[k - 1], store.job_id, why)):
        delete_between(store, k - 1, spec)


def delete_between(store: ChainStore, k: int, spec: ChainSpec | None = None) -> None:
    """Delete step ``k``'s intermediate result (if there is such a step and it had one); ``spec``:
    the chain's, when the caller has loaded it already."""
    if k < 1:
        return
    try:
        spec = spec or store.spec()
        if k < len(spec.steps):
            delete_intermediate(intermediate_url(None, spec.options, store.job_id, k, spec.base))
    except Exception:
        pass  # left for the job's storage to expire; never a reason to fail the chain
