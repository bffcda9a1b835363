"""What every job handle reports: one :class:`JobStatus` schema, written once.

Every backend's handle returns it from ``status()`` — in-process jobs, Redis jobs and serverless
jobs — and ``mrkit status --json`` prints :meth:`JobStatus.to_dict`. The dict form is the stable
JSON schema (the one the commands and the docs have always shown); the dataclass is the typed way
in. For code written against the dict, a status also answers ``st["state"]`` and
``st.get("error")`` from that same dict.

JSON schema (``to_dict``)::

    {"id", "state", "phase", "name", "executor", "run",
     "tasks": {"map": {"done", "total"}, "reduce": {"done", "total"}},
     "attempts": {"map", "reduce"}, "failures": {…}, "lost": {…}, "duplicates_skipped": {…},
     "in_flight", "workers", "submitted", "ended", "seconds", "output", "refused",
     "error" (failed, cancelled, lost or unknown jobs only), "counters" (ended jobs only),
     "cost" (serverless jobs only: requests and GB-seconds per phase, estimated price; see
     mrkit.coordination.cost),
     "step", "steps" (multi-step jobs only: the step running, from 1, and the step count; "phase"
     is then "step2.map", and "counters" are per step, "step1.map.…")}

``state`` is one of :data:`STATES`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

STATES = ("running", "done", "failed", "cancelled", "lost", "unknown")
PHASES = ("map", "reduce")


@dataclass(frozen=True)
class PhaseProgress:
    """One phase of a job: tasks done of total, and attempts launched, failed and lost so far."""

    done: int = 0
    total: int = 0
    attempts: int = 0
    failures: int = 0
    lost: int = 0
    duplicates_skipped: int = 0


@dataclass(frozen=True)
class JobStatus:
    """The status of one job (see the module docstring for its JSON form)."""

    id: str
    state: str
    phase: str = ""
    name: str = ""
    executor: str = ""
    run: int = 1
    map: PhaseProgress = field(default_factory=PhaseProgress)
    reduce: PhaseProgress = field(default_factory=PhaseProgress)
    in_flight: int = 0
    workers: tuple[str, ...] = ()
    submitted: float | None = None
    ended: float | None = None
    seconds: float | None = None
    output: str | None = None
    refused: int = 0
    error: str | None = None
    counters: Mapping[str, int] | None = None
    dashboard: str | None = None  # the engine's dashboard page (Dask), when it serves one
    # The slowest committed attempts, when the backend records them (a run of this machine):
    # {"task", "attempt", "seconds", "worker", "straggler"} (straggler: over twice its phase's median).
    slowest: tuple[Mapping[str, Any], ...] = ()
    # A serverless job's cost report (mrkit.coordination.cost.cost_report's dict); None elsewhere.
    cost: Mapping[str, Any] | None = None
    # A multi-step job: the step running (from 1) and the step count; None for a one-step job.
    step: int | None = None
    steps: int | None = None

    @property
    def ended_badly(self) -> bool:
        """True for a job that failed, was cancelled or lost, or is unknown."""
        return self.state in ("failed", "cancelled", "lost", "unknown")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JobStatus:
        """Build a status from its JSON form (missing keys take their defaults)."""

        def per_phase(name: str) -> dict[str, int]:
            raw = d.get(name) or {}
            return {p: int(raw.get(p, 0)) for p in PHASES} if isinstance(raw, Mapping) else {}

        tasks = d.get("tasks") or {}
        counts = {name: per_phase(name) for name in ("attempts", "failures", "lost", "duplicates_skipped")}
        phases = {
            p: PhaseProgress(
                done=int((tasks.get(p) or {}).get("done", 0)),
                total=int((tasks.get(p) or {}).get("total", 0)),
                **{name: counts[name].get(p, 0) for name in counts},
            )
            for p in PHASES
        }
        counters = d.get("counters")
        return cls(
            id=str(d["id"]),
            state=str(d["state"]),
            phase=str(d.get("phase", "")),
            name=str(d.get("name", "")),
            executor=str(d.get("executor", "")),
            run=int(d.get("run", 1)),
            map=phases["map"],
            reduce=phases["reduce"],
            in_flight=int(d.get("in_flight", 0)),
            workers=tuple(str(w) for w in d.get("workers", ()) or ()),
            submitted=d.get("submitted"),
            ended=d.get("ended"),
            seconds=d.get("seconds"),
            output=d.get("output"),
            refused=int(d.get("refused", 0)),
            error=d.get("error"),
            counters=dict(counters) if counters is not None else None,
            dashboard=d.get("dashboard"),
            slowest=tuple(dict(x) for x in d.get("slowest") or ()),
            cost=dict(d["cost"]) if d.get("cost") is not None else None,
            **_step_fields(d),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the module docstring's schema)."""
        phases = {"map": self.map, "reduce": self.reduce}
        out: dict[str, Any] = {
            "id": self.id,
            "state": self.state,
            "phase": self.phase,
            "name": self.name,
            "executor": self.executor,
            "run": self.run,
            "tasks": {p: {"done": ph.done, "total": ph.total} for p, ph in phases.items()},
            "attempts": {p: ph.attempts for p, ph in phases.items()},
            "failures": {p: ph.failures for p, ph in phases.items()},
            "lost": {p: ph.lost for p, ph in phases.items()},
            "duplicates_skipped": {p: ph.duplicates_skipped for p, ph in phases.items()},
            "in_flight": self.in_flight,
            "workers": list(self.workers),
            "submitted": self.submitted,
            "ended": self.ended,
            "seconds": self.seconds,
            "output": self.output,
            "refused": self.refused,
        }
        if self.error is not None:
            out["error"] = self.error
        if self.counters is not None:
            out["counters"] = dict(self.counters)
        if self.dashboard is not None:
            out["dashboard"] = self.dashboard
        if self.slowest:
            out["slowest"] = [dict(x) for x in self.slowest]
        if self.cost is not None:
            out["cost"] = dict(self.cost)
        if self.steps is not None:
            out["step"], out["steps"] = self.step, self.steps
        return out

    # The dict face, for code written against the JSON form: st["state"], st.get("error").
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.to_dict()

    def keys(self) -> Iterator[str]:
        return iter(self.to_dict())

    def items(self) -> Iterator[tuple[str, Any]]:
        return iter(self.to_dict().items())


def _step_fields(d: Mapping[str, Any]) -> dict[str, int]:
    """``step``/``steps`` of a status dict: the JSON form's ints, or a multi-step run's registry
    record (``steps``: the run ids of its steps so far, ``n_steps``: the step count)."""
    steps = d.get("steps")
    if isinstance(steps, list):
        return {"step": len(steps), "steps": int(d["n_steps"])} if d.get("n_steps") else {}
    if isinstance(steps, int) and isinstance(d.get("step"), int):
        return {"step": int(d["step"]), "steps": steps}
    return {}
