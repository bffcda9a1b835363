"""Task events and the cost report of asynchronous serverless and Dask jobs.

Serverless jobs run on ``lambda-local`` (fresh processes per delivery, as on Lambda) with their state
in the moto S3 server on loopback; Dask jobs on ``dask scheduler`` + ``dask worker`` processes. The
handler-level cases call the function's handler in this process, as ``test_lambda_reliability`` does.
Covered: events readable while a job runs, from a fresh handle and from another process; a killed or
timed-out invocation giving a ``lost`` event and its retry a committed one; duplicate deliveries never
giving two committed events; a delivery a cancel dropped recorded ``cancelled``; events kept after a
done job's clean-up and gone with the job's data; the cost report's arithmetic, its price table and
its override, and ``mrkit status`` printing it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator

import pytest

import mrkit
from mrkit.backends.aws_lambda import handler as lambda_handler
from mrkit.backends.aws_lambda import jobs as osj
from mrkit.backends.aws_lambda.emulator import FunctionConfig, LocalFunction
from mrkit.backends.aws_lambda.executor import build_event
from mrkit.backends.aws_lambda.handler import handler
from mrkit.backends.aws_lambda.jobs import ObjectStoreJobHandle, open_job_handle
from mrkit.backends.aws_lambda.task_events import end_open_deliveries
from mrkit.backends.aws_lambda.wire import claim_key, events_prefix, stamp
from mrkit.coordination.cost import PRICES_ENV, PriceTable, cost_report, describe, gb_seconds, price_table
from mrkit.coordination.events import TaskEvent
from mrkit.errors import ConfigError
from mrkit.model.status import JobStatus
from mrkit.storage import open_storage
from tests.jobs_for_tests import WORDCOUNT
from tests.s3_fixtures import *  # noqa: F403 - moto_server, s3_bucket, s3_url
from tests.test_lambda_faults import FlakyWordCount
from tests.test_lambda_handler import context, on_failure_record
from tests.test_lambda_jobs import corpus, executor, no_function_left_running  # noqa: F401 - autouse
from tests.test_lambda_reliability import RecordingInvoker, _serverless_plan


class GatedWordCount(mrkit.Job):
    """Word count whose ``map-00000`` waits (at most 60 s) for the file ``params["gate"]``."""

    def mapper(self, line: str) -> Iterator[tuple[str, int]]:
        if mrkit.context().task_id == "map-00000":
            deadline = time.monotonic() + 60
            while not os.path.exists(self.params["gate"]) and time.monotonic() < deadline:
                time.sleep(0.05)
        for word in line.split():
            yield word, 1

    def reducer(self, word: str, counts: Iterator[int]) -> int:
        return sum(counts)


def wait_idle(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Every delivery of the local function has ended (late duplicates write their events last)."""
    assert LocalFunction(FunctionConfig(state_dir=str(tmp_path / "fn"))).wait_idle(60)


def committed_per_task(events: list[TaskEvent]) -> Counter[str]:
    return Counter(e.task for e in events if e.outcome == "committed")


# -- serverless jobs on lambda-local --------------------------------------------------------------------


