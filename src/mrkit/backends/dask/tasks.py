"""The Dask worker's side: one function, run by a Dask worker for each attempt.

A Dask task is ``run_attempt(spec)``: the :class:`~mrkit.model.task.TaskSpec` travels through the
scheduler (a few hundred bytes of references: split, partition, storage URL), the data moves through
the job's storage, and the :class:`~mrkit.model.task.TaskResult` comes back (counters, never
records; a futures-API chunk returns its outputs). The function is pickled by reference, so every
Dask worker must have mrkit (and the job's imports) installed.
"""

from __future__ import annotations

from distributed import get_worker

from mrkit.execution.runtime import run_task
from mrkit.model.task import TaskResult, TaskSpec


def run_attempt(spec: TaskSpec) -> TaskResult:
    """Run one attempt on this Dask worker; never raises for a failing task (see ``run_task``).

    The result names the Dask worker's address, so that logs and counters say where it ran.
    """
    return run_task(spec, worker=_address())


def run_attempts(specs: list[TaskSpec]) -> list[TaskResult]:
    """Run several attempts (tiny futures-API calls that share one Dask task), in order."""
    worker = _address()
    return [run_task(spec, worker=worker) for spec in specs]


def _address() -> str:
    try:
        return str(get_worker().address)
    except ValueError:  # not inside a Dask worker (a test calling it directly)
        return ""
