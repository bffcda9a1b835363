"""Multi-step jobs submitted to a Redis fleet: a chain of one-step jobs that advances without its submitter.

Step advances are made deterministic by holding them: while ``RedisWorker.chain_published`` is
replaced by a no-op, a step publishes and the chain waits after it, as it would if its publisher
died between its publish and its advance (a handle, or a test, then advances it).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

import mrkit
from mrkit.backends.redis import chain as redis_chain
from mrkit.backends.redis import jobs as redis_jobs
from mrkit.backends.redis.wire import key, resolve_secret
from mrkit.backends.redis.worker import RedisWorker
from mrkit.coordination import chain_handle
from mrkit.coordination.service import job_service
from mrkit.errors import JobCancelled, JobFailed
from mrkit.execution.base import open_executor
from tests import contract_jobs as C
from tests.redis_fixtures import (  # noqa: F401 - fixtures
    WorkerThreads,
    mrkit_cmd,
    redis_server,
    redis_url,
    secret_env,
    start_worker,
    stop_worker,
)

TEXT = ["the cat and the hat", "a cat is a cat", "the end"] * 10
ROOT = Path(__file__).resolve().parent.parent
EXPECTED = [("cat", 30), ("the", 30), ("a", 20)]


def raising_top(_key: None, ranked: Iterable[tuple[int, str]]) -> Iterator[tuple[str, int]]:
    raise ValueError("no top today")
    yield  # pragma: no cover - a generator


FAILING_TOP = mrkit.Job(
    steps=[
        mrkit.Step(mapper=C.words, combiner=C.total, reducer=C.total),
        mrkit.Step(mapper=C.count_then_rank, reducer=raising_top, n_reduce=1, name="top"),
    ],
    name="failing-top",
)


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers in threads of this process publish a step without advancing its chain."""
    monkeypatch.setattr(RedisWorker, "chain_published", lambda self, job_id: None)


def _step_submits(url: str, step_id: str) -> int:
    """How many times the one-step job ``step_id`` was submitted (its log's submit lines)."""
    client = open_executor(url, workers=1).client  # type: ignore[attr-defined]
    return sum(1 for _id, f in client.xrange(key(step_id, "logs")) if f[b"text"].startswith(b"submitted:"))


def test_a_chain_runs_every_step_and_reports_per_step(redis_url):  # noqa: F811
    handle = mrkit.submit(C.TOP_WORDS, mrkit.Records(TEXT), executor=redis_url, n_map=2)
    st = handle.status()
    assert (st.state, st.step, st.steps, st.phase) == ("running", 1, 2, "step1.map")
    with WorkerThreads(redis_url, 2):
        result = handle.wait(timeout=60)
    assert list(result) == EXPECTED
    blocking = mrkit.run(C.TOP_WORDS, mrkit.Records(TEXT), executor="inline", quiet=True, n_map=2)
    assert list(result) == list(blocking)
    st = handle.status()
    assert (st.state, st.step, st.steps) == ("done", 2, 2)
    assert st.to_dict()["step"] == 2 and st.to_dict()["steps"] == 2
    assert result.counters["step1.map.records_in"] == len(TEXT) == result.counters["map.records_in"]
    assert result.counters["step2.map.records_in"] == result.counters["step1.reduce.records_out"]
    assert result.counters["reduce.records_out"] == 3
    logs = list(handle.logs())
    assert logs[0].startswith("step1 ") and logs[-1].startswith("step2 ")
    listed = job_service(open_executor(redis_url, workers=1)).list_jobs()  # type: ignore[union-attr]
    assert [s.id for s in listed] == [handle.id]  # the chain, not its steps
    # The intermediate parts of step 1 are gone once the chain ended.
    client = open_executor(redis_url, workers=1).client  # type: ignore[attr-defined]
    assert not list(client.scan_iter(match=f"mrkit:{{{handle.id}}}:data:*"))


