"""The Lambda handler called directly, ``handler(event, context)``, and the local function runtime.

The handler tests keep the job's data in the moto S3 server; the runtime tests use tiny handlers
defined here (a delivery imports them by name, ``tests.test_lambda_handler:…``).
"""

from __future__ import annotations

import json
import os
import random
import resource
import threading
import time
import uuid

import pytest

import mrkit
from mrkit.backends.aws_lambda.detached import stop_detached
from mrkit.backends.aws_lambda.emulator import FunctionConfig, FunctionError, LambdaContext, LocalFunction
from mrkit.backends.aws_lambda.executor import build_event, claim_key, lost_key, result_key
from mrkit.backends.aws_lambda.handler import handler
from mrkit.coordination.plan import RetryPolicy, build_plan, store_records
from mrkit.coordination.publish import publish_output
from mrkit.errors import ConfigError
from mrkit.model import layout
from mrkit.model.reference import reference
from mrkit.model.task import TaskResult, TaskSettings
from mrkit.storage import open_storage
from tests.jobs_for_tests import WORDCOUNT
from tests.s3_fixtures import *  # noqa: F403 - moto_server, s3_bucket, s3_url
from tests.test_lambda_jobs import no_function_left_running  # noqa: F401 - autouse fixture

LINES = ["the cat sat", "on the mat", "the end", "a cat and a hat"] * 25


def context(request_id: str | None = None) -> LambdaContext:
    return LambdaContext(
        function_name="mrkit-test",
        memory_limit_in_mb=512,
        aws_request_id=request_id or str(uuid.uuid4()),
        deadline=time.time() + 60,
    )


def plan_job(url: str, job: mrkit.Job = WORDCOUNT, n_map: int = 2, n_reduce: int = 2):
    storage = open_storage(url)
    job_id = f"t-{uuid.uuid4().hex[:8]}"
    splits = store_records(storage, job_id, LINES, n_map)
    out = open_storage(f"{url}#{job_id}/output/")
    plan = build_plan(
        job,
        splits,
        job_id=job_id,
        storage=storage,
        output_url=out.url,
        n_reduce=n_reduce,
        settings=TaskSettings(output_format="pickle"),
        policy=RetryPolicy(),
    )
    return storage, out, plan


def on_failure_record(event: dict, error: str = "signal SIGKILL", request_id: str | None = None) -> dict:
    """The record Lambda sends to the on-failure destination after every delivery of ``event``
    failed (3 deliveries, the last one ending with ``Runtime.ExitError: error``)."""
    context = {"condition": "RetriesExhausted", "approximateInvokeCount": 3}
    if request_id is not None:
        context["requestId"] = request_id
    return {
        "requestContext": context,
        "requestPayload": event,
        "responsePayload": {"errorType": "Runtime.ExitError", "errorMessage": error},
    }


def decode(response: dict) -> list[TaskResult]:
    return [TaskResult.decode(raw) for raw in response["results"]]


# -- the handler, called directly ---------------------------------------------------------------------


def test_handler_runs_tasks_from_reference_only_events(s3_url):
    storage, out, plan = plan_job(s3_url)
    for spec in plan.map_specs:
        event = build_event([spec], storage.url)
        assert len(json.dumps(event)) < 4096  # a reference, far below Lambda's 256 KB async limit
        [result] = decode(handler(event, context()))
        assert result.ok and result.committed
        assert TaskResult.decode(storage.get(result_key(plan.job_id, spec.task_id, 1))).ok
    response = handler(build_event(list(plan.reduce_specs), storage.url), context())  # a batch of two
    assert [r.committed for r in decode(response)] == [True, True]
    publish_output(storage, out, plan.job_id, plan.n_reduce, output_format="pickle")
    assert sorted(mrkit.read_output(out.url)) == sorted(reference(WORDCOUNT, LINES))


