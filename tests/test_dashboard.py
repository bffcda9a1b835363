"""The web dashboard over HTTP (a real uvicorn server on 127.0.0.1): what it serves, what it refuses.

The browser tests (tests/test_dashboard_browser.py) drive the same pages in headless Chromium.
"""

from __future__ import annotations

import html
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import mrkit
from mrkit.coordination.registry import RegistryJobHandle
from mrkit.dashboard.server import DashboardServer, is_loopback
from mrkit.dashboard.sources import open_sources
from mrkit.errors import ConfigError
from tests.dashboard_fixtures import csrf_of, get, post, registry_running, submit_paced
from tests.redis_fixtures import RedisServer, wait_for

LINES = [f"alpha beta gamma {i}" for i in range(40)]


@pytest.fixture
def board() -> Iterator[DashboardServer]:
    server = DashboardServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def finished() -> str:
    """A run in the registry whose mapper failed once with markup in its message."""
    job = mrkit.Job(mapper=_poisoned, reducer=lambda k, v: sum(v), name="dashboard-finished")
    with pytest.raises(mrkit.JobFailed):
        mrkit.run(job, mrkit.Records(["a b", "poison"]), executor="inline", quiet=True, n_map=2)
    from mrkit.coordination.registry import list_runs

    runs = list_runs()
    return next(st.id for st in runs if st.name == "dashboard-finished")


def _poisoned(line: str) -> Iterator[tuple[str, int]]:
    if "poison" in line:
        raise ValueError("cannot map <script>alert(1)</script>")
    yield from ((w, 1) for w in line.split())


def test_the_pages_and_json_of_a_finished_run(board: DashboardServer, finished: str) -> None:
    status, body, headers = get(board.url + "api/jobs")
    assert status == 200
    local = next(s for s in json.loads(body)["sources"] if s["source"] == "local")
    row = next(j for j in local["jobs"] if j["id"] == finished)
    assert row["state"] == "failed" and "<script>" in row["error"]  # data stays data in JSON
    status, body, _ = get(board.url + f"api/jobs/local/{finished}")
    view = json.loads(body)
    assert status == 200 and view["status"]["state"] == "failed"
    assert {f["outcome"] for f in view["failures"]} == {"failed"}
    assert "ValueError" in view["failures"][0]["traceback"]  # the worker's traceback travels
    assert any(t["state"] == "failed" for t in view["tasks"])
    status, page, headers = get(board.url + f"jobs/local/{finished}")
    assert status == 200 and "<script>alert" not in page
    assert "script-src 'self'" in headers["content-security-policy"]
    status, svg, headers = get(board.url + f"jobs/local/{finished}/timeline.svg")
    assert status == 200 and headers["content-type"].startswith("image/svg+xml")
    assert "<script>" not in svg and "&lt;script&gt;" in svg


def test_an_unknown_job_or_source_is_one_sentence_not_a_traceback(board: DashboardServer) -> None:
    status, page, _ = get(board.url + "jobs/local/no-such-job")
    assert status == 404 and "there is no job 'no-such-job'" in html.unescape(page)
    assert "Traceback" not in page
    status, body, _ = get(board.url + "api/jobs/e7/x")
    assert status == 404 and json.loads(body) == {
        "error": "there is no source 'e7' here (the sources are local)"
    }
    status, body, _ = get(board.url + "api/jobs/local/..%2F..%2Fetc")
    assert status == 404 and "Traceback" not in body


def test_a_live_feed_sends_the_job_until_it_ends(board: DashboardServer, finished: str) -> None:
    import urllib.request

    with urllib.request.urlopen(board.url + f"api/jobs/local/{finished}/stream", timeout=10) as feed:
        first = feed.readline().decode()
        assert first.startswith("data: ")
        assert json.loads(first[6:])["status"]["state"] == "failed"
        assert feed.readline() == b"\n"
        assert feed.read() == b""  # an ended job: the feed closes after its final state