def test_events_are_read_while_the_job_runs_and_kept_until_its_data_is_deleted(tmp_path, s3_bucket, s3_url):
    corpus(s3_bucket)
    gate = tmp_path / "gate"
    ex = executor(tmp_path, s3_url, memory_mb=1024)
    handle = mrkit.submit(
        GatedWordCount(params={"gate": str(gate)}), f"s3://{s3_bucket}/in/*.txt", executor=ex,
        output=f"s3://{s3_bucket}/out", n_reduce=2,
    )  # fmt: skip
    fresh = open_job_handle(handle.id, s3_url)  # as another process would: by id and storage
    deadline = time.monotonic() + 60
    while True:
        events = fresh.events()
        running = [e for e in events if not e.end]
        if set(committed_per_task(events)) == {"map-00001", "map-00002"} and running:
            break
        assert time.monotonic() < deadline, events
        time.sleep(0.1)
    assert [(e.phase, e.task, e.attempt, e.outcome) for e in running] == [("map", "map-00000", 1, "")]
    assert running[0].start > 0 and running[0].worker
    for e in events:
        if e.end:
            assert e.memory_mb == 1024 and e.records_in > 0 and e.end >= e.start > 0
            assert e.worker and ":" not in e.worker  # the function's request id, not a host
    gate.touch()
    result = handle.wait(60)
    events = fresh.events()
    assert committed_per_task(events) == dict.fromkeys(
        ["map-00000", "map-00001", "map-00002", "reduce-00000", "reduce-00001"], 1
    )
    assert all(e.end for e in events) and [e.start for e in events] == sorted(e.start for e in events)
    assert sum(e.records_in for e in events if e.phase == "map") == result.counters["map.records_in"]
    code = (
        "import json, sys; from mrkit.backends.aws_lambda.jobs import open_job_handle; "
        "print(json.dumps([e.to_dict() for e in open_job_handle(sys.argv[1], sys.argv[2]).events()]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, handle.id, s3_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(out.stdout) == [e.to_dict() for e in events]
    # A done job's clean-up keeps them (they are under state/, with the plan and end record) ...
    storage = open_storage(s3_url)
    wait_idle(tmp_path)
    assert not [k for k in storage.list(f"{handle.id}/") if "/state/" not in k]
    assert len(list(storage.list(events_prefix(handle.id)))) == len(events)
    # ... and they go with the job's data.
    storage.delete_prefix(f"{handle.id}/")
    assert ObjectStoreJobHandle(handle.id, s3_url).events() == []


@pytest.mark.parametrize("how", ["kill", "hang"])
def test_a_killed_or_timed_out_invocation_is_lost_and_its_retry_commits(tmp_path, s3_bucket, s3_url, how):
    corpus(s3_bucket)
    # No runtime retries: every delivery of map-00000's first event failed, the on-failure record
    # reports it lost, and the job invokes attempt 2. The timeout is every invocation's: 15 s leaves
    # room for a loaded machine (on a CI run with 3 pytest workers a reduce invocation, cold start
    # included, took 5.5 s; the last one also publishes: with 8 s, one run stayed in publish with
    # every task committed, most likely that invocation and then its on-failure record's killed).
    ex = executor(
        tmp_path, s3_url, max_retry_attempts=0, retry_delay=0.05, timeout=15 if how == "hang" else 20
    )
    job = FlakyWordCount(params={"how": how, "flag": str(tmp_path / "flag")})
    handle = mrkit.submit(job, f"s3://{s3_bucket}/in/*.txt", executor=ex, n_reduce=2)
    handle.wait(90)
    events = [e for e in open_job_handle(handle.id, s3_url).events() if e.task == "map-00000"]
    assert [(e.attempt, e.outcome) for e in events] == [(1, "lost"), (2, "committed")], events
    lost = events[0]
    assert "RetriesExhausted after 1 deliveries" in lost.error and "\n" not in lost.error
    assert lost.end >= lost.start > 0 and lost.worker and lost.memory_mb == 2048
    if how == "hang":
        assert "TimedOut" in lost.error or "timed out" in lost.error.lower(), lost.error
    assert events[1].start >= lost.end - 1  # the retry came after the loss was reported


def test_duplicate_deliveries_give_one_committed_event_per_task(tmp_path, s3_bucket, s3_url):
    corpus(s3_bucket)
    ex = executor(tmp_path, s3_url, duplicate_rate=1.0)
    handle = mrkit.submit(WORDCOUNT, f"s3://{s3_bucket}/in/*.txt", executor=ex, n_reduce=2)
    handle.wait(90)
    wait_idle(tmp_path)
    events = handle.events()
    assert set(committed_per_task(events).values()) == {1} and len(committed_per_task(events)) == 5
    assert {e.outcome for e in events} <= {"committed", "discarded"}
    assert len(events) > 5  # every event was delivered twice; a twin arriving after the end writes nothing


def test_a_duplicate_and_a_commit_that_died_before_reporting_are_recorded_once(s3_url, monkeypatch):
    recorder = RecordingInvoker()
    monkeypatch.setattr(osj, "invoker_from_config", lambda config: recorder)
    storage, _out, plan = _serverless_plan(s3_url, 2, lease=1.0)
    job = {"invoker": recorder.config()}
    first = build_event([plan.map_specs[0]], storage.url, job=job)
    handler(first, context("r-first"))
    handler(first, context("r-first"))  # Lambda's duplicate, after the first delivery reported
    # The second task commits, then its invocation dies before it reports (every delivery).
    last = build_event([plan.map_specs[1]], storage.url, job=job)
    real_run_task = lambda_handler.run_task

    def commit_then_die(spec, **kwargs):  # type: ignore[no-untyped-def]
        real_run_task(spec, **kwargs)
        raise RuntimeError("killed right after the commit")

    monkeypatch.setattr(lambda_handler, "run_task", commit_then_die)
    with pytest.raises(RuntimeError):
        handler(last, context("r-dead"))
    monkeypatch.setattr(lambda_handler, "run_task", real_run_task)
    record = on_failure_record(last, "signal: killed", request_id="r-dead")
    handler(record, context())
    handler(record, context())  # a duplicate of the record
    handler(last, context("r-late"))  # and a late duplicate of the event
    events = ObjectStoreJobHandle(plan.job_id, s3_url).events()
    got = sorted((e.task, e.outcome, e.worker) for e in events)
    assert got == [
        ("map-00000", "committed", "r-first"),
        ("map-00000", "discarded", "r-first"),
        ("map-00001", "committed", "r-dead"),  # filled in from its claim, once
        ("map-00001", "discarded", "r-late"),
    ]
    assert all(e.memory_mb == 512 and e.end >= e.start > 0 for e in events)
    committed = [e for e in events if e.outcome == "committed"]
    assert all(e.records_in > 0 for e in committed)  # counters from the commit's manifest


def test_a_delivery_dropped_by_a_cancel_is_recorded_cancelled(s3_url, monkeypatch):
    recorder = RecordingInvoker()
    monkeypatch.setattr(osj, "invoker_from_config", lambda config: recorder)
    storage, _out, plan = _serverless_plan(s3_url, 2, lease=1.0)
    job = {"invoker": recorder.config()}
    assert ObjectStoreJobHandle(plan.job_id, s3_url).cancel()
    [raw] = handler(build_event([plan.map_specs[0]], storage.url, job=job), context("r-late"))["results"]
    assert "JobStopped" in raw
    [event] = ObjectStoreJobHandle(plan.job_id, s3_url).events()
    assert (event.task, event.outcome, event.worker) == ("map-00000", "cancelled", "r-late")
    assert "cancelled" in event.error and event.end >= event.start > 0


def test_open_deliveries_of_a_job_whose_invocations_are_gone_are_recorded_lost(s3_url):
    storage, _out, plan = _serverless_plan(s3_url, 2, lease=1.0)
    spec = plan.map_specs[0]
    storage.put(claim_key(plan.job_id, spec.task_id, 1, 0), stamp("dask-key-1"))
    running = ObjectStoreJobHandle(plan.job_id, s3_url).events()
    assert [(e.task, e.end, e.worker) for e in running] == [(spec.task_id, 0.0, "dask-key-1")]
    assert end_open_deliveries(storage, plan.job_id, "its Dask task is gone") == 1
    assert end_open_deliveries(storage, plan.job_id, "its Dask task is gone") == 0  # once
    [event] = ObjectStoreJobHandle(plan.job_id, s3_url).events()
    assert (event.outcome, event.error, event.worker) == ("lost", "its Dask task is gone", "dask-key-1")


def test_status_reports_the_cost_and_mrkit_status_prints_it(tmp_path, s3_bucket, s3_url, monkeypatch):
    from click.testing import CliRunner

    from mrkit.cli.main import cli

    corpus(s3_bucket, files=2)
    monkeypatch.delenv(PRICES_ENV, raising=False)
    name = f"lambda-local://wc?storage={s3_url}&state_dir={tmp_path / 'fn'}&memory_mb=1024&timeout=20"
    handle = mrkit.submit(WORDCOUNT, f"s3://{s3_bucket}/in/", executor=name, n_reduce=1)
    handle.wait(60)
    wait_idle(tmp_path)
    events = handle.events()
    runner = CliRunner()
    out = runner.invoke(cli, ["status", handle.id, "--executor", name, "--json"])
    assert out.exit_code == 0, out.output
    cost = json.loads(out.stdout)["cost"]
    assert (
        cost["requests"]
        == {"map": 2, "reduce": 1, "total": 3}
        == {**Counter(e.phase for e in events), "total": 3}
    )
    total = sum(gb_seconds(e) for e in events)
    assert total > 0 and cost["gb_seconds"]["total"] == pytest.approx(total, abs=1e-6)
    assert cost["price"] == pytest.approx(3 / 1e6 * 0.20 + total * 0.0000166667, abs=1e-9)
    assert cost["currency"] == "USD" and cost["prices"]["per_gb_second"] == 0.0000166667
    text = runner.invoke(cli, ["status", handle.id, "--executor", name]).stdout
    assert "cost      ~" in text and "3 requests" in text and PRICES_ENV in text
    # The user's price table (arm64's GB-second) changes the estimate, not the counts.
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"per_gb_second": 0.0000133334, "per_million_requests": 0.0}))
    monkeypatch.setenv(PRICES_ENV, str(prices))
    again = JobStatus.from_dict(handle.status().to_dict()).cost
    assert again is not None and again["requests"] == cost["requests"]
    assert again["price"] == pytest.approx(total * 0.0000133334, abs=1e-9)
    assert again["prices"]["source"] == str(prices)
    prices.write_text("{not json")
    assert "cannot read the price table" in handle.status().cost["error"]  # type: ignore[index]
    assert "not estimated" in runner.invoke(cli, ["status", handle.id, "--executor", name]).stdout