def test_duplicate_deliveries_run_under_their_own_attempt_keys(s3_url):
    storage, out, plan = plan_job(s3_url, n_map=1, n_reduce=1)
    [spec] = plan.map_specs
    event = build_event([spec], storage.url)
    barrier = threading.Barrier(4)
    results: list[TaskResult] = []

    def deliver() -> None:
        barrier.wait()
        results.extend(decode(handler(event, context())))

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.ok for r in results)
    # Every delivery that ran claimed its own number; exactly one of them committed (a delivery that
    # started after the first result was stored returns that result, hence the set of workers).
    claims = list(storage.list(f"{plan.job_id}/lambda/claims/"))
    assert 1 <= len(claims) <= 4 and len({r.worker for r in results if r.committed}) == 1
    manifest = json.loads(storage.get(layout.commit_key(plan.job_id, spec.task_id)))
    for key, _bounds in manifest["parts"].values():
        assert storage.exists(key)  # the losers deleted their own files, never the winner's
    # A delivery arriving after the first one finished returns its result without running.
    [again] = decode(handler(event, context()))
    assert again == TaskResult.decode(storage.get(result_key(plan.job_id, spec.task_id, 1)))
    assert len(list(storage.list(f"{plan.job_id}/lambda/claims/"))) == len(claims)
    handler(build_event(list(plan.reduce_specs), storage.url), context())
    publish_output(storage, out, plan.job_id, 1, output_format="pickle")
    assert sorted(mrkit.read_output(out.url)) == sorted(reference(WORDCOUNT, LINES))


def _raise_on_hat(line: str):
    if "hat" in line:
        raise ValueError("no hats")
    yield line, 1


def test_user_errors_are_results_not_exceptions(s3_url):
    job = mrkit.Job(mapper=_raise_on_hat, reducer=lambda k, vs: sum(vs))
    storage, _out, plan = plan_job(s3_url, job=job, n_map=1)
    [result] = decode(handler(build_event([plan.map_specs[0]], storage.url), context()))
    assert not result.ok and result.failure is not None
    assert "ValueError: no hats" in result.failure.sentence() and "record 3" in result.failure.sentence()


def test_on_failure_record_marks_the_tasks_lost(s3_url):
    storage, _out, plan = plan_job(s3_url)
    first, second = plan.map_specs
    handler(build_event([second], storage.url), context())  # this one has a result: not lost
    record = on_failure_record(build_event([first, second], storage.url))
    assert handler(record, context()) == {"lost": [first.task_id]}
    reason = json.loads(storage.get(lost_key(plan.job_id, first.task_id, 1)))["reason"]
    assert "RetriesExhausted after 3 deliveries" in reason and "SIGKILL" in reason
    assert not storage.exists(lost_key(plan.job_id, second.task_id, 1))


def test_on_failure_record_of_a_task_that_committed_before_dying_reports_it_done(s3_url):
    """A delivery committed its task and died before writing its result: the task is done, with the
    counters of its commit, not lost (which would run it again, and stall an async job)."""
    storage, _out, plan = plan_job(s3_url)
    first, second = plan.map_specs
    handler(build_event([first, second], storage.url), context())
    storage.delete(result_key(plan.job_id, first.task_id, 1))  # as if it died right after its commit
    record = on_failure_record(build_event([first, second], storage.url))
    assert handler(record, context()) == {"lost": []}
    assert not storage.exists(lost_key(plan.job_id, first.task_id, 1))
    done = TaskResult.decode(storage.get(result_key(plan.job_id, first.task_id, 1)))
    assert done.ok and done.committed and done.counters["records_in"] == len(LINES) // 2
    # A later event of the same attempt finds the same answer without running the job's code.
    [again] = decode(handler(build_event([first], storage.url), context()))
    assert again.ok and again.committed


def test_foreign_events_are_refused(s3_url):
    with pytest.raises(ConfigError, match="not an mrkit event"):
        handler({"Records": []}, context())


def test_claims_are_numbered_per_attempt(s3_url):
    storage, _out, plan = plan_job(s3_url, n_map=1)
    [spec] = plan.map_specs
    storage.put(claim_key(plan.job_id, spec.task_id, 1, 0), b"{}")  # a delivery that died mid-task
    [result] = decode(handler(build_event([spec], storage.url), context()))
    assert result.ok and result.committed and "/d1" in result.worker
    assert json.loads(storage.get(layout.commit_key(plan.job_id, spec.task_id)))["attempt"] == 1001


