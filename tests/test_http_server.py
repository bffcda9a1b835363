"""The HTTP worker as a real server on 127.0.0.1: endpoints, refusals that do no work, the CLI.

Each refused request carries a task whose function would create a marker file; the marker's absence
is the proof that nothing ran.
"""

from __future__ import annotations

import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mrkit.backends.http import server as http_server
from mrkit.backends.http.auth import HEADER_NONCE, HEADER_SIGNATURE, sign_request, verify_response
from mrkit.backends.http.server import WorkerServer, open_server
from mrkit.errors import ConfigError
from mrkit.model.task import TaskResult
from tests.http_fixtures import (  # noqa: F401 - fixtures
    SECRET,
    CliWorkers,
    call_spec,
    cli_workers_fixture,
    free_port,
    get_json,
    post,
    post_task,
    signed_headers,
    thread_worker_fixture,
    touch,
    wait_until,
    worker_env,
    write_secret,
)


def test_health_and_status_answer_without_auth_and_reveal_nothing_sensitive(
    thread_worker: WorkerServer,
) -> None:
    port = thread_worker.server_port
    assert get_json(port, "/health") == (200, {"ok": True})
    status, data = get_json(port, "/status")
    assert status == 200
    assert set(data) == {"version", "running", "completed", "failed", "refused", "uptime_seconds"}
    assert data["running"] == data["completed"] == data["failed"] == 0
    text = repr(data)
    assert SECRET.decode() not in text and "/" not in text


