"""A serverless job's state as the object store holds it: the plan document, runs, end records, counts.

Read by every side of the serverless driver: the functions advancing a job (:mod:`.jobs`), a resume
(:mod:`.jobs`) and whoever follows it (:mod:`.handle`). The keys are those of
:mod:`mrkit.backends.aws_lambda.wire`; the rules that write them are in :mod:`.jobs`.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from typing import Any

from mrkit.backends.aws_lambda.wire import (
    attempts_prefix,
    claim_parts,
    claims_prefix,
    end_key,
    key_task,
    plan_key,
    run_key,
    run_of_key,
    runs_prefix,
    skipped_prefix,
)
from mrkit.coordination.plan import JobPlan, RetryPolicy
from mrkit.errors import ConfigError
from mrkit.model import layout
from mrkit.model.task import TaskSpec
from mrkit.storage.base import Storage


def current_run(storage: Storage, job_id: str) -> int:
    """The job's current run: 1, or the highest ``{job}/state/runs/r{n}`` a resume created."""
    runs = [run_of_key(key) for key in storage.list(runs_prefix(job_id))]
    return max(runs, default=1)


def _run_record(storage: Storage, job_id: str, run: int) -> dict[str, Any] | None:
    """What the resume that started ``run`` recorded (None for the first run)."""
    raw = storage.get_or_none(run_key(job_id, run)) if run > 1 else None
    return None if raw is None else dict(json.loads(raw))


def _plan_to_dict(plan: JobPlan) -> dict[str, Any]:
    return {
        "job_id": plan.job_id,
        "name": plan.name,
        "storage_url": plan.storage_url,
        "output_url": plan.output_url,
        "output_format": plan.output_format,
        "overwrite": plan.overwrite,
        "policy": dataclasses.asdict(plan.policy),
        "input_bytes": plan.input_bytes,
        "map_specs": [s.encode().decode() for s in plan.map_specs],
        "reduce_specs": [s.encode().decode() for s in plan.reduce_specs],
    }


def _plan_from_dict(data: dict[str, Any]) -> JobPlan:
    return JobPlan(
        job_id=data["job_id"],
        name=data["name"],
        storage_url=data["storage_url"],
        output_url=data["output_url"],
        output_format=data["output_format"],
        overwrite=data["overwrite"],
        policy=RetryPolicy(**data["policy"]),
        input_bytes=data["input_bytes"],
        map_specs=tuple(TaskSpec.decode(s) for s in data["map_specs"]),
        reduce_specs=tuple(TaskSpec.decode(s) for s in data["reduce_specs"]),
    )


_PLANS: dict[str, dict[str, Any]] = {}
_PLANS_LOCK = threading.Lock()


def _load(storage: Storage, job_id: str) -> dict[str, Any]:
    """The job's plan document, read once per process (it never changes)."""
    with _PLANS_LOCK:
        doc = _PLANS.get(job_id)
    if doc is None:
        raw = storage.get_or_none(plan_key(job_id))
        if raw is None:
            raise ConfigError(f"no job {job_id!r} in {storage.url} (no {plan_key(job_id)})")
        doc = json.loads(raw)
        with _PLANS_LOCK:
            if len(_PLANS) > 16:
                _PLANS.clear()
            _PLANS[job_id] = doc
    return doc


def stopped(storage: Storage, job_id: str, run: int = 1) -> dict[str, Any] | None:
    """The end record (done, failed or cancelled) of run ``run`` of the job, or None while it runs.

    A run is resumed only once it has ended, so an event of an older run always finds its run's end
    record here and is dropped: this one read fences every stale event.
    """
    raw = storage.get_or_none(end_key(job_id, run))
    return None if raw is None else dict(json.loads(raw))


def _counters(storage: Storage, plan: JobPlan) -> dict[str, int]:
    """Job counters from the winning attempts' manifests, plus attempts and deliveries per phase."""
    totals: dict[str, int] = {}
    for phase, specs in (("map", plan.map_specs), ("reduce", plan.reduce_specs)):
        totals[f"{phase}.tasks"] = len(specs)
        for spec in specs:
            manifest = json.loads(storage.get(layout.commit_key(plan.job_id, spec.task_id)))
            for name, value in manifest.get("counters", {}).items():
                key = name if name.startswith("user.") else f"{phase}.{name}"
                totals[key] = totals.get(key, 0) + int(value)
    totals.update(_attempt_counters(storage, plan.job_id))
    return totals


def _attempt_counters(
    storage: Storage, job_id: str, latest: tuple[str, dict[str, Any]] | None = None
) -> dict[str, int]:
    """``{phase}.attempts_launched/_failed/_lost``, ``{phase}.deliveries`` and
    ``{phase}.duplicates_skipped`` (deliveries that did not run committed work) from the claims and
    attempt guards (read before they are deleted with the job's intermediate data).

    Args:
        latest: ``(task id, counts)`` of a failure not yet written to a guard (the one that ends
            the job), counted too.
    """
    totals: dict[str, int] = {}

    def add(name: str, task: str, n: int) -> None:
        key = f"{task.split('-', 1)[0]}.{name}"
        totals[key] = totals.get(key, 0) + n

    attempts: set[tuple[str, str]] = set()
    for key in storage.list(claims_prefix(job_id)):
        task, attempt, _delivery = claim_parts(key)
        add("deliveries", task, 1)
        attempts.add((task, attempt))
    for task, _attempt in attempts:
        add("attempts_launched", task, 1)
    for key in storage.list(skipped_prefix(job_id)):
        add("duplicates_skipped", key_task(key), 1)
    for task, counts in _task_failure_counts(storage, job_id, latest).items():
        add("attempts_failed", task, counts[0])
        add("attempts_lost", task, counts[1])
    return totals


def _task_failure_counts(
    storage: Storage, job_id: str, latest: tuple[str, dict[str, Any]] | None = None
) -> dict[str, tuple[int, int]]:
    """Task id -> (attempts failed, attempts lost), from the attempt guards: the guard of attempt n
    holds the counts of the run's attempts before n, so a task's counts in a run are the largest of
    its guards' in that run, summed over the runs (each resumed run counts afresh)."""
    per_run: dict[tuple[str, int], tuple[int, int]] = {}
    found = [(key_task(key), storage.get_or_none(key)) for key in storage.list(attempts_prefix(job_id))]
    guards = [(task, json.loads(raw)) for task, raw in found if raw]
    if latest is not None:
        guards.append(latest)
    for task, counts in guards:
        where = (task, int(counts.get("run", 1)))
        failed, lost = per_run.get(where, (0, 0))
        per_run[where] = (max(failed, int(counts["failed"])), max(lost, int(counts["lost"])))
    out: dict[str, tuple[int, int]] = {}
    for (task, _run), (failed, lost) in per_run.items():
        total = out.get(task, (0, 0))
        out[task] = (total[0] + failed, total[1] + lost)
    return out
