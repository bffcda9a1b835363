"""A multi-step blocking run in the job registry: one id for the whole job, read through its steps
(mrkit.coordination.step_record), so that ``mrkit status/plot/cancel ID`` and ``mrkit.submit``'s
handle work on the id the user knows."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mrkit
from mrkit.coordination.registry import RegistryJobHandle, list_runs, load_events
from mrkit.errors import JobCancelled
from tests import contract_jobs as C
from tests.jobs_for_tests import paced_words, total
from tests.test_events import text


def test_a_multi_step_run_is_found_by_its_id_with_every_steps_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MRKIT_HOME", str(tmp_path / "home"))
    source = text(tmp_path, ["the cat the dog", "a cat the end"] * 20)
    result = mrkit.run(
        C.TOP_WORDS, source, executor="processes", workers=2, n_reduce=2, quiet=True, job_id="top1"
    )
    status = RegistryJobHandle("top1").status()
    assert status.state == "done" and status.phase == "end"
    # Step 1: 1 map, 2 reduce tasks; step 2 (n_reduce=1): a map task per part of step 1, 1 reduce.
    assert (status.map.total, status.reduce.total) == (3, 3) and status.map.done == 3
    assert status.counters["step2.reduce.records_out"] == 3 == result.counters["reduce.records_out"]
    tasks = sorted(e.task for e in load_events("top1") if e.outcome == "committed")
    assert tasks == [
        "step1.map-00000",
        "step1.reduce-00000",
        "step1.reduce-00001",
        "step2.map-00000",
        "step2.map-00001",
        "step2.reduce-00000",
    ]
    # Each step is a run of its own too, named after the job.
    listed = {s.id: s for s in list_runs()}
    assert {"top1", "top1-step1", "top1-step2"} <= set(listed)
    assert listed["top1"].map.total == 3 and listed["top1"].state == "done"


def test_mrkit_status_and_plot_take_a_multi_step_jobs_id(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"MRKIT_HOME": str(home), "PATH": "/usr/bin:/bin"}
    source = text(tmp_path, ["the cat the dog"] * 10)
    script = (
        "import sys, mrkit\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from tests import contract_jobs as C\n"
        "mrkit.run(C.TOP_WORDS, sys.argv[1], executor='inline', quiet=True, job_id='top2')\n"
    )
    root = str(Path(__file__).resolve().parents[1])
    done = subprocess.run(
        [sys.executable, "-c", script, source, root], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    command = [sys.executable, "-m", "mrkit"]
    status = subprocess.run([*command, "status", "top2", "--json"], env=env, capture_output=True, text=True)
    st = json.loads(status.stdout)
    assert status.returncode == 0 and st["state"] == "done", status.stderr
    assert {e["task"].split(".")[0] for e in st["events"]} == {"step1", "step2"}
    svg = tmp_path / "top2.svg"
    plot = subprocess.run([*command, "plot", "top2", "-o", str(svg)], env=env, capture_output=True, text=True)
    assert plot.returncode == 0 and "step2.reduce-00000" in svg.read_text(), plot.stderr


def test_cancelling_a_submitted_multi_step_job_stops_its_running_step_and_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``handle.cancel()`` (what ``mrkit cancel ID`` and the dashboard's button do) asks the job by
    its id; the step that runs then stops, no later step starts, nothing is published."""
    monkeypatch.setenv("MRKIT_HOME", str(tmp_path / "home"))
    slow = mrkit.Job(
        steps=[mrkit.Step(mapper=paced_words, reducer=total), mrkit.Step(reducer=total)],
        params={"each": 0.2},
        name="slowsteps",
    )
    source = text(tmp_path, [f"word{i} x" for i in range(40)])
    out = tmp_path / "out"
    handle = mrkit.submit(
        slow,
        source,
        executor="processes",
        workers=2,
        split_size=20,
        output=str(out),
        quiet=True,
        job_id="slow1",
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            st = RegistryJobHandle("slow1").status()
        except FileNotFoundError:
            st = None
        if st is not None and st.state == "running" and st.phase == "step1.map" and st.map.done >= 1:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the job never showed step 1 running: {st}")
    assert handle.cancel() is True
    with pytest.raises(JobCancelled, match="step 1 of 2 of job slow1"):
        handle.wait(60)
    assert RegistryJobHandle("slow1").status().state == "cancelled"
    assert RegistryJobHandle("slow1-step1").status().state == "cancelled"
    with pytest.raises(FileNotFoundError):
        RegistryJobHandle("slow1-step2").status()  # never started
    assert not (out / "_SUCCESS").exists()