def serverless_job(url: str, lease: float):
    """A planned serverless job whose map tasks and first reduce task have run (through the handler),
    so that the next delivery of ``reduce-00001`` is the one that publishes."""
    from mrkit.backends.aws_lambda import jobs as osj

    storage, out, plan = plan_job(url)
    fn = FunctionConfig(name="unused", handler="tests.test_lambda_handler:echo_handler")
    job = {"invoker": {"kind": "local", "config": fn.to_dict()}}  # never invoked: maps are done
    doc = {"plan": osj._plan_to_dict(plan), "submitted": time.time(), "executor": "t", "lease": lease}
    storage.put(osj.plan_key(plan.job_id), json.dumps(doc).encode())
    handler(build_event(list(plan.map_specs), storage.url), context())  # plain tasks: no phase change
    handler(build_event([plan.reduce_specs[0]], storage.url, job=job), context())
    return storage, out, plan, build_event([plan.reduce_specs[1]], storage.url, job=job)


def count_publishes(monkeypatch) -> list[float]:
    """Record each call of publish_output (the real one runs, slowly enough for twins to overlap)."""
    from mrkit.backends.aws_lambda import jobs as osj

    calls: list[float] = []
    real = osj.publish_output

    def publish(*args, **kwargs):
        calls.append(time.monotonic())
        time.sleep(0.5)
        real(*args, **kwargs)

    monkeypatch.setattr(osj, "publish_output", publish)
    return calls


def test_concurrent_twins_of_the_last_task_publish_once(s3_url, monkeypatch):
    # Lambda delivers duplicates of an event with the same request id, possibly at the same time.
    storage, out, plan, event = serverless_job(s3_url, lease=5.0)
    calls = count_publishes(monkeypatch)
    barrier = threading.Barrier(2)
    ctx = context()

    def deliver() -> None:
        barrier.wait()
        handler(event, ctx)

    twins = [threading.Thread(target=deliver) for _ in range(2)]
    for t in twins:
        t.start()
    for t in twins:
        t.join(60)
    assert len(calls) == 1  # the other twin saw the lease renewed or the job ended, and stood aside
    assert json.loads(storage.get(f"{plan.job_id}/state/end"))["state"] == "done"
    assert sorted(mrkit.read_output(out.url)) == sorted(reference(WORDCOUNT, LINES))


def test_a_publisher_that_died_is_taken_over_by_the_retry(s3_url, monkeypatch):
    storage, out, plan, event = serverless_job(s3_url, lease=1.0)
    calls = count_publishes(monkeypatch)
    # The first delivery took the lease and died before publishing: nobody renews it any more.
    dead = {"token": "dead", "request_id": "r-1", "renewals": 0}
    storage.put(f"{plan.job_id}/state/publish/g0", json.dumps(dead).encode())
    started = time.monotonic()
    handler(event, context("r-1"))  # Lambda's retry: same event, same request id
    assert 1.0 <= time.monotonic() - started < 30  # it waited out one lease, then took over
    assert len(calls) == 1 and storage.exists(f"{plan.job_id}/state/publish/g1")
    assert sorted(mrkit.read_output(out.url)) == sorted(reference(WORDCOUNT, LINES))


def test_a_holder_presumed_dead_stands_aside(s3_url):
    from mrkit.backends.aws_lambda.jobs import _StepLease

    storage = open_storage(s3_url)
    first = _StepLease.take(storage, "j/state/publish/", "r", seconds=0.4, done=lambda: False)
    assert first is not None and first.held()
    # A live holder renews: a second taker sees it change and stands aside.
    assert _StepLease.take(storage, "j/state/publish/", "r", seconds=0.4, done=lambda: False) is None
    first._stop.set()  # frozen (say, a long pause): it stops renewing but does not know it
    first._thread.join()
    second = _StepLease.take(storage, "j/state/publish/", "r", seconds=0.4, done=lambda: False)
    assert second is not None and second.key == "j/state/publish/g1"
    assert not first.held() and second.held()  # the old holder checks before irreversible work
    second.release()


# -- the local function runtime ------------------------------------------------------------------------