def test_the_host_check_refuses_a_rebound_name(board: DashboardServer) -> None:
    status, body, _ = get(board.url + "api/jobs", headers={"Host": f"evil.example:{board.port}"})
    assert status == 421 and "loopback only" in body
    assert get(board.url + "api/jobs", headers={"Host": f"localhost:{board.port}"})[0] == 200


def test_a_token_is_required_when_given() -> None:
    token = "t" * 24
    server = DashboardServer(token=token).start()
    try:
        base = f"http://127.0.0.1:{server.port}/"
        status, body, _ = get(base + "api/jobs")
        assert status == 401 and "needs its token" in body
        assert get(base + "api/jobs?token=wrong")[0] == 401
        status, _, headers = get(base + f"jobs/local/x?token={token}&a=1")
        assert status == 303 and headers["location"] == "/jobs/local/x?a=1"
        cookie = headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        assert get(base + "api/jobs", headers={"Cookie": cookie.split(";")[0]})[0] == 200
        assert get(base + "api/jobs", headers={"Authorization": f"Bearer {token}"})[0] == 200
    finally:
        server.stop()


def test_binding_beyond_loopback_needs_a_token() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
    with pytest.raises(ConfigError, match="beyond loopback"):
        DashboardServer(host="0.0.0.0")  # refused before anything binds


def test_cancel_needs_the_pages_header_and_own_origin_then_stops_the_run(
    board: DashboardServer, tmp_path: Path
) -> None:
    handle = submit_paced(tmp_path, LINES, each=0.2, output=str(tmp_path / "out"), n_map=8)
    wait_for(lambda: registry_running(handle.id), what="the run to start")
    page = get(board.url + f"jobs/local/{handle.id}")[1]
    url = board.url + f"api/jobs/local/{handle.id}/cancel"
    assert post(url)[0] == 403  # no header: a cross-site form
    evil = {"X-Mrkit-Csrf": csrf_of(page), "Origin": "http://evil.example"}
    assert post(url, evil)[0] == 403
    assert post(url, {"X-Mrkit-Csrf": "guess"})[0] == 403
    status, body = post(url, {"X-Mrkit-Csrf": csrf_of(page), "Origin": board.url.rstrip("/")})
    assert status == 200 and body["cancelled"] is True
    with pytest.raises(mrkit.JobCancelled):
        handle.wait(30)
    assert handle.status().state == "cancelled"
    published = [p.name for p in (tmp_path / "out").iterdir() if p.name != "_temporary"]
    assert published == []  # nothing published (a named run keeps its state for a resume)
    assert RegistryJobHandle(handle.id).status().state == "cancelled"


