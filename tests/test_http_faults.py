"""HTTP workers that die, hang, are not up, refuse us, cannot start, or lose their driver.

Each test uses real processes on 127.0.0.1 and checks two things: the job's output is still exactly
the reference's (or the job fails with a clear error, when nothing can run it), and the executor
said what happened on the ``mrkit.http`` logger.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import mrkit
from mrkit.backends.http.executor import HttpExecutor, HttpTimeouts
from mrkit.coordination.plan import RetryPolicy
from mrkit.errors import AuthenticationError, JobFailed, WorkerLost
from mrkit.model.reference import reference
from tests.http_fixtures import (  # noqa: F401 - fixtures
    ROOT,
    CliWorkers,
    call_spec,
    cli_workers_fixture,
    free_port,
    get_json,
    kill_worker_once_mapper,
    pid_alive,
    read_line,
    stop_once_mapper,
    wait_until,
    worker_env,
    write_secret,
)
from tests.jobs_for_tests import kill_once_mapper, total, words

RECORDS = [f"line {i} of the text with words {i % 13}" for i in range(400)]
# What the fault mappers compute, minus their side effects (the oracle runs outside any task).
PLAIN = mrkit.Job(mapper=words, reducer=total)
FAST = HttpTimeouts(health_interval=0.2, health_timeout=0.5, health_misses=2, unreachable=2.0)


def _records(marker_word: str) -> list[str]:
    records = list(RECORDS)
    records[150] = f"{marker_word} {records[150]}"
    return records


def test_a_task_process_killed_mid_task_is_replaced_and_its_worker_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # User code runs in the worker's task process: SIGKILL (from outside, as far as anyone can tell)
    # loses the attempt, the worker replaces the task process, and the worker itself stays up.
    caplog.set_level(logging.WARNING, logger="mrkit.http")
    marker = tmp_path / "killed"
    records = _records("killme")
    job = mrkit.Job(mapper=kill_once_mapper, reducer=total, combiner=total)
    executor = HttpExecutor(workers=2, timeouts=FAST)
    try:
        executor.warm_up()
        servers = sorted(w["pid"] for w in executor.worker_info())
        result = mrkit.run(
            job,
            mrkit.Records(records),
            executor=executor,
            n_map=4,
            n_reduce=2,
            params={"marker": str(marker)},
            quiet=True,
        )
        killed = int(marker.read_text())
        assert killed not in servers and not pid_alive(killed)
        assert sorted(w["pid"] for w in executor.worker_info()) == servers
    finally:
        executor.shutdown()
    assert sorted(result) == reference(PLAIN, records)
    assert result.counters["map.attempts_lost"] == 1
    assert "its task process was killed by SIGKILL (it started a new one)" in caplog.text


def test_a_driver_started_worker_killed_between_jobs_is_restarted_and_nothing_is_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="mrkit.http")
    executor = HttpExecutor(workers=1, timeouts=FAST)
    try:
        first = mrkit.run(PLAIN, mrkit.Records(RECORDS), executor=executor, n_map=2, n_reduce=1, quiet=True)
        killed = executor.worker_info()[0]["pid"]
        os.kill(killed, signal.SIGKILL)
        assert wait_until(lambda: not pid_alive(killed), timeout=10)
        second = mrkit.run(PLAIN, mrkit.Records(RECORDS), executor=executor, n_map=2, n_reduce=1, quiet=True)
        assert executor.worker_info()[0]["pid"] not in (None, killed)
    finally:
        executor.shutdown()
    assert sorted(first) == sorted(second) == reference(PLAIN, RECORDS)
    # Usually the dead connection is noticed before a task is sent on it ("restarting it"); on a
    # loaded machine the kernel may deliver its end-of-file just after the send, and the attempt is
    # then lost and retried ("restarting the worker"). Either way the output is exact.
    assert second.counters["map.attempts_lost"] <= 1 and second.counters["map.attempts_failed"] == 0
    assert "was killed by SIGKILL" in caplog.text and "restarting" in caplog.text


def test_a_user_started_worker_killed_mid_task_sends_the_task_elsewhere(
    cli_workers: CliWorkers, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mrkit.http")
    urls = [cli_workers.start()[1] for _ in range(2)]
    marker = tmp_path / "killed"
    records = _records("killme")
    job = mrkit.Job(mapper=kill_worker_once_mapper, reducer=total, combiner=total)
    executor = HttpExecutor(urls, secret_file=str(write_secret(tmp_path)), timeouts=FAST)
    try:
        result = mrkit.run(
            job,
            mrkit.Records(records),
            executor=executor,
            n_map=4,
            n_reduce=2,
            params={"marker": str(marker)},
            quiet=True,
        )
    finally:
        executor.shutdown()
    assert sorted(result) == reference(PLAIN, records)
    assert result.counters["map.attempts_lost"] == 1
    assert "closed the connection mid-attempt" in caplog.text and "next free worker" in caplog.text
    assert sum(p.poll() is None for p in cli_workers.procs) == 1  # the killed one stays dead
    task_process = int(marker.read_text().split()[1])
    assert wait_until(lambda: not pid_alive(task_process), timeout=5)  # it went with its worker


@pytest.mark.parametrize(
    ("whom", "why", "restart"),
    [
        ("worker", "stopped answering /health", "restarting the worker"),
        ("task process", "its task process was stopped for 1s", "it started a new one"),
    ],
)
def test_a_hung_worker_is_detected_by_health_checks_killed_and_restarted(
    whom: str, why: str, restart: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mrkit.http")
    marker = tmp_path / "frozen"
    records = _records("hangme")
    job = mrkit.Job(mapper=stop_once_mapper, reducer=total, combiner=total)
    executor = HttpExecutor(workers=2, timeouts=FAST)
    started = time.monotonic()
    try:
        result = mrkit.run(
            job,
            mrkit.Records(records),
            executor=executor,
            n_map=4,
            n_reduce=2,
            params={"marker": str(marker), "whom": whom},
            policy=RetryPolicy(speculative=False),
            quiet=True,
        )
    finally:
        executor.shutdown()
        if marker.exists() and pid_alive(int(marker.read_text())):
            os.kill(int(marker.read_text()), signal.SIGKILL)
    assert sorted(result) == reference(PLAIN, records)
    # One attempt lost: the one the frozen process held. Usually the map task that froze it; once,
    # on a loaded CI machine with whom="worker", it was reduce-00001 and no map attempt was lost
    # (not explained yet: the closing note of 2026-12-06 says so). Either way exactly one.
    assert result.counters["map.attempts_lost"] + result.counters["reduce.attempts_lost"] == 1
    assert why in caplog.text and restart in caplog.text
    assert time.monotonic() - started < 15
    assert wait_until(lambda: not pid_alive(int(marker.read_text())), timeout=5)


def test_an_attempt_past_task_timeout_is_lost_and_its_worker_restarted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.jobs_for_tests import straggler_mapper

    caplog.set_level(logging.WARNING, logger="mrkit.http")
    records = ["slow " + r if i == 0 else r for i, r in enumerate(RECORDS)]
    job = mrkit.Job(mapper=straggler_mapper, reducer=total)
    executor = HttpExecutor(workers=2, timeouts=HttpTimeouts(health_interval=0.2, task=1.0))
    try:
        # n_map=2: record 0 ("slow ...") is in map-00000; put it in map-00001 by rotating.
        rotated = records[200:] + records[:200]
        result = mrkit.run(
            job,
            mrkit.Records(rotated),
            executor=executor,
            n_map=2,
            n_reduce=1,
            params={"sleep": 30.0},
            policy=RetryPolicy(speculative=False),
            quiet=True,
        )
    finally:
        executor.shutdown()
    assert sorted(result) == reference(PLAIN, rotated)
    assert result.counters["map.attempts_lost"] == 1
    assert "past task_timeout=1s" in caplog.text


def test_a_worker_that_is_not_up_is_skipped_and_probed(
    cli_workers: CliWorkers, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mrkit.http")
    _, url = cli_workers.start()
    dead = f"127.0.0.1:{free_port()}"
    executor = HttpExecutor([dead, url], secret_file=str(write_secret(tmp_path)), timeouts=FAST)
    try:
        result = mrkit.run(PLAIN, mrkit.Records(RECORDS), executor=executor, n_map=6, n_reduce=2, quiet=True)
    finally:
        executor.shutdown()
    assert sorted(result) == reference(PLAIN, RECORDS)
    assert result.counters["map.attempts_lost"] == 0  # nothing was sent to it, so nothing was lost
    assert f"HTTP worker {dead} is not answering (ConnectionRefusedError" in caplog.text


def test_no_reachable_worker_fails_the_job_in_bounded_time(tmp_path: Path) -> None:
    executor = HttpExecutor(
        [f"127.0.0.1:{free_port()}"], secret_file=str(write_secret(tmp_path)), timeouts=FAST
    )
    started = time.monotonic()
    try:
        with pytest.raises(
            JobFailed, match="no HTTP worker answered at 127.0.0.1:[0-9]+ within 3s .*Connection"
        ):
            mrkit.run(
                PLAIN,
                mrkit.Records(RECORDS),
                executor=executor,
                n_map=2,
                quiet=True,
            )
    finally:
        executor.shutdown()
    assert time.monotonic() - started < 6  # not "lost 9 times" after half a minute


def test_a_worker_with_another_secret_refuses_us_and_runs_nothing(
    cli_workers: CliWorkers, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, url = cli_workers.start()
    port = int(url.rsplit(":", 1)[1])
    executor = HttpExecutor([url], secret=b"another-secret-0123456789", timeouts=FAST)
    try:
        with pytest.raises(AuthenticationError, match="every HTTP worker refused .*bad signature"):
            mrkit.run(
                PLAIN,
                mrkit.Records(RECORDS),
                executor=executor,
                quiet=True,
            )
    finally:
        executor.shutdown()
    status = get_json(port, "/status")[1]
    assert status["completed"] == status["failed"] == status["running"] == 0 and status["refused"] >= 1


@pytest.mark.parametrize(
    ("executable", "why"),
    [("/bin/false", "exited with code 1 before it was ready"), ("/nonexistent/python", "could not be run")],
)
def test_workers_that_cannot_start_fail_the_job(
    monkeypatch: pytest.MonkeyPatch, executable: str, why: str
) -> None:
    monkeypatch.setattr(sys, "executable", executable)
    executor = HttpExecutor(workers=1)
    started = time.monotonic()
    try:
        with pytest.raises(JobFailed, match=f"cannot run: 3 HTTP workers in a row failed to start .*{why}"):
            mrkit.run(PLAIN, mrkit.Records(RECORDS), executor=executor, quiet=True)
    finally:
        executor.shutdown()
    assert time.monotonic() - started < 10


DRIVER = textwrap.dedent("""
    import json, sys, time
    from mrkit.backends.http.executor import HttpExecutor
    from tests.http_fixtures import call_spec, touch
    executor = HttpExecutor(workers=2)
    executor.warm_up()
    executor.submit(call_spec(touch, sys.argv[1], 60.0))  # one worker is busy for a minute
    time.sleep(0.5)
    print(json.dumps([w["pid"] for w in executor.worker_info()]), flush=True)
    time.sleep(120)
