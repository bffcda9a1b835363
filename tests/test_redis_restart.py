"""Redis killed and restarted mid-job: completes with an append-only file; reported lost without one."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

import mrkit
from mrkit.errors import JobFailed
from mrkit.model.reference import reference
from tests import jobs_for_tests as J
from tests.redis_fixtures import (  # noqa: F401 - fixtures
    MRKIT,
    RedisServer,
    mrkit_cmd,
    secret_env,
    start_worker,
    stop_worker,
    wait_for,
    worker_stderr,
)

TEXT = ["the cat sat on the mat", "The dog sat", "a b c a b a"] * 30


HERE = os.path.dirname(os.path.abspath(__file__))


def slow_mapper(line: str) -> Iterator[tuple[str, int]]:
    """Slow enough (~0.3 s per map task) that Redis can be restarted while maps run."""
    time.sleep(0.01)
    yield from J.words(line)


SLOW = mrkit.Job(mapper=slow_mapper, reducer=J.total)


@pytest.fixture
def server(tmp_path, request) -> Iterator[RedisServer]:
    srv = RedisServer(str(tmp_path), appendonly=request.param).start()
    try:
        yield srv
    finally:
        srv.stop()


def _run_with_restart(server: RedisServer, out: str) -> tuple[mrkit.backends.redis.jobs.RedisJobHandle, list]:
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
        result = handle.wait(timeout=60)
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
        # The workers finish the maps they held when Redis went away, then find the job gone.
        wait_for(
            lambda: any(f"job {handle.id} was lost" in worker_stderr(w) for w in workers),
            timeout=60,
            what="a worker to report the job lost",
        )
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


def _blocking_run_with_restart(
    server: RedisServer, tmp_path
) -> tuple[subprocess.CompletedProcess[str], str, str]:
    """``mrkit run`` on the fleet (a subprocess); Redis is killed and restarted once two of its eight
    map tasks committed."""
    url = server.url + "?lease=2"
    src = tmp_path / "in"
    src.mkdir()
    for i in range(8):  # one map task per file
        (src / f"part-{i}.txt").write_text("\n".join(TEXT) + "\n")  # ~1 s per map task
    out = str(tmp_path / "out")
    job_ref = f"{os.path.join(HERE, 'test_redis_restart.py')}:SLOW"
    workers = [start_worker(url, name=f"w{i}", burst=False) for i in range(2)]
    run = subprocess.Popen(
        [*MRKIT, "run", job_ref, str(src), "-N", "8", "-M", "2", "-o", out, "--executor", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        client = server.client()
        wait_for(
            lambda: len([k for k in client.keys("*") if k.endswith(b"/COMMIT")]) >= 2,
            timeout=60,
            what="two map commits",
        )
        client.close()
        assert run.poll() is None, "the job finished before Redis could be restarted"
        server.restart(down_seconds=0.5)
        stdout, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
        for w in workers:
            w.send_signal(signal.SIGTERM)
        errs = "".join(stop_worker(w) for w in workers)
    return subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr), out, errs


@pytest.mark.parametrize("server", [True], indirect=True, ids=["appendonly"])
def test_blocking_run_survives_a_restart_with_appendonly(server, tmp_path, secret_env):  # noqa: F811
    proc, out, errs = _blocking_run_with_restart(server, tmp_path)
    assert proc.returncode == 0, (proc.stderr, errs)
    assert sorted(mrkit.read_output(out)) == reference(mrkit.Job(mapper=J.words, reducer=J.total), TEXT * 8)


@pytest.mark.parametrize("server", [False], indirect=True, ids=["no-persistence"])
def test_blocking_run_fails_clearly_when_redis_loses_its_data(server, tmp_path, secret_env):  # noqa: F811
    proc, out, errs = _blocking_run_with_restart(server, tmp_path)
    assert proc.returncode == 1, (proc.stdout, proc.stderr, errs)
    # Whichever notices first says so: the executor (its task stream is gone) or the driver's epoch
    # check (the job's state is gone); never "fenced", since no newer driver exists.
    lost = ("lost this executor's task stream", "lost the state of job")
    assert any(phrase in proc.stderr for phrase in lost) and "fenced" not in proc.stderr, proc.stderr
    assert not os.path.exists(os.path.join(out, "_SUCCESS")) and not [
        name for name in (os.listdir(out) if os.path.exists(out) else []) if name.startswith("part-")
    ]


@pytest.mark.parametrize("server", [False], indirect=True, ids=["frozen"])
def test_a_frozen_redis_times_out_instead_of_hanging(server, tmp_path, secret_env):  # noqa: F811
    """SIGSTOP redis-server: connections stay open but nothing answers. Commands time out (here after
    2 s, given in the URL; 60 s by default) instead of waiting forever, and the fleet recovers once
    Redis thaws."""
    import redis

    from mrkit.backends.redis.job_handle import RedisJobHandle
    from mrkit.storage.redis import SOCKET_TIMEOUT, connect

    assert connect(server.url).connection_pool.connection_kwargs["socket_timeout"] == SOCKET_TIMEOUT
    url = server.url + "?lease=2&socket_timeout=2"
    handle = mrkit.submit(SLOW, mrkit.Records(TEXT), executor=url, n_map=8, n_reduce=2)
    worker = start_worker(url, name="w0", burst=False)
    assert server.proc is not None
    try:
        wait_for(lambda: handle.status()["tasks"]["map"]["done"] >= 1, timeout=60, what="a map commit")
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(redis.TimeoutError):
                RedisJobHandle(url, handle.id).status()
            assert time.monotonic() - started < 30
            wait_for(lambda: "unreachable" in worker_stderr(worker), timeout=60, what="the worker's notice")
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        result = handle.wait(timeout=120)
        worker.send_signal(signal.SIGTERM)
    finally:
        err = stop_worker(worker)
    assert sorted(result) == reference(mrkit.Job(mapper=J.words, reducer=J.total), TEXT), err
    assert "reconnected to Redis" in err