# -- the cost report's arithmetic ----------------------------------------------------------------------


def test_cost_report_arithmetic_on_known_events():
    events = [
        TaskEvent("map", "map-00000", 1, start=100.0, end=101.0004, outcome="committed", memory_mb=1024),
        TaskEvent("map", "map-00001", 1, start=100.0, end=100.25, outcome="failed", memory_mb=2048),
        TaskEvent("map", "map-00001", 2, start=101.0, end=0.0, memory_mb=2048),  # running: not yet
        TaskEvent("reduce", "reduce-00000", 1, start=102.0, end=102.5, outcome="committed", memory_mb=512),
        TaskEvent("reduce", "reduce-00000", 1, start=102.0, end=103.0, outcome="discarded", memory_mb=0),
    ]
    assert gb_seconds(events[0]) == pytest.approx(1.001)  # 1000.4 ms rounds up to 1001 ms, 1 GB
    prices = PriceTable(per_million_requests=0.2, per_gb_second=0.0000166667)
    report = cost_report(events, driver_invocations=2, prices=prices)
    assert report["requests"] == {"map": 2, "reduce": 2, "driver": 2, "total": 6}
    # map: 1.001 + 0.25 s * 2 GB; reduce: 0.5 s * 0.5 GB, and 0 for an event without memory
    assert report["gb_seconds"] == {"map": 1.501, "reduce": 0.25, "total": 1.751}
    assert report["price_requests"] == pytest.approx(6 * 0.2 / 1e6)
    assert report["price_compute"] == pytest.approx(1.751 * 0.0000166667, abs=1e-9)
    assert report["price"] == pytest.approx(report["price_requests"] + report["price_compute"], abs=1e-9)
    assert cost_report([], prices=prices)["requests"] == {"total": 0}
    line = describe(report)
    assert "6 requests" in line and "1.751 GB-s (map 1.501, reduce 0.250)" in line and "\n" not in line


