"""Multi-step jobs submitted to local functions (``lambda-local``, shuffle and state in the moto S3
server): the chain advances from inside the function that publishes a step, without the submitter."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mrkit
from mrkit.backends.aws_lambda.emulator import FunctionConfig, LocalFunction
from mrkit.coordination.service import job_service
from mrkit.execution.base import open_executor
from mrkit.storage import open_storage
from tests import contract_jobs as C
from tests.s3_fixtures import *  # noqa: F403 - moto_server, s3_bucket, s3_url

ROOT = Path(__file__).resolve().parent.parent
TEXT = ["the cat and the hat", "a cat is a cat", "the end", "zebra and yak"] * 10


@pytest.fixture(autouse=True)
def no_function_left_running(tmp_path):
    """After each test, every local delivery under ``tmp_path/fn`` has ended."""
    yield
    if (tmp_path / "fn").exists():
        function = LocalFunction(FunctionConfig(state_dir=str(tmp_path / "fn")))
        assert function.wait_idle(90), "local function deliveries still running 90 s after the test"


def executor_string(tmp_path: Path, s3_url: str) -> str:
    return f"lambda-local://steps?storage={s3_url}&state_dir={tmp_path / 'fn'}&max_concurrency=4&timeout=30"


def test_a_chain_submitted_by_a_process_that_exits_completes_without_it(tmp_path, s3_bucket, s3_url):
    """The submitter exits at once; the function that publishes step 1 submits step 2 (seen in the
    chain's documents before anyone follows the job); then ``mrkit result/status/jobs`` follow it."""
    source = tmp_path / "in.txt"
    source.write_text("\n".join(TEXT) + "\n", encoding="utf-8")
    ex = executor_string(tmp_path, s3_url)
    out = f"s3://{s3_bucket}/out"
    submitted = subprocess.run(
        [sys.executable, "-m", "mrkit", "submit", "tests/contract_jobs.py:TOP_WORDS", str(source)]
        + ["--executor", ex, "--output", out, "-q"],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[0]
    storage = open_storage(s3_url)
    deadline = time.monotonic() + 60
    while not storage.exists(f"{job_id}/chain/end.json"):  # nobody follows the job meanwhile
        assert time.monotonic() < deadline, list(storage.list(f"{job_id}/chain/"))
        time.sleep(0.2)
    assert storage.exists(f"{job_id}/chain/steps/2")
    got = subprocess.run(
        [sys.executable, "-m", "mrkit", "result", job_id, "--executor", ex, "--wait", "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )
    assert got.returncode == 0, got.stderr
    expected = mrkit.run(C.TOP_WORDS, str(source), executor="inline", quiet=True)
    assert [tuple(json.loads(x) for x in line.split("\t")) for line in got.stdout.splitlines()] == list(
        expected
    )
    assert list(mrkit.read_output(out)) == list(expected)
    service = job_service(open_executor(ex, workers=1))
    assert service is not None
    st = service.handle(job_id).status()
    assert (st.state, st.step, st.steps) == ("done", 2, 2), st
    assert st.counters is not None and st.counters["step1.map.records_in"] == len(TEXT)
    assert [s.id for s in service.list_jobs()] == [job_id]
    # Step 1's intermediate parts are gone.
    assert not [k for k in storage.list(f"{job_id}/step1/")]


def test_a_failing_step_fails_the_chain_naming_it_and_publishes_nothing(tmp_path, s3_bucket, s3_url):
    out = f"s3://{s3_bucket}/out"
    handle = mrkit.submit(
        C.TopWordsWithPoison(params={"poison": "zebra"}),
        mrkit.Records(TEXT),
        executor=open_executor(executor_string(tmp_path, s3_url), workers=2),
        output=out,
        policy=mrkit.RetryPolicy(max_attempts=1),
    )
    with pytest.raises(mrkit.JobFailed) as failed:
        handle.wait(90)
    message = str(failed.value)
    assert message.startswith(f"step 2 of 2 (top) of job {handle.id}: "), message
    assert "ValueError: cannot rank 'zebra'" in message
    assert handle.status().state == "failed"
    assert not [n for n in open_storage(out).list("") if "part-" in n or "_SUCCESS" in n]
    with pytest.raises(mrkit.ConfigError, match="is a multi-step job, and resuming one is not supported yet"):
        mrkit.resume(handle.id, executor=executor_string(tmp_path, s3_url))
