"""Task events of asynchronous Redis jobs (``mrkit.backends.redis.job_events``), with real
``mrkit worker`` processes and a real redis-server on 127.0.0.1: read while the job runs and from a
fresh handle, ``lost`` for a worker SIGKILLed mid-task, ``failed`` for a task process killed under its
supervisor, ``discarded`` for a duplicate delivery, expiry with the job, and no secret stored."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator

import mrkit
from mrkit.backends.redis.job_state import JobKeys
from mrkit.coordination.events import OUTCOMES, TaskEvent
from mrkit.coordination.service import job_service
from mrkit.execution.base import open_executor
from mrkit.model.reference import reference
from tests import jobs_for_tests as J
from tests.redis_fixtures import (  # noqa: F401 - fixtures
    TEST_SECRET,
    RedisServer,
    kill_fleet,
    redis_server,
    redis_url,
    secret_env,
    start_worker,
    stop_worker,
    wait_for,
    worker_stderr,
)

TEXT = ["the cat sat on the mat", "The dog sat", "a b c a b a", "it's 42 o'clock"] * 10
WORDCOUNT = mrkit.Job(mapper=J.words, reducer=J.total)


def _touch(path: str, text: str = "") -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)  # whole, or not at all


def stalling_mapper(line: str) -> Iterator[tuple[str, int]]:
    """The first attempt of map-00000 says it started (its pid in ``flag``), then waits for
    ``flag.go`` (at most 60 s)."""
    ctx = mrkit.context()
    flag = ctx.params["flag"]
    if ctx.task_id == "map-00000" and ctx.attempt == 1 and not os.path.exists(flag):
        _touch(flag, str(os.getpid()))
        deadline = time.monotonic() + 60
        while not os.path.exists(flag + ".go") and time.monotonic() < deadline:
            time.sleep(0.02)
    yield from J.words(line)


def exiting_once_mapper(line: str) -> Iterator[tuple[str, int]]:
    """The first attempt of map-00000 ends its own process (exit status 3)."""
    ctx = mrkit.context()
    if ctx.task_id == "map-00000" and ctx.attempt == 1:
        os._exit(3)
    yield from J.words(line)


def raising_once_mapper(line: str) -> Iterator[tuple[str, int]]:
    ctx = mrkit.context()
    if ctx.task_id == "map-00000" and ctx.attempt == 1:
        raise ValueError(f"first attempt refuses {line!r}\nsecond line of the message")
    yield from J.words(line)


def _stalling_job(tmp_path) -> tuple[mrkit.Job, str]:  # type: ignore[no-untyped-def]
    flag = str(tmp_path / "started")
    return mrkit.Job(mapper=stalling_mapper, reducer=J.total, params={"flag": flag}), flag


def _pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read() or 0) or None
    except FileNotFoundError:
        return None


def _fresh_handle(url: str, job_id: str):  # type: ignore[no-untyped-def]
    """A handle by id, the way another process (``mrkit status``, the dashboard) gets one."""
    service = job_service(open_executor(url, workers=1))
    assert service is not None
    return service.handle(job_id)


def _by_attempt(events: list[TaskEvent], task: str) -> dict[int, TaskEvent]:
    return {e.attempt: e for e in events if e.task == task}


def _stop(workers: list) -> list[str]:  # type: ignore[type-arg]
    for w in workers:
        if w.poll() is None:
            w.send_signal(signal.SIGTERM)
    return [stop_worker(w, timeout=20) for w in workers]


def _check_whole(events: list[TaskEvent]) -> None:
    """One event per attempt, in start order, each one ended well-formed."""
    assert len({(e.task, e.attempt) for e in events}) == len(events), events
    assert [e.start for e in events] == sorted(e.start for e in events)
    for e in events:
        assert e.outcome in OUTCOMES and e.end >= e.start > 0 and e.worker, e
        assert "\n" not in e.error


def test_events_are_read_while_the_job_runs_from_a_second_handle(redis_url, tmp_path):  # noqa: F811
    job, flag = _stalling_job(tmp_path)
    handle = mrkit.submit(job, mrkit.Records(TEXT), executor=redis_url, n_map=3, n_reduce=1)
    fleet = start_worker(redis_url, burst=False, concurrency=2, name="fleet")
    try:
        wait_for(lambda: os.path.exists(flag), what="the stalled mapper to start")
        other = _fresh_handle(redis_url, handle.id)

        def two_committed_one_running() -> list[TaskEvent] | None:
            events = other.events()
            done = [e for e in events if e.outcome == "committed"]
            return events if len(done) == 2 and any(e.end == 0 for e in events) else None

        events = wait_for(two_committed_one_running, what="2 committed maps and the stalled one running")
        running = [e for e in events if e.end == 0]
        assert [(e.task, e.attempt, e.outcome) for e in running] == [("map-00000", 1, "")]
        assert running[0].phase == "map" and running[0].start > 0 and running[0].worker.startswith("fleet/")
        assert {e.task for e in events if e.outcome == "committed"} == {"map-00001", "map-00002"}
        _touch(flag + ".go")
        result = handle.wait(timeout=60)
    finally:
        errs = _stop([fleet])
    assert sorted(result) == reference(WORDCOUNT, TEXT), errs
    events = other.events()
    _check_whole(events)
    assert sorted((e.task, e.outcome) for e in events) == [
        ("map-00000", "committed"),
        ("map-00001", "committed"),
        ("map-00002", "committed"),
        ("reduce-00000", "committed"),
    ]
    assert sum(e.records_in for e in events if e.phase == "map") == len(TEXT)
    assert [e.to_dict() for e in handle.events()] == [e.to_dict() for e in events]
    logs = list(handle.logs())  # the start script writes the "started" lines logs() showed before
    assert any(" map-00000 a1 [fleet/" in line and line.endswith("] event: started") for line in logs), logs
    assert any("committed in" in line for line in logs) and any("event: done in" in line for line in logs)


def test_a_worker_killed_mid_task_is_lost_and_its_retry_committed(redis_url, tmp_path):  # noqa: F811
    job, flag = _stalling_job(tmp_path)
    handle = mrkit.submit(job, mrkit.Records(TEXT), executor=redis_url, n_map=2, n_reduce=1)
    doomed = start_worker(redis_url, burst=False, name="doomed")
    rescuer = None
    try:
        wait_for(lambda: _pid(flag), what="the mapper to start")
        assert kill_fleet(doomed) >= 2  # supervisor and task process, as abruptly as a lost machine
        rescuer = start_worker(redis_url, burst=False, name="rescuer")
        result = handle.wait(timeout=60)
    finally:
        errs = _stop([w for w in (doomed, rescuer) if w is not None])
    assert sorted(result) == reference(WORDCOUNT, TEXT), errs
    events = _fresh_handle(redis_url, handle.id).events()
    _check_whole(events)
    attempts = _by_attempt(events, "map-00000")
    assert attempts[1].outcome == "lost" and attempts[1].worker == "doomed", attempts
    assert "liveness beat" in attempts[1].error and "the worker died" in attempts[1].error
    assert attempts[1].end > attempts[1].start and attempts[1].records_in == 0
    assert attempts[2].outcome == "committed" and attempts[2].worker == "rescuer", attempts
    assert attempts[2].start >= attempts[1].end - 1  # retried after the loss was seen
    assert len(attempts) == 2 and result.counters["map.attempts_lost"] == 1


def test_a_task_that_ends_its_process_is_failed_by_the_supervisor(redis_url):  # noqa: F811
    job = mrkit.Job(mapper=exiting_once_mapper, reducer=J.total)
    handle = mrkit.submit(job, mrkit.Records(TEXT), executor=redis_url, n_map=2, n_reduce=1)
    fleet = start_worker(redis_url, burst=False, name="fleet")
    try:
        result = handle.wait(timeout=60)
    finally:
        errs = _stop([fleet])
    assert sorted(result) == reference(WORDCOUNT, TEXT), errs
    attempts = _by_attempt(_fresh_handle(redis_url, handle.id).events(), "map-00000")
    # The supervisor reports it (a poison task counts against max_attempts), from the attempt's
    # running entry: its start and worker.
    assert attempts[1].outcome == "failed" and attempts[1].worker == "fleet", attempts
    assert attempts[1].error == "WorkerCrashed: the task ended its worker: exit code 3"
    assert attempts[1].end > attempts[1].start > 0
    assert attempts[2].outcome == "committed" and len(attempts) == 2


def test_a_duplicate_delivery_is_discarded(redis_url, redis_server, tmp_path):  # noqa: F811
    job, flag = _stalling_job(tmp_path)
    handle = mrkit.submit(job, mrkit.Records(TEXT), executor=redis_url, n_map=1, n_reduce=1)
    client = redis_server.client()
    k = JobKeys(handle.id)
    fleet = start_worker(redis_url, burst=False, concurrency=2, name="fleet")
    try:
        wait_for(lambda: os.path.exists(flag), what="the first attempt to start")
        [(_, fields)] = client.xrange(k.tasks)
        client.xadd(k.tasks, fields)  # the same signed entry again: a duplicate delivery
        result = handle.wait(timeout=60)  # the duplicate's attempt commits; the job is published
        _touch(flag + ".go")  # now the first attempt finishes, after its job ended

        def first_ended() -> dict[int, TaskEvent] | None:
            attempts = _by_attempt(handle.events(), "map-00000")
            return attempts if attempts.get(1, TaskEvent("", "", 0, 0)).end else None

        attempts = wait_for(first_ended, what="the first attempt's event")
    finally:
        errs = _stop([fleet])
    assert sorted(result) == reference(WORDCOUNT, TEXT), errs
    assert attempts[2].outcome == "committed" and attempts[1].outcome == "discarded", attempts
    assert attempts[1].records_in == len(TEXT)  # it did the work; its output was thrown away
    assert attempts[1].worker != attempts[2].worker
    ttl = client.pttl(k.events)  # written after the job ended: it still expires with the job
    assert 0 < ttl <= 86400 * 1000
    _check_whole(handle.events())


def test_events_expire_with_the_job(redis_url, redis_server):  # noqa: F811
    handle = mrkit.submit(WORDCOUNT, mrkit.Records(TEXT), executor=redis_url + "?ttl=3", n_map=2, n_reduce=1)
    client = redis_server.client()
    k = JobKeys(handle.id)
    fleet = start_worker(redis_url, burst=True, name="fleet")
    try:
        handle.wait(timeout=60)
    finally:
        errs = _stop([fleet])
    events = handle.events()
    assert [e.outcome for e in events] == ["committed"] * 3, errs
    assert 0 < client.pttl(k.events) <= 3000 and not client.exists(k.running)
    wait_for(lambda: not client.exists(k.events), timeout=10, what="the events to expire")
    assert handle.events() == [] and _fresh_handle(redis_url, handle.id).events() == []
    assert not client.keys(f"mrkit:{{{handle.id}}}:*")


def test_a_cancelled_job_keeps_its_events_until_its_keys_expire(redis_url, redis_server, tmp_path):  # noqa: F811
    job, flag = _stalling_job(tmp_path)
    handle = mrkit.submit(job, mrkit.Records(TEXT), executor=redis_url + "?ttl=600", n_map=1, n_reduce=1)
    client = redis_server.client()
    k = JobKeys(handle.id)
    fleet = start_worker(redis_url, burst=False, name="fleet")
    try:
        wait_for(lambda: os.path.exists(flag), what="the attempt to start")
        assert handle.cancel()
        _touch(flag + ".go")
        attempts = wait_for(lambda: [e for e in handle.events() if e.end], what="the running attempt's event")
    finally:
        errs = _stop([fleet])
    # It won its commit while the job was cancelled: kept, for a resume.
    assert [(e.task, e.attempt, e.outcome) for e in attempts] == [("map-00000", 1, "committed")], errs
    assert 0 < client.ttl(k.events) <= 600


def test_no_secret_is_stored_in_the_events(tmp_path, secret_env):  # noqa: F811
    password = "pw-that-must-never-show-7f3a"
    server = RedisServer(str(tmp_path), extra=["--requirepass", password]).start()
    url = f"redis://:{password}@127.0.0.1:{server.port}/0"
    try:
        job = mrkit.Job(mapper=raising_once_mapper, reducer=J.total)
        handle = mrkit.submit(job, mrkit.Records(TEXT), executor=url, n_map=2, n_reduce=1)
        fleet = start_worker(url, burst=True, name="fleet")
        try:
            handle.wait(timeout=60)
        finally:
            errs = _stop([fleet])
        events = handle.events()
        failed = [e for e in events if e.outcome == "failed"]
        assert len(failed) == 1 and failed[0].task == "map-00000", (events, errs)
        # It names its split, whose URL carries the password: redacted as everywhere else.
        assert failed[0].error.startswith(f"mapper on redis://:***@127.0.0.1:{server.port}/0#")
        assert "record 0: ValueError: first attempt refuses 'the cat sat on the mat'" in failed[0].error
        assert "\n" not in failed[0].error and "second line of the message" in failed[0].error
        assert "raising_once_mapper" in failed[0].traceback  # where it failed, for the failure page
        import redis

        client = redis.Redis.from_url(url)
        k = JobKeys(handle.id)
        stored = [fields[b"e"] for _, fields in client.xrange(k.events)]
        stored += list(client.hgetall(k.running).values())
        assert len(stored) == len(events) == 4
        for raw in stored:
            json.loads(raw)  # JSON, never pickle
            for secret in (password, TEST_SECRET, url):
                assert secret.encode() not in raw
    finally:
        server.stop()