""")


def test_workers_exit_when_their_driver_is_sigkilled_even_mid_task(tmp_path: Path) -> None:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    driver = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "ran")],
        stdout=subprocess.PIPE,
        env=worker_env(),
        cwd=ROOT,
    )
    try:
        pids = json.loads(read_line(driver, timeout=30))
        assert len(pids) == 2 and all(pid_alive(pid) for pid in pids)
        driver.kill()
        driver.wait(timeout=10)
        assert wait_until(lambda: not any(pid_alive(pid) for pid in pids), timeout=5), pids
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        assert driver.stdout is not None
        driver.stdout.close()
    assert not (tmp_path / "ran").exists()  # the busy one died mid-task


# -- transfers that stop midway ---------------------------------------------------------------------

BIG = "x" * (8 << 20)  # far more than a frozen worker's socket buffers take in


def test_a_driver_started_worker_that_stops_reading_a_request_is_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="mrkit.http")
    executor = HttpExecutor(workers=1, timeouts=FAST)
    try:
        executor.warm_up()
        frozen = executor.worker_info()[0]["pid"]
        os.kill(frozen, signal.SIGSTOP)
        result = executor.submit(call_spec(len, BIG)).result(timeout=60)
        assert result.ok and pickle.loads(result.output) == [len(BIG)]
        assert executor.worker_info()[0]["pid"] != frozen
    finally:
        executor.shutdown()
    assert wait_until(lambda: not pid_alive(frozen), timeout=10)
    assert "accepted no bytes of the request" in caplog.text and "restarting it" in caplog.text


def test_a_user_started_worker_that_stops_reading_a_request_fails_the_attempt_in_bounded_time(
    cli_workers: CliWorkers, tmp_path: Path
) -> None:
    proc, url = cli_workers.start()
    executor = HttpExecutor([url], secret_file=str(write_secret(tmp_path)), timeouts=FAST)
    try:
        executor.warm_up()
        proc.send_signal(signal.SIGSTOP)
        future = executor.submit(call_spec(len, BIG))
        with pytest.raises(WorkerLost, match="no HTTP worker has answered for 2s"):
            future.result(timeout=60)
    finally:
        executor.shutdown()
        proc.send_signal(signal.SIGCONT)


class _StallingHandler(BaseHTTPRequestHandler):
    """Answers /health, then starts an answer to POST /task and stops sending midway."""

    protocol_version = "HTTP/1.1"
    release = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        self.wfile.write(b'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{"task_id":')
        self.wfile.flush()
        self.release.wait(timeout=60)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def test_an_answer_that_stops_midway_loses_the_attempt_although_health_answers(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StallingHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    executor = HttpExecutor(
        [f"127.0.0.1:{server.server_port}"], secret_file=str(write_secret(tmp_path)), timeouts=FAST
    )
    started = time.monotonic()
    try:
        future = executor.submit(call_spec(len, "abc"))
        with pytest.raises(WorkerLost, match="stalled: its answer stopped arriving midway"):
            future.result(timeout=30)
    finally:
        executor.shutdown()
        _StallingHandler.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert time.monotonic() - started < 20