def test_a_backend_that_is_down_is_one_sentence_and_its_password_never_shows(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    url = f"redis://:hunter2-secret@127.0.0.1:{port}/0"
    server = DashboardServer(open_sources([url])).start()
    try:
        status, body, _ = get(server.url + "api/jobs")
        assert status == 200 and "hunter2" not in body
        down = next(s for s in json.loads(body)["sources"] if s["source"] == "e0")
        assert down["error"].startswith(f"redis://:***@127.0.0.1:{port}/0 could not be read")
        assert "\n" not in down["error"]
        status, page, _ = get(server.url)
        assert status == 200 and "hunter2" not in page
        status, page, _ = get(server.url + "jobs/e0/some-job")
        assert status == 404 and "could not be read" in page and "hunter2" not in page
    finally:
        server.stop()


def test_a_redis_job_shows_with_its_progress(tmp_path: Path) -> None:
    from tests.redis_fixtures import start_worker, stop_worker

    redis = RedisServer(str(tmp_path)).start()
    fleet = start_worker(redis.url, burst=False, concurrency=2, new_session=True)
    server = DashboardServer(open_sources([redis.url])).start()
    try:
        handle = submit_paced(tmp_path, LINES, each=0.05, executor=redis.url, n_map=4)
        handle.wait(60)
        status, body, _ = get(server.url + f"api/jobs/e0/{handle.id}")
        view = json.loads(body)
        assert status == 200 and view["status"]["state"] == "done"
        map_phase = view["phases"][0]
        assert map_phase["name"] == "map" and map_phase["done"] == map_phase["total"] >= 1
        rows = json.loads(get(server.url + "api/jobs")[1])["sources"]
        assert handle.id in {j["id"] for s in rows if s["source"] == "e0" for j in s["jobs"]}
        # A job Redis does not know (never submitted, or its keys expired): one sentence.
        status, page, _ = get(server.url + "jobs/e0/no-such-job")
        assert status == 404 and "(never submitted, or expired)" in page and "Traceback" not in page
        # One whose id dates from before Redis started: lost, and its page says why in a sentence.
        status, body, _ = get(server.url + "api/jobs/e0/wordcount-20200101-000000-0000000000")
        lost = json.loads(body)["status"]
        assert status == 200 and lost["state"] == "lost" and "has no record of it" in lost["error"]
    finally:
        server.stop()
        os.killpg(fleet.pid, signal.SIGTERM)
        stop_worker(fleet)
        redis.stop()


def test_run_with_dashboard_serves_the_run_and_prints_its_page(tmp_path: Path) -> None:
    script = tmp_path / "run.py"
    script.write_text(
        "import sys, urllib.request, mrkit\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from tests.jobs_for_tests import WORDCOUNT\n"
        "mrkit.run(WORDCOUNT, mrkit.Records(['a b a']), executor='inline', dashboard=True, quiet=True)\n",
        encoding="utf-8",
    )
    root = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run([sys.executable, str(script), root], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stderr.splitlines() if "dashboard of job" in x)
    assert line.startswith("mrkit: dashboard of job ") and " at http://127.0.0.1:" in line
    assert "/jobs/local/" in line


def test_mrkit_dashboard_serves_until_sigterm_and_exits_0(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "mrkit", "dashboard", "--port", "0"]
    with subprocess.Popen(argv, stderr=subprocess.PIPE, text=True) as proc:
        try:
            line = proc.stderr.readline() if proc.stderr else ""
            assert line.startswith("mrkit: dashboard at http://127.0.0.1:"), line
            url = line.split(" at ", 1)[1].split(" ", 1)[0]
            assert get(url + "api/jobs")[0] == 200
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def test_a_token_file_that_is_too_short_is_refused(tmp_path: Path) -> None:
    short = tmp_path / "token"
    short.write_text("abc\n")
    done = subprocess.run(
        [sys.executable, "-m", "mrkit", "dashboard", "--token-file", str(short)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "16 characters or more" in done.stderr.splitlines()[0]


def test_submit_on_a_fleet_refuses_dashboard_true(tmp_path: Path) -> None:
    redis = RedisServer(str(tmp_path)).start()
    try:
        with pytest.raises(ConfigError, match="mrkit dashboard --executor"):
            mrkit.submit(
                mrkit.Job(mapper=_poisoned), mrkit.Records(["a"]), executor=redis.url, dashboard=True
            )
    finally:
        redis.stop()


def test_the_cli_reads_and_cancels_a_local_run_by_id(tmp_path: Path) -> None:
    handle = submit_paced(tmp_path, LINES, each=0.2, output=str(tmp_path / "out"), n_map=8)
    wait_for(lambda: registry_running(handle.id), what="the run to start")
    mrkit_cli = [sys.executable, "-m", "mrkit"]
    listed = subprocess.run([*mrkit_cli, "jobs"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and handle.id in listed.stdout
    cancelled = subprocess.run([*mrkit_cli, "cancel", handle.id], capture_output=True, text=True, timeout=60)
    assert cancelled.returncode == 0 and f"cancelled {handle.id}" in cancelled.stdout
    with pytest.raises(mrkit.JobCancelled):
        handle.wait(30)
    again = subprocess.run([*mrkit_cli, "cancel", handle.id], capture_output=True, text=True, timeout=60)
    assert "had already ended" in again.stderr
    logs = subprocess.run([*mrkit_cli, "logs", handle.id], capture_output=True, text=True, timeout=60)
    assert logs.returncode == 0 and "attempt 1" in logs.stdout
    status = subprocess.run([*mrkit_cli, "status", handle.id], capture_output=True, text=True, timeout=60)
    assert status.returncode == 1 and "cancelled" in status.stdout
