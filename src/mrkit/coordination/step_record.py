"""A multi-step run's record in the job registry: one id for the whole job, its steps linked to it.

:func:`~mrkit.multistep.run_steps` runs each step as a run of its own, recorded in the registry as
``{job}-step{k}``. :class:`StepsRecording` records the job itself under its id as well, so that
``mrkit status/plot/cancel ID``, the dashboard and ``mrkit.submit``'s handle find the job by the
id the user knows (``job_id=``, ``--job-id``, the summary line):

* its ``status.json`` lists its steps' run ids as they start (``"steps"``) and the step count;
* the registry reads such a job through its steps
  (:func:`~mrkit.coordination.registry.step_runs`): its events are theirs, each task id prefixed
  ``step{k}.`` (``step2.map-00001``); its task totals are their sums; while it runs, its phase is
  the running step's (``step2.map``);
* a cancel request for the job (``mrkit cancel ID``, the dashboard's button, ``handle.cancel()``)
  is passed on to the step running then, and no later step starts.
"""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any

from mrkit.coordination.events import EventLog
from mrkit.coordination.registry import (
    CANCEL_POLL,
    CancelWatcher,
    record_end,
    registry_dir,
    request_cancel,
    save_start,
    write_status,
)


def step_run_id(job_id: str, k: int) -> str:
    """The registry id of step ``k`` (from 1) of the multi-step job ``job_id``."""
    return f"{job_id}-step{k}"


_STEP_RUN_ID = re.compile(r"^(?P<job>.+)-step(?P<k>\d+)$")


def split_step_run_id(run_id: str) -> tuple[str, int] | None:
    """``(job id, k)`` when ``run_id`` has the shape :func:`step_run_id` gives, else None (whether
    such a multi-step job exists is for the caller to check).

    >>> split_step_run_id("words-step2"), split_step_run_id("words")
    (('words', 2), None)
    """
    match = _STEP_RUN_ID.match(run_id)
    return None if match is None else (match["job"], int(match["k"]))


class StepsRecording:
    """The registry record of one multi-step run, from its start to its end.

    ``cancelled`` is set when someone asks the job to stop; the request is also passed on to the
    step that runs then (a step's own driver watches its own id).
    """

    def __init__(self, job_id: str, name: str, executor: str, n_steps: int) -> None:
        self.job_id, self.name, self.executor = job_id, name, executor
        self._steps: list[str] = []
        self._status_path = registry_dir(job_id) / "status.json"
        try:
            save_start(job_id, name, executor, {"map": 0, "reduce": 0})
            self._update({"n_steps": n_steps, "steps": []})
        except OSError:
            pass  # an unwritable registry costs a warning at the end (record_end), never the run
        self.cancelled = threading.Event()
        self._watcher = CancelWatcher(job_id, self.cancelled)
        self._ended = threading.Event()
        self._forwarder = threading.Thread(target=self._forward, name="mrkit-step-cancel", daemon=True)
        self._forwarder.start()

    def start_step(self, k: int) -> str:
        """Link step ``k`` (about to run) to the job; return the id its run records itself under."""
        run_id = step_run_id(self.job_id, k)
        self._steps.append(run_id)
        try:
            self._update({"steps": list(self._steps)})
        except OSError:
            pass
        return run_id

    def end(
        self, started: float, error: BaseException | None, counters: dict[str, int] | None = None
    ) -> None:
        """Record the job's end (``started``: its ``time.monotonic()`` start)."""
        self._ended.set()
        self._watcher.stop()
        # Both threads have ended on return: the caller gets its process back single-threaded.
        if self._forwarder is not threading.current_thread():
            self._forwarder.join()
        # The job's own events file stays empty: its events are its steps' (module docstring).
        record_end(self.job_id, self.name, self.executor, EventLog(None), started, error, counters)

    def _update(self, fields: dict[str, Any]) -> None:
        status = json.loads(self._status_path.read_text(encoding="utf-8"))
        status.update(fields)
        write_status(self._status_path.parent, status)

    def _forward(self) -> None:
        """Pass a cancel request on to the running step until one is written or the job ends (a
        request that comes while the next step is being planned is written once its run exists)."""
        while not self.cancelled.wait(CANCEL_POLL):
            if self._ended.is_set():
                return  # the job ended without a cancel request: nothing to pass on
        while not self._ended.is_set():
            if self._steps and request_cancel(self._steps[-1]):
                return
            time.sleep(CANCEL_POLL)
