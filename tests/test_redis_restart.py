"""Redis killed and restarted mid-job: completes with an append-only file; reported lost without one."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

import mrkit
from mrkit.errors import JobFailed
from mrkit.model.reference import reference
from tests import jobs_for_tests as J
from tests.redis_fixtures import RedisServer, mrkit_cmd, secret_env, start_worker, stop_worker  # noqa: F401

TEXT = ["the cat sat on the mat", "The dog sat", "a b c a b a"] * 30


def slow_mapper(line: str) -> Iterator[tuple[str, int]]:
    """Slow enough (~0.3 s per map task) that Redis can be restarted while maps run."""
    time.sleep(0.01)
    yield from J.words(line)


@pytest.fixture
def server(tmp_path, request) -> Iterator[RedisServer]:
    srv = RedisServer(str(tmp_path), appendonly=request.param).start()
    try:
        yield srv
    finally:
        srv.stop()


def _run_with_restart(
    server: RedisServer, out: str
) -> tuple[mrkit.coordination.redis_jobs.RedisJobHandle, list]:
    url = server.url + "?lease=2"
    job = mrkit.Job(mapper=slow_mapper, reducer=J.total)
    handle = mrkit.submit(job, mrkit.Records(TEXT), executor=url, n_map=8, n_reduce=2, output=out)
    workers = [start_worker(url, name=f"w{i}", burst=False) for i in range(2)]
    deadline = time.monotonic() + 10
    while handle.status()["tasks"]["map"]["done"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert handle.status()["state"] == "running", "the job finished before Redis could be restarted"
    server.restart(down_seconds=0.5)
    return handle, workers


@pytest.mark.parametrize("server", [True], indirect=True, ids=["appendonly"])
def test_restart_with_appendonly_completes(server, tmp_path, secret_env):  # noqa: F811
    out = str(tmp_path / "out")
    handle, workers = _run_with_restart(server, out)
    try:
        result = handle.wait(timeout=15)
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        errs = [stop_worker(w) for w in workers]
    assert sorted(result) == reference(mrkit.Job(mapper=J.words, reducer=J.total), TEXT), errs
    assert os.path.exists(os.path.join(out, "_SUCCESS"))
    assert handle.status()["state"] == "done"


@pytest.mark.parametrize("server", [False], indirect=True, ids=["no-persistence"])
def test_restart_without_persistence_reports_the_job_lost(server, tmp_path, secret_env):  # noqa: F811
    out = str(tmp_path / "out")
    handle, workers = _run_with_restart(server, out)
    try:
        st = handle.status()
        assert st["state"] == "lost" and "restarted without persistence" in st["error"]
        with pytest.raises(JobFailed, match=f"job {handle.id} was lost"):
            handle.wait(timeout=5)
        status = mrkit_cmd("status", handle.id, "--executor", server.url, check=False)
        assert status.returncode == 1 and "was lost" in status.stdout
        time.sleep(1.0)  # let the workers finish the maps they held when Redis went away
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        errs = "".join(stop_worker(w) for w in workers)
    assert f"job {handle.id} was lost" in errs, print(errs)
    assert not os.path.exists(os.path.join(out, "_SUCCESS")) and not [
        name for name in (os.listdir(out) if os.path.exists(out) else []) if name.startswith("part-")
    ]
    leftovers = [k for k in server.client().keys("*") if handle.id.encode() in k]
    assert leftovers == [], print(
        leftovers, errs
    )  # what the workers wrote after the restart was deleted again
