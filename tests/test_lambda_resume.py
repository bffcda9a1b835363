"""Resuming a failed or cancelled serverless job (``mrkit.resume`` / ``mrkit resume`` on ``lambda-local``).

Whole jobs run on ``lambda-local`` (a fresh process per delivery) with their data in the moto S3
server; stale events of an earlier run are delivered by calling the handler directly. Every wait is
bounded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator

import pytest

import mrkit
from mrkit.backends.aws_lambda import jobs as osj
from mrkit.backends.aws_lambda.executor import build_event, claims_prefix
from mrkit.backends.aws_lambda.handler import handler
from mrkit.coordination.resume import ResumeRefused
from mrkit.errors import JobCancelled, JobFailed
from mrkit.model import layout
from mrkit.model.reference import reference
from mrkit.model.task import TaskFailure, TaskResult
from mrkit.storage import open_storage
from tests import jobs_for_tests as J
from tests.s3_fixtures import *  # noqa: F403 - moto_server, s3_bucket, s3_url
from tests.test_lambda_handler import LINES, context, on_failure_record, plan_job
from tests.test_lambda_jobs import committed_job, executor, no_function_left_running  # noqa: F401

TEXT = ["the cat sat on the mat", "The dog sat", "a b c a b a", "it's 42 o'clock"] * 10
FAILING = "map-00003"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def note_and_fail(ctx: mrkit.TaskContext) -> None:
    """Note the attempt in ``runs``; the task named ``failing`` raises until the ``flag`` file
    exists, once the tasks of its phase before it have committed (so that what a failed run
    committed does not depend on timing)."""
    with open(ctx.params["runs"], "a") as f:
        f.write(f"{ctx.task_id} {ctx.attempt}\n")
    if ctx.task_id != ctx.params["failing"] or os.path.exists(ctx.params["flag"]):
        return
    kind, index = ctx.task_id.split("-")
    others = [layout.task_id(kind, i) for i in range(int(index))]
    store = open_storage(ctx.params["store"])
    deadline = time.monotonic() + 15
    while not all(store.exists(layout.commit_key(ctx.job_id, t)) for t in others):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise RuntimeError("the flag file is missing")


def flaky_mapper(line: str) -> Iterator[tuple[str, int]]:
    note_and_fail(mrkit.context())
    yield from J.words(line)


def flaky_reducer(key: str, values: Iterable[int]) -> int:
    note_and_fail(mrkit.context())
    return sum(values)


FLAKY = mrkit.Job(mapper=flaky_mapper, reducer=flaky_reducer)


def runs_per_task(path: str) -> dict[str, list[int]]:
    """Task id -> the attempt numbers that ran (one per record: a task's attempts are deduplicated)."""
    out: dict[str, set[int]] = {}
    with open(path) as f:
        for line in f:
            task, attempt = line.split()
            out.setdefault(task, set()).add(int(attempt))
    return {task: sorted(attempts) for task, attempts in out.items()}


def failed_job(ex, tmp_path, bucket: str, job_id: str, failing: str = FAILING) -> mrkit.JobHandle:
    """Submit FLAKY (which fails on ``failing`` until the flag file exists); wait until it failed."""
    params = {
        "failing": failing,
        "flag": str(tmp_path / "flag"),
        "runs": str(tmp_path / "runs.txt"),
        "store": ex.storage_url(""),
    }
    handle = mrkit.submit(
        FLAKY,
        mrkit.Records(TEXT),
        executor=ex,
        output=f"s3://{bucket}/out",
        n_map=4,
        n_reduce=2,
        params=params,
        job_id=job_id,
        policy=mrkit.RetryPolicy(max_attempts=2),
    )
    with pytest.raises(JobFailed, match=f"task {failing} of job {job_id} failed after 2 attempts"):
        handle.wait(timeout=90)
    assert handle.status()["state"] == "failed"
    assert not open_storage(f"s3://{bucket}").exists("out/_SUCCESS")  # nothing published
    return handle


def intermediate_left(storage, job_id: str) -> list[str]:
    """The job's keys outside ``state/``, once they stop shrinking for a moment (a done run deletes
    them right after its end record, which ``wait()`` returns on), at most 15 s."""
    deadline = time.monotonic() + 15
    while (
        left := [k for k in storage.list(f"{job_id}/") if "/state/" not in k]
    ) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_resume_reruns_only_the_uncommitted_map_task(tmp_path, s3_bucket, s3_url):
    ex = executor(tmp_path, s3_url)
    handle = failed_job(ex, tmp_path, s3_bucket, "flaky-map")
    storage = open_storage(s3_url)
    # A failed job keeps its intermediate data: code, plan, commits and map outputs.
    assert storage.exists(layout.job_key("flaky-map")) and storage.exists(osj.plan_key("flaky-map"))
    assert all(storage.exists(layout.commit_key("flaky-map", f"map-0000{i}")) for i in range(3))
    assert list(storage.list("flaky-map/map/map-00000/"))
    (tmp_path / "flag").write_text("")
    resumed = mrkit.resume("flaky-map", executor=ex)
    assert resumed.id == "flaky-map"
    result = resumed.wait(timeout=90)
    assert sorted(mrkit.read_output(f"s3://{s3_bucket}/out")) == reference(J.WORDCOUNT, TEXT)
    assert sorted(result) == reference(J.WORDCOUNT, TEXT)
    assert result.counters["map.tasks_resumed"] == 3 and result.counters["reduce.tasks_resumed"] == 0
    assert result.counters["map.records_in"] == len(TEXT)  # each record counted once
    runs = runs_per_task(str(tmp_path / "runs.txt"))
    assert {t: a for t, a in runs.items() if t.startswith("map") and t != FAILING} == {
        f"map-0000{i}": [1] for i in range(3)
    }
    assert runs[FAILING] == [1, 2, 3]  # a fresh attempt number after the two failed ones
    status = handle.status()
    assert status["state"] == "done" and status["run"] == 2
    # A run that finishes deletes the intermediate data, as a first run does.
    assert not intermediate_left(storage, "flaky-map")
    with pytest.raises(ResumeRefused, match="job flaky-map is done: nothing to resume"):
        mrkit.resume("flaky-map", executor=ex)


def test_resume_in_the_reduce_phase_keeps_every_map_and_the_committed_reduce(tmp_path, s3_bucket, s3_url):
    ex = executor(tmp_path, s3_url)
    failed_job(ex, tmp_path, s3_bucket, "flaky-reduce", "reduce-00001")
    (tmp_path / "flag").write_text("")
    result = mrkit.resume("flaky-reduce", executor=ex).wait(timeout=90)
    assert sorted(mrkit.read_output(f"s3://{s3_bucket}/out")) == reference(J.WORDCOUNT, TEXT)
    assert result.counters["map.tasks_resumed"] == 4 and result.counters["reduce.tasks_resumed"] == 1
    runs = runs_per_task(str(tmp_path / "runs.txt"))
    assert all(runs[f"map-0000{i}"] == [1] for i in range(4)) and runs["reduce-00000"] == [1]
    assert runs["reduce-00001"] == [1, 2, 3]


def test_stale_events_of_the_failed_run_change_nothing(tmp_path, s3_bucket, s3_url):
    ex = executor(tmp_path, s3_url)
    failed_job(ex, tmp_path, s3_bucket, "flaky-stale")
    storage = open_storage(s3_url)
    doc = json.loads(storage.get(osj.plan_key("flaky-stale")))
    plan = osj._plan_from_dict(doc["plan"])
    run1 = {"invoker": doc["invoker"]}  # the job member of run 1's events (no run: run 1)
    failing = next(s for s in plan.map_specs if s.task_id == FAILING)
    (tmp_path / "flag").write_text("")
    resumed = mrkit.resume("flaky-stale", executor=ex)
    # Run 1's retry of the failing task arrives while run 2 runs: with the flag present it would
    # now succeed and advance the job; it is dropped before it claims a delivery.
    claims = set(storage.list(claims_prefix("flaky-stale") + f"{FAILING}/a2/"))
    [late] = handler(build_event([failing.next_attempt()], storage.url, job=run1), context())["results"]
    assert TaskResult.decode(late).failure.exc_type == "JobStopped"
    assert set(storage.list(claims_prefix("flaky-stale") + f"{FAILING}/a2/")) == claims
    result = resumed.wait(timeout=90)
    assert sorted(result) == reference(J.WORDCOUNT, TEXT)
    end = storage.get(osj.end_key("flaky-stale", 2))
    assert not intermediate_left(storage, "flaky-stale")
    before = {key: storage.get(key) for key in storage.list("flaky-stale/")}
    output = sorted(mrkit.read_output(f"s3://{s3_bucket}/out"))
    # Late deliveries of run 1 after run 2 ended: map and reduce events, an on-failure record, a
    # failure reported to the serverless driver, and run 1's phase changes. Nothing changes.
    events = [
        build_event([plan.map_specs[0]], storage.url, job=run1),
        build_event([failing], storage.url, job=run1),
        build_event(list(plan.reduce_specs), storage.url, job=run1),
    ]
    for event in events:
        for raw in handler(event, context())["results"]:
            assert TaskResult.decode(raw).failure.exc_type == "JobStopped"
    on_failure = on_failure_record(events[1], "exit status 3", request_id="r1")
    assert handler(on_failure, context()) == {"lost": []}
    failure = TaskResult(FAILING, 2, ok=False, failure=TaskFailure("", "RuntimeError", "late"))
    osj.advance(storage, failing.next_attempt(), failure, run1, "r1")
    osj.lost(storage, failing, run1, "late loss")
    osj._publish(storage, plan, "r1", 1)
    assert {key: storage.get(key) for key in storage.list("flaky-stale/")} == before
    assert storage.get(osj.end_key("flaky-stale", 2)) == end
    assert sorted(mrkit.read_output(f"s3://{s3_bucket}/out")) == output
    assert resumed.status()["state"] == "done"


def test_refusals(tmp_path, s3_url):
    ex = executor(tmp_path, s3_url)
    with pytest.raises(ResumeRefused, match="cannot resume: no job nope-1 in s3://"):
        mrkit.resume("nope-1", executor=ex)
    storage, _out, plan = plan_job(s3_url)
    doc = {"plan": osj._plan_to_dict(plan), "invoker": ex.invoker.config(), "submitted": 0.0, "executor": "t"}
    storage.put(osj.plan_key(plan.job_id), json.dumps(doc).encode())
    with pytest.raises(ResumeRefused, match=f"job {plan.job_id} is running: nothing to resume"):
        mrkit.resume(plan.job_id, executor=ex)
    storage.put(osj.end_key(plan.job_id), json.dumps({"state": "failed", "error": "x"}).encode())
    storage.delete(layout.job_key(plan.job_id))
    with pytest.raises(ResumeRefused, match=f"cannot resume job {plan.job_id}: its code is gone"):
        mrkit.resume(plan.job_id, executor=ex)
    assert not list(storage.list(f"{plan.job_id}/state/runs/"))  # a refusal changes nothing


def mrkit_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mrkit", *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def test_cli_resumes_a_cancelled_job_and_exits_2_on_refusals(tmp_path, s3_bucket, s3_url):
    # The storage URL in the options has its own "://" (it used to be taken for the executor's).
    name = f"lambda-local?storage={s3_url}&state_dir={tmp_path / 'fn'}&timeout=20"
    ex = executor(tmp_path, s3_url)
    handle = mrkit.submit(
        J.WORDCOUNT, mrkit.Records(TEXT), executor=ex, n_map=4, n_reduce=2, job_id="cancelled-1"
    )
    assert handle.cancel()
    with pytest.raises(JobCancelled):
        handle.wait(timeout=10)
    # Whatever had committed before the cancel is kept; the rest runs in run 2.
    proc = mrkit_cli("resume", "cancelled-1", "--executor", name, "--wait", "--timeout", "90")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["cancelled-1"]
    assert sorted(handle.wait(timeout=10)) == reference(J.WORDCOUNT, TEXT)
    proc = mrkit_cli("resume", "cancelled-1", "--executor", name)
    assert proc.returncode == 2 and "job cancelled-1 is done: nothing to resume" in proc.stderr
    proc = mrkit_cli("resume", "nope-2", "--executor", name)
    assert proc.returncode == 2 and "cannot resume: no job nope-2" in proc.stderr


def test_a_job_cancelled_with_every_task_committed_resumes_straight_to_publishing(
    tmp_path, s3_url, monkeypatch
):
    ex = executor(tmp_path, s3_url)
    storage, out, plan = committed_job(ex, s3_url)
    storage.put(osj.end_key(plan.job_id), json.dumps({"state": "cancelled"}).encode())
    assert not out.exists("_SUCCESS")
    # Two resumes at once, both having read run 1 as the current one: the conditional write of
    # run 2 decides, and the loser refuses (the winner is simulated by its run record).
    with monkeypatch.context() as m:
        m.setattr(osj, "current_run", lambda storage, job_id: 1)
        storage.put(osj.run_key(plan.job_id, 2), b"{}")
        with pytest.raises(ResumeRefused, match="changed while it was being resumed"):
            mrkit.resume(plan.job_id, executor=ex)
        storage.delete(osj.run_key(plan.job_id, 2))
    resumed = mrkit.resume(plan.job_id, executor=ex)
    result = resumed.wait(timeout=60)
    assert sorted(result) == reference(J.WORDCOUNT, LINES)
    assert result.counters["map.tasks_resumed"] == 2 and result.counters["reduce.tasks_resumed"] == 2
    assert result.counters["map.records_in"] == len(LINES)
