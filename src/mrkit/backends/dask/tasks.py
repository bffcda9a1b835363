"""The Dask worker's side: one function, run by a Dask worker for each attempt.

A Dask task is ``run_attempt(spec)``: the :class:`~mrkit.model.task.TaskSpec` travels through the
scheduler (a few hundred bytes of references: split, partition, storage URL), the data moves through
the job's storage, and the :class:`~mrkit.model.task.TaskResult` comes back (counters, never
records; a futures-API chunk returns its outputs). The function is pickled by reference, so every
Dask worker must have mrkit (and the job's imports) installed.
"""

from __future__ import annotations

import dataclasses

from distributed import get_worker

from mrkit.execution.runtime import run_task, storage_for
from mrkit.model.task import TaskKind, TaskResult, TaskSpec

#: Deliveries of one attempt claimed at most: far above any scheduler's ``allowed-failures``.
MAX_DELIVERIES = 64


def run_attempt(spec: TaskSpec) -> TaskResult:
    """Run one attempt on this Dask worker; never raises for a failing task (see ``run_task``).

    The result names the Dask worker's address, so that logs and counters say where it ran, and
    counts in ``lost_deliveries`` the earlier runs of the same attempt that died with their worker:
    a scheduler of yours re-runs such a task itself (``allowed-failures``), and nothing else would
    tell the driver.
    """
    earlier = claim_delivery(spec)
    result = run_task(spec, worker=_address())
    return dataclasses.replace(result, lost_deliveries=earlier) if earlier else result


def delivery_key(spec: TaskSpec, n: int) -> str:
    """``{job}/dask/deliveries/{task}/a{attempt}/d{n}``: run ``n`` of an attempt started (deleted
    with the job's other intermediate keys)."""
    return f"{spec.job_id}/dask/deliveries/{spec.task_id}/a{spec.attempt}/d{n}"


def claim_delivery(spec: TaskSpec) -> int:
    """Record that this run of ``spec`` started; return how many runs of it started before.

    One ``put_if_absent`` per attempt (more only after a re-run). A futures-API call has no job
    storage and is not counted; a storage that cannot be written counts nothing here (the attempt
    itself then fails on it, with its own sentence).
    """
    if spec.kind is TaskKind.CALL:
        return 0
    try:
        storage = storage_for(spec.storage_url)
        for n in range(1, MAX_DELIVERIES + 1):
            if storage.put_if_absent(delivery_key(spec, n), b""):
                return n - 1
    except Exception:  # noqa: BLE001 - counting must never be why an attempt fails
        return 0
    return MAX_DELIVERIES


def run_attempts(specs: list[TaskSpec]) -> list[TaskResult]:
    """Run several attempts (tiny futures-API calls that share one Dask task), in order."""
    worker = _address()
    return [run_task(spec, worker=worker) for spec in specs]


def _address() -> str:
    try:
        return str(get_worker().address)
    except ValueError:  # not inside a Dask worker (a test calling it directly)
        return ""
