"""Following a multi-step job submitted to a job service (a chain, :mod:`mrkit.coordination.chain`).

:class:`ChainHandle` answers for the whole job what a one-step job's handle answers: ``status()``
(phase ``step2.map``, ``step``/``steps``, counters per step ``step1.map.…`` plus the job's two ends
unprefixed), ``wait()``/``result()`` (the last step's result), ``logs()``/``events()`` (the steps',
in order, marked with their step) and ``cancel()``. Reading the chain also settles it: a step that
ended badly ends the chain with the step-named sentence, and a step that published without the
chain advancing (its publisher crashed in between) is advanced here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from mrkit.coordination.chain import (
    ENDED,
    POLL_SECONDS,
    ChainRecord,
    ChainStore,
    Submit,
    advance,
    delete_between,
    step_exists,
)
from mrkit.coordination.events import TaskEvent
from mrkit.coordination.handle import JobHandle
from mrkit.coordination.result import Result
from mrkit.coordination.step_options import job_counters, prefixed, step_failure
from mrkit.coordination.step_record import step_run_id
from mrkit.errors import JobCancelled, JobFailed
from mrkit.model.status import JobStatus

#: A step that ended this many seconds ago without the chain advancing: its publisher died between
#: its publish and its advance, and a handle (with the secret) advances the chain in its place.
RECOVER_AFTER_SECONDS = 10.0
#: A chain whose current step is unknown this long after the chain was submitted has lost it.
PENDING_SECONDS = 60.0


def _stuck(step: JobStatus) -> bool:
    ended = step.ended
    if ended is None and step.submitted is not None and step.seconds is not None:
        ended = float(step.submitted) + float(step.seconds)  # (object-store statuses carry no "ended")
    return ended is not None and time.time() - float(ended) >= RECOVER_AFTER_SECONDS


class ChainHandle(JobHandle):
    """Follows a chain by its id, from any process that reaches its backend (module docstring).

    Args:
        store: the chain's record.
        handle_for: the backend's handle of a one-step job id.
        submit: the backend's one-step submit, when this side may advance the chain (it holds the
            secret): a handle that finds the chain stuck after a step published advances it.
    """

    def __init__(
        self, store: ChainStore, handle_for: Callable[[str], JobHandle], submit: Submit | None = None
    ):
        self.id = store.job_id
        self.store = store
        self.handle_for = handle_for
        self.submit = submit

    def _record(self) -> ChainRecord:
        record = self.store.read()
        if record is None:
            raise JobFailed(f"there is no multi-step job {self.id}", job_id=self.id)
        return record

    def step_handle(self, k: int) -> JobHandle:
        return self.handle_for(step_run_id(self.id, k))

    def _settle(self, record: ChainRecord) -> tuple[ChainRecord, list[JobStatus]]:
        """The steps' statuses; ends the chain (or advances it) when its current step ended and
        nobody recorded that yet (a publisher that crashed, a step that failed)."""
        statuses = [self.step_handle(j).status() for j in range(1, record.step + 1)]
        current = statuses[-1]
        if record.state == "running":
            label = record.labels[record.step - 1]
            # (A first step not there yet: its submit is under way, in the submitter.)
            pending = current.state == "unknown" and time.time() - record.submitted < PENDING_SECONDS
            if current.state in ("failed", "cancelled", "lost", "unknown") and not pending:
                final = "cancelled" if current.state == "cancelled" else "failed"
                error = current.error or f"job {current.id} {current.state}"
                if self.store.finish(final, step_failure(label, self.id, error)):
                    delete_between(self.store, record.step - 1)
                    delete_between(self.store, record.step)
            elif current.state == "done" and self.submit is not None and _stuck(current):
                advance(self.store, record.step, self.submit, self.handle_for)
            before, record = record, self._record()
            if (record.step, record.state) != (before.step, before.state):
                # The chain moved on since its steps were read (a publisher advanced or ended it in
                # between): read the steps from the one that was current again, or the job would be
                # reported with a step's counters and output of a moment before it ended.
                statuses[before.step - 1 :] = [
                    self.step_handle(j).status() for j in range(before.step, record.step + 1)
                ]
        return record, statuses

    def status(self) -> JobStatus:
        """The whole job's status: its state, ``step``/``steps``, phase ``step{k}.{phase}``, the
        current step's tasks, and counters per ended step (``step1.map.records_in``) plus the
        job's two ends unprefixed once it is done."""
        record, statuses = self._settle(self._record())
        current = statuses[-1]
        counters: dict[str, int] = {}
        for j, st in enumerate(statuses, 1):
            if st.state == "done" and st.counters is not None:
                counters.update(prefixed(dict(st.counters), j))
        if record.state == "done" and current.counters is not None:
            counters = job_counters(counters, dict(current.counters))
        phase = f"step{record.step}.{current.phase}" if current.phase else f"step{record.step}"
        return replace(
            current,
            id=self.id,
            name=record.name,
            state=record.state,
            phase=phase,
            step=record.step,
            steps=record.n_steps,
            submitted=record.submitted,
            ended=record.ended,
            seconds=(record.ended or time.time()) - record.submitted,
            error=record.error or None,
            counters=counters or None,
            output=current.output if record.step == record.n_steps else None,
        )

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the chain ends; return the last step's result (counters of the whole job).

        Raises:
            JobFailed: a step failed (the message names it); ``JobCancelled``: the job was cancelled.
            TimeoutError: ``timeout`` passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.status()
            if st.state == "done":
                last = self.step_handle(st.steps or 1).wait(timeout=60)
                pairs = None if last.output is not None else list(last)
                return Result(self.id, last.output, dict(st.counters or {}), st.seconds or 0.0, pairs)
            if st.state in ("failed", "cancelled"):
                cls = JobCancelled if st.state == "cancelled" else JobFailed
                raise cls(
                    st.error or f"job {self.id} {st.state}", job_id=self.id, counters=dict(st.counters or {})
                )
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.id} still running after {timeout}s")
            time.sleep(POLL_SECONDS)

    def cancel(self) -> bool:
        """Cancel the chain: no later step starts, and the running step is cancelled. True when
        this call cancelled it (False once it ended)."""
        record = self._record()
        if record.state != "running":
            return False
        last = record.step == record.n_steps
        if last and step_exists(self.handle_for, step_run_id(self.id, record.step)):
            # The last step publishes the job's output: once it has begun to, it is too late (its
            # own cancel refuses), and the job ends done, never cancelled with its output published.
            step = self.step_handle(record.step)
            if not step.cancel() and step.status().state in ("running", "done"):
                return False
        if not self.store.finish("cancelled", f"job {self.id} was cancelled during step {record.step}"):
            return False
        # The step running now, and one an advance may be submitting at this moment (the advancer
        # checks the chain's state after its submit, and cancels what it submitted).
        for k in (record.step, record.step + 1):
            if not last and k <= record.n_steps and step_exists(self.handle_for, step_run_id(self.id, k)):
                self.step_handle(k).cancel()
        return True

    def logs(self, follow: bool = False) -> Iterator[str]:
        """The steps' log lines in order, each prefixed ``step{k}``; with ``follow``, until the end."""
        k = 1
        while k <= self._record().step:
            for line in self.step_handle(k).logs(follow=follow):
                yield f"step{k} {line}"
            if not follow:
                k += 1
                continue
            while True:  # step k ended: wait for the next one, or the chain's end
                record = self.status()
                if record.state in ENDED or (record.step or 1) > k:
                    break
                time.sleep(POLL_SECONDS)
            k += 1

    def events(self) -> list[TaskEvent]:
        """Every step's task events, task ids prefixed ``step{k}.``."""
        out: list[TaskEvent] = []
        for k in range(1, self._record().step + 1):
            out += [replace(e, task=f"step{k}.{e.task}") for e in self.step_handle(k).events()]
        return out
