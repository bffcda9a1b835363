"""Multi-step jobs on the object-store job services (serverless, Dask): the chain's documents.

The chain (steps run as the one-step jobs ``J-step{k}``, advanced when a step publishes) is
:mod:`mrkit.coordination.chain`; this module keeps its record in the job's storage, beside its
steps' own keys, and advances it from inside the invocation that published a step. Keys, under
``{J}/chain/`` of the storage the job was submitted with:

* ``record.json``: the plain fields (name, step labels, submit time) and the SHA-256 of the spec;
  created with ``put_if_absent``, so of two submitters of one id one wins.
* ``spec-{digest}.pkl``: the pickled :class:`~mrkit.coordination.chain.ChainSpec`. As with a
  job's ``job.pkl`` (whose digest its plan document and task events carry), nothing is unpickled
  unless its SHA-256 is the one the record names.
* ``steps/{k}``: step ``k`` was submitted (the chain's step is the largest).
* ``claims/{k}``: the claim to submit step ``k`` (``put_if_absent``; its value the unix time).
* ``end.json``: the chain's end (done, failed or cancelled, with the error), ``put_if_absent``:
  the first end wins.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

from mrkit.backends.aws_lambda.handle import ObjectStoreJobHandle
from mrkit.backends.aws_lambda.invokers import invoker_from_config
from mrkit.backends.aws_lambda.wire import plan_key
from mrkit.coordination.chain import ChainRecord, ChainSpec, advance, submit_chain
from mrkit.coordination.chain_handle import ChainHandle
from mrkit.coordination.handle import JobHandle
from mrkit.coordination.options import RunOptions
from mrkit.coordination.step_record import split_step_run_id
from mrkit.errors import ConfigError, StorageError
from mrkit.model.status import JobStatus
from mrkit.storage import open_storage
from mrkit.storage.base import Storage


def chain_prefix(job_id: str) -> str:
    """Where the chain ``job_id`` keeps its documents in its storage."""
    return f"{job_id}/chain/"


class ObjectStoreChainStore:
    """The :class:`~mrkit.coordination.chain.ChainStore` of chain ``job_id`` in ``storage``."""

    def __init__(self, storage: Storage, job_id: str) -> None:
        self.storage, self.job_id = storage, job_id
        self.prefix = chain_prefix(job_id)

    def create(self, record: ChainRecord, spec: ChainSpec) -> None:
        code = spec.encode()
        digest = hashlib.sha256(code).hexdigest()
        doc = {
            "name": record.name,
            "labels": list(record.labels),
            "submitted": record.submitted,
            "digest": digest,
        }
        if self.storage.exists(plan_key(self.job_id)) or not self.storage.put_if_absent(
            self.prefix + "record.json", json.dumps(doc).encode()
        ):
            raise ConfigError(f"job id {self.job_id} is already taken in {self.storage.url}")
        self.storage.put(f"{self.prefix}spec-{digest}.pkl", code)

    def _doc(self) -> dict[str, Any] | None:
        raw = self.storage.get_or_none(self.prefix + "record.json")
        return json.loads(raw) if raw is not None else None

    def read(self) -> ChainRecord | None:
        doc = self._doc()
        if doc is None:
            return None
        steps = [int(key.rsplit("/", 1)[1]) for key in self.storage.list(self.prefix + "steps/")]
        raw_end = self.storage.get_or_none(self.prefix + "end.json")
        end = json.loads(raw_end) if raw_end is not None else {}
        return ChainRecord(
            self.job_id,
            doc["name"],
            tuple(doc["labels"]),
            max(steps, default=1),
            end.get("state", "running"),
            end.get("error", ""),
            float(doc["submitted"]),
            end.get("time"),
        )

    def spec(self) -> ChainSpec:
        doc = self._doc()
        if doc is None:
            raise StorageError(f"the record of job {self.job_id} is gone from {self.storage.url}")
        code = self.storage.get(f"{self.prefix}spec-{doc['digest']}.pkl")
        if hashlib.sha256(code).hexdigest() != doc["digest"]:
            raise StorageError(
                f"the spec of job {self.job_id} in {self.storage.url} is not the one submitted"
            )
        return ChainSpec.decode(code)

    def claim(self, k: int) -> float | None:
        key = f"{self.prefix}claims/{k}"
        if self.storage.put_if_absent(key, f"{time.time():.3f}".encode()):
            return None
        return float(self.storage.get_or_none(key) or 0)

    def set_step(self, k: int) -> None:
        self.storage.put(f"{self.prefix}steps/{k}", b"")

    def finish(self, state: str, error: str) -> bool:
        end = {"state": state, "error": error, "time": time.time()}
        return self.storage.put_if_absent(self.prefix + "end.json", json.dumps(end).encode())

    def discard(self) -> None:
        self.storage.delete_prefix(self.prefix)


def is_chain(storage: Storage, job_id: str) -> bool:
    """True when ``job_id`` names a multi-step job (a chain) in ``storage``."""
    return storage.exists(chain_prefix(job_id) + "record.json")


def chain_of_step(storage: Storage, step_id: str) -> tuple[str, int] | None:
    """``(chain id, k)`` when ``step_id`` is step ``k`` of a chain in ``storage``, else None."""
    found = split_step_run_id(step_id)
    return found if found is not None and is_chain(storage, found[0]) else None


#: handle_for(storage URL, job id) -> the backend's handle of a one-step job.
HandleFor = Callable[[str, str], JobHandle]


def chain_handle(
    storage_url: str, job_id: str, handle_for: HandleFor, submit: Callable[..., Any] | None
) -> ChainHandle:
    """The handle of chain ``job_id`` in ``storage_url`` (``submit``: the one-step submit, to
    advance a chain found stuck; None on a side that cannot invoke)."""
    store = ObjectStoreChainStore(open_storage(storage_url), job_id)
    return ChainHandle(store, lambda run_id: handle_for(storage_url, run_id), submit)


def submit_chain_job(
    submitter: Any,
    job: Any,
    steps: list[Any],
    inputs: Any,
    options: RunOptions,
    submit_job: Callable[..., Any],
    handle_for: HandleFor,
) -> ChainHandle:
    """Submit the multi-step ``job`` (options applied) as a chain through ``submitter`` (what
    :func:`~mrkit.backends.aws_lambda.jobs.submit_job` reads of an executor); return its handle.

    Raises:
        ConfigError: no storage for the job, a taken id; and what step 1's submit raises.
    """
    url = options.storage or submitter.storage_url("")
    if not url:
        raise ConfigError(
            f"executor {submitter.name} needs storage=URL (e.g. s3://bucket/mrkit) for a submitted job"
        )
    base = open_storage(url).url  # one spelling of it (a folder becomes file://…) for every side
    options = options.replace(storage=base)

    def submit(one: Any, one_inputs: Any, one_options: RunOptions) -> JobHandle:
        return submit_job(submitter, one, one_inputs, one_options)  # type: ignore[no-any-return]

    job_id = submit_chain(
        lambda chain_id: ObjectStoreChainStore(open_storage(base), chain_id),
        submit,
        job,
        steps,
        inputs,
        options,
        workers=submitter.workers,
        base=base,
        handle_for=lambda run_id: handle_for(base, run_id),
    )
    return chain_handle(base, job_id, handle_for, submit)


class FunctionSubmitter:
    """What :func:`~mrkit.backends.aws_lambda.jobs.submit_job` reads of an executor, inside a
    function that submits the next step of a chain: the invoker of the step that published (rebuilt
    from its plan document) and the chain's storage."""

    workers = 1

    def __init__(self, doc: dict[str, Any], storage_url: str, batch_size: int) -> None:
        self.name = str(doc.get("executor", "functions"))
        self.invoker = invoker_from_config(doc["invoker"])
        self.batch_size = batch_size
        self._storage_url = storage_url

    def job_invoker(self) -> Any:
        return self.invoker

    def storage_url(self, job_id: str) -> str:
        return self._storage_url

    def check_reachable(self, url: str) -> None:
        """Checked when the chain was submitted: its later steps write to the same places."""


