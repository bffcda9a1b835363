"""Fixtures and helpers for the HTTP worker tests: real servers on 127.0.0.1 only.

* ``thread_worker``: a :class:`~mrkit.backends.http.server.WorkerServer` serving from a thread of the
  test process (STYLE 33), with a known secret.
* ``cli_workers``: a factory that starts ``python -m mrkit worker http`` subprocesses, reads the URL
  each prints on stdout, and kills them all after the test.
* ``call_spec`` / ``post_task``: build a futures-API task whose function leaves evidence on disk
  (so a test can assert that a refused request did *no* work) and send it, signed or not.

Test modules import the fixtures by their function names (``thread_worker_fixture``, ...) and use
them by their fixture names (``thread_worker``, ``cli_workers``).

Functions shipped to workers live here, at module level, so that worker processes import them by
reference (they run with the repository root on ``sys.path``).
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import pickle
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import mrkit
from mrkit.backends.http.auth import sign_request
from mrkit.backends.http.server import WorkerServer, open_server
from mrkit.model.task import TaskKind, TaskSpec
from tests.jobs_for_tests import words

ROOT = Path(__file__).resolve().parents[1]
SECRET = b"test-secret-0123456789abcdef0123456789"


# -- functions that run in workers ------------------------------------------------------------------


def touch(path: str, seconds: float = 0.0) -> str:
    """Sleep ``seconds``, then create ``path``: the evidence that a task ran."""
    if seconds:
        time.sleep(seconds)
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return path


def stop_once_mapper(line: str) -> Iterator[tuple[str, int]]:
    """Freezes its task process (SIGSTOP: alive, but doing nothing) the first time it sees 'hangme';
    with ``params["whom"] == "worker"``, the HTTP worker that runs the task process instead.

    A marker file (``params["marker"]``) remembers that it did, and holds the frozen pid.
    """
    params = mrkit.context().params
    marker = params["marker"]
    if "hangme" in line and not os.path.exists(marker):
        pid = os.getppid() if params.get("whom") == "worker" else os.getpid()
        with open(marker, "w") as f:
            f.write(str(pid))
        os.kill(pid, signal.SIGSTOP)
    yield from words(line)


def kill_worker_once_mapper(line: str) -> Iterator[tuple[str, int]]:
    """SIGKILLs the HTTP worker running its task process the first time it sees 'killme'.

    The marker file (``params["marker"]``) holds ``<worker pid> <task process pid>``.
    """
    marker = mrkit.context().params["marker"]
    if "killme" in line and not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(f"{os.getppid()} {os.getpid()}")
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(30)  # the worker's death ends this task process: it never gets past here
    yield from words(line)


def hang_mapper(line: str) -> Iterator[tuple[str, int]]:
    """Hangs for good on a line holding 'stuck', after starting a grandchild (``sleep 600``) whose pid
    it appends to ``params["children"]``: ending the attempt must end both."""
    if "stuck" in line:
        child = subprocess.Popen(["sleep", "600"])
        with open(mrkit.context().params["children"], "a") as f:
            f.write(f"{child.pid}\n")
        while True:
            time.sleep(3600)
    yield from words(line)


def crash_mapper(line: str) -> Iterator[tuple[str, int]]:
    """Ends its own process on a line holding 'poison', the way ``params["how"]`` says (``exit``:
    ``os._exit(3)``, ``segv``: SIGSEGV, ``sysexit``: ``sys.exit(3)``), after noting the attempt in
    ``params["attempts"]``."""
    if "poison" in line:
        params = mrkit.context().params
        with open(params["attempts"], "a") as f:
            f.write(f"{mrkit.context().attempt}\n")
        how = params["how"]
        if how == "exit":
            os._exit(3)
        if how == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        sys.exit(3)
    yield from words(line)


def slow_words(line: str) -> Iterator[tuple[str, int]]:
    """:func:`words`, 10 ms per record: tasks last long enough to be killed mid-way."""
    time.sleep(0.01)
    yield from words(line)


class PidWordCount(mrkit.Job):
    """Word count that leaves evidence of the processes that ran it, for ``mrkit run`` tests.

    Params: ``pids`` (required), a folder that gets one empty file ``<phase>-<pid>`` per process
    that ran a map or reduce task; ``poison``, a word that makes the mapper raise ValueError on its
    line; ``sleep``, seconds the mapper sleeps on a line holding the word ``sleepy`` (after noting
    ``sleep-<pid>``).
    """

    def mapper(self, line: str) -> Iterator[tuple[str, int]]:
        _note_pid(self.params["pids"], "map")
        poison = self.params.get("poison")
        if poison and poison in line:
            raise ValueError(f"cannot map {line!r}")
        if "sleepy" in line:
            _note_pid(self.params["pids"], "sleep")
            time.sleep(float(self.params.get("sleep", 0)))
        yield from words(line)

    def reducer(self, word: str, counts: Iterator[int]) -> int:
        _note_pid(self.params["pids"], "reduce")
        return sum(counts)


def _note_pid(folder: str, phase: str) -> None:
    path = os.path.join(folder, f"{phase}-{os.getpid()}")
    if not os.path.exists(path):
        open(path, "w").close()


def noted_pids(folder: Path, phase: str = "") -> set[int]:
    """The pids :class:`PidWordCount` noted in ``folder`` for ``phase`` (default: map and reduce)."""
    return {
        int(p.name.rsplit("-", 1)[1])
        for p in folder.iterdir()
        if p.name.startswith(phase or ("map", "reduce"))
    }


# -- building and sending tasks ---------------------------------------------------------------------


def call_spec(
    fn: Callable[..., Any], *args: Any, task: str = "call-000000", with_fn: bool = True
) -> TaskSpec:
    """A CALL task running ``fn(*args)`` once (``with_fn=False`` leaves out the function, digest only)."""
    data = cloudpickle.dumps(fn)
    return TaskSpec(
        job_id="futures-test",
        task_id=task,
        kind=TaskKind.CALL,
        call_fn=data if with_fn else b"",
        call_digest=hashlib.sha256(data).hexdigest(),
        call=pickle.dumps([args]),
    )


def post(
    port: int, path: str, body: bytes, headers: dict[str, str], method: str = "POST"
) -> tuple[int, dict[str, str], bytes]:
    """Send one request on a fresh connection; return status, headers and body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request(method, path, body, headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def post_task(
    port: int, spec: TaskSpec, secret: bytes | None = SECRET, timestamp: float | None = None, **extra: str
) -> tuple[int, dict[str, str], bytes]:
    """POST ``spec`` to ``/task``, signed with ``secret`` (None: unsigned) at ``timestamp`` (default
    now), plus ``extra`` headers."""
    body = spec.encode()
    headers = signed_headers(port, body, secret, timestamp=timestamp) if secret is not None else {}
    headers.update(extra)
    return post(port, "/task", body, headers)


def signed_headers(
    port: int, body: bytes, secret: bytes = SECRET, *, host: str = "", timestamp: float | None = None
) -> dict[str, str]:
    """The headers of a ``POST /task`` of ``body`` signed as the executor does, Host included
    (default ``127.0.0.1:<port>``)."""
    host = host or f"127.0.0.1:{port}"
    headers = sign_request(secret, "POST", "/task", body, host=host, timestamp=timestamp)
    headers["Host"] = host
    return headers


def get_json(port: int, path: str, **headers: str) -> tuple[int, dict[str, Any]]:
    status, _, body = post(port, path, b"", headers, method="GET")
    return status, json.loads(body)


# -- servers ----------------------------------------------------------------------------------------


@pytest.fixture(name="thread_worker")
def thread_worker_fixture() -> Iterator[WorkerServer]:
    """A worker server in a thread of this process, secret :data:`SECRET`, on a free port."""
    server = open_server(SECRET, port=None)
    thread = server.start_in_thread()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def write_secret(folder: Path, secret: bytes = SECRET, mode: int = 0o600) -> Path:
    path = folder / "secret.txt"
    path.write_bytes(secret + b"\n")
    path.chmod(mode)
    return path


def worker_env(**extra: str) -> dict[str, str]:
    """The environment of a worker subprocess: no inherited secret, the repository importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MRKIT_SECRET")}
    paths = [str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.update(extra)
    return env


def read_line(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> str:
    """The first line ``proc`` prints on stdout ('' if it exits or the time runs out first)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buffer and time.monotonic() < deadline:
            if selector.select(0.1):
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                buffer += chunk
    return buffer.decode().strip()


class CliWorkers:
    """Starts ``python -m mrkit worker http`` processes; :meth:`stop_all` kills and reaps them."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, *args: str, secret: bytes | None = SECRET, env: dict[str, str] | None = None, wait: bool = True
    ) -> tuple[subprocess.Popen[bytes], str]:
        """Start one worker; return it and its URL (read from its stdout; '' when ``wait`` is False)."""
        argv = [sys.executable, "-m", "mrkit", "worker", "http", *args]
        if secret is not None and "--secret-file" not in args:
            argv += ["--secret-file", str(write_secret(self.tmp, secret))]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env or worker_env(),
            cwd=self.tmp,
        )
        self.procs.append(proc)
        url = read_line(proc) if wait else ""
        if wait and not url.startswith("http://"):
            self.stop(proc)
            raise AssertionError(f"worker did not start: {url!r}; stderr: {proc.stderr.read().decode()!r}")
        return proc, url

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        if proc.poll() is None:
            proc.send_signal(sig)
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    def stop_all(self) -> None:
        for proc in self.procs:
            self.stop(proc)


@pytest.fixture(name="cli_workers")
def cli_workers_fixture(tmp_path: Path) -> Iterator[CliWorkers]:
    workers = CliWorkers(tmp_path)
    try:
        yield workers
    finally:
        workers.stop_all()


class RecordingRelay:
    """A TCP relay on 127.0.0.1 in front of a worker that keeps every byte sent *to* the worker.

    Point an executor at ``127.0.0.1:<port>``; :meth:`requests` then parses what went over the
    wire with the standard library's header parser. Use as a context manager.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.streams: list[bytearray] = []
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def __enter__(self) -> RecordingRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
            for sock in (client, upstream):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # relay at once, as they send
            record = bytearray()
            self.streams.append(record)
            self._sockets += [client, upstream]
            for source, target, keep in ((client, upstream, record), (upstream, client, None)):
                thread = threading.Thread(target=self._pump, args=(source, target, keep), daemon=True)
                self._threads.append(thread)
                thread.start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket, record: bytearray | None) -> None:
        try:
            while data := source.recv(1 << 16):
                if record is not None:
                    record += data
                target.sendall(data)
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def requests(self) -> list[tuple[str, str, bytes]]:
        """``(method, path, body)`` of every request relayed so far."""
        out = []
        for record in list(self.streams):
            stream = io.BytesIO(bytes(record))
            while line := stream.readline():
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers = http.client.parse_headers(stream)
                out.append((method, path, stream.read(int(headers.get("Content-Length", 0)))))
        return out

    def close(self) -> None:
        for sock in (self.listener, *self._sockets):  # shutdown, not close, wakes a blocked accept()
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.listener.close()
        for thread in self._threads:
            thread.join(timeout=5)
        for sock in self._sockets:
            sock.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


TAG_VARIABLE = "MRKIT_TEST_PROCESS_TAG"


def tagged_processes(tag: str) -> list[int]:
    """Live processes whose environment holds ``MRKIT_TEST_PROCESS_TAG=<tag>``.

    A driver started with that variable passes it to every worker it starts, so after the driver
    exits this lists the workers it left behind, whoever their parent now is.
    """
    needle = f"{TAG_VARIABLE}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours
            continue
        if needle in environ.split(b"\0") and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def parent_of(pid: int) -> int | None:
    """The parent pid of live process ``pid`` (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except FileNotFoundError:
        return None


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
