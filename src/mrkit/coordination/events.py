"""Task events of a blocking run: one record per attempt, and where they are kept.

The in-process driver (:mod:`mrkit.coordination.driver`) records every attempt it launches, on any
executor: when it started and ended (wall clock, seconds since the epoch), its phase, task and
attempt number, the worker that ran it, and its outcome:

* ``committed``: it won its task's commit;
* ``discarded``: it finished after another attempt of its task had committed (a speculative twin, a
  duplicate delivery), its output deleted;
* ``failed``: its user code raised (``error`` holds the one-sentence failure);
* ``lost``: its worker died or could not be reached (``error`` says why);
* ``cancelled``: the driver dropped it (its task committed meanwhile, or the job stopped).

with its records and bytes in/out and spills. ``mrkit run`` keeps them after the run in the job
registry (:func:`registry_dir`), with the job's end status, so that ``mrkit plot ID`` finds them.

The registry is ``$MRKIT_HOME/jobs/{job id}/`` (``events.jsonl``, ``status.json``); ``MRKIT_HOME``
defaults to ``$XDG_DATA_HOME/mrkit``, else ``~/.local/share/mrkit``. Writing it costs one small
file per run (tens of microseconds per attempt); the newest :data:`KEEP_RUNS` runs are kept. A
registry that cannot be written (a read-only home) is skipped with a warning, never a failed run.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mrkit.model.task import TaskResult, TaskSpec

OUTCOMES = ("committed", "discarded", "failed", "lost", "cancelled")
KEEP_RUNS = 200  # runs kept in the registry; older ones are deleted when a run is saved


@dataclass
class TaskEvent:
    """One attempt (see the module docstring)."""

    phase: str
    task: str
    attempt: int
    start: float
    end: float = 0.0
    outcome: str = ""
    worker: str = ""
    speculative: bool = False
    records_in: int = 0
    records_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    spills: int = 0
    error: str = ""


class EventLog:
    """The events of one run, recorded by the driver's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[tuple[str, int], TaskEvent] = {}
        self.events: list[TaskEvent] = []

    def started(self, phase: str, spec: TaskSpec, speculative: bool = False) -> None:
        with self._lock:
            self._open[(spec.task_id, spec.attempt)] = TaskEvent(
                phase, spec.task_id, spec.attempt, time.time(), speculative=speculative
            )

    def ended(self, spec: TaskSpec, outcome: str, result: TaskResult | None = None, error: str = "") -> None:
        """Close the attempt's event; its start becomes ``end - result.seconds`` when the worker
        measured it (the time it ran, not the time it waited in a queue)."""
        now = time.time()
        with self._lock:
            event = self._open.pop((spec.task_id, spec.attempt), None)
            if event is None:
                return
            event.end, event.outcome, event.error = now, outcome, error
            if result is not None:
                c = result.counters
                event.worker = result.worker
                if result.seconds:
                    event.start = max(event.start, now - result.seconds)
                event.records_in, event.records_out = c.get("records_in", 0), c.get("records_out", 0)
                event.bytes_in, event.bytes_out = c.get("bytes_in", 0), c.get("bytes_out", 0)
                event.spills = c.get("spills", 0)
            self.events.append(event)

    def close_all(self, outcome: str = "cancelled") -> None:
        """End every attempt still open (the job stopped before they reported)."""
        with self._lock:
            now = time.time()
            for event in self._open.values():
                event.end, event.outcome = now, outcome
                self.events.append(event)
            self._open.clear()


def registry_dir(job_id: str | None = None) -> Path:
    """The job registry (``$MRKIT_HOME/jobs``), or one job's folder in it."""
    home = os.environ.get("MRKIT_HOME") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "mrkit"
    )
    base = Path(home) / "jobs"
    return base if job_id is None else base / job_id


def save_run(job_id: str, log: EventLog, status: dict[str, Any]) -> Path:
    """Keep a finished run's events and end status in the registry; return its folder."""
    folder = registry_dir(job_id)
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(
        json.dumps(asdict(e), sort_keys=True) + "\n" for e in sorted(log.events, key=lambda e: e.start)
    )
    (folder / "events.jsonl").write_text(lines, encoding="utf-8")
    (folder / "status.json").write_text(json.dumps(status, indent=1, sort_keys=True), encoding="utf-8")
    _prune(folder.parent)
    return folder


def _prune(base: Path) -> None:
    """Delete all but the newest :data:`KEEP_RUNS` runs of the registry."""
    import shutil

    runs = sorted((p for p in base.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in runs[KEEP_RUNS:]:
        shutil.rmtree(old, ignore_errors=True)


def load_events(job_id: str) -> list[TaskEvent]:
    """A recorded run's events, in start order.

    Raises:
        FileNotFoundError: no run of that id in the registry.
    """
    path = registry_dir(job_id) / "events.jsonl"
    with open(path, encoding="utf-8") as f:
        return [TaskEvent(**json.loads(line)) for line in f if line.strip()]
