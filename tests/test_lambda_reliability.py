"""Reliability of the serverless backend: exactly-once phase triggers, timeouts and poison tasks,
cold starts that are not stragglers, duplicate events.

The phase-trigger tests run the handler in threads of this process (as ``test_lambda_handler.py``
does) with a recording invoker, so that every event the functions send is counted; the others run
whole jobs on ``lambda-local`` (a fresh process per delivery).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any

import pytest

import mrkit
from mrkit.backends.aws_lambda import handler as lambda_handler
from mrkit.backends.aws_lambda import jobs as osj
from mrkit.backends.aws_lambda.executor import build_event
from mrkit.backends.aws_lambda.handler import handler
from mrkit.model.reference import reference
from mrkit.model.task import TaskSpec
from tests.jobs_for_tests import WORDCOUNT
from tests.s3_fixtures import *  # noqa: F403 - moto_server, s3_bucket, s3_url
from tests.test_lambda_handler import LINES, context, on_failure_record, plan_job
from tests.test_lambda_jobs import no_function_left_running  # noqa: F401 - autouse fixture


class RecordingInvoker:
    """Stands in for the function: records each event sent to it (nothing runs)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def invoke(self, event: dict[str, Any], *, sync: bool = False) -> None:
        with self._lock:
            self.events.append(event)

    def config(self) -> dict[str, Any]:
        return {"kind": "lambda", "function": "recorder"}

    def timeout(self) -> float:
        return 4.0

    def close(self) -> None:
        pass

    def task_ids(self) -> Counter[str]:
        with self._lock:
            return Counter(TaskSpec.decode(raw).task_id for e in self.events for raw in e["specs"])


def _serverless_plan(url: str, n_map: int, lease: float):
    storage, out, plan = plan_job(url, n_map=n_map, n_reduce=2)
    doc = {"plan": osj._plan_to_dict(plan), "submitted": time.time(), "executor": "t", "lease": lease}
    storage.put(osj.plan_key(plan.job_id), json.dumps(doc).encode())
    return storage, out, plan


