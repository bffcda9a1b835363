"""Fault tests for function workers: killed, timed-out, duplicated and lost invocations, failed reads.

Each fault is injected into real deliveries of ``lambda-local`` (fresh processes, as on Lambda)
and every job must still produce exactly the reference output, with no record counted twice.
:class:`FlakyWordCount` misbehaves in the *first* delivery of ``map-00000`` only (a flag file,
created atomically, remembers that it did), so the retry that follows behaves.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator

import pytest

import mrkit
from mrkit.backends.aws_lambda.executor import LocalLambdaExecutor
from mrkit.coordination.plan import RetryPolicy
from mrkit.model.reference import reference
from mrkit.storage import open_storage
from tests.s3_fixtures import *  # noqa: F403 - moto_server, s3_bucket, s3_url
from tests.s3_fixtures import FaultProxy
from tests.test_lambda_jobs import corpus, no_function_left_running  # noqa: F401 - autouse fixture


class FlakyWordCount(mrkit.Job):
    """Word count; params ``{"how": "kill" | "hang", "flag": path}`` break map-00000's first delivery."""

    def mapper(self, line: str) -> Iterator[tuple[str, int]]:
        how = self.params.get("how")
        if how and mrkit.context().task_id == "map-00000":
            try:
                os.close(os.open(self.params["flag"], os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                pass  # not the first delivery: behave
            else:
                if how == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)  # the invocation dies mid-task
                time.sleep(120)  # "hang": the runtime's timeout must end it
        for word in line.split():
            yield word, 1

    def combiner(self, word: str, counts: Iterator[int]) -> int:
        return sum(counts)

    def reducer(self, word: str, counts: Iterator[int]) -> int:
        return sum(counts)


def run_flaky(
    tmp_path, s3_bucket: str, s3_url: str, how: str, *, submit: bool = False, policy=None, **options
):
    lines = corpus(s3_bucket)
    job = FlakyWordCount(params={"how": how, "flag": str(tmp_path / "flag")} if how else {})
    options.setdefault("timeout", 20)
    options.setdefault("retry_delay", 0.05)
    ex = LocalLambdaExecutor.from_name(
        "lambda-local", state_dir=str(tmp_path / "fn"), storage=s3_url, **options
    )
    inputs = f"s3://{s3_bucket}/in/*.txt"
    if submit:
        result = mrkit.submit(job, inputs, executor=ex, n_reduce=2).wait(60)
    else:
        with ex:
            result = mrkit.run(job, inputs, executor=ex, n_reduce=2, quiet=True, policy=policy)
    assert sorted(result) == sorted(reference(FlakyWordCount(), lines))
    assert result.counters["map.records_in"] == len(lines)  # nothing counted twice
    return result, (tmp_path / "fn" / "function.log").read_text()


def test_invocation_killed_mid_task_is_redelivered(tmp_path, s3_bucket, s3_url):
    result, log = run_flaky(tmp_path, s3_bucket, s3_url, "kill")
    assert "Status: Runtime.ExitError" in log  # the killed delivery, then Lambda's retry of it
    assert result.counters["map.attempts_lost"] == 0  # the runtime's retry saved the attempt


def test_invocation_that_times_out_is_killed_and_redelivered(tmp_path, s3_bucket, s3_url):
    # The function's timeout must leave room for a delivery's cold start (a fresh Python importing
    # mrkit and boto3 takes seconds on a loaded machine: a CI run with 3 pytest workers saw 5.5 s
    # invocations), or healthy deliveries time out too.
    # No speculation: on an idle machine tasks take ~1 s, so a speculative twin of the hanging one
    # (launched after 3× the median) would commit first and the job end before the timeout fires.
    started = time.monotonic()
    policy = RetryPolicy(speculative=False)
    _result, log = run_flaky(tmp_path, s3_bucket, s3_url, "hang", timeout=12, policy=policy)
    assert log.count("Status: TimedOut") == 1, log  # the hanging delivery only
    assert time.monotonic() - started < 100  # it was ended at 12 s, far before its 120 s sleep


def test_invocation_lost_for_good_reaches_the_driver_as_worker_lost(tmp_path, s3_bucket, s3_url):
    # No runtime retries: the on-failure record marks the attempt lost; the driver launches attempt 2.
    result, _log = run_flaky(tmp_path, s3_bucket, s3_url, "kill", max_retry_attempts=0)
    assert result.counters["map.attempts_lost"] == 1 and result.counters["map.attempts_launched"] == 4


@pytest.mark.parametrize("slots", [2, 10])
def test_duplicated_events_change_nothing(tmp_path, s3_bucket, s3_url, slots):
    # run_flaky checks the output and that no record counted twice. With 2 slots, twins queue behind
    # other deliveries, and those still queued when the job ends are dropped by the executor's
    # shutdown: the job's result must not wait on them, and none may start afterwards.
    _result, log = run_flaky(tmp_path, s3_bucket, s3_url, "", duplicate_rate=1.0, max_concurrency=slots)
    starts = log.count("START RequestId")
    assert starts == log.count("END RequestId")  # every delivery that started has ended
    # (That a dropped delivery never starts later: test_lambda_handler.py, test_shutdown_kills_….)
    assert starts >= (10 if slots == 10 else 5)  # with room, every event of the 5 tasks ran twice


def test_serverless_job_with_duplicated_events(tmp_path, s3_bucket, s3_url):
    result, _log = run_flaky(tmp_path, s3_bucket, s3_url, "", submit=True, duplicate_rate=1.0)
    assert result.counters["map.deliveries"] >= 3 and result.counters["map.attempts_launched"] == 3


def test_serverless_job_survives_a_lost_invocation(tmp_path, s3_bucket, s3_url):
    result, _log = run_flaky(tmp_path, s3_bucket, s3_url, "kill", submit=True, max_retry_attempts=0)
    assert result.counters["map.attempts_launched"] == 4  # map-00000 ran again as attempt 2


def test_failed_ranged_reads_in_a_job_are_retried(tmp_path, s3_bucket, s3_url, moto_server):
    lines = corpus(s3_bucket, files=2, lines=30_000)  # ~1.4 MB objects: responses the proxy can cut
    proxy = FaultProxy(moto_server.endpoint, after=256 << 10, cuts=4)
    try:
        # The functions reach S3 through the proxy, which cuts four responses mid-body.
        ex = LocalLambdaExecutor.from_name(
            "lambda-local",
            state_dir=str(tmp_path / "fn"),
            storage=s3_url,
            timeout=20,
            environment={"AWS_ENDPOINT_URL_S3": proxy.endpoint},
        )
        with ex:
            result = mrkit.run(
                mrkit.Job(mapper=_words, reducer=_total, combiner=_total),
                f"s3://{s3_bucket}/in/*.txt",
                executor=ex,
                n_map=4,
                n_reduce=1,
                quiet=True,
            )
    finally:
        proxy.stop()
    assert proxy.cut_count == 4
    assert dict(result) == dict(reference(mrkit.Job(mapper=_words, reducer=_total), lines))
    assert result.counters["map.attempts_failed"] == 0  # retried inside the read, not by failing the task


def _words(line: str):
    for word in line.split():
        yield word, 1


def _total(key: str, counts) -> int:
    return sum(counts)


def test_ranged_read_that_keeps_failing_fails_the_job_naming_file_and_range(
    tmp_path, s3_bucket, s3_url, moto_server
):
    corpus(s3_bucket, files=1, lines=2_000)
    size = open_storage(f"s3://{s3_bucket}/in").size("part-0.txt")
    # Every GET of an input object loses its connection right after the headers: no byte of any
    # body arrives, so each ranged read fails read_retries + 1 times in a row, then gives up loudly.
    proxy = FaultProxy(moto_server.endpoint, after=0, cuts=-1, match=b"/in/")
    ex = LocalLambdaExecutor.from_name(
        "lambda-local",
        state_dir=str(tmp_path / "fn"),
        storage=s3_url,
        timeout=60,
        environment={"AWS_ENDPOINT_URL_S3": proxy.endpoint},
    )
    try:
        with ex, pytest.raises(mrkit.JobFailed) as info:
            mrkit.run(
                mrkit.Job(mapper=_words, reducer=_total),
                f"s3://{s3_bucket}/in/*.txt",
                executor=ex,
                n_map=2,
                n_reduce=1,
                policy=mrkit.RetryPolicy(max_attempts=2),
                quiet=True,
            )
    finally:
        proxy.stop()
    message = str(info.value)
    # The task, the file and its byte range, the attempts, and the read that failed.
    found = re.search(
        rf"map task map-0000[01] of job \S+ failed after 2 attempts: "
        rf"s3://{s3_bucket}#in/part-0.txt bytes (\d+)-(\d+): StorageError: cannot read "
        rf"s3://{s3_bucket}/in/part-0.txt at byte \d+: 6 requests in a row failed "
        r"\(last: IncompleteReadError.*\); giving up after 5 retries",
        message,
    )
    assert found and 0 <= int(found[1]) < int(found[2]) <= size, message
    assert proxy.cut_count >= 2 * 6  # two attempts, each retried its read 5 times
    assert list(open_storage(s3_url).list("")) == []  # nothing published, intermediate data removed