def echo_handler(event, context):
    """Report what a delivery sees (imported by name in the delivery process)."""
    if "requestPayload" in event:  # an on-failure record: log it against the original event's file
        with open(event["requestPayload"]["log"], "a") as f:
            f.write(
                json.dumps(
                    {
                        "pid": os.getpid(),
                        "request_id": context.aws_request_id,
                        "start": time.time(),
                        "record": True,
                    }
                )
                + "\n"
            )
        return {}
    if event.get("log"):
        with open(event["log"], "a") as f:
            f.write(
                json.dumps(
                    {
                        "pid": os.getpid(),
                        "request_id": context.aws_request_id,
                        "start": time.time(),
                        "record": False,
                    }
                )
                + "\n"
            )
    if event.get("fail_first") and not os.path.exists(event["fail_first"]):
        open(event["fail_first"], "w").close()
        raise RuntimeError("first delivery fails")
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("allocate_mb"):
        _hold = bytearray(event["allocate_mb"] << 20)  # noqa: F841 - the allocation is the point
    if event.get("always_fail"):
        raise RuntimeError("always")
    return {
        "pid": os.getpid(),
        "event": event,
        "function_name": context.function_name,
        "request_id": context.aws_request_id,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "memory": context.memory_limit_in_mb,
        "rlimit_as": resource.getrlimit(resource.RLIMIT_AS)[0],
    }


def local(tmp_path, **fields) -> LocalFunction:
    fields.setdefault("timeout", 20)
    return LocalFunction(
        FunctionConfig(
            name="echo",
            handler="tests.test_lambda_handler:echo_handler",
            state_dir=str(tmp_path / "fn"),
            **fields,
        )
    )


def test_sync_invocation_is_a_cold_start_with_the_lambda_context(tmp_path):
    fn = local(tmp_path, memory_mb=512)
    first, second = fn.invoke({"x": 1}, sync=True), fn.invoke({"x": 2}, sync=True)
    assert first["pid"] != second["pid"] != os.getpid()  # a fresh process per invocation
    assert first["event"] == {"x": 1} and first["function_name"] == "echo"
    assert first["memory"] == 512 and first["rlimit_as"] == 512 << 20
    assert 0 < first["remaining_ms"] <= 20_000
    assert "REPORT RequestId: " + first["request_id"] in (tmp_path / "fn" / "function.log").read_text()


def test_an_invocation_that_runs_too_long_is_killed(tmp_path):
    fn = local(tmp_path, timeout=1)
    started = time.monotonic()
    with pytest.raises(FunctionError, match="Task timed out after 1.00 seconds") as info:
        fn.invoke({"sleep": 30}, sync=True)
    assert info.value.error_type == "TimedOut" and time.monotonic() - started < 10


def test_an_invocation_over_its_memory_limit_fails(tmp_path):
    fn = local(tmp_path, memory_mb=256)
    with pytest.raises(FunctionError, match="MemoryError"):
        fn.invoke({"allocate_mb": 400}, sync=True)
    assert fn.invoke({"allocate_mb": 16}, sync=True)["memory"] == 256


