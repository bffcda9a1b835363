"""Task events: one record per attempt, on every backend.

Whoever sees an attempt end records it as a :class:`TaskEvent`: the in-process driver
(:mod:`mrkit.coordination.driver`) for blocking runs on any executor, the backend's own far side
for asynchronous jobs (Redis workers, serverless handlers), each keeping them with the job so that
any process reads them through ``JobHandle.events()``. An event says when the attempt started and
ended (wall clock, seconds since the epoch), its phase, task and attempt number, the worker that
ran it (host:pid, or a function's request id), and its outcome:

* ``committed``: it won its task's commit;
* ``discarded``: it finished after another attempt of its task had committed (a speculative twin, a
  duplicate delivery), its output deleted;
* ``failed``: its user code raised (``error`` holds the one-sentence failure);
* ``lost``: its worker died or could not be reached (``error`` says why);
* ``cancelled``: the driver dropped it (its task committed meanwhile, or the job stopped).

with its records and bytes in/out and spills; ``speculative`` marks a twin launched for a slow
task. The registry of runs on this machine (where ``mrkit run`` keeps them) is
:mod:`mrkit.coordination.registry`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mrkit.model.task import TaskResult, TaskSpec

OUTCOMES = ("committed", "discarded", "failed", "lost", "cancelled")


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
    memory_mb: int = 0  # the function's configured memory, where it is billed by it (serverless)
    traceback: str = ""  # a failed attempt's remote traceback (its last TRACEBACK_CHARS characters)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (every field; ``from_dict`` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskEvent:
        """An event from its JSON form; keys this version does not know are ignored (an event
        written by a newer mrkit still reads)."""
        return cls(**{k: v for k, v in d.items() if k in _FIELDS})

    @property
    def seconds(self) -> float:
        """How long the attempt ran (0 while it runs)."""
        return max(0.0, self.end - self.start) if self.end else 0.0


_FIELDS = frozenset(TaskEvent.__dataclass_fields__)
TRACEBACK_CHARS = 8000  # an event stays small: the innermost frames are the ones that matter


def event_of(
    phase: str,
    spec: TaskSpec,
    outcome: str,
    result: TaskResult | None = None,
    *,
    start: float | None = None,
    end: float | None = None,
    error: str = "",
    worker: str = "",
) -> TaskEvent:
    """The event of an attempt that ended with ``outcome``: times, worker and counts from its
    ``result`` when there is one (its start is ``end - result.seconds``: the time it ran, not the
    time it waited in a queue), else from ``start``/``end``/``worker``."""
    now = time.time() if end is None else end
    if start is None:  # unknown: the attempt ran for the seconds it measured, up to now
        start = now - (result.seconds if result is not None else 0.0)
    event = TaskEvent(phase, spec.task_id, spec.attempt, start, now, outcome, worker=worker, error=error)
    if result is not None:
        _take_result(event, result, now)
    return event


def _take_result(event: TaskEvent, result: TaskResult, now: float) -> None:
    c = result.counters
    event.worker = result.worker or event.worker
    if result.seconds:  # the launch time, or when it left a queue, whichever is later
        event.start = max(event.start, now - result.seconds)
    # A map attempt's output is its pairs (after its combiner: what it spilled), a reduce's its records.
    event.records_in, event.records_out = c.get("records_in", 0), c.get("records_out", c.get("pairs_out", 0))
    event.bytes_in, event.bytes_out = c.get("bytes_in", 0), c.get("bytes_out", 0)
    event.spills = c.get("spills", 0)
    if result.failure is not None and result.failure.traceback:
        event.traceback = result.failure.traceback[-TRACEBACK_CHARS:]


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
                _take_result(event, result, now)
            self.events.append(event)
            self._append(event)

    def _append(self, event: TaskEvent) -> None:
        if self.sink is None:
            return
        try:
            with open(self.sink, "a", encoding="utf-8") as f:
                f.write(json.dumps(event.to_dict(), sort_keys=True) + "\n")
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
