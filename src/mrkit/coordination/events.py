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
import logging
import os
import socket
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
    """The events of one run, recorded by the driver's threads.

    Args:
        sink: a file each ended attempt's event is appended to at once, as a JSON line (the job
            registry's ``events.jsonl``: ``mrkit status ID`` reads the progress of a running job
            there); None keeps them in memory only. A sink that cannot be written is dropped.
    """

    def __init__(self, sink: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._open: dict[tuple[str, int], TaskEvent] = {}
        self.events: list[TaskEvent] = []
        self.sink = sink

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
            self._append(event)

    def _append(self, event: TaskEvent) -> None:
        if self.sink is None:
            return
        try:
            with open(self.sink, "a", encoding="utf-8") as f:
                f.write(json.dumps(asdict(event), sort_keys=True) + "\n")
        except OSError:
            self.sink = None  # the registry is not writable: the run goes on without it

    def close_all(self, outcome: str = "cancelled") -> None:
        """End every attempt still open (the job stopped before they reported)."""
        with self._lock:
            now = time.time()
            for event in self._open.values():
                event.end, event.outcome = now, outcome
                self.events.append(event)
                self._append(event)
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
    started = folder / "status.json"
    if started.exists():  # what save_start recorded (task totals, the driver's pid) stays
        status = {**json.loads(started.read_text(encoding="utf-8")), **status}
    started.write_text(json.dumps(status, indent=1, sort_keys=True), encoding="utf-8")
    _prune(folder.parent)
    return folder


def _prune(base: Path) -> None:
    """Delete all but the newest :data:`KEEP_RUNS` runs of the registry."""
    import shutil

    runs = sorted((p for p in base.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in runs[KEEP_RUNS:]:
        shutil.rmtree(old, ignore_errors=True)


def save_start(job_id: str, name: str, executor: str, totals: dict[str, int]) -> Path:
    """Record a run that starts (``mrkit status ID`` then says it is running, and who runs it);
    return its events file, for :class:`EventLog`'s ``sink``."""
    folder = registry_dir(job_id)
    folder.mkdir(parents=True, exist_ok=True)
    status = {
        "id": job_id,
        "name": name,
        "executor": executor,
        "state": "running",
        "submitted": time.time(),
        "totals": totals,
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }
    (folder / "status.json").write_text(json.dumps(status, indent=1, sort_keys=True), encoding="utf-8")
    (folder / "events.jsonl").write_text("", encoding="utf-8")
    return folder / "events.jsonl"


def local_status(job_id: str) -> dict[str, Any]:
    """The :class:`~mrkit.model.status.JobStatus` form of a run in the registry: its recorded status,
    with tasks done, attempts, failures and lost per phase counted from its events. A run still
    marked running whose driver process (on this host) is gone is ``lost``.

    Raises:
        FileNotFoundError: no run of that id in the registry.
    """
    folder = registry_dir(job_id)
    status = json.loads((folder / "status.json").read_text(encoding="utf-8"))
    events = load_events(job_id)
    if status.get("state") == "running" and status.get("host") == socket.gethostname():
        try:
            os.kill(int(status["pid"]), 0)
        except (ProcessLookupError, KeyError, ValueError):
            status["state"] = "lost"
            status["error"] = f"the process that ran job {job_id} (pid {status.get('pid')}) is gone"
        except PermissionError:
            pass  # alive, someone else's
    phases = ("map", "reduce")
    counters = status.get("counters") or {}
    totals = status.get("totals") or {p: counters.get(f"{p}.tasks", 0) for p in phases}
    count = lambda phase, outcome: sum(1 for e in events if e.phase == phase and e.outcome == outcome)  # noqa: E731
    status["tasks"] = {p: {"done": count(p, "committed"), "total": totals.get(p, 0)} for p in phases}
    status["attempts"] = {p: sum(1 for e in events if e.phase == p) for p in phases}
    status["failures"] = {p: count(p, "failed") for p in phases}
    status["lost"] = {p: count(p, "lost") for p in phases}
    status["workers"] = sorted({e.worker for e in events if e.worker})
    status["slowest"] = slowest_attempts(events)
    if status["state"] == "running":
        status["phase"] = next(
            (p for p in phases if status["tasks"][p]["done"] < totals.get(p, 0)), "publish"
        )
    else:
        status["phase"] = "end"
    return status


def slowest_attempts(events: list[TaskEvent], n: int = 3) -> list[dict[str, Any]]:
    """The ``n`` longest committed attempts; ``straggler`` marks one over twice its phase's median."""
    committed = [e for e in events if e.outcome == "committed"]
    medians: dict[str, float] = {}
    for phase in {e.phase for e in committed}:
        durations = sorted(e.end - e.start for e in committed if e.phase == phase)
        medians[phase] = durations[len(durations) // 2]
    longest = sorted(committed, key=lambda e: e.start - e.end)[:n]
    return [
        {
            "task": e.task,
            "attempt": e.attempt,
            "seconds": round(e.end - e.start, 3),
            "worker": e.worker,
            "straggler": (e.end - e.start) > 2 * medians[e.phase] > 0,
        }
        for e in longest
    ]


def load_events(job_id: str) -> list[TaskEvent]:
    """A recorded run's events, in start order.

    Raises:
        FileNotFoundError: no run of that id in the registry.
    """
    path = registry_dir(job_id) / "events.jsonl"
    with open(path, encoding="utf-8") as f:
        return [TaskEvent(**json.loads(line)) for line in f if line.strip()]


def record_start(job_id: str, name: str, executor: str, plan: Any) -> Path | None:
    """Say in the registry that a run of ``plan`` started (``mrkit status ID`` finds it running);
    return the file its events go to as they happen (None when the registry cannot be written)."""
    try:
        return save_start(job_id, name, executor, {"map": plan.n_map, "reduce": plan.n_reduce})
    except OSError:
        return None  # record_end warns at the end


def record_end(
    job_id: str,
    name: str,
    executor: str,
    events: EventLog,
    started: float,
    error: BaseException | None,
    counters: dict[str, int] | None = None,
) -> None:
    """Keep a run's events and end status in the registry (``started``: its ``time.monotonic()``
    start); a registry that cannot be written costs a warning, never the run."""
    from mrkit.errors import JobCancelled

    state = "done" if error is None else "cancelled" if isinstance(error, JobCancelled) else "failed"
    status: dict[str, Any] = {
        "id": job_id,
        "name": name,
        "executor": executor,
        "state": state,
        "seconds": round(time.monotonic() - started, 3),
        "ended": time.time(),
        "counters": counters if counters is not None else getattr(error, "counters", {}),
    }
    if error is not None:
        status["error"] = str(error).splitlines()[0] if str(error) else type(error).__name__
    try:
        save_run(job_id, events, status)
    except OSError as exc:
        logging.getLogger("mrkit").warning(
            "could not keep the events of job %s in the registry: %s", job_id, exc
        )