def test_price_table_defaults_file_and_keywords(tmp_path, monkeypatch):
    monkeypatch.delenv(PRICES_ENV, raising=False)
    default = price_table()
    assert (default.per_million_requests, default.per_gb_second, default.currency) == (
        0.20,
        0.0000166667,
        "USD",
    )
    assert "list price" in default.source
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"per_gb_second": 0.00002, "currency": "EUR"}))
    monkeypatch.setenv(PRICES_ENV, str(path))
    from_file = price_table()
    assert (from_file.per_million_requests, from_file.per_gb_second, from_file.currency) == (
        0.2,
        0.00002,
        "EUR",
    )
    assert price_table(per_million_requests=0.1).per_million_requests == 0.1  # keywords win
    assert price_table(per_million_requests=0.1).per_gb_second == 0.00002
    for bad, says in [
        ({"per_gb_secnd": 1}, "unknown prices"),
        ({"per_gb_second": -1}, "non-negative number"),
        ({"per_gb_second": "cheap"}, "non-negative number"),
        ([1, 2], "not a JSON object"),
    ]:
        path.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=says):
            price_table()
    monkeypatch.setenv(PRICES_ENV, str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="cannot read the price table"):
        price_table()


def test_job_status_keeps_the_cost_only_when_set():
    plain = JobStatus("j", "done")
    assert "cost" not in plain.to_dict() and JobStatus.from_dict(plain.to_dict()).cost is None
    cost = {"requests": {"total": 1}, "gb_seconds": {"total": 0.5}, "price": 0.1, "currency": "USD"}
    with_cost = JobStatus("j", "done", cost=cost)
    assert with_cost.to_dict()["cost"] == cost and JobStatus.from_dict(with_cost.to_dict()) == with_cost


# -- Dask -----------------------------------------------------------------------------------------------


def test_a_dask_job_records_events_without_memory_and_reports_no_cost(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    from tests.dask_fixtures import closing_submitted_clients, start_cluster

    cluster = start_cluster(n_workers=1)
    closing = closing_submitted_clients(monkeypatch)
    next(closing)
    try:
        source = tmp_path / "in.txt"
        source.write_text("a b c a b a\nthe cat sat\n" * 50)
        handle = mrkit.submit(
            WORDCOUNT, str(source), executor=cluster.address.replace("tcp://", "dask://"),
            output=str(tmp_path / "out"), n_reduce=1, quiet=True,
        )  # fmt: skip
        handle.wait(60)
        events = handle.events()
        assert committed_per_task(events) == {"map-00000": 1, "reduce-00000": 1}
        assert all(e.memory_mb == 0 and e.worker.startswith("tcp://127.0.0.1:") for e in events)
        status = handle.status()
        assert status.cost is None and "cost" not in status.to_dict()
    finally:
        next(closing, None)
        cluster.stop()
