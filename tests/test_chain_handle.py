"""ChainHandle reads a multi-step job whose chain moves on while it reads
(mrkit.coordination.chain_handle): the status it reports is the one after the move, never a mix."""

from __future__ import annotations

from typing import Any

from mrkit.coordination.chain import ChainRecord
from mrkit.coordination.chain_handle import ChainHandle
from mrkit.model.status import JobStatus

LABELS = ("step 1 of 2 (count)", "step 2 of 2 (top)")


class MovingStore:
    """A chain record that the last step's publisher ends between the handle's two reads."""

    job_id = "J"

    def __init__(self) -> None:
        self.reads = 0

    def read(self) -> ChainRecord:
        self.reads += 1
        state = "running" if self.reads == 1 else "done"
        return ChainRecord("J", "top", LABELS, step=2, state=state, submitted=1.0, ended=None)


class StepHandle:
    """Step 1 done; step 2 still publishing on its first read, done (with counters) afterwards."""

    def __init__(self, run_id: str, reads: dict[str, int]) -> None:
        self.run_id, self.reads = run_id, reads

    def status(self) -> JobStatus:
        self.reads[self.run_id] = self.reads.get(self.run_id, 0) + 1
        if self.run_id.endswith("step1"):
            return JobStatus(
                self.run_id, "done", "end", counters={"map.records_in": 7, "reduce.records_out": 3}
            )
        if self.reads[self.run_id] == 1:
            return JobStatus(self.run_id, "running", "publish")
        return JobStatus(
            self.run_id, "done", "end", output="/out", counters={"map.records_in": 3, "reduce.records_out": 2}
        )


def test_a_chain_that_ends_while_its_steps_are_read_reports_the_ended_steps_counters() -> None:
    reads: dict[str, int] = {}
    handle: Any = ChainHandle(MovingStore(), lambda run_id: StepHandle(run_id, reads))  # type: ignore[arg-type]
    status = handle.status()
    assert (status.state, status.step, status.steps, status.output) == ("done", 2, 2, "/out")
    assert status.counters == {
        "map.records_in": 7,
        "reduce.records_out": 2,
        "step1.map.records_in": 7,
        "step1.reduce.records_out": 3,
        "step2.map.records_in": 3,
        "step2.reduce.records_out": 2,
    }
    assert reads == {"J-step1": 1, "J-step2": 2}