def wait_for_lines(path, n: int, timeout: float = 20.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n:
            return [json.loads(line) for line in lines]
        time.sleep(0.05)
    raise AssertionError(f"{path} has fewer than {n} lines")


def test_async_events_are_retried_duplicated_and_finally_reported(tmp_path):
    log = tmp_path / "log.jsonl"
    # A failing first delivery is retried, with the same request id.
    fn = local(tmp_path, retry_delay=0.01)
    fn.invoke({"log": str(log), "fail_first": str(tmp_path / "flag")})
    lines = wait_for_lines(log, 2)
    assert len({line["request_id"] for line in lines}) == 1 and len({line["pid"] for line in lines}) == 2
    # duplicate_rate=1: every event is delivered twice, at once.
    log.unlink()
    local(tmp_path, duplicate_rate=1.0).invoke({"log": str(log)})
    assert len({line["pid"] for line in wait_for_lines(log, 2)}) == 2
    # Every delivery fails: 1 + 2 retries, then the on-failure record goes to the function itself.
    log.unlink()
    local(tmp_path, retry_delay=0.01).invoke({"log": str(log), "always_fail": True})
    lines = wait_for_lines(log, 4)
    assert [line["record"] for line in lines] == [False, False, False, True]


def test_the_callers_random_stream_is_left_alone(tmp_path):
    # Duplicates, slot choice and retry jitter must not draw from the global ``random`` stream: a
    # user who seeded it for reproducible results would get another sequence after a job ran.
    log = tmp_path / "log.jsonl"
    random.seed(2026)
    state = random.getstate()
    fn = local(tmp_path, duplicate_rate=1.0, retry_delay=0.01)
    fn.invoke({"log": str(log), "fail_first": str(tmp_path / "flag")})
    assert len(wait_for_lines(log, 3)) >= 3  # two deliveries at once, one of them retried
    assert fn.wait_idle(30)
    assert random.getstate() == state


def test_detached_invocations_outlive_their_invoker(tmp_path):
    log = tmp_path / "log.jsonl"
    fn = LocalFunction(
        FunctionConfig(
            name="echo", handler="tests.test_lambda_handler:echo_handler", state_dir=str(tmp_path / "fn")
        ),
        detached=True,
    )
    fn.invoke({"log": str(log), "sleep": 1})
    assert not fn.wait_idle(0)  # its supervisor (another process) is waiting or running
    assert wait_for_lines(log, 1)[0]["pid"] != os.getpid()
    assert fn.wait_idle(30)  # ... and then it ends, with its delivery
    assert "Status: ok" in (tmp_path / "fn" / "function.log").read_text()


def _gone_within(pid: int, seconds: float) -> bool:
    """True once ``pid`` has exited (a zombie waiting for its new parent to reap it counts)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_stop_detached_kills_a_running_delivery_and_drops_one_waiting_for_a_slot(tmp_path):
    log = tmp_path / "log.jsonl"
    config = FunctionConfig(
        name="echo",
        handler="tests.test_lambda_handler:echo_handler",
        state_dir=str(tmp_path / "fn"),
        max_concurrency=1,
    )
    fn = LocalFunction(config, detached=True)
    fn.invoke({"log": str(log), "sleep": 60})  # holds the only slot ...
    delivery_pid = wait_for_lines(log, 1)[0]["pid"]
    fn.invoke({"log": str(log)})  # ... and this one waits for it, in its own supervisor
    assert not fn.wait_idle(0)
    started = time.monotonic()
    assert stop_detached(config.folder()) >= 1
    assert time.monotonic() - started < 10 and fn.wait_idle(0)
    assert _gone_within(delivery_pid, 5)  # the running delivery was killed with its supervisor
    time.sleep(0.5)  # the waiting one never starts, then or later
    assert (tmp_path / "fn" / "function.log").read_text().count("START RequestId") == 1
    assert len(log.read_text().splitlines()) == 1
    assert stop_detached(config.folder()) == 0  # nothing left to stop


def test_shutdown_kills_running_deliveries_and_drops_queued_ones(tmp_path):
    log = tmp_path / "log.jsonl"
    fn = local(tmp_path, max_concurrency=1)
    fn.invoke({"log": str(log), "sleep": 60})  # holds the only slot ...
    wait_for_lines(log, 1)  # ... once it has started (two queued events may start in either order)
    fn.invoke({"log": str(log)}, sync=False)  # waits for it
    started = time.monotonic()
    fn.shutdown()
    assert time.monotonic() - started < 10 and fn.wait_idle(0)
    # The queued event never started, then or later; the running one was killed.
    text = (tmp_path / "fn" / "function.log").read_text()
    assert text.count("START RequestId") == 1 and "Status: Runtime.ExitError" in text
    assert len(log.read_text().splitlines()) == 1
    fn.invoke({"log": str(log)})  # a shut-down function accepts nothing
    assert fn.wait_idle(0) and len(log.read_text().splitlines()) == 1


def test_concurrency_is_capped_across_invocations(tmp_path):
    log = tmp_path / "log.jsonl"
    fn = local(tmp_path, max_concurrency=1)
    for _ in range(3):
        fn.invoke({"log": str(log), "sleep": 0.3})
    starts = sorted(line["start"] for line in wait_for_lines(log, 3))
    assert all(b - a >= 0.3 for a, b in zip(starts, starts[1:], strict=False))  # one at a time


def test_the_handler_path_of_functions_deployed_before_the_move_still_works():
    import mrkit.worker.lambda_handler as old_path

    assert old_path.handler is handler  # the same module object: patches and state are shared