@pytest.mark.parametrize(
    ("stalled_renewals", "rounds"), [pytest.param(False, 20, marks=pytest.mark.slow), (True, 5)]
)
def test_simultaneous_map_commits_start_the_reduce_phase_exactly_once(
    s3_url, monkeypatch, stalled_renewals, rounds
):
    """Every map task of the job completes at the same instant (threads released by a barrier right
    after their commit), 20 times over (5 with stalls, which broke the time-based lease at once):
    each reduce task is invoked exactly once. With
    ``stalled_renewals``, the invocation that takes the step stalls for longer than a lease while it
    invokes (a throttled function, a long pause): nobody else may start the reduce phase meanwhile."""
    recorder = RecordingInvoker()
    monkeypatch.setattr(osj, "invoker_from_config", lambda config: recorder)
    n_map = 4
    barrier = threading.Barrier(n_map)
    run_task = lambda_handler.run_task

    def run_then_wait(spec, **kwargs):
        result = run_task(spec, **kwargs)
        barrier.wait(30)  # every map task has committed: all of them advance the job at once
        return result

    monkeypatch.setattr(lambda_handler, "run_task", run_then_wait)
    if stalled_renewals:
        real_invoke = recorder.invoke

        def slow_invoke(event, *, sync=False):
            if any(TaskSpec.decode(raw).task_id.startswith("reduce") for raw in event["specs"]):
                time.sleep(0.6)  # > the 0.3 s lease; renewals cannot help a frozen sandbox either
            real_invoke(event, sync=sync)

        recorder.invoke = slow_invoke  # type: ignore[method-assign]
        monkeypatch.setattr(osj._StepLease, "_renew", lambda self: None)  # frozen: never renews
    for _round in range(rounds):
        recorder.events.clear()
        storage, _out, plan = _serverless_plan(s3_url, n_map, lease=0.3)
        job = {"invoker": recorder.config()}
        threads = [
            threading.Thread(target=handler, args=(build_event([spec], storage.url, job=job), context()))
            for spec in plan.map_specs
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        deadline = time.monotonic() + 5  # a wrongly presumed-dead holder would be replaced within a lease
        while time.monotonic() < deadline and not storage.exists(f"{plan.job_id}/state/reduce-sent"):
            time.sleep(0.05)
        time.sleep(0.4 if stalled_renewals else 0.0)
        assert recorder.task_ids() == {"reduce-00000": 1, "reduce-00001": 1}, f"round {_round}"
    # The reduce events that were sent run the right job: deliver them, and the output is right.
    monkeypatch.setattr(lambda_handler, "run_task", run_task)
    for event in list(recorder.events):
        handler(event, context())
    assert json.loads(storage.get(osj.end_key(plan.job_id)))["state"] == "done"
    assert sorted(mrkit.read_output(_out.url)) == sorted(reference(WORDCOUNT, LINES))


def test_an_owner_that_died_after_taking_the_trigger_is_finished_by_its_on_failure_record(
    s3_url, monkeypatch
):
    recorder = RecordingInvoker()
    monkeypatch.setattr(osj, "invoker_from_config", lambda config: recorder)
    storage, _out, plan = _serverless_plan(s3_url, 2, lease=0.3)
    job = {"invoker": recorder.config()}
    handler(build_event([plan.map_specs[0]], storage.url, job=job), context())
    # The last map task's invocation committed, took the reduce trigger, and died before invoking.
    last = build_event([plan.map_specs[1]], storage.url, job=job)
    monkeypatch.setattr(
        osj, "_start_reduce", lambda *args: osj._take_trigger(storage, plan.job_id, "reduce", "r-dead")
    )
    handler(last, context("r-dead"))
    monkeypatch.undo()
    monkeypatch.setattr(osj, "invoker_from_config", lambda config: recorder)
    assert recorder.task_ids() == {}
    handler(last, context("r-other"))  # a duplicate under another request id: not the owner
    assert recorder.task_ids() == {}
    record = on_failure_record(last, "signal: killed", request_id="r-dead")
    handler(record, context())
    assert recorder.task_ids() == {"reduce-00000": 1, "reduce-00001": 1}


def test_a_task_that_committed_and_died_before_reporting_still_starts_the_next_phase(s3_url, monkeypatch):
    """The last map task commits, then its invocation dies before it writes its result (every
    delivery, as under repeated kills). Its on-failure record must count the commit as done and start
    the reduce phase, once: marked lost, the async job would wait forever for that phase."""
    recorder = RecordingInvoker()
    monkeypatch.setattr(osj, "invoker_from_config", lambda config: recorder)
    storage, _out, plan = _serverless_plan(s3_url, 2, lease=0.3)
    job = {"invoker": recorder.config()}
    handler(build_event([plan.map_specs[0]], storage.url, job=job), context())
    last = build_event([plan.map_specs[1]], storage.url, job=job)
    real_run_task = lambda_handler.run_task

    def commit_then_die(spec, **kwargs):
        real_run_task(spec, **kwargs)
        raise RuntimeError("killed right after the commit")

    monkeypatch.setattr(lambda_handler, "run_task", commit_then_die)
    with pytest.raises(RuntimeError, match="killed right after the commit"):
        handler(last, context("r-dead"))
    monkeypatch.setattr(lambda_handler, "run_task", real_run_task)
    assert recorder.task_ids() == {}
    record = on_failure_record(last, "signal: killed", request_id="r-dead")
    assert handler(record, context()) == {"lost": []}
    assert recorder.task_ids() == {"reduce-00000": 1, "reduce-00001": 1}
    handler(record, context())  # a duplicate of the record changes nothing
    assert recorder.task_ids() == {"reduce-00000": 1, "reduce-00001": 1}


# -- timeouts and poison tasks on lambda-local ------------------------------------------------------------


def _poison(line: str):
    """Word count whose record ``poison`` hangs, exits or crashes the invocation (by its 2nd word)."""
    if line.startswith("poison"):
        how = line.split()[1]
        if how == "hang":
            time.sleep(120)
        elif how == "exit":
            import os

            os._exit(3)
        elif how == "segfault":
            import ctypes

            ctypes.string_at(0)
    yield from ((w, 1) for w in line.split())


def _sum(key, values):
    return sum(values)


def _poison_records(how: str) -> list[str]:
    return [f"w{i % 7} x{i % 3}" for i in range(40)] + [f"poison {how}"] + ["w1 w2"] * 5


def _local(tmp_path, s3_url: str, **options):
    from mrkit.backends.aws_lambda.executor import LocalLambdaExecutor

    options.setdefault("timeout", 60)
    options.setdefault("retry_delay", 0.05)
    return LocalLambdaExecutor.from_name(
        "lambda-local", state_dir=str(tmp_path / "fn"), storage=s3_url, **options
    )


def test_a_task_stuck_on_a_record_times_out_inside_the_function_and_fails_the_job(tmp_path, s3_url):
    job = mrkit.Job(mapper=_poison, reducer=_sum)
    started = time.monotonic()
    with _local(tmp_path, s3_url, max_retry_attempts=1) as ex, pytest.raises(mrkit.JobFailed) as info:
        mrkit.run(
            job,
            mrkit.Records(_poison_records("hang")),
            executor=ex,
            n_map=2,
            n_reduce=1,
            policy=mrkit.RetryPolicy(max_attempts=2, task_timeout=1.0, speculative=False),
            quiet=True,
        )
    message = str(info.value)
    assert "failed after 2 attempts" in message, message
    assert "chunk-00001, record 17: TaskTimeout: timed out after 1 s without progress" in message, message
    assert time.monotonic() - started < 40  # two attempts of ~1 s each, not the function's 60 s timeout


@pytest.mark.parametrize("how", ["exit", "segfault"])
def test_a_task_that_ends_its_invocation_is_a_failed_attempt_naming_the_exit(tmp_path, s3_url, how):
    job = mrkit.Job(mapper=_poison, reducer=_sum)
    records = mrkit.Records(_poison_records(how))
    policy = mrkit.RetryPolicy(max_attempts=2, max_lost=5)
    ex = _local(tmp_path, s3_url, max_retry_attempts=1)
    if how == "exit":  # the in-process driver
        with ex, pytest.raises(mrkit.JobFailed) as info:
            mrkit.run(job, records, executor=ex, n_map=2, n_reduce=1, policy=policy, quiet=True)
    else:  # the serverless driver
        handle = mrkit.submit(job, records, executor=ex, n_map=2, n_reduce=1, policy=policy)
        with pytest.raises(mrkit.JobFailed) as info:
            handle.wait(90)
    message = str(info.value)
    expected = "exit status 3" if how == "exit" else "signal SIGSEGV"
    assert "failed after 2 attempts" in message and "WorkerCrashed" in message, message
    assert expected in message and "map-0000" in message, message
    log = (tmp_path / "fn" / "function.log").read_text()
    assert "Status: Runtime.ExitError" in log  # the runtime saw the process die (and retried it once)


# -- cold starts are not stragglers ---------------------------------------------------------------------


@pytest.mark.slow
def test_a_slow_cold_start_is_neither_a_straggler_nor_a_timeout(tmp_path, s3_url):
    """Every invocation takes 3 s to start (the emulator's injected cold start) and then ~0.1 s to
    run its task: with task_timeout=2 and speculation on, no attempt is speculated, lost or failed."""
    records = [f"w{i % 11} w{i % 5} w{i % 3}" for i in range(400)]
    ex = _local(tmp_path, s3_url, cold_start=3.0, max_concurrency=2)
    policy = mrkit.RetryPolicy(task_timeout=2.0, speculative=True, max_lost=0)
    with ex:
        result = mrkit.run(
            WORDCOUNT, mrkit.Records(records), executor=ex, n_map=4, n_reduce=2, policy=policy, quiet=True
        )
    assert dict(result) == dict(reference(WORDCOUNT, records))
    for phase, tasks in (("map", 4), ("reduce", 2)):
        assert result.counters[f"{phase}.attempts_speculative"] == 0
        assert result.counters[f"{phase}.attempts_lost"] == result.counters[f"{phase}.attempts_failed"] == 0
        assert result.counters[f"{phase}.attempts_launched"] == tasks


# -- duplicate events ----------------------------------------------------------------------------------------


def test_duplicate_events_do_not_rerun_committed_work_and_are_counted(s3_url, monkeypatch):
    recorder = RecordingInvoker()
    monkeypatch.setattr(osj, "invoker_from_config", lambda config: recorder)
    storage, _out, plan = _serverless_plan(s3_url, 2, lease=1.0)
    job = {"invoker": recorder.config()}
    first = plan.map_specs[0]
    ran: list[str] = []
    run_task = lambda_handler.run_task
    monkeypatch.setattr(
        lambda_handler, "run_task", lambda spec, **kw: ran.append(spec.task_id) or run_task(spec, **kw)
    )
    event = build_event([first], storage.url, job=job)
    handler(event, context())
    handler(event, context())  # the same event again, after the first delivery reported
    handler(build_event([first.next_attempt()], storage.url, job=job), context())  # committed already
    assert ran == [first.task_id]  # the task ran once
    claims = list(storage.list(f"{plan.job_id}/lambda/claims/"))
    assert len(claims) == 1
    assert osj._attempt_counters(storage, plan.job_id)["map.duplicates_skipped"] == 2
    assert osj.ObjectStoreJobHandle(plan.job_id, s3_url).status()["duplicates_skipped"] == {
        "map": 2,
        "reduce": 0,
    }
