"""Whole jobs on function workers, with inputs, shuffle and output in the moto S3 server.

``lambda-local`` runs every task in a fresh process through the same handler a deployed function
runs; ``lambda://`` is exercised with a stand-in for boto3's Lambda client that calls the handler
(there is no Lambda runtime here). Both the in-process driver (``mrkit.run``) and the serverless
driver (``mrkit.submit``: the functions advance the job) are covered.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
import uuid

import pytest

import mrkit
import mrkit.execution.base
from mrkit.backends.aws_lambda.emulator import FunctionConfig, LambdaContext, LocalFunction
from mrkit.backends.aws_lambda.executor import LambdaExecutor, LocalLambdaExecutor, build_event
from mrkit.backends.aws_lambda.handler import handler
from mrkit.backends.aws_lambda.jobs import ObjectStoreJobHandle, open_job_handle
from mrkit.errors import ConfigError, JobCancelled, JobFailed
from mrkit.model.reference import reference
from mrkit.model.task import TaskKind, TaskSpec
from mrkit.storage import open_storage
from tests.jobs_for_tests import WORDCOUNT
from tests.s3_fixtures import *  # noqa: F403 - moto_server, s3_bucket, s3_url

WORDS = "the cat sat on the mat and a dog ate the hat while it rained in spain".split()


def corpus(bucket: str, files: int = 3, lines: int = 400) -> list[str]:
    """Write ``files`` text objects under ``s3://bucket/in/``; return all their lines."""
    store = open_storage(f"s3://{bucket}/in")
    every = []
    for f in range(files):
        text = [
            " ".join(WORDS[(f * 7 + i * 3 + j) % len(WORDS)] for j in range(1 + i % 9)) for i in range(lines)
        ]
        store.put(f"part-{f}.txt", ("\n".join(text) + "\n").encode())
        every += text
    return every


@pytest.fixture(autouse=True)
def no_function_left_running(tmp_path):
    """After each test, every local delivery under ``tmp_path/fn`` has ended, detached ones included
    (a serverless job is done once it is published, while late duplicates may still be running)."""
    yield
    if (tmp_path / "fn").exists():
        function = LocalFunction(FunctionConfig(state_dir=str(tmp_path / "fn")))
        assert function.wait_idle(90), "local function deliveries still running 90 s after the test"


def executor(tmp_path, s3_url: str, **options) -> LocalLambdaExecutor:
    options.setdefault("timeout", 20)
    return LocalLambdaExecutor.from_name(
        "lambda-local", state_dir=str(tmp_path / "fn"), storage=s3_url, **options
    )


def committed_job(ex: LocalLambdaExecutor, s3_url: str):  # type: ignore[no-untyped-def]
    """A serverless job whose plan is stored and whose every map and reduce task committed, through
    plain events (nothing advances): it waits for its publish step. Returns (storage, output, plan)."""
    from mrkit.backends.aws_lambda import jobs as osj
    from mrkit.model.task import TaskResult
    from tests.test_lambda_handler import context, plan_job

    storage, out, plan = plan_job(s3_url)
    doc = {"plan": osj._plan_to_dict(plan), "invoker": ex.invoker.config(), "submitted": 0.0, "executor": "t"}
    storage.put(osj.plan_key(plan.job_id), json.dumps(doc).encode())
    for spec in (*plan.map_specs, *plan.reduce_specs):
        [raw] = handler(build_event([spec], storage.url), context())["results"]
        assert TaskResult.decode(raw).committed
    return storage, out, plan


def test_word_count_with_inputs_shuffle_and_output_in_s3(tmp_path, s3_bucket, s3_url):
    lines = corpus(s3_bucket)
    with executor(tmp_path, s3_url) as ex:
        result = mrkit.run(
            WORDCOUNT,
            f"s3://{s3_bucket}/in/*.txt",
            output=f"s3://{s3_bucket}/out",
            executor=ex,
            n_reduce=2,
            quiet=True,
        )
    assert sorted(result) == sorted(reference(WORDCOUNT, lines))
    assert result.counters["map.records_in"] == len(lines) and result.counters["map.tasks"] == 3
    bucket = open_storage(f"s3://{s3_bucket}")
    assert sorted(bucket.list("out/")) == ["out/_SUCCESS", "out/part-00000", "out/part-00001"]
    assert list(bucket.list("mrkit/")) == []  # intermediate data and results were removed


