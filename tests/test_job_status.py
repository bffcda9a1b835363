"""JobStatus: one schema, its JSON form round-trips, and the dict face answers as the JSON does."""

from __future__ import annotations

import json

import mrkit
from mrkit.model.status import JobStatus, PhaseProgress


def test_the_json_form_round_trips_and_keeps_its_keys() -> None:
    st = JobStatus(
        "wc-1",
        "running",
        phase="reduce",
        name="wc",
        executor="redis://127.0.0.1:6379/0",
        map=PhaseProgress(done=4, total=4, attempts=5, failures=1),
        reduce=PhaseProgress(done=1, total=2, attempts=2, lost=1),
        in_flight=1,
        workers=("w1", "w2"),
        submitted=1.5,
        seconds=3.0,
    )
    d = st.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert JobStatus.from_dict(d) == st
    assert d["tasks"] == {"map": {"done": 4, "total": 4}, "reduce": {"done": 1, "total": 2}}
    assert d["failures"] == {"map": 1, "reduce": 0} and d["lost"] == {"map": 0, "reduce": 1}
    assert "error" not in d and "counters" not in d  # only ended jobs carry them
    assert st["phase"] == "reduce" and st.get("error") is None and "tasks" in st
    assert dict(st) == d


def test_a_failed_job_carries_its_sentence_and_ends_badly() -> None:
    st = JobStatus.from_dict({"id": "j", "state": "failed", "error": "map task map-00001 failed"})
    assert st.ended_badly and st.error == "map task map-00001 failed" and st.map == PhaseProgress()


def test_an_in_process_job_reports_the_same_schema() -> None:
    handle = mrkit.submit(
        mrkit.Job(mapper=lambda line: [(line, 1)], reducer=lambda k, vs: sum(vs)),
        mrkit.Records(["a", "b", "a"]),
        executor="inline",
    )
    handle.wait(30)
    st = handle.status()
    assert isinstance(st, JobStatus) and st.state == "done" and st.phase == "end"
    assert st.map.done == st.map.total > 0 and st.counters is not None
