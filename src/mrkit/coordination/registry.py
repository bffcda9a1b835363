"""The job registry: the runs of this machine, found by id during and after the run.

Every blocking run (``mrkit.run``, ``mrkit run``) records itself here as it starts, appends each
ended attempt's :class:`~mrkit.coordination.events.TaskEvent` as it happens, and writes its end
status when it ends, so that ``mrkit status/plot/dashboard ID`` in another process find it. A run
is cancelled from outside by :func:`request_cancel` (a ``cancel`` file its driver polls).

The registry is ``$MRKIT_HOME/jobs/{job id}/`` (``status.json``, ``events.jsonl``, ``cancel``);
``MRKIT_HOME`` defaults to ``$XDG_DATA_HOME/mrkit``, else ``~/.local/share/mrkit``. Writing it costs
one small file per run (tens of microseconds per attempt); the newest :data:`KEEP_RUNS` runs are
kept. A registry that cannot be written (a read-only home) is skipped with a warning, never a failed
run. :class:`RegistryJobHandle` is the :class:`~mrkit.coordination.handle.JobHandle` of a run here.

About 450 lines: the folder layout, the recording side (:class:`Recording`, the cancel watcher) and
the reading side (:class:`RegistryJobHandle`, :func:`list_runs`, a multi-step job read through its
steps) share the same file formats, kept together so that a change of format is one change.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from mrkit.coordination.events import EventLog, TaskEvent, slowest_attempts
from mrkit.coordination.handle import JobHandle
from mrkit.errors import ConfigError, JobCancelled
from mrkit.model.status import JobStatus, PhaseProgress

KEEP_RUNS = 200  # runs kept in the registry; older ones are deleted when a run is saved
CANCEL_POLL = 0.25  # seconds between a running driver's looks for a cancel request


def registry_dir(job_id: str | None = None) -> Path:
    """The job registry (``$MRKIT_HOME/jobs``), or one job's folder in it.

    Raises:
        ConfigError: ``job_id`` is not one path segment (``..``, a slash): an id never names a
            folder outside the registry.
    """
    if job_id is not None and (not job_id or job_id.startswith(".") or "/" in job_id or "\\" in job_id):
        raise ConfigError(f"{job_id!r} is not a job id (an id is one name, no slash, not starting with '.')")
    home = os.environ.get("MRKIT_HOME") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "mrkit"
    )
    base = Path(home) / "jobs"
    return base if job_id is None else base / job_id


def write_whole(path: Path, text: str) -> None:
    """Write a registry file whole: under a temporary name, then renamed over the old one, so that
    a reader in another process (``mrkit status``, a submitted job's handle polling it) never reads
    a half-written file."""
    temp = path.with_name(f".{path.name}-{os.getpid()}-{threading.get_ident()}")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)


def write_status(folder: Path, status: dict[str, Any]) -> None:
    """Write a run's ``status.json`` whole (:func:`write_whole`)."""
    write_whole(folder / "status.json", json.dumps(status, indent=1, sort_keys=True))


def save_run(job_id: str, log: EventLog, status: dict[str, Any]) -> Path:
    """Keep a finished run's events and end status in the registry; return its folder."""
    folder = registry_dir(job_id)
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(
        json.dumps(e.to_dict(), sort_keys=True) + "\n" for e in sorted(log.events, key=lambda e: e.start)
    )
    write_whole(folder / "events.jsonl", lines)
    started = folder / "status.json"
    if started.exists():  # what save_start recorded (task totals, the driver's pid) stays
        status = {**json.loads(started.read_text(encoding="utf-8")), **status}
    if step_runs(status):  # a multi-step job: its events and totals are its steps'
        status["totals"] = _step_totals(status)
        events = load_events(job_id)
    else:
        events = log.events
    status["progress"] = progress_of(events, status)  # what a listing shows without the events
    write_status(folder, status)
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
    (folder / "events.jsonl").write_text("", encoding="utf-8")  # first: a run's status names its events
    write_status(folder, status)
    return folder / "events.jsonl"


def local_status(
    job_id: str, events: list[TaskEvent] | None = None, *, light: bool = False
) -> dict[str, Any]:
    """The :class:`~mrkit.model.status.JobStatus` form of a run in the registry: its recorded status,
    with tasks done, attempts, failures and lost per phase counted from its events. A run still
    marked running whose driver process (on this host) is gone is ``lost``.

    ``light``: an ended run's counts come from what its end recorded (``progress`` in
    ``status.json``), without reading its events (a listing of many big runs stays fast).

    Raises:
        FileNotFoundError: no run of that id in the registry.
    """
    folder = registry_dir(job_id)
    status = json.loads((folder / "status.json").read_text(encoding="utf-8"))
    if light and status.get("state") != "running" and "progress" in status:
        progress = status.pop("progress")
        return {**status, **progress, "phase": "end"}
    events = load_events(job_id) if events is None else events
    steps = step_runs(status)
    if steps:
        status["totals"] = _step_totals(status)
    if status.get("state") == "running" and status.get("host") == socket.gethostname():
        try:
            os.kill(int(status["pid"]), 0)
        except (ProcessLookupError, KeyError, ValueError):
            status["state"] = "lost"
            status["error"] = f"the process that ran job {job_id} (pid {status.get('pid')}) is gone"
        except PermissionError:
            pass  # alive, someone else's
    status.pop("progress", None)
    status.update(progress_of(events, status))
    phases = ("map", "reduce")
    totals = {p: status["tasks"][p]["total"] for p in phases}
    if status["state"] == "running" and steps:
        status["phase"] = f"step{len(steps)}." + _running_phase(steps[-1])
    elif status["state"] == "running":
        status["phase"] = next(
            (p for p in phases if status["tasks"][p]["done"] < totals.get(p, 0)), "publish"
        )
    else:
        status["phase"] = "end"
    return status


def progress_of(events: list[TaskEvent], status: dict[str, Any]) -> dict[str, Any]:
    """Tasks done (of the run's totals), attempts, failures, lost per phase, workers and the
    slowest attempts, counted from ``events``."""
    phases = ("map", "reduce")
    counters = status.get("counters") or {}
    totals = status.get("totals") or {p: counters.get(f"{p}.tasks", 0) for p in phases}
    count = lambda phase, outcome: sum(1 for e in events if e.phase == phase and e.outcome == outcome)  # noqa: E731
    return {
        "tasks": {p: {"done": count(p, "committed"), "total": totals.get(p, 0)} for p in phases},
        "attempts": {p: sum(1 for e in events if e.phase == p) for p in phases},
        "failures": {p: count(p, "failed") for p in phases},
        "lost": {p: count(p, "lost") for p in phases},
        "workers": sorted({e.worker for e in events if e.worker}),
        "slowest": slowest_attempts(events),
    }


def load_events(job_id: str) -> list[TaskEvent]:
    """A recorded run's events, in start order; a multi-step job's are its steps', each task id
    prefixed ``step{k}.`` (:mod:`mrkit.coordination.step_record`).

    Raises:
        FileNotFoundError: no run of that id in the registry.
    """
    folder = registry_dir(job_id)
    text = (folder / "events.jsonl").read_text(encoding="utf-8")
    complete = text[: text.rfind("\n") + 1]  # a line being appended now is read next time
    rows = json.loads("[" + ",".join(line for line in complete.splitlines() if line.strip()) + "]")
    events = [TaskEvent.from_dict(row) for row in rows]
    for k, step_id in enumerate(step_runs(_read_status(folder)), 1):
        try:
            events += [dataclasses.replace(e, task=f"step{k}.{e.task}") for e in load_events(step_id)]
        except FileNotFoundError:
            continue  # pruned, or the step's run is being created
    events.sort(key=lambda e: e.start)  # appended as attempts end
    return events


def step_runs(status: dict[str, Any]) -> list[str]:
    """The run ids of a multi-step job's steps that started, from its recorded status (empty for
    a one-step run)."""
    steps = status.get("steps")
    return [str(s) for s in steps] if isinstance(steps, list) else []


def _read_status(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "status.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]
    except (FileNotFoundError, ValueError):
        return {}


def _step_totals(status: dict[str, Any]) -> dict[str, int]:
    """A multi-step job's task totals: the sums of its started steps'."""
    totals = {"map": 0, "reduce": 0}
    for step_id in step_runs(status):
        step = _read_status(registry_dir(step_id))
        for phase in totals:
            totals[phase] += int((step.get("totals") or {}).get(phase, 0))
    return totals


def _running_phase(step_id: str) -> str:
    """The phase of a running step (``map``, ``reduce``, ``publish``; ``plan`` before it records)."""
    try:
        return str(local_status(step_id, light=True).get("phase") or "plan")
    except (FileNotFoundError, ValueError, KeyError):
        return "plan"


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


class Recording:
    """A blocking run's record in the registry, from its start to its end.

    ``events`` is the :class:`~mrkit.coordination.events.EventLog` the driver fills (each ended
    attempt is appended to the registry as it happens); ``cancelled`` is set when someone asks the
    run to stop (``mrkit cancel ID``, a dashboard's button, ``handle.cancel()``).
    """

    def __init__(self, job_id: str, name: str, executor: str, plan: Any) -> None:
        self.job_id, self.name, self.executor = job_id, name, executor
        self.events = EventLog(record_start(job_id, name, executor, plan))
        self.cancelled = threading.Event()
        self._watcher = CancelWatcher(job_id, self.cancelled)

    def end(
        self, started: float, error: BaseException | None, counters: dict[str, int] | None = None
    ) -> None:
        """Record the run's end (``started``: its ``time.monotonic()`` start; ``error``: why it
        failed, None when it succeeded)."""
        self._watcher.stop()
        record_end(self.job_id, self.name, self.executor, self.events, started, error, counters)


def request_cancel(job_id: str) -> bool:
    """Ask the run ``job_id`` of this machine to stop (its driver looks every
    :data:`CANCEL_POLL` seconds, then fails the run as cancelled, publishing nothing); True when
    the run is still running and the request was written."""
    folder = registry_dir(job_id)
    try:
        status = json.loads((folder / "status.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False
    if status.get("state") != "running":
        return False
    (folder / "cancel").write_text(f"{time.time()}\n", encoding="utf-8")
    return True


class CancelWatcher:
    """Sets ``event`` when a cancel request for ``job_id`` appears in the registry (a daemon thread
    that looks every :data:`CANCEL_POLL` seconds until :meth:`stop`)."""

    def __init__(self, job_id: str, event: threading.Event) -> None:
        self._path = registry_dir(job_id) / "cancel"
        self._event = event
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="mrkit-cancel-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopped.wait(CANCEL_POLL):
            if self._path.exists():
                self._event.set()
                return

    def stop(self) -> None:
        """Stop watching; the thread has ended on return (a caller that forks next, such as
        read_output's read-ahead, must find its process single-threaded)."""
        self._stopped.set()
        if self._thread is not threading.current_thread():
            self._thread.join()


def list_runs(limit: int = KEEP_RUNS) -> list[JobStatus]:
    """The status of the registry's runs, newest first (a run whose files cannot be read is left
    out: it is being written or pruned)."""
    base = registry_dir()
    try:
        folders = sorted(
            (p for p in base.iterdir() if (p / "status.json").exists()),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
    except FileNotFoundError:
        return []
    out = []
    for folder in folders[:limit]:
        try:
            out.append(JobStatus.from_dict(local_status(folder.name, light=True)))
        except (OSError, ValueError, KeyError):
            continue
    return out


class RegistryJobHandle(JobHandle):
    """A run of this machine, read from the registry (any process, during and after the run).

    ``wait()`` polls until the run ends and returns its status; a run's result pairs are in its
    output folder (``status().output``), not in the registry.
    """

    def __init__(self, job_id: str) -> None:
        registry_dir(job_id)  # a malformed id is refused here, once
        self.id = job_id
        self._events: tuple[tuple[int, int], list[TaskEvent]] | None = None

    def status(self) -> JobStatus:
        """Raises ``FileNotFoundError`` when the registry holds no run ``id``."""
        return JobStatus.from_dict(local_status(self.id, self.events()))

    def events(self) -> list[TaskEvent]:
        # Read once per change of the file: status() and events() of one look share the parse.
        path = registry_dir(self.id) / "events.jsonl"
        info = path.stat()
        key = (info.st_size, info.st_mtime_ns)
        if self._events is None or self._events[0] != key:
            self._events = (key, load_events(self.id))
        return list(self._events[1])

    def wait(self, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.status()
            if st.state != "running":
                return st
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} still running after {timeout}s")
            time.sleep(CANCEL_POLL)

    def cancel(self) -> bool:
        return request_cancel(self.id)

    def logs(self, follow: bool = False, tail: int | None = None) -> Iterator[str]:
        """One line per ended attempt (a blocking run keeps no user output in the registry); the
        last ``tail`` ones only when given."""
        events = self.events()
        for e in events[-tail:] if tail else events:
            yield describe(e)


class LocalJobHandle(RegistryJobHandle):
    """Follows a job that runs in a background thread of this process (``mrkit.submit`` on a
    local executor): its result from the thread, its progress and events from the registry, where
    the run records itself like any other; ``cancel()`` stops it as ``mrkit cancel`` would."""

    def __init__(self, job_id: str, future: Future[Any], thread: threading.Thread) -> None:
        super().__init__(job_id)
        self._future = future
        self._thread = thread

    def status(self) -> JobStatus:
        if not self._future.done():
            try:
                return super().status()
            except FileNotFoundError:  # planning: the run has not recorded itself yet
                return JobStatus(self.id, "running", executor="local")
        exc = self._future.exception()
        if exc is None:
            result = self._future.result()
            counters = result.counters
            phases = {
                p: PhaseProgress(
                    done=counters.get(f"{p}.tasks", 0),
                    total=counters.get(f"{p}.tasks", 0),
                    attempts=counters.get(f"{p}.attempts_launched", 0),
                    failures=counters.get(f"{p}.attempts_failed", 0),
                    lost=counters.get(f"{p}.attempts_lost", 0),
                )
                for p in ("map", "reduce")
            }
            return JobStatus(
                self.id,
                "done",
                phase="end",
                executor="local",
                map=phases["map"],
                reduce=phases["reduce"],
                seconds=result.seconds,
                output=result.output,
                counters=counters,
            )
        state = "cancelled" if isinstance(exc, JobCancelled) else "failed"
        return JobStatus(self.id, state, phase="end", executor="local", error=str(exc))

    def events(self) -> list[TaskEvent]:
        try:
            return super().events()
        except FileNotFoundError:
            return []

    def wait(self, timeout: float | None = None) -> Any:
        try:
            return self._future.result(timeout)
        except TimeoutError:
            raise
        except Exception as exc:  # concurrent.futures.TimeoutError is TimeoutError on 3.11+
            if type(exc).__name__ == "TimeoutError":
                raise TimeoutError(f"job {self.id} still running after {timeout}s") from exc
            raise


def describe(e: TaskEvent) -> str:
    """One line for an attempt: when, which, where, how it ended."""
    when = time.strftime("%H:%M:%S", time.localtime(e.end or e.start))
    line = f"{when} {e.phase} {e.task} attempt {e.attempt} {e.outcome or 'running'} on {e.worker or '?'}"
    line += f" ({e.seconds:.3f}s, {e.records_in} records in, {e.records_out} out)"
    return line + (f": {e.error}" if e.error else "")