def test_executor_named_by_string_with_sync_invocations(tmp_path, s3_bucket, s3_url):
    lines = corpus(s3_bucket, files=2)
    name = f"lambda-local://wc?storage={s3_url}&invocation=sync&timeout=20&state_dir={tmp_path / 'fn'}"
    result = mrkit.run(WORDCOUNT, f"s3://{s3_bucket}/in/", executor=name, n_reduce=1, quiet=True)
    assert sorted(result) == sorted(reference(WORDCOUNT, lines))  # in-memory result, kept in S3


def test_submit_returns_at_once_and_is_followed_from_anywhere(tmp_path, s3_bucket, s3_url):
    lines = corpus(s3_bucket)
    ex = executor(tmp_path, s3_url)
    started = time.monotonic()
    handle = mrkit.submit(
        WORDCOUNT, f"s3://{s3_bucket}/in/*.txt", executor=ex, output=f"s3://{s3_bucket}/out", n_reduce=2
    )
    assert time.monotonic() - started < 5  # planned and invoked; nothing has run yet
    status = handle.status()
    assert status["state"] == "running" and status["tasks"]["map"]["total"] == 3
    # Another process follows the job by id: the state lives in the object store.
    code = (
        "import json, sys; from mrkit.backends.aws_lambda.jobs import open_job_handle; "
        "h = open_job_handle(sys.argv[1], sys.argv[2]); r = h.wait(60); "
        "print(json.dumps({'state': h.status()['state'], 'records': r.counters['map.records_in']}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, handle.id, s3_url],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    ).stdout
    assert json.loads(out) == {"state": "done", "records": len(lines)}
    result = handle.result(10)
    assert sorted(result) == sorted(reference(WORDCOUNT, lines))
    assert result.counters["map.deliveries"] == 3 and result.counters["reduce.attempts_launched"] == 2
    # The end record is written before the intermediate data is deleted: wait() may return first.
    storage = open_storage(s3_url)
    deadline = time.monotonic() + 10
    while [k for k in storage.list(f"{handle.id}/") if "/state/" not in k] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [k for k in storage.list(f"{handle.id}/") if "/state/" not in k]
    assert list(handle.logs()) == []  # a job that succeeded keeps only its plan and end record


def test_serverless_job_in_memory_result(tmp_path, s3_url):
    records = ["a b", "b c", "c"] * 30
    handle = mrkit.submit(
        WORDCOUNT, mrkit.Records(records), executor=executor(tmp_path, s3_url), n_map=3, n_reduce=2
    )
    assert dict(handle.wait(60)) == dict(reference(WORDCOUNT, records))
    assert open_job_handle(handle.id, s3_url).status()["state"] == "done"


def _no_hats(line: str):
    if "hat" in line:
        raise ValueError("no hats")
    yield from ((w, 1) for w in line.split())


def test_serverless_job_that_fails_publishes_nothing(tmp_path, s3_bucket, s3_url):
    corpus(s3_bucket, files=1)
    job = mrkit.Job(mapper=_no_hats, reducer=lambda k, vs: sum(vs))
    handle = mrkit.submit(
        job,
        f"s3://{s3_bucket}/in/*.txt",
        executor=executor(tmp_path, s3_url),
        output=f"s3://{s3_bucket}/out",
        policy=mrkit.RetryPolicy(max_attempts=2),
    )
    with pytest.raises(
        JobFailed,
        match=r"map task map-00000 of job .* failed after 2 attempts: "
        r".*part-0.txt.*ValueError: no hats",
    ) as info:
        handle.wait(60)
    assert "ValueError: no hats" in info.value.remote_traceback
    assert list(open_storage(f"s3://{s3_bucket}").list("out/")) == []
    status = handle.status()
    assert status["state"] == "failed"
    # Counted before the guards were deleted with the intermediate data: both attempts failed.
    assert status["failures"]["map"] == 2 and status["attempts"]["map"] >= 2
    assert any("failed: " in line and "no hats" in line for line in handle.logs())


def _hats_fail_once(line: str):
    if "hat" in line and mrkit.context().attempt == 1:
        raise ValueError("no hats the first time")
    yield from ((w, 1) for w in line.split())


def test_status_of_an_ended_job_keeps_its_failures(tmp_path, s3_url):
    records = ["a hat", "b c"] * 10
    job = mrkit.Job(mapper=_hats_fail_once, reducer=lambda k, vs: sum(vs))
    handle = mrkit.submit(
        job, mrkit.Records(records), executor=executor(tmp_path, s3_url), n_map=2, n_reduce=1
    )
    result = handle.wait(60)
    assert dict(result) == {"a": 10, "b": 10, "c": 10, "hat": 10}
    status = handle.status()
    assert status["state"] == "done"
    # Both map tasks hold a hat line: each failed once, then succeeded on its second attempt.
    assert status["failures"] == {"map": 2, "reduce": 0} and status["lost"] == {"map": 0, "reduce": 0}
    assert status["attempts"] == {"map": 4, "reduce": 1}
    assert result.counters["map.attempts_failed"] == 2


def test_logs_follow_a_running_job_until_it_ends(tmp_path, s3_url):
    records = ["a b", "b c", "c"] * 30
    handle = mrkit.submit(
        WORDCOUNT, mrkit.Records(records), executor=executor(tmp_path, s3_url), n_map=3, n_reduce=2
    )
    follower = ObjectStoreJobHandle(handle.id, s3_url, poll_interval=0.05)
    lines = list(follower.logs(follow=True))  # returns once the job has ended
    assert lines[-1] == f"job {handle.id} done"
    started = {line.split()[0] for line in lines if " started (request " in line}
    committed = {line.split()[0] for line in lines if " committed in " in line}
    assert started == committed == {"map-00000", "map-00001", "map-00002", "reduce-00000", "reduce-00001"}
    assert dict(handle.result(10)) == dict(reference(WORDCOUNT, records))


def _slow(line: str):
    time.sleep(0.05)
    yield line, 1


def test_cancelled_serverless_job_stops(tmp_path, s3_url):
    job = mrkit.Job(mapper=_slow, reducer=lambda k, vs: sum(vs))
    records = mrkit.Records([str(i) for i in range(200)])
    handle = mrkit.submit(job, records, executor=executor(tmp_path, s3_url), n_map=2, n_reduce=1)
    assert handle.cancel() is True
    assert handle.cancel() is False  # already ended
    with pytest.raises(JobCancelled):
        handle.wait(30)
    assert handle.status()["state"] == "cancelled"


def test_storage_the_functions_cannot_reach_is_refused(tmp_path):
    ex = LambdaExecutor.from_name(
        "lambda://fn?region=eu-west-1&max_concurrency=5", storage=f"file://{tmp_path}"
    )
    assert ex.workers == 5 and ex.invoker.region == "eu-west-1" and not ex.local
    spec = TaskSpec(job_id="j", task_id="map-00000", kind=TaskKind.MAP, storage_url=f"file://{tmp_path}")
    with pytest.raises(ConfigError, match="cannot reach storage"):
        ex.submit(spec)
    with pytest.raises(ConfigError, match="unknown option"):
        LambdaExecutor.from_name("lambda://fn?concurrency=5")
    with pytest.raises(ConfigError, match="names no function"):
        LambdaExecutor.from_name("lambda://")
    big = TaskSpec(job_id="j", task_id="call-000001", kind=TaskKind.CALL, call=b"x" * 300_000)
    with pytest.raises(ConfigError, match="over Lambda's 262,144-byte limit"):
        build_event([big], "s3://b/p")


class FakeLambdaClient:
    """Stands in for boto3's Lambda client: accepts Invoke like the service, then runs the handler
    (in a thread for Event, inline for RequestResponse). Records every call, and how many
    invocations ran at once (``peak``)."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.running = self.peak = 0
        self._lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def _run(self, event: dict, ctx: LambdaContext) -> dict:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            return handler(event, ctx)
        finally:
            with self._lock:
                self.running -= 1

    def invoke(self, *, FunctionName: str, InvocationType: str, Payload: bytes) -> dict:  # noqa: N803 - boto3's names
        self.calls.append(
            {"FunctionName": FunctionName, "InvocationType": InvocationType, "size": len(Payload)}
        )
        event = json.loads(Payload)
        ctx = LambdaContext(
            function_name=FunctionName,
            memory_limit_in_mb=1024,
            aws_request_id=str(uuid.uuid4()),
            deadline=time.time() + 60,
        )
        if InvocationType == "Event":
            thread = threading.Thread(target=self._run, args=(event, ctx))
            self.threads.append(thread)
            thread.start()
            return {"StatusCode": 202}
        return {"StatusCode": 200, "Payload": io.BytesIO(json.dumps(self._run(event, ctx)).encode())}

    def close(self) -> None:
        pass


@pytest.mark.parametrize("invocation", ["event", "sync"])
def test_lambda_executor_drives_boto3_invoke(s3_bucket, s3_url, invocation):
    lines = corpus(s3_bucket, files=2)
    ex = LambdaExecutor.from_name(
        f"lambda://wordcount?region=us-east-1&invocation={invocation}",
        storage=s3_url,
        max_concurrency=4,
        poll_interval=0.05,
        lost_after=60,
    )
    client = ex.invoker._client = FakeLambdaClient()
    result = mrkit.run(WORDCOUNT, f"s3://{s3_bucket}/in/*.txt", executor=ex, n_reduce=2, quiet=True)
    assert sorted(result) == sorted(reference(WORDCOUNT, lines))
    expected = "Event" if invocation == "event" else "RequestResponse"
    assert {c["InvocationType"] for c in client.calls} == {expected} and len(client.calls) == 4
    assert {c["FunctionName"] for c in client.calls} == {"wordcount"}
    assert max(c["size"] for c in client.calls) < 4096
    for thread in client.threads:
        thread.join(30)


def _slow_words(line: str):
    time.sleep(0.01)
    yield from ((w, 1) for w in line.split())


def test_max_concurrency_caps_invocations_in_flight(s3_url):
    records = [" ".join(WORDS[i % 9 : i % 9 + 4]) for i in range(240)]
    ex = LambdaExecutor.from_name(
        "lambda://wc?max_concurrency=2", storage=s3_url, poll_interval=0.05, lost_after=60
    )
    client = ex.invoker._client = FakeLambdaClient()
    # Counted on the driver's side: tasks submitted whose result has not arrived. (The stand-in's own
    # `peak` can read 3: an invocation's thread is still unwinding for a moment after its result is
    # in the store and the next invocation has started, as a real function's would be.)
    outstanding: set = set()
    peak = [0]
    lock = threading.Lock()
    submit = ex.submit

    def counting_submit(spec):
        future = submit(spec)
        with lock:
            outstanding.add(future)
            peak[0] = max(peak[0], len(outstanding))

        def done(f):
            with lock:
                outstanding.discard(f)

        future.add_done_callback(done)
        return future

    ex.submit = counting_submit
    job = mrkit.Job(mapper=_slow_words, reducer=_sum, combiner=_sum)
    with ex:
        result = mrkit.run(job, mrkit.Records(records), executor=ex, n_map=8, n_reduce=2, quiet=True)
    for thread in client.threads:
        thread.join(30)
    assert dict(result) == dict(reference(job, records))
    assert len(client.calls) == 10 and peak[0] == 2  # 10 tasks, never more than 2 in flight


def _sum(key, values):
    return sum(values)


def test_cli_submit_status_result(tmp_path, s3_bucket, s3_url):
    from click.testing import CliRunner

    from mrkit.cli.main import cli

    lines = corpus(s3_bucket, files=2)
    executor = f"lambda-local://wc?storage={s3_url}&state_dir={tmp_path / 'fn'}&max_concurrency=2"
    runner = CliRunner()
    submitted = runner.invoke(
        cli,
        [
            "submit",
            "tests/jobs_for_tests.py:WORDCOUNT",
            f"s3://{s3_bucket}/in/",
            "--executor",
            executor,
            "-M",
            "2",
        ],
    )
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.split()[0]
    result = runner.invoke(cli, ["result", job_id, "--executor", executor, "--wait", "--timeout", "60"])
    assert result.exit_code == 0, result.output
    pairs = [line.split("\t") for line in result.stdout.splitlines()]
    assert sorted((json.loads(k), json.loads(v)) for k, v in pairs) == sorted(reference(WORDCOUNT, lines))
    status = runner.invoke(cli, ["status", job_id, "--executor", executor, "--json"])
    assert status.exit_code == 0 and json.loads(status.stdout)["state"] == "done"
    # ... and from another process, which knows only the job id and the executor string.
    for command in (["status", job_id, "--json"], ["result", job_id]):
        out = subprocess.run(
            [sys.executable, "-m", "mrkit", *command, "--executor", executor],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        if command[0] == "status":
            assert json.loads(out.stdout)["state"] == "done"
        else:
            assert sorted(out.stdout.splitlines()) == sorted(result.stdout.splitlines())
    listed = runner.invoke(cli, ["jobs", "--executor", executor, "--json"])
    assert json.loads(listed.stdout.splitlines()[0])["id"] == job_id


def test_invoke_requests_match_the_lambda_api():
    """botocore's Stubber validates our Invoke parameters against the Lambda service model."""
    import boto3
    from botocore.response import StreamingBody
    from botocore.stub import ANY, Stubber

    from mrkit.backends.aws_lambda.executor import BotoInvoker

    invoker = BotoInvoker("mrkit-wc", "us-east-1")
    client = boto3.client("lambda", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    invoker._client = client
    event = build_event([TaskSpec(job_id="j", task_id="map-00000", kind=TaskKind.MAP)], "s3://b/p")
    body = json.dumps({"results": []}).encode()
    with Stubber(client) as stub:
        stub.add_response(
            "invoke",
            {"StatusCode": 202},
            {"FunctionName": "mrkit-wc", "InvocationType": "Event", "Payload": ANY},
        )
        reply = {"StatusCode": 200, "Payload": StreamingBody(io.BytesIO(body), len(body))}
        stub.add_response(
            "invoke", reply, {"FunctionName": "mrkit-wc", "InvocationType": "RequestResponse", "Payload": ANY}
        )
        assert invoker.invoke(event) is None
        assert invoker.invoke(event, sync=True) == {"results": []}
        stub.assert_no_pending_responses()


def test_futures_map_on_local_functions(tmp_path):
    from mrkit import futures

    ex = LocalLambdaExecutor.from_name(
        "lambda-local", state_dir=str(tmp_path / "fn"), max_concurrency=2, batch_size=4
    )
    with ex:
        squares = list(futures.map(lambda x: x * x, range(50), executor=ex, chunksize=5))
    assert squares == [x * x for x in range(50)]
    log = (tmp_path / "fn" / "function.log").read_text()
    assert 1 <= log.count("START RequestId") <= 10  # ten chunks, some sent together in one event


def test_events_of_a_2000_split_job_over_1050_objects_stay_small(s3_bucket, s3_url):
    from concurrent.futures import ThreadPoolExecutor

    from mrkit.backends.aws_lambda.emulator import FunctionConfig
    from mrkit.backends.aws_lambda.executor import MAX_ASYNC_EVENT, pack
    from mrkit.coordination.plan import RetryPolicy, build_plan
    from mrkit.data.splits import plan_splits
    from mrkit.model.task import TaskSettings

    inputs = open_storage(f"s3://{s3_bucket}/in")
    text = "".join(f"{' '.join(WORDS[i % 7 : i % 7 + 5])}\n" for i in range(60)).encode()  # ~1.7 KB
    names = [f"d{i % 7}/obj-{i:05d}.txt" for i in range(1050)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: inputs.put(name, text), names))
    # The input glob lists past S3's 1,000-key page; 2,000 splits are cut from the 1,050 objects.
    splits = plan_splits(f"s3://{s3_bucket}/in/*/*.txt", 2000, min_split_bytes=512)
    assert len(splits) == 2000 and len({s.uri for s in splits}) == 1050
    storage = open_storage(s3_url)
    plan = build_plan(
        WORDCOUNT,
        splits,
        job_id="big-job",
        storage=storage,
        output_url=f"s3://{s3_bucket}/out",
        n_reduce=500,
        settings=TaskSettings(),
        policy=RetryPolicy(),
    )
    specs = [*plan.map_specs, *plan.reduce_specs]
    # What the serverless driver sends: the job member names the invoker of further tasks.
    job = {"invoker": {"kind": "local", "config": FunctionConfig(name="wc").to_dict()}}
    sizes = [len(json.dumps(build_event([spec], storage.url, job=job))) for spec in specs]
    assert max(sizes) < 2048  # references only: 1/128 of the 256 KB asynchronous limit
    # Batched (tiny tasks), events are closed before the limit rather than refused by Lambda.
    groups = pack(list(plan.map_specs), storage.url, job=job, batch_size=1000)
    batched = [len(json.dumps(build_event(g, storage.url, job=job))) for g in groups]
    assert sum(len(g) for g in groups) == 2000 and len(groups) >= 2
    assert max(batched) <= MAX_ASYNC_EVENT and min(len(g) for g in groups[:-1]) > 100


def _echo_len(text: str) -> int:
    return len(text)


def test_batches_of_large_calls_are_split_under_the_payload_limit(s3_url):
    from mrkit import futures

    ex = LambdaExecutor.from_name(
        "lambda://calls",
        storage=s3_url,
        max_concurrency=12,
        batch_size=100,
        poll_interval=0.05,
        lost_after=60,
    )
    client = ex.invoker._client = FakeLambdaClient()
    items = [str(i) * (60_000 // len(str(i))) for i in range(1, 13)]  # ~60 KB of argument each
    with ex:
        assert list(futures.map(_echo_len, items, executor=ex, chunksize=1)) == [len(s) for s in items]
    for thread in client.threads:
        thread.join(30)
    assert max(c["size"] for c in client.calls) <= 256 * 1024  # no event refused, no task lost
    assert len(client.calls) < len(items)  # several calls still share an event


def test_serverless_job_with_batched_events(tmp_path, s3_url):
    records = [f"w{i % 5} w{i % 3}" for i in range(120)]
    ex = executor(tmp_path, s3_url, batch_size=3, max_concurrency=2)
    handle = mrkit.submit(WORDCOUNT, mrkit.Records(records), executor=ex, n_map=6, n_reduce=3)
    assert dict(handle.wait(60)) == dict(reference(WORDCOUNT, records))
    log = (tmp_path / "fn" / "function.log").read_text()
    assert log.count("START RequestId") == 3  # two events of three map tasks, one of three reduces


def test_lambda_local_takes_options_without_a_function_name():
    # `lambda-local[://NAME][?option=…]`: the name may be left out and options still given.
    ex = mrkit.execution.base.open_executor("lambda-local?max_concurrency=3")
    try:
        assert isinstance(ex, LocalLambdaExecutor) and ex.workers == 3
    finally:
        ex.shutdown()


def test_submit_prints_a_follow_up_command_that_finds_the_job(tmp_path, s3_bucket, s3_url):
    import shlex

    from click.testing import CliRunner

    from mrkit.cli.main import cli

    corpus(s3_bucket, files=1)
    executor = f"lambda-local://wc?state_dir={tmp_path / 'fn'}&max_concurrency=2"
    runner = CliRunner()
    args = ["submit", "tests/jobs_for_tests.py:WORDCOUNT", f"s3://{s3_bucket}/in/", "--executor", executor]
    submitted = runner.invoke(cli, [*args, "--storage", s3_url])  # storage given apart from the executor
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.split()[0]
    hint = submitted.stderr.strip().rpartition("follow it with: ")[2]
    follow = shlex.split(hint)
    assert follow[:3] == ["mrkit", "status", job_id] and f"storage={s3_url}" in follow[-1]
    waited = runner.invoke(cli, ["result", job_id, "--executor", follow[-1], "--wait", "--timeout", "60"])
    assert waited.exit_code == 0, waited.output
    status = runner.invoke(cli, [*follow[1:], "--json"])
    assert status.exit_code == 0 and json.loads(status.stdout)["state"] == "done"
