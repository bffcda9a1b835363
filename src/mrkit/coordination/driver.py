"""The in-process driver: run a :class:`~mrkit.coordination.plan.JobPlan` phase by phase.

Task states and their transitions live here, in one place (STYLE 14)::

    PENDING --launch--> RUNNING --an attempt commits--> COMMITTED
       ^                   |
       +--retry------------+ (the attempt failed -- user code raised, timed out or ended its
                           |  worker -- and attempts remain; or the worker was lost)
                           |
                           +--out of attempts / input unreadable--> FAILED (the job fails)

A phase ends when every task is COMMITTED. At most ``executor.workers`` attempts are in flight (plus
``executor.queue_ahead`` queued beside its workers, timed from when they leave that queue), so the
time since launch approximates running time; once nothing is pending, a RUNNING task slower
than ``speculative_after`` times the phase's median gets one speculative twin, and whichever commits
first wins (the other's ``committed`` is False and its output was discarded by the runtime).
Counters come from the winning attempts' commit manifests, so a duplicate never counts twice.

About 460 lines: the scheduling loop, retries, speculation and timeouts act on one table of
tasks under one lock.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, wait
from dataclasses import dataclass, field

from mrkit.coordination.events import EventLog
from mrkit.coordination.plan import JobPlan, RetryPolicy
from mrkit.coordination.progress import Progress
from mrkit.errors import ConfigError, JobCancelled, JobFailed, WorkerLost
from mrkit.execution.base import Executor
from mrkit.model import layout
from mrkit.model.task import TaskFailure, TaskResult, TaskSpec, failure_message
from mrkit.storage.base import Storage


class TaskState(enum.Enum):
    """Where a task stands in its phase."""

    PENDING = "pending"  # waiting to be launched (first time or retry)
    RUNNING = "running"  # one or more attempts in flight
    COMMITTED = "committed"  # an attempt committed; its output is the task's output
    FAILED = "failed"  # out of attempts, or its input cannot be read: the job fails


@dataclass
class _Task:
    spec: TaskSpec
    state: TaskState = TaskState.PENDING
    launched: int = 0
    failed: int = 0
    lost: int = 0
    running: int = 0
    speculated: bool = False
    result: TaskResult | None = None
    failure: TaskFailure | None = None
    lost_reason: str = ""


@dataclass
class PhaseStats:
    """Attempt counters of one phase."""

    tasks: int = 0
    launched: int = 0
    failed: int = 0
    lost: int = 0
    speculative: int = 0
    resumed: int | None = None
    seconds: float = 0.0
    counters: dict[str, int] = field(default_factory=dict)

    def as_counters(self, phase: str) -> dict[str, int]:
        out = {
            f"{phase}.tasks": self.tasks,
            f"{phase}.attempts_launched": self.launched,
            f"{phase}.attempts_failed": self.failed,
            f"{phase}.attempts_lost": self.lost,
            f"{phase}.attempts_speculative": self.speculative,
        }
        if self.resumed is not None:
            out[f"{phase}.tasks_resumed"] = self.resumed
        for name, value in self.counters.items():
            key = name if name.startswith("user.") else f"{phase}.{name}"
            out[key] = out.get(key, 0) + value
        return out


class PhaseRunner:
    """Runs one phase's tasks on an executor until all commit or one fails.

    Args:
        phase: ``map`` or ``reduce`` (for messages and counters).
        specs: attempt-1 specs of the phase's tasks.
        executor: where attempts run.
        storage: the job's intermediate storage (commit manifests are read from it).
        policy: retries, speculation, timeouts.
        progress: the progress display.
        cancelled: set from another thread to stop the phase with :class:`JobCancelled`.
        done: ids of tasks committed by an earlier driver of the job (a resume): they start
            COMMITTED and are never launched; None when not resuming.
        guard: called before launching attempts; raises to stop the phase (the driver's epoch
            check, :class:`~mrkit.coordination.fencing.JobFenced`).
    """

    def __init__(
        self,
        phase: str,
        specs: tuple[TaskSpec, ...],
        executor: Executor,
        storage: Storage,
        policy: RetryPolicy,
        progress: Progress,
        cancelled: threading.Event,
        done: frozenset[str] | None = None,
        guard: Callable[[], None] | None = None,
        events: EventLog | None = None,
    ) -> None:
        self.phase = phase
        self.events = events
        self.tasks = [_Task(spec) for spec in specs]
        self.guard = guard
        self.executor = executor
        self.storage = storage
        self.policy = policy
        self.progress = progress
        self.cancelled = cancelled
        self.stats = PhaseStats(tasks=len(specs))
        self._pending: deque[_Task] = deque(self.tasks)
        # future -> (task, when the attempt started running); the time is the submit time until
        # an executor that reports running() says the attempt has left its queue (see _clock).
        self._inflight: dict[Future[TaskResult], tuple[_Task, float]] = {}
        self._specs: dict[Future[TaskResult], TaskSpec] = {}  # the attempt each future runs (events)
        self._queued: set[Future[TaskResult]] = set()
        self._durations: list[float] = []
        self._done = 0
        self._records = 0
        self._bytes = 0
        if done is not None:
            self.stats.resumed = 0
            for task in self.tasks:
                if task.spec.task_id in done:
                    task.state = TaskState.COMMITTED
                    self._done += 1
                    self.stats.resumed += 1

    def run(self) -> PhaseStats:
        started = time.monotonic()
        splits = [piece for t in self.tasks for piece in (t.spec.pieces or (None,))]
        self.progress.start_phase(
            self.phase,
            len(self.tasks),
            # The map phase's bar counts input bytes (its ETA), when every split's length is known.
            total_bytes=sum(s.length for s in splits if s is not None)
            if all(s is not None and s.length >= 0 for s in splits)
            else 0,
            live=getattr(self.executor, "live_progress", None),
        )
        workers = max(1, self.executor.workers)
        capacity = workers
        if self.executor.reports_running:  # see Executor.queue_ahead
            capacity += max(0, self.executor.queue_ahead)
        try:
            while self._done < len(self.tasks):
                if self.cancelled.is_set():
                    raise JobCancelled(
                        f"job {self.tasks[0].spec.job_id} was cancelled during the {self.phase} phase",
                        job_id=self.tasks[0].spec.job_id,
                    )
                if self.guard is not None and self._pending and len(self._inflight) < capacity:
                    self.guard()
                while self._pending and len(self._inflight) < capacity:
                    task = self._pending.popleft()
                    if task.state is not TaskState.COMMITTED:
                        self._launch(task)
                if not self._pending:
                    self._maybe_speculate(workers)  # a twin only for a worker left idle
                if not self._inflight:
                    continue
                finished, _ = wait(list(self._inflight), timeout=0.2, return_when=FIRST_COMPLETED)
                for future in finished:
                    self._handle(future)
                self._expire_timeouts()
        finally:
            self.progress.end_phase()
            for future in self._inflight:
                future.cancel()
        self.stats.seconds = time.monotonic() - started
        self._collect_counters()
        return self.stats

    # -- transitions -------------------------------------------------------------------------

    def _launch(self, task: _Task, speculative: bool = False) -> None:
        task.launched += 1
        task.running += 1
        task.state = TaskState.RUNNING
        self.stats.launched += 1
        if speculative:
            task.speculated = True
            self.stats.speculative += 1
        spec = dataclasses.replace(task.spec, attempt=task.launched)
        if self.events is not None:
            self.events.started(self.phase, spec, speculative)
        future = self.executor.submit(spec)
        self._inflight[future] = (task, time.monotonic())
        self._specs[future] = spec
        if self.executor.reports_running:
            self._queued.add(future)

    def _clock(self, now: float) -> None:
        """Restart the clock of attempts seen leaving the executor's queue since the last call.

        Timeouts and straggler detection measure how long an attempt has *run*: a retry queued
        behind an abandoned attempt that still holds its worker must not time out for waiting.
        """
        for future in [f for f in self._queued if f.running() or f.done()]:
            self._queued.discard(future)
            if future in self._inflight:
                self._inflight[future] = (self._inflight[future][0], now)

    def _handle(self, future: Future[TaskResult]) -> None:
        self._queued.discard(future)
        task, _started = self._inflight.pop(future)
        spec = self._specs.pop(future)
        task.running -= 1
        events = self.events
        try:
            result = future.result()
        except CancelledError:
            if events is not None:
                events.ended(spec, "cancelled")
            return
        except WorkerLost as exc:
            if events is not None:
                events.ended(spec, "lost", error=str(exc))
            self._lost(task, str(exc))
            return
        except ConfigError as exc:  # the executor cannot run anything (e.g. its runner does not import)
            raise JobFailed(
                f"{self.phase} task {task.spec.task_id} of job {task.spec.job_id} cannot run: {exc}",
                job_id=task.spec.job_id,
                task_id=task.spec.task_id,
            ) from exc
        except Exception as exc:  # an executor that fails a future otherwise: treat as lost, say why
            if events is not None:
                events.ended(spec, "lost", error=f"{type(exc).__name__}: {exc}")
            self._lost(task, f"{type(exc).__name__}: {exc}")
            return
        if result.lost_deliveries:
            # Runs of this attempt that the executor's infrastructure started and lost by itself
            # (a Dask scheduler re-ran it after its worker died): counted as launched and lost, as
            # on the backends where the driver relaunches; not bounded by max_lost, since the
            # attempt came back.
            self.stats.launched += result.lost_deliveries
            self.stats.lost += result.lost_deliveries
        if events is not None:
            outcome = (
                "committed" if result.ok and result.committed else "discarded" if result.ok else "failed"
            )
            sentence = result.failure.sentence() if result.failure is not None else ""
            events.ended(spec, outcome, result, sentence)
        if task.state is TaskState.COMMITTED:
            # A speculative twin or duplicate finished after the winner: the task stands, but a
            # failed attempt is still counted (as a lost one is in _lost), so counters tell the truth.
            if not result.ok:
                self.stats.failed += 1
                task.failed += 1
            return
        if result.ok:
            self._commit(task, result)
        else:
            self._failed(task, result)

    def _commit(self, task: _Task, result: TaskResult) -> None:
        task.state = TaskState.COMMITTED
        task.result = result
        self._done += 1
        self._durations.append(result.seconds)
        self._records += result.counters.get("records_in", result.counters.get("records_out", 0))
        # Map tasks report the input bytes they read, reduce tasks the output bytes they wrote.
        self._bytes += result.counters.get("bytes_in", result.counters.get("bytes_out", 0))
        for other, (t, _) in list(self._inflight.items()):
            if t is task:
                other.cancel()
        self.progress.update(self.phase, self._done, len(self.tasks), self._records, self._bytes)

    def _failed(self, task: _Task, result: TaskResult) -> None:
        self.stats.failed += 1
        task.failed += 1
        task.failure = result.failure
        retryable = result.failure is None or result.failure.retryable
        if not retryable or task.failed >= self.policy.max_attempts:
            self._fail_job(task)
        if task.running == 0:
            self._pending.append(task)

    def _lost(self, task: _Task, reason: str) -> None:
        self.stats.lost += 1
        task.lost += 1
        task.lost_reason = reason
        if task.state is TaskState.COMMITTED:
            return
        if task.lost > self.policy.max_lost:
            self._fail_job(task)
        if task.running == 0:
            self._pending.append(task)

    def _fail_job(self, task: _Task) -> None:
        task.state = TaskState.FAILED
        spec = task.spec
        if task.failure is not None:
            failure = task.failure
            where = f"partition {spec.partition}" if self.phase == "reduce" else None
            message = failure_message(self.phase, spec, failure, task.failed, where)
            raise JobFailed(
                message, job_id=spec.job_id, task_id=spec.task_id, remote_traceback=failure.traceback
            )
        raise JobFailed(
            f"{self.phase} task {spec.task_id} of job {spec.job_id} failed: its worker was lost "
            f"{task.lost} times (last: {task.lost_reason})",
            job_id=spec.job_id,
            task_id=spec.task_id,
        )

    def _maybe_speculate(self, capacity: int) -> None:
        if not self.policy.speculative or not self._durations or len(self._inflight) >= capacity:
            return
        from statistics import median  # here: its import (fractions, decimal) is 5 ms per run

        threshold = max(
            self.policy.speculative_min_seconds,
            self.policy.speculative_after * median(self._durations),
        )
        now = time.monotonic()
        self._clock(now)
        for future, (task, started) in list(self._inflight.items()):
            if future in self._queued:
                continue
            if len(self._inflight) >= capacity:
                return
            if (
                task.state is TaskState.RUNNING
                and not task.speculated
                and task.running == 1
                and now - started > threshold
            ):
                self._launch(task, speculative=True)

    def _expire_timeouts(self) -> None:
        timeout = self.policy.task_timeout
        if timeout is None or self.executor.enforces_timeouts:
            return  # the executor ends stuck attempts where they run and reports TaskTimeout
        now = time.monotonic()
        self._clock(now)
        for future, (task, started) in list(self._inflight.items()):
            if future not in self._queued and now - started > timeout:
                del self._inflight[future]
                self._queued.discard(future)
                future.cancel()
                task.running -= 1
                self._lost(task, f"attempt ran longer than task_timeout={timeout}s")

    def status(self) -> dict[str, dict[str, object]]:
        """Per task: its state and its attempts launched, failed and lost so far."""
        return {
            t.spec.task_id: {
                "state": t.state.value,
                "launched": t.launched,
                "failed": t.failed,
                "lost": t.lost,
            }
            for t in self.tasks
        }

    def _collect_counters(self) -> None:
        """Sum the counters of each task's *committed* attempt, read from its commit manifest."""
        totals: dict[str, int] = {}
        for task in self.tasks:
            raw = self.storage.get_or_none(layout.commit_key(task.spec.job_id, task.spec.task_id))
            counters = json.loads(raw)["counters"] if raw else (task.result.counters if task.result else {})
            for name, value in counters.items():
                totals[name] = totals.get(name, 0) + value
        self.stats.counters = totals