def test_a_signed_task_runs_and_its_answer_is_signed(thread_worker: WorkerServer, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    body = call_spec(touch, str(marker)).encode()
    headers = signed_headers(thread_worker.server_port, body)
    status, response_headers, data = post(thread_worker.server_port, "/task", body, headers)
    assert status == 200
    verify_response(SECRET, status, headers[HEADER_NONCE], data, response_headers[HEADER_SIGNATURE])
    result = TaskResult.decode(data)
    assert result.ok and pickle.loads(result.output) == [str(marker)]
    assert marker.exists()
    assert result.worker == f"127.0.0.1:{thread_worker.server_port}"
    assert get_json(thread_worker.server_port, "/status")[1]["completed"] == 1


def _tampered(port: int, marker: Path) -> int:
    body = call_spec(touch, str(marker)).encode()
    headers = signed_headers(port, body)
    return post(port, "/task", body.replace(b"call-000000", b"call-000001"), headers)[0]


def _replayed(port: int, marker: Path) -> int:
    body = call_spec(touch, str(marker)).encode()
    headers = signed_headers(port, body)
    assert post(port, "/task", body, headers)[0] == 200
    marker.unlink()  # the original ran; the replay must not run again
    return post(port, "/task", body, headers)[0]


def _body_and_headers(
    marker: Path, port: int, *, host: str = "", sign_host: bool = False, signed_for: str = ""
) -> tuple[bytes, dict[str, str]]:
    """A signed request whose Host header is ``host`` (signed as such when ``sign_host``), or one
    signed for ``signed_for`` but sent with our own Host."""
    body = call_spec(touch, str(marker)).encode()
    if signed_for:
        headers = signed_headers(port, body, host=signed_for)
        headers["Host"] = f"127.0.0.1:{port}"
    else:
        headers = signed_headers(port, body, host=host if sign_host else "")
        headers["Host"] = host
    return body, headers


REFUSALS = {
    "unsigned": (lambda port, marker: post_task(port, call_spec(touch, str(marker)), secret=None)[0], 401),
    "wrong secret": (
        lambda port, marker: post_task(port, call_spec(touch, str(marker)), secret=b"w" * 32)[0],
        401,
    ),
    "tampered body": (_tampered, 401),
    "replayed": (_replayed, 409),  # not 401: a duplicate is not an impostor (the driver resends it)
    "Host of another site": (
        lambda port, marker: post(port, "/task", *_body_and_headers(marker, port, host="evil.example"))[0],
        421,
    ),
    "Host of another site, signed": (
        lambda port, marker: post(
            port, "/task", *_body_and_headers(marker, port, host="evil.example", sign_host=True)
        )[0],
        421,
    ),
    "re-aimed at another worker": (
        lambda port, marker: post(port, "/task", *_body_and_headers(marker, port, signed_for="127.0.0.1:1"))[
            0
        ],
        401,
    ),
    "stale timestamp": (
        lambda port, marker: post_task(port, call_spec(touch, str(marker)), timestamp=time.time() - 3600)[0],
        401,
    ),
    "browser Origin": (
        lambda port, marker: post_task(port, call_spec(touch, str(marker)), Origin="https://evil.example")[0],
        403,
    ),
    "browser Sec-Fetch-Site": (
        lambda port, marker: post_task(
            port, call_spec(touch, str(marker)), **{"Sec-Fetch-Site": "cross-site"}
        )[0],
        403,
    ),
}


@pytest.mark.parametrize("kind", sorted(REFUSALS))
def test_refused_requests_do_no_work(kind: str, thread_worker: WorkerServer, tmp_path: Path) -> None:
    send, expected = REFUSALS[kind]
    marker = tmp_path / "ran"
    assert send(thread_worker.server_port, marker) == expected
    assert not marker.exists(), f"a {kind} request ran its task"
    status = get_json(thread_worker.server_port, "/status")[1]
    assert status["refused"] == 1 and status["running"] == 0


def test_browser_requests_are_refused_on_every_endpoint(thread_worker: WorkerServer) -> None:
    for path in ("/health", "/status"):
        status, _, _ = post(thread_worker.server_port, path, b"", {"Origin": "http://localhost:8000"}, "GET")
        assert status == 403, path


def test_unknown_paths_and_methods(thread_worker: WorkerServer, tmp_path: Path) -> None:
    port = thread_worker.server_port
    assert get_json(port, "/nope")[0] == 404
    body = call_spec(touch, str(tmp_path / "ran")).encode()
    assert post(port, "/other", body, sign_request(SECRET, "POST", "/other", body))[0] == 404
    assert post(port, "/task", body, sign_request(SECRET, "PUT", "/task", body), method="PUT")[0] == 501
    assert not (tmp_path / "ran").exists()


def test_chunked_and_oversized_bodies_are_refused(
    thread_worker: WorkerServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = thread_worker.server_port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /task HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 411")
    monkeypatch.setattr(http_server, "MAX_BODY_BYTES", 64)
    assert post_task(port, call_spec(touch, str(tmp_path / "ran")))[0] == 413
    assert not (tmp_path / "ran").exists()


def test_a_signed_but_undecodable_spec_is_a_400(thread_worker: WorkerServer) -> None:
    body = b'{"not": "a spec"}'
    headers = signed_headers(thread_worker.server_port, body)
    assert post(thread_worker.server_port, "/task", body, headers)[0] == 400


def test_a_function_travels_once_per_worker(thread_worker: WorkerServer, tmp_path: Path) -> None:
    port = thread_worker.server_port
    marker = tmp_path / "ran"
    status, _, body = post_task(port, call_spec(touch, str(marker), with_fn=False))
    assert status == 409 and b"call_fn" in body and not marker.exists()  # not seen yet: ask for it
    assert post_task(port, call_spec(touch, str(marker)))[0] == 200
    status, _, body = post_task(port, call_spec(touch, str(marker), with_fn=False))
    assert status == 200 and TaskResult.decode(body).ok  # by digest alone now
    assert len(marker.read_text().splitlines()) == 2


def test_health_answers_while_a_task_runs(thread_worker: WorkerServer, tmp_path: Path) -> None:
    port = thread_worker.server_port
    marker = tmp_path / "ran"
    runner = threading.Thread(target=post_task, args=(port, call_spec(touch, str(marker), 3.0)))
    runner.start()
    try:
        assert wait_until(lambda: get_json(port, "/status")[1]["running"] == 1, timeout=15)
        assert get_json(port, "/health") == (200, {"ok": True})
        assert get_json(port, "/status")[1]["running"] == 1 and not marker.exists()  # still running
    finally:
        runner.join(timeout=30)
    assert get_json(port, "/status")[1]["completed"] == 1


def test_a_port_in_use_is_a_clear_error_and_no_port_means_a_free_one() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port {port} on 127.0.0.1 is already in use"):
            open_server(SECRET, port=port)
    a, b = open_server(SECRET), open_server(SECRET)
    try:
        assert a.server_port != b.server_port and a.url.startswith("http://127.0.0.1:")
    finally:
        a.server_close()
        b.server_close()


# -- the command line ---------------------------------------------------------------------------------


def _run_cli(*args: str, tmp: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mrkit", "worker", "http", *args],
        capture_output=True,
        text=True,
        timeout=20,
        env=env or worker_env(),
        cwd=tmp,
    )


def test_the_cli_worker_listens_on_the_port_and_address_given(cli_workers: CliWorkers) -> None:
    port = free_port()
    _, url = cli_workers.start("--port", str(port), "--bind", "127.0.0.1")
    assert url == f"http://127.0.0.1:{port}"
    assert get_json(port, "/health") == (200, {"ok": True})


def test_the_cli_worker_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    done = _run_cli(tmp=tmp_path)
    assert done.returncode == 2
    assert "needs a shared secret" in done.stderr and done.stdout == ""


def test_the_cli_worker_refuses_a_network_bind_without_a_secret(tmp_path: Path) -> None:
    done = _run_cli("--bind", "0.0.0.0", tmp=tmp_path)
    assert done.returncode == 2
    assert "needs a shared secret" in done.stderr and done.stdout == ""  # no URL: it never listened


def test_the_cli_worker_refuses_a_secret_file_others_can_read(tmp_path: Path) -> None:
    done = _run_cli("--secret-file", str(write_secret(tmp_path, mode=0o644)), tmp=tmp_path)
    assert done.returncode == 2 and "chmod 600" in done.stderr


def test_the_cli_worker_reports_a_squatted_port_at_once(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        started = time.monotonic()
        done = _run_cli("--port", str(port), "--secret-file", str(write_secret(tmp_path)), tmp=tmp_path)
    assert done.returncode == 2 and f"port {port} on 127.0.0.1 is already in use" in done.stderr
    assert time.monotonic() - started < 15


def test_the_cli_worker_prints_its_url_serves_and_stops_on_ctrl_c(
    cli_workers: CliWorkers, tmp_path: Path
) -> None:
    env = worker_env(MRKIT_SECRET=SECRET.decode())
    proc, url = cli_workers.start(secret=None, env=env)  # the secret from the environment this time
    port = int(url.rsplit(":", 1)[1])
    assert url == f"http://127.0.0.1:{port}"
    marker = tmp_path / "ran"
    assert post_task(port, call_spec(touch, str(marker)))[0] == 200 and marker.exists()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0
