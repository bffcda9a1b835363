"""What the dashboard shows of a job, as plain data (JSON for the page's script).

:func:`job_view` turns a job's :class:`~mrkit.model.status.JobStatus` and task events into the
page's model: progress per phase, a task table (one row per task: its latest state, attempts, worker,
duration, records), the failures with their sentence and traceback, the workers with their last
activity, and the logs' tail. Nothing here renders HTML: the page's script puts every value in the
document as text (``textContent``), never as markup, so what user code produced (keys, error
messages, log lines) cannot inject any.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from mrkit.coordination.events import TaskEvent
from mrkit.model.status import PHASES, JobStatus

MAX_FAILURES = 200  # failures listed in full; the count says how many more there were
LOG_LINES = 100  # the logs' tail


def job_view(status: JobStatus, events: Iterable[TaskEvent], logs: list[str] | None = None) -> dict[str, Any]:
    """The page model of one job (see the module docstring)."""
    events = sorted(events, key=lambda e: (e.start, e.task, e.attempt))
    st = status.to_dict()
    phases = [
        {
            "name": p,
            "done": st["tasks"][p]["done"],
            "total": st["tasks"][p]["total"],
            "attempts": st["attempts"][p],
            "failures": st["failures"][p],
            "lost": st["lost"][p],
        }
        for p in PHASES
    ]
    failures = [e for e in events if e.outcome in ("failed", "lost")]
    return {
        "status": st,
        "phases": phases,
        "tasks": task_rows(events),
        "failures": [
            {
                "phase": e.phase,
                "task": e.task,
                "attempt": e.attempt,
                "outcome": e.outcome,
                "worker": e.worker,
                "error": e.error,
                "traceback": e.traceback,
            }
            for e in failures[-MAX_FAILURES:]
        ],
        "failures_total": len(failures),
        "workers": worker_rows(events),
        "attempts": len(events),
        "logs": (logs or [])[-LOG_LINES:],
        "now": time.time(),
    }


def task_rows(events: list[TaskEvent]) -> list[dict[str, Any]]:
    """One row per task (events in start order): the state of its latest attempt, or
    ``committed`` once any attempt committed; attempts counted; duration, worker and records of the
    committed attempt (else of the latest)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for e in events:
        row = rows.get((e.phase, e.task))
        if row is None:
            row = rows[(e.phase, e.task)] = {"phase": e.phase, "task": e.task, "attempts": 0, "state": ""}
        row["attempts"] += 1
        if row["state"] == "committed":
            continue
        row.update(
            state=e.outcome or "running",
            worker=e.worker,
            seconds=round(e.seconds, 3),
            records_in=e.records_in,
            records_out=e.records_out,
            error=e.error,
        )
    return list(rows.values())


def worker_rows(events: list[TaskEvent]) -> list[dict[str, Any]]:
    """One row per worker: attempts, committed and failed ones, and its last activity (the latest
    start or end of its attempts: a worker's heartbeat as the events see it)."""
    rows: dict[str, dict[str, Any]] = {}
    for e in events:
        name = e.worker or "?"
        row = rows.setdefault(name, {"worker": name, "attempts": 0, "committed": 0, "failed": 0, "last": 0.0})
        row["attempts"] += 1
        row["committed"] += e.outcome == "committed"
        row["failed"] += e.outcome in ("failed", "lost")
        row["last"] = max(row["last"], e.end or e.start)
    return sorted(rows.values(), key=lambda r: r["worker"])


def list_view(status: JobStatus, source: str, label: str) -> dict[str, Any]:
    """One row of the jobs list."""
    st = status.to_dict()
    return {
        "source": source,
        "source_label": label,
        "id": st["id"],
        "name": st["name"],
        "state": st["state"],
        "phase": st["phase"],
        "tasks": st["tasks"],
        "submitted": st["submitted"],
        "seconds": st["seconds"],
        "error": (st.get("error") or "").split("\n", 1)[0],
    }