def after_publish(
    storage: Storage, step_id: str, doc: dict[str, Any], batch_size: int, submit_job: Callable[..., Any]
) -> None:
    """The job ``step_id`` (plan document ``doc``) published: when it is a step of a chain, advance
    the chain from this invocation (:func:`mrkit.coordination.chain.advance`)."""
    found = chain_of_step(storage, step_id)
    if found is None:
        return
    submitter = FunctionSubmitter(doc, storage.url, batch_size)
    advance(
        ObjectStoreChainStore(storage, found[0]),
        found[1],
        lambda one, one_inputs, one_options: submit_job(submitter, one, one_inputs, one_options),
        lambda run_id: ObjectStoreJobHandle(run_id, storage.url),
    )


def chain_statuses(storage_url: str, statuses: list[JobStatus], handle_for: HandleFor) -> list[JobStatus]:
    """``statuses`` of the jobs in ``storage_url`` with each chain's steps replaced by the chain's
    status (once, where its newest step was), for ``mrkit jobs``."""
    storage = open_storage(storage_url)
    out: list[JobStatus] = []
    seen: set[str] = set()
    for st in statuses:
        found = chain_of_step(storage, st.id)
        if found is None:
            out.append(st)
        elif found[0] not in seen:
            seen.add(found[0])
            out.append(chain_handle(storage_url, found[0], handle_for, None).status())
    return out
