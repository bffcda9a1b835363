"""A real ``redis-server`` for the tests: on a free 127.0.0.1 port, in a temp dir, stopped by PID.

Use the ``redis_server`` fixture (one server per test module, flushed before each test) or the
``redis_url`` fixture (its URL). Fault tests build their own :class:`RedisServer` to restart it, with
or without an append-only file.

When ``redis-server`` is not installed, the tests skip on a laptop but fail when ``CI`` is set (STYLE
32): a CI run that silently skips every Redis test would prove nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

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
        tls: ``(cert, key, ca)`` file paths: listen with TLS only (``rediss://``), see :func:`make_tls_files`.
    """

    def __init__(
        self,
        directory: str,
        *,
        appendonly: bool = False,
        extra: list[str] | None = None,
        tls: tuple[str, str, str] | None = None,
    ) -> None:
        self.binary = require_redis_server()
        self.directory = directory
        self.appendonly = appendonly
        self.extra = list(extra or [])
        self.tls = tls
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.tls:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls[2]}"
        return f"redis://127.0.0.1:{self.port}/0"

    def _ping(self) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
            if self.tls is None:
                raw.sendall(b"PING\r\n")
                return raw.recv(64)
            import ssl

            context = ssl.create_default_context(cafile=self.tls[2])
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(b"PING\r\n")
                return s.recv(64)

    def start(self) -> RedisServer:
        """Start the server (same port and dir as before on a restart) and wait until it answers PING."""
        if self.tls:
            cert, key, ca = self.tls
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", cert]
            ports += ["--tls-key-file", key, "--tls-ca-cert-file", ca, "--tls-auth-clients", "no"]
        else:
            ports = ["--port", str(self.port)]
        args = [
            self.binary,
            *ports,
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
                if self._ping().startswith((b"+PONG", b"-NOAUTH")):
                    return self
            except OSError:  # not listening yet (ssl.SSLError is an OSError too)
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


def make_tls_files(directory: str) -> tuple[str, str, str]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it: ``(cert, key, ca)`` paths."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))

    def build(subject: str, key: Any, issuer: str, signer: Any, ca: bool) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(valid[0])
            .not_valid_after(valid[1])
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
        else:
            san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
            builder = builder.add_extension(san, critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = build("mrkit test CA", ca_key, "mrkit test CA", ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build("127.0.0.1", key, "mrkit test CA", ca_key, False)
    paths = tuple(os.path.join(directory, name) for name in ("server.crt", "server.key", "ca.crt"))
    pem = serialization.Encoding.PEM
    with open(paths[0], "wb") as f:
        f.write(cert.public_bytes(pem))
    with open(paths[1], "wb") as f:
        f.write(
            key.private_bytes(
                pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
            )
        )
    with open(paths[2], "wb") as f:
        f.write(ca_cert.public_bytes(pem))
    return paths  # type: ignore[return-value]


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
    args: list[str] | None = None,
    drop_env: tuple[str, ...] = (),
    new_session: bool = False,
) -> subprocess.Popen[str]:
    """Start ``mrkit worker URL`` as a subprocess.

    Its stderr goes to a temp file (never a pipe nobody reads, which would block a chatty worker):
    :func:`worker_stderr` reads it so far, :func:`stop_worker` returns it. ``drop_env`` removes
    variables of this process from the worker's environment; ``new_session`` puts it in its own
    process group (to signal the group, as a terminal's Ctrl-C does).
    """
    argv = [*MRKIT, "worker", url, "--concurrency", str(concurrency), *(args or [])]
    if burst:
        argv.append("--burst")
    if name:
        argv += ["--name", name]
    environ = {k: v for k, v in os.environ.items() if k not in drop_env}
    fd, path = tempfile.mkstemp(prefix="mrkit-worker-", suffix=".err")
    try:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=fd,
            text=True,
            env={"PYTHONFAULTHANDLER": "1", **environ, **(env or {})},  # stacks on a hang: stop_worker
            start_new_session=new_session,
        )
    finally:
        os.close(fd)
    proc.err_path = path  # type: ignore[attr-defined]
    return proc


def worker_stderr(proc: subprocess.Popen[str]) -> str:
    """What a worker started by :func:`start_worker` wrote on stderr so far."""
    with open(proc.err_path, errors="replace") as f:  # type: ignore[attr-defined]
        return f.read()


def stop_worker(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    """Wait for a worker to exit; return its stderr. One still running after ``timeout`` is hung:
    every process of its tree gets SIGABRT first (the workers run with ``PYTHONFAULTHANDLER``, so
    each writes its threads' stacks into that stderr, which the failing assertion shows), then
    SIGKILL."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in reversed(process_tree(proc.pid)):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=2)
        with contextlib.suppress(OSError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    err = worker_stderr(proc)
    try:
        os.unlink(proc.err_path)  # type: ignore[attr-defined]
    except FileNotFoundError:
        pass
    return err


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process descended from it, parents first (read from /proc; Linux)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        current = todo.pop(0)
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def kill_fleet(proc: subprocess.Popen[str]) -> int:
    """SIGKILL a ``mrkit worker`` and all its task processes by PID, supervisor first, as abruptly as
    a lost machine: nobody is left to hand anything back. Returns how many processes were killed."""
    pids = process_tree(proc.pid)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)
    return len(pids)


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); fail after ``timeout``.

    Generous timeouts only bound a failing test: a passing one returns as soon as the condition holds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class WorkerThreads:
    """``n`` :class:`~mrkit.backends.redis.worker.RedisWorker` loops in threads of the test process.

    Faster to start than processes; the GIL makes them share one core, which is fine for tests of
    behaviour. Use as a context manager; leaving it stops them and re-raises a worker's exception.
    """

    def __init__(self, url: str, n: int = 2, *, burst: bool = False, secret: bytes | None = None) -> None:
        from mrkit.backends.redis.wire import resolve_secret
        from mrkit.backends.redis.worker import RedisWorker

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
