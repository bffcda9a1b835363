"""A real ``redis-server`` for the tests: on a free 127.0.0.1 port, in a temp dir, stopped by PID.

Use the ``redis_server`` fixture (one server per test module, flushed before each test) or the
``redis_url`` fixture (its URL). Fault tests build their own :class:`RedisServer` to restart it, with
or without an append-only file.

When ``redis-server`` is not installed, the tests skip on a laptop but fail when ``CI`` is set (STYLE
32): a CI run that silently skips every Redis test would prove nothing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

REDIS_SERVER = shutil.which("redis-server")
START_TIMEOUT = 10.0


def require_redis_server() -> str:
    """Return the path of ``redis-server``; skip (locally) or fail (CI) when it is missing."""
    if REDIS_SERVER is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run the Redis tests")
        pytest.skip(message)
    return REDIS_SERVER


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1.

    Args:
        directory: its working dir (append-only file and logs go there).
        appendonly: run with ``--appendonly yes --appendfsync always`` (survives a restart).
        extra: more ``redis-server`` arguments (e.g. ``["--requirepass", "pw"]``).
    """

    def __init__(self, directory: str, *, appendonly: bool = False, extra: list[str] | None = None) -> None:
        self.binary = require_redis_server()
        self.directory = directory
        self.appendonly = appendonly
        self.extra = list(extra or [])
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start the server (same port and dir as before on a restart) and wait until it answers PING."""
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            self.directory,
            "--save",
            "",
            "--logfile",
            os.path.join(self.directory, "redis.log"),
            "--daemonize",
            "no",
        ]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.proc = subprocess.Popen(args + self.extra, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = os.path.join(self.directory, "redis.log")
                raise RuntimeError(f"redis-server exited ({self.proc.returncode}); see {log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    reply = s.recv(64)
                    if reply.startswith((b"+PONG", b"-NOAUTH")):
                        return self
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {START_TIMEOUT}s")

    def stop(self) -> None:
        """Kill the server by its PID (SIGKILL: as abrupt as a crash) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self, down_seconds: float = 0.0) -> None:
        """Kill the server and start it again on the same port and dir after ``down_seconds``."""
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def client(self):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis.from_url(self.url)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server shared by a test module; flushed before and after each test by ``redis_url``."""
    server = RedisServer(str(tmp_path_factory.mktemp("redis"))).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The URL of a flushed redis-server (flushed again after the test)."""
    client = redis_server.client()
    client.flushall()
    try:
        yield redis_server.url
    finally:
        try:
            client.flushall()
        finally:
            client.close()


# -- workers ---------------------------------------------------------------------------------------

MRKIT = [sys.executable, "-c", "import sys; from mrkit.cli.main import main; main(sys.argv[1:])"]
TEST_SECRET = "test-secret-not-for-production"


def mrkit_cmd(
    *args: str, env: dict[str, str] | None = None, timeout: float = 20.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``mrkit ARGS…`` in a fresh interpreter (bounded by ``timeout``)."""
    proc = subprocess.run(
        [*MRKIT, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"mrkit {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def start_worker(
    url: str,
    *,
    burst: bool = True,
    name: str | None = None,
    concurrency: int = 1,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """Start ``mrkit worker URL`` as a subprocess (stderr piped, for assertions on what it says)."""
    args = [*MRKIT, "worker", url, "--concurrency", str(concurrency)]
    if burst:
        args.append("--burst")
    if name:
        args += ["--name", name]
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )


def stop_worker(proc: subprocess.Popen[str], timeout: float = 10.0) -> str:
    """Wait for a worker to exit (SIGKILL it after ``timeout``); return its stderr."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=5)
    return err


class WorkerThreads:
    """``n`` :class:`~mrkit.worker.redis_worker.RedisWorker` loops in threads of the test process.

    Faster to start than processes; the GIL makes them share one core, which is fine for tests of
    behaviour. Use as a context manager; leaving it stops them and re-raises a worker's exception.
    """

    def __init__(self, url: str, n: int = 2, *, burst: bool = False, secret: bytes | None = None) -> None:
        from mrkit.execution.redis_streams import resolve_secret
        from mrkit.worker.redis_worker import RedisWorker

        key = resolve_secret(url, secret=secret)
        self.workers = [
            RedisWorker(url, name=f"thread-{i}", burst=burst, secret=key, capture_output=False)
            for i in range(n)
        ]
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(w,), daemon=True) for w in self.workers]

    def _run(self, worker) -> None:  # type: ignore[no-untyped-def]
        try:
            worker.run()
        except BaseException as exc:  # reported on exit
            self.errors.append(exc)

    def __enter__(self) -> WorkerThreads:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for w in self.workers:
            w.stop()
        for t in self.threads:
            t.join(timeout=10)
        if self.errors:
            raise self.errors[0]


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> str:
    """Sets ``MRKIT_SECRET`` for this test and the worker processes it starts."""
    monkeypatch.setenv("MRKIT_SECRET", TEST_SECRET)
    return TEST_SECRET
