"""Following a serverless job from anywhere: its handle, and the list of a storage's jobs.

:class:`ObjectStoreJobHandle` reads the job's state from the object store (keys of
:mod:`mrkit.backends.aws_lambda.wire`, read through :mod:`.state`), so any process that reaches the
storage can follow, wait for, cancel or tail a job that the functions advance (:mod:`.jobs`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from mrkit.backends.aws_lambda.state import _load, _task_failure_counts, current_run, stopped
from mrkit.backends.aws_lambda.task_events import read_events
from mrkit.backends.aws_lambda.wire import (
    JOBS_INDEX,
    LOST,
    cancelled_record,
    claim_parts,
    claims_prefix,
    committed_prefix,
    decision_key,
    done_prefix,
    end_key,
    key_task,
    lost_reason,
    skipped_prefix,
)
from mrkit.coordination.cost import cost_report, price_table
from mrkit.coordination.events import TaskEvent
from mrkit.coordination.handle import JobHandle
from mrkit.data.output import read_output
from mrkit.errors import ConfigError, JobCancelled, JobFailed
from mrkit.model.status import JobStatus
from mrkit.model.task import TaskResult
from mrkit.storage import open_storage

# -- following a job from anywhere -----------------------------------------------------------------------


def list_jobs(storage_url: str) -> list[JobStatus]:
    """The status of every job submitted with this storage, newest first."""
    storage = open_storage(storage_url)
    ids = [key[len(JOBS_INDEX) :] for key in storage.list(JOBS_INDEX)]
    # Without the cost report: it reads every event of the job (status() of one job has it).
    found = [JobStatus.from_dict(ObjectStoreJobHandle(job_id, storage_url)._status_dict()) for job_id in ids]
    return sorted((s for s in found if s.state != "unknown"), key=lambda s: -float(s.submitted or 0))


def open_job_handle(job_id: str, storage_url: str) -> ObjectStoreJobHandle:
    """A handle on the serverless job ``job_id`` whose state lies in ``storage_url``.

    This is the hook for ``mrkit status/result/cancel/logs ID --storage URL``.

    Raises:
        ConfigError: there is no such job in that storage.
    """
    handle = ObjectStoreJobHandle(job_id, storage_url)
    _load(handle.storage, job_id)
    return handle


class ObjectStoreJobHandle(JobHandle):
    """Follows a serverless job by reading its state from the object store (from any process).

    Args:
        job_id: the job's id.
        storage_url: the job's storage (the executor's ``storage=``).
        poll_interval: seconds between state reads in :meth:`wait` and :meth:`logs` with ``follow``.
    """

    def __init__(self, job_id: str, storage_url: str, *, poll_interval: float = 0.25) -> None:
        self.id = job_id
        self.storage_url = storage_url
        self.storage = open_storage(storage_url)
        self.poll_interval = poll_interval

    #: Whether ``status()`` reports the job's cost (a serverless job is billed per invocation; a Dask
    #: job, whose handle is a subclass, is not).
    reports_cost = True

    def status(self) -> JobStatus:
        """The job's :class:`~mrkit.model.status.JobStatus` (see :meth:`_status_dict`), with its
        cost report (:mod:`mrkit.coordination.cost`, from its task events)."""
        status = self._status_dict()
        if self.reports_cost and status["state"] != "unknown":
            status["cost"] = self.cost()
        return JobStatus.from_dict(status)

    def cost(self, events: list[TaskEvent] | None = None) -> dict[str, Any]:
        """The job's cost report so far (:func:`~mrkit.coordination.cost.cost_report` of its events,
        or of ``events`` when the caller read them already, priced by
        :func:`~mrkit.coordination.cost.price_table`); ``{"error": sentence}`` when the user's price
        table cannot be read. The phase changes run inside the task invocations: there are no
        driver invocations to add."""
        try:
            prices = price_table()
        except ConfigError as exc:
            return {"error": str(exc)}
        return cost_report(self.events() if events is None else events, prices=prices)

    def _status_dict(self) -> dict[str, Any]:
        """The job's state, in the shape ``mrkit status`` prints for every asynchronous executor.

        Returns:
            ``{"id", "name", "executor", "state", "phase", "submitted", "seconds", "output",
            "tasks": {"map": {"done", "total"}, "reduce": {…}}, "attempts": {"map", "reduce"},
            "failures": {…}, "lost": {…}, "duplicates_skipped": {…}, "in_flight", "workers"}``;
            ``state`` is running, done, failed, cancelled or unknown (no such job); a done job adds
            ``counters``, a failed one ``error``. Attempt counts of an ended job come from its
            counters (its claims are gone).
        """
        try:
            doc = _load(self.storage, self.id)
        except ConfigError:
            return {"id": self.id, "state": "unknown", "error": f"no job {self.id} in {self.storage_url}"}
        plan = doc["plan"]
        totals = {"map": len(plan["map_specs"]), "reduce": len(plan["reduce_specs"])}
        status: dict[str, Any] = {
            "id": self.id,
            "name": plan["name"],
            "executor": doc.get("executor", ""),
            "submitted": doc["submitted"],
            "seconds": round(time.time() - doc["submitted"], 3),
            "output": None if "#" in plan["output_url"] else plan["output_url"].removeprefix("file://"),
            "workers": [doc.get("executor", "")],
            "in_flight": 0,
        }
        zero = {"map": 0, "reduce": 0}
        run = current_run(self.storage, self.id)
        if run > 1:
            status["run"] = run
        end = stopped(self.storage, self.id, run)
        if end is not None:
            counters = end.get("counters", {})
            done = totals if end["state"] == "done" else zero
            status.update(
                {k: v for k, v in end.items() if k not in ("traceback", "time", "output")},
                phase="end",
                tasks={p: {"done": done[p], "total": totals[p]} for p in totals},
                attempts={p: counters.get(f"{p}.attempts_launched", 0) for p in totals},
                failures={p: counters.get(f"{p}.attempts_failed", 0) for p in totals},
                lost={p: counters.get(f"{p}.attempts_lost", 0) for p in totals},
                duplicates_skipped={p: counters.get(f"{p}.duplicates_skipped", 0) for p in totals},
            )
            if "seconds" in end:
                status["seconds"] = end["seconds"]
            return status
        done = {p: len(set(self.storage.list(committed_prefix(self.id, p)))) for p in totals}
        attempts: dict[str, set[str]] = {"map": set(), "reduce": set()}
        for key in self.storage.list(claims_prefix(self.id)):
            task, attempt, _delivery = claim_parts(key)
            attempts[task.split("-", 1)[0]].add(f"{task}/{attempt}")
        finished = {
            "/".join(k.split("/")[-2:]).removesuffix(LOST) for k in self.storage.list(done_prefix(self.id))
        }
        failures, lost = dict(zero), dict(zero)
        for task, (failed, was_lost) in _task_failure_counts(self.storage, self.id).items():
            phase = task.split("-", 1)[0]
            failures[phase] += failed
            lost[phase] += was_lost
        phase = next((p for p in ("map", "reduce") if done[p] < totals[p]), "publish")
        status.update(
            state="running",
            phase=phase,
            tasks={p: {"done": done[p], "total": totals[p]} for p in totals},
            attempts={p: len(attempts[p]) for p in totals},
            failures=failures,
            lost=lost,
            in_flight=sum(len(a - finished) for a in attempts.values()),
            duplicates_skipped={
                p: sum(1 for k in self.storage.list(skipped_prefix(self.id)) if key_task(k).startswith(p))
                for p in totals
            },
        )
        return status

    def events(self) -> list[TaskEvent]:
        """The job's task events (:mod:`.task_events`): one per delivery that ended, and, while the
        job runs, one per delivery still running (``end`` 0), in start order."""
        running = stopped(self.storage, self.id, current_run(self.storage, self.id)) is None
        return read_events(self.storage, self.id, running=running)

    def wait(self, timeout: float | None = None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            end = stopped(self.storage, self.id, current_run(self.storage, self.id))
            if end is not None:
                return self._finish(end)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} still running after {timeout}s: {self.status()}")
            self._while_running()
            time.sleep(self.poll_interval)

    def _while_running(self) -> None:
        """Called between two looks at a running job (wait, logs -f): a subclass that can tell a job
        which will never end (Dask: its tasks are gone) ends it here. Nothing here."""

    def _finish(self, end: dict[str, Any]) -> Any:
        from mrkit.coordination.result import Result

        if end["state"] == "cancelled":
            raise JobCancelled(f"job {self.id} was cancelled", job_id=self.id)
        if end["state"] == "failed":
            raise JobFailed(
                end["error"],
                job_id=self.id,
                task_id=end.get("task_id", ""),
                remote_traceback=end.get("traceback", ""),
            )
        output = _load(self.storage, self.id)["plan"]["output_url"]
        pairs = list(read_output(output)) if "#" in output else None
        return Result(
            self.id,
            None if pairs is not None else output.removeprefix("file://"),
            end.get("counters", {}),
            float(end.get("seconds", 0.0)),
            pairs,
        )

    def cancel(self) -> bool:
        """Record the cancellation of the job's current run (invocations that start afterwards do
        nothing); False when it had already ended, or when an invocation has begun publishing its
        output (publishing is the commit: the job then ends done or failed, never cancelled with
        its output in place). The intermediate data stays, for :func:`resume_job`."""
        run = current_run(self.storage, self.id)
        decision = decision_key(self.id, run)
        if (
            not self.storage.put_if_absent(decision, b"cancel")
            and self.storage.get_or_none(decision) != b"cancel"
        ):
            return False  # publishing
        return self.storage.put_if_absent(end_key(self.id, run), cancelled_record())

    def logs(self, follow: bool = False) -> Iterator[str]:
        """One line per delivery and per result, in time order.

        With ``follow``, keep polling (every ``poll_interval``) for new lines until the job ends,
        then print how it ended. A job that succeeded deletes its deliveries and results with its
        intermediate data, so only a follower sees them all.
        """
        seen: set[str] = set()
        while True:
            end = stopped(self.storage, self.id, current_run(self.storage, self.id))
            for _, line in sorted(self._new_log_lines(seen), key=lambda item: item[0]):
                yield line
            if not follow:
                return
            if end is not None:
                yield f"job {self.id} {end['state']}" + (f": {end['error']}" if end.get("error") else "")
                return
            self._while_running()
            time.sleep(self.poll_interval)

    def _new_log_lines(self, seen: set[str]) -> list[tuple[float, str]]:
        """The log lines of deliveries and results whose keys are not in ``seen`` (added to it)."""
        lines: list[tuple[float, str]] = []
        for key in self.storage.list(claims_prefix(self.id)):
            raw = None if key in seen else self.storage.get_or_none(key)
            if raw is None:
                continue
            seen.add(key)
            claim = json.loads(raw)
            task, attempt, delivery = claim_parts(key)
            lines.append(
                (
                    claim["time"],
                    f"{task} {attempt} delivery {delivery[1:]} started (request {claim['request_id']})",
                )
            )
        for key in self.storage.list(done_prefix(self.id)):
            raw = None if key in seen else self.storage.get_or_none(key)
            if raw is None:
                continue
            seen.add(key)
            task, attempt = key.split("/")[-2:]
            if attempt.endswith(LOST):
                lines.append((time.time(), f"{task} {attempt[: -len(LOST)]} lost: {lost_reason(raw)}"))
                continue
            result = TaskResult.decode(raw)
            state = (
                ("committed" if result.committed else "ok (duplicate)")
                if result.ok
                else f"failed: {result.failure.sentence() if result.failure else '?'}"
            )
            lines.append(
                (time.time(), f"{task} {attempt} {state} in {result.seconds:.3f}s on {result.worker}")
            )
        return lines