def test_the_submitter_exits_before_step_2_and_the_cli_follows_the_chain(
    redis_url,  # noqa: F811
    tmp_path,
    secret_env,  # noqa: F811
):
    """``mrkit submit`` of a job file with "steps" exits at once; worker processes run both steps;
    ``mrkit status/result/logs/jobs`` follow the job by its id."""
    (tmp_path / "topwords.py").write_text(
        (ROOT / "tests" / "test_steps.py").read_text().split('STEPS_MODULE = """')[1].split('"""')[0]
    )
    (tmp_path / "in.txt").write_text("b a b\nc a b\n", encoding="utf-8")
    spec = {
        "job": str(tmp_path / "topwords.py"),
        "inputs": [str(tmp_path / "in.txt")],
        "steps": [
            {"mapper": "words", "combiner": "total", "reducer": "total"},
            {"mapper": "to_ranking", "reducer": "top", "n_reduce": 1, "name": "top"},
        ],
    }
    (tmp_path / "job.json").write_text(json.dumps(spec), encoding="utf-8")
    job_id = mrkit_cmd("submit", str(tmp_path / "job.json"), "--executor", redis_url).stdout.strip()
    assert job_id
    workers = [start_worker(redis_url, name=f"w{i}", burst=False) for i in range(2)]
    try:
        got = mrkit_cmd("result", job_id, "--wait", "--timeout", "60", "--executor", redis_url, timeout=90)
    finally:
        errs = [stop_worker(w) for w in workers]
    pairs = [tuple(json.loads(x) for x in line.split("\t")) for line in got.stdout.splitlines()]
    assert pairs == [("b", 3), ("a", 2)], errs
    status = json.loads(mrkit_cmd("status", job_id, "--json", "--executor", redis_url).stdout)
    assert status["state"] == "done" and status["steps"] == 2 and status["step"] == 2
    assert status["counters"]["step1.map.records_in"] == 2
    text = mrkit_cmd("status", job_id, "--executor", redis_url).stdout
    assert "state     done, phase step2." in text and "step      2 of 2" in text, text
    assert "step2" in mrkit_cmd("logs", job_id, "--executor", redis_url).stdout
    assert job_id in mrkit_cmd("jobs", "--executor", redis_url).stdout


def test_duplicate_publish_deliveries_submit_the_next_step_once(redis_url, held):  # noqa: F811
    handle = mrkit.submit(C.TOP_WORDS, mrkit.Records(TEXT), executor=redis_url, n_map=2)
    with WorkerThreads(redis_url, 2, burst=True):  # step 1 runs and publishes; the chain waits
        handle.step_handle(1).wait(timeout=60)  # type: ignore[attr-defined]
    assert _step_submits(redis_url, f"{handle.id}-step2") == 0
    secret = resolve_secret(redis_url)
    start = threading.Barrier(3)
    errors: list[BaseException] = []

    def deliver() -> None:
        start.wait(timeout=30)
        try:
            redis_chain.after_publish(redis_url, secret, f"{handle.id}-step1", redis_jobs.submit_job)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    redis_chain.after_publish(redis_url, secret, f"{handle.id}-step1", redis_jobs.submit_job)  # late
    assert _step_submits(redis_url, f"{handle.id}-step2") == 1
    assert handle.status().step == 2
    with WorkerThreads(redis_url, 2, burst=True):
        assert list(handle.wait(timeout=60)) == EXPECTED


def test_a_chain_whose_publisher_did_not_advance_is_advanced_by_its_handle(
    redis_url,  # noqa: F811
    held,
    monkeypatch,
):
    monkeypatch.setattr(chain_handle, "RECOVER_AFTER_SECONDS", 0.0)
    handle = mrkit.submit(C.TOP_WORDS, mrkit.Records(TEXT), executor=redis_url, n_map=2)
    with WorkerThreads(redis_url, 1, burst=True):
        handle.step_handle(1).wait(timeout=60)  # type: ignore[attr-defined]
    follower = job_service(open_executor(redis_url, workers=1)).handle(handle.id)  # type: ignore[union-attr]
    assert follower.status().step == 2  # reading the stuck chain advanced it
    with WorkerThreads(redis_url, 1, burst=True):
        assert list(follower.wait(timeout=60)) == EXPECTED
    assert _step_submits(redis_url, f"{handle.id}-step2") == 1