def run_plan(
    plan: JobPlan,
    executor: Executor,
    storage: Storage,
    progress: Progress,
    cancelled: threading.Event | None = None,
    *,
    reuse: Callable[[tuple[TaskSpec, ...]], frozenset[str]] | None = None,
    guard: Callable[[], None] | None = None,
    events: EventLog | None = None,
) -> dict[str, int]:
    """Run the map phase, then the reduce phase, of ``plan``; return the job's counters.

    Publishing the output is the caller's step (it knows the output storage and overwrite policy).

    Args:
        plan, executor, storage, progress, cancelled: what to run, where, and how to stop it.
        reuse: when resuming, called with a phase's specs at its start; returns the ids of the
            tasks committed by an earlier driver, which are not run again (counted as
            ``{phase}.tasks_resumed``; their counters come from their commit manifests as usual).
        guard: called at the start of each phase and before launching attempts (at most every
            few tenths of a second, see :mod:`mrkit.coordination.fencing`); raises to stop.
        events: records every attempt (:mod:`mrkit.coordination.events`); the attempts still
            running when the run stops are closed as ``cancelled``.

    Raises:
        JobFailed: a task ran out of attempts (nothing has been published).
        JobFenced: ``guard`` found a newer driver of the job.
        JobCancelled: ``cancelled`` was set.
    """
    cancelled = cancelled or threading.Event()
    counters: dict[str, int] = {}
    status: dict[str, dict[str, object]] = {}
    for phase, specs in (("map", plan.map_specs), ("reduce", plan.reduce_specs)):
        if phase == "reduce" and not specs:
            break  # a map-only job: the map tasks wrote the output parts
        if guard is not None:
            guard()
        done = reuse(specs) if reuse is not None else None
        runner = PhaseRunner(
            phase,
            specs,
            executor,
            storage,
            plan.policy,
            progress,
            cancelled,
            done=done,
            guard=guard,
            events=events,
        )
        try:
            stats = runner.run()
        except JobFailed as exc:
            # Tell the user what ran before the failure: attempts per task, committed tasks' counters.
            runner._collect_counters()
            counters.update(runner.stats.as_counters(phase))
            status.update(runner.status())
            exc.counters = {**counters, **exc.counters}
            exc.status = {**status, **exc.status}
            raise
        finally:
            if events is not None:
                events.close_all()
        counters.update(stats.as_counters(phase))
        counters[f"{phase}.millis"] = int(stats.seconds * 1000)
        status.update(runner.status())
    return counters