def test_a_raising_reducer_in_step_2_fails_the_chain_naming_the_step(redis_url, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    handle = mrkit.submit(
        FAILING_TOP,
        mrkit.Records(TEXT),
        executor=redis_url,
        output=str(out),
        policy=mrkit.RetryPolicy(max_attempts=1),
    )
    with WorkerThreads(redis_url, 2), pytest.raises(JobFailed) as failed:
        handle.wait(timeout=60)
    message = str(failed.value)
    assert message.startswith(f"step 2 of 2 (top) of job {handle.id}: "), message
    assert "no top today" in message
    assert handle.status().state == "failed" and handle.status().error == message
    # Nothing published (a failed Redis job keeps only its _temporary/ data, for a resume).
    assert not (out / "_SUCCESS").exists() and not list(out.glob("part-*"))


def test_cancel_between_steps_stops_the_chain(redis_url, held):  # noqa: F811
    handle = mrkit.submit(C.TOP_WORDS, mrkit.Records(TEXT), executor=redis_url, n_map=2)
    with WorkerThreads(redis_url, 2, burst=True):
        handle.step_handle(1).wait(timeout=60)  # type: ignore[attr-defined]
    assert mrkit_cmd("cancel", handle.id, "--executor", redis_url).returncode == 0
    # The advance that comes late (the publisher's) finds the chain cancelled: no step 2.
    redis_chain.after_publish(
        redis_url, resolve_secret(redis_url), f"{handle.id}-step1", redis_jobs.submit_job
    )
    assert _step_submits(redis_url, f"{handle.id}-step2") == 0
    with pytest.raises(JobCancelled, match=f"job {handle.id} was cancelled during step 1"):
        handle.wait(timeout=60)
    assert handle.cancel() is False


def test_resuming_a_chain_is_refused_in_one_sentence(redis_url, held):  # noqa: F811
    handle = mrkit.submit(C.TOP_WORDS, mrkit.Records(TEXT), executor=redis_url, n_map=2)
    handle.cancel()
    with pytest.raises(mrkit.ConfigError, match="is a multi-step job, and resuming one is not supported yet"):
        mrkit.resume(handle.id, executor=redis_url)


def test_cancel_during_the_last_step_cancels_it_and_publishes_nothing(redis_url, held, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    handle = mrkit.submit(C.TOP_WORDS, mrkit.Records(TEXT), executor=redis_url, n_map=2, output=str(out))
    with WorkerThreads(redis_url, 2, burst=True):
        handle.step_handle(1).wait(timeout=60)  # type: ignore[attr-defined]
    redis_chain.after_publish(
        redis_url, resolve_secret(redis_url), f"{handle.id}-step1", redis_jobs.submit_job
    )
    assert handle.status().step == 2  # step 2 submitted; no worker runs it yet
    assert handle.cancel() is True
    assert handle.step_handle(2).status().state == "cancelled"  # type: ignore[attr-defined]
    with pytest.raises(JobCancelled, match=f"job {handle.id} was cancelled during step 2"):
        handle.wait(timeout=60)
    assert not (out / "_SUCCESS").exists() and not list(out.glob("part-*"))


def test_a_one_step_job_and_a_chain_cannot_share_an_id(redis_url):  # noqa: F811
    # Both ways: each submit refuses the id the other holds (their keys live under the same hash tag).
    mrkit.submit(C.TOP_WORDS, mrkit.Records(TEXT), executor=redis_url, n_map=2, job_id="shared-a")
    with pytest.raises(mrkit.ConfigError, match="job shared-a already exists in Redis"):
        mrkit.submit(C.WORD_COUNT, mrkit.Records(TEXT), executor=redis_url, job_id="shared-a")
    mrkit.submit(C.WORD_COUNT, mrkit.Records(TEXT), executor=redis_url, job_id="shared-b")
    with pytest.raises(mrkit.ConfigError, match="shared-b"):
        mrkit.submit(C.TOP_WORDS, mrkit.Records(TEXT), executor=redis_url, n_map=2, job_id="shared-b")
