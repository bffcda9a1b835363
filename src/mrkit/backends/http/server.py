"""The HTTP worker: ``mrkit worker http``, and the workers an ``http`` driver starts for itself.

Endpoints (stdlib :class:`http.server.ThreadingHTTPServer`, HTTP/1.1 keep-alive): ``POST /task``,
``GET /health``, ``GET /status``; their paths, headers, bodies and status codes are written once in
:mod:`mrkit.backends.http.wire`, which the driver imports too.

The contract:

* **Nothing unauthenticated does work.** A ``POST /task`` runs only after its signature, timestamp
  and nonce verified; anything else gets 401 (unsigned, bad signature, stale timestamp), 409
  (replayed), 421 (misdirected ``Host``), 403 (a browser's ``Origin`` or ``Sec-Fetch-Site`` header,
  on every endpoint: a web page must not reach a worker through the user's browser), 411/413 (no
  length, too large), and the connection is closed. Nothing is decoded, let alone unpickled, before
  the signature verified.
* **Health and status reveal nothing sensitive**: counts, the mrkit version and uptime only; no job
  ids, paths, pids or host details.
* **Tasks run in task processes** (:mod:`mrkit.backends.http.tasks`), never in the server: the
  thread of the connection that brought a task (one thread per connection, one request at a time
  on each) hands it to an idle task process and relays its result, so ``/health`` and ``/status``
  are answered while a task runs, and a task that hangs (``task_timeout``) or ends its process
  (``os._exit``, a segfault) costs a task process, not the server. Those come back as *failed*
  results (``TaskTimeout``, ``WorkerCrashed``); a task process killed from outside or stopped is a
  signed ``503 {"lost": why}``: the attempt's outcome is unknown.
* **Requests are checked before they are read**: a ``Host`` that is neither the address the
  request arrived on nor a loopback one gets ``421``; a correctly signed request whose nonce was
  already used gets an unsigned ``409 {"replayed": true}`` (a duplicate, not an impostor: the
  driver sends the task again).
* **Code once per worker.** Map and reduce tasks name the job's code by storage key and digest;
  the runtime caches it. A futures-API task may omit its function (``call_fn``) once this worker has
  seen its digest: a miss is answered ``409`` and the driver sends it again with the function.
* **Binding.** 127.0.0.1 by default. ``port=None`` binds port 0 (the system picks a free one); a
  port in use is a :class:`~mrkit.errors.ConfigError`, never a hang. The URL is printed on stdout
  when the worker is ready.
* **Secret.** A worker without a secret refuses to start (:func:`mrkit.backends.http.auth.load_secret`).
  A worker a driver started (``python -m mrkit.backends.http.server --driver``, internal) reads a JSON
  line ``{"secret", "sys_path", "ready_fd"}`` from stdin, so the secret never appears on a command
  line, writes its URL to ``ready_fd``, and exits as soon as its stdin reaches end-of-file or its
  parent process changes: it never outlives the driver.

About 510 lines: the request handling, its authentication checks and the task-process pool it
feeds share the server object; the task processes themselves are in :mod:`mrkit.backends.http.tasks`.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import hashlib
import json
import logging
import os
import signal
import socket
import socketserver
import sys
import threading
import time
import traceback
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mrkit.backends.http import wire
from mrkit.backends.http.auth import (
    ReplayedRequest,
    RequestVerifier,
    load_secret,
    sign_response,
)
from mrkit.backends.http.tasks import TaskLost, TaskProcesses
from mrkit.errors import AuthenticationError, ConfigError
from mrkit.model.task import TaskFailure, TaskKind, TaskResult, TaskSpec
from mrkit.security import is_loopback

logger = logging.getLogger("mrkit.http")

MAX_BODY_BYTES = 256 << 20  # a spec is metadata; only a futures chunk of large arguments comes near this
IDLE_TIMEOUT = 300.0  # seconds a connection may sit idle (or a request stall) before the worker drops it
_FUNCTION_CACHE_ENTRIES = 64
_FUNCTION_CACHE_BYTES = 256 << 20
_PARENT_POLL_SECONDS = 0.5


class WorkerState:
    """What one worker process counts and caches; shared by its connection threads."""

    def __init__(self, secret: bytes, label: str) -> None:
        self.secret = secret
        self.verifier = RequestVerifier(secret)
        self.label = label
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.running = 0
        self.completed = 0
        self.failed = 0
        self.refused = 0
        self._functions: OrderedDict[str, bytes] = OrderedDict()  # digest -> cloudpickled function
        self._function_bytes = 0
        self.tasks = TaskProcesses(label)

    def status(self) -> dict[str, Any]:
        from mrkit._version import __version__

        with self.lock:
            return {
                "version": __version__,
                "running": self.running,
                "completed": self.completed,
                "failed": self.failed,
                "refused": self.refused,
                "uptime_seconds": round(time.monotonic() - self.started, 1),
            }

    def remember_function(self, digest: str, data: bytes) -> None:
        """Keep a verified function pickle by digest (least recently used ones go first)."""
        with self.lock:
            if digest in self._functions:
                self._functions.move_to_end(digest)
                return
            self._functions[digest] = data
            self._function_bytes += len(data)
            while self._functions and (
                len(self._functions) > _FUNCTION_CACHE_ENTRIES or self._function_bytes > _FUNCTION_CACHE_BYTES
            ):
                _, old = self._functions.popitem(last=False)
                self._function_bytes -= len(old)

    def function(self, digest: str) -> bytes | None:
        with self.lock:
            data = self._functions.get(digest)
            if data is not None:
                self._functions.move_to_end(digest)
            return data


class WorkerServer(ThreadingHTTPServer):
    """A threaded HTTP server holding one :class:`WorkerState`.

    Args:
        address: ``(host, port)``; port 0 picks a free port.
        secret: the shared secret.

    Raises:
        OSError: the address cannot be bound (see :func:`open_server` for the friendly version).
    """

    daemon_threads = True  # a task still running when the server closes must not block exit

    def __init__(self, address: tuple[str, int], secret: bytes) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)
        self.state = WorkerState(secret, label=f"{address[0]}:{self.server_address[1]}")

    def server_bind(self) -> None:
        # HTTPServer.server_bind() calls socket.getfqdn(host), a reverse DNS lookup that can take
        # seconds on a machine without DNS; the name is only used for CGI variables we do not serve.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    @property
    def url(self) -> str:
        host = self.state.label.rsplit(":", 1)[0]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.server_port}"

    def track(self, conn: socket.socket, add: bool) -> None:
        with self._connections_lock:
            (self._connections.add if add else self._connections.discard)(conn)

    def server_close(self) -> None:
        """Stop listening, end every task process and every open connection (their threads then
        close the sockets)."""
        super().server_close()
        state = getattr(self, "state", None)  # None when binding failed in __init__
        if state is not None:
            state.tasks.close()
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def start_in_thread(self) -> threading.Thread:
        """Serve from a daemon thread (tests, embedding); stop with ``shutdown()`` then ``server_close()``."""
        thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"mrkit-http-worker-{self.server_port}",
            daemon=True,
        )
        thread.start()
        return thread


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one connection per driver-worker pair
    server_version = "mrkit-worker"
    sys_version = ""  # do not advertise the Python version
    disable_nagle_algorithm = True  # never let Nagle hold back the last bytes of an answer (40 ms stalls)
    # Buffer the answer: headers and body then leave in one write when handle_one_request() flushes,
    # instead of two, which would wake the driver twice per task.
    wbufsize = 1 << 16
    timeout = IDLE_TIMEOUT
    server: WorkerServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        # Called for every request (send_response logs it): format only when someone listens.
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s", self.address_string(), format % args)

    # -- endpoints ---------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
        if self._from_browser():
            return
        if self.path == wire.HEALTH_PATH:
            self._send(wire.OK, wire.HEALTHY, {})
        elif self.path == wire.STATUS_PATH:
            self._send_json(wire.OK, self.server.state.status())
        else:
            where = f"GET {wire.HEALTH_PATH}, GET {wire.STATUS_PATH} or POST {wire.TASK_PATH}"
            self._send_json(wire.NOT_FOUND, {"error": f"not found: {where}"})

    def do_POST(self) -> None:  # noqa: N802
        if self._from_browser():
            return
        state = self.server.state
        if self.path != wire.TASK_PATH:
            self._send_json(wire.NOT_FOUND, {"error": f"not found: POST {wire.TASK_PATH}"}, close=True)
            return
        body = self._read_body()
        if body is None:
            return
        if not self._host_is_ours():
            return
        try:
            nonce = state.verifier.verify("POST", self.path, body, self.headers)
        except ReplayedRequest as exc:
            # Correctly signed, seen before: a duplicate, not an impostor. 409, unsigned, so that the
            # driver sends the task again with a fresh signature instead of giving up on us.
            with state.lock:
                state.refused += 1
            logger.warning("refused a task request from %s: %s", self.address_string(), exc)
            self._send(wire.CONFLICT, wire.replayed_body(str(exc)), {}, close=True)
            return
        except AuthenticationError as exc:
            with state.lock:
                state.refused += 1
            logger.warning("refused a task request from %s: %s", self.address_string(), exc)
            self._send_json(wire.UNAUTHORIZED, {"error": str(exc)}, close=True)
            return
        try:
            spec = TaskSpec.decode(body)
        except Exception as exc:  # a signed but malformed spec: a driver of another version, say
            error = wire.error_body(f"undecodable task spec: {type(exc).__name__}: {exc}")
            self._send_signed(wire.BAD_REQUEST, error, nonce)
            return
        if spec.kind is TaskKind.CALL and spec.call_digest:
            if spec.call_fn:
                if (
                    state.function(spec.call_digest) is None
                    and hashlib.sha256(spec.call_fn).hexdigest() == spec.call_digest
                ):
                    state.remember_function(spec.call_digest, spec.call_fn)
            else:
                cached = state.function(spec.call_digest)
                if cached is None:
                    self._send_signed(wire.CONFLICT, wire.NEED_FUNCTION, nonce)
                    return
                spec = dataclasses.replace(spec, call_fn=cached)
        try:
            result = self._run(spec)
        except TaskLost as exc:
            self._send_signed(wire.LOST, wire.lost_body(str(exc)), nonce)
            return
        self._send_signed(wire.OK, result.encode(), nonce)

    # -- helpers -----------------------------------------------------------------------------------

    def _run(self, spec: TaskSpec) -> TaskResult:
        state = self.server.state
        with state.lock:
            state.running += 1
        try:
            result = state.tasks.run(spec)
        except TaskLost:
            with state.lock:
                state.failed += 1
            raise
        except Exception as exc:  # no task process could start: the driver must still get an answer
            failure = TaskFailure(
                where=f"worker {state.label}",
                exc_type=type(exc).__name__,
                message=str(exc),
                traceback=traceback.format_exc(),
            )
            result = TaskResult(spec.task_id, spec.attempt, ok=False, worker=state.label, failure=failure)
        finally:
            with state.lock:
                state.running -= 1
        with state.lock:
            if result.ok:
                state.completed += 1
            else:
                state.failed += 1
        return result

    def _host_is_ours(self) -> bool:
        """Refuse (421, close) a request whose ``Host`` is not an address of ours.

        The host must be the address the request arrived on or a loopback one (an SSH tunnel's);
        the port is not checked, since relays and tunnels change it. A DNS-rebinding page names its
        own domain, and a request aimed at another worker names that worker's address.
        """
        host = (self.headers.get("Host") or "").strip()
        name = host[1:].partition("]")[0] if host.startswith("[") else host.rpartition(":")[0] or host
        local = str(self.connection.getsockname()[0]).removeprefix("::ffff:")  # IPv4 on a dual-stack socket
        if name and (name == local or name == "localhost" or is_loopback(name)):
            return True
        with self.server.state.lock:
            self.server.state.refused += 1
        logger.warning("refused a task request from %s for Host %r", self.address_string(), host)
        error = f"misdirected request: Host {host!r} is not an address of this worker ({local})"
        self._send_json(wire.MISDIRECTED, {"error": error}, close=True)
        return False

    def _from_browser(self) -> bool:
        """Refuse (403, close) a request a web browser made: such a page could be any site."""
        if any(name in self.headers for name in wire.BROWSER_HEADERS):
            with self.server.state.lock:
                self.server.state.refused += 1
            self._send_json(wire.FORBIDDEN, {"error": "requests from web browsers are refused"}, close=True)
            return True
        return False

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering why it cannot be read."""
        if "Transfer-Encoding" in self.headers:
            self._send_json(
                wire.LENGTH_REQUIRED, {"error": "send a Content-Length, not a chunked body"}, close=True
            )
            return None
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._send_json(wire.LENGTH_REQUIRED, {"error": "Content-Length required"}, close=True)
            return None
        if length < 0 or length > MAX_BODY_BYTES:
            self._send_json(wire.TOO_LARGE, {"error": f"body over {MAX_BODY_BYTES} bytes"}, close=True)
            return None
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            return None
        return body

    def _send_json(self, status: int, data: dict[str, Any], *, close: bool = False) -> None:
        self._send(status, json.dumps(data).encode(), {}, close=close)  # wire.error_body's shape

    def _send_signed(self, status: int, body: bytes, nonce: str) -> None:
        signature = sign_response(self.server.state.secret, status, nonce, body)
        self._send(status, body, {wire.HEADER_SIGNATURE: signature, wire.HEADER_NONCE: nonce})

    def _send(self, status: int, body: bytes, headers: dict[str, str], *, close: bool = False) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the driver went away (it gave up on us, or died): nothing to tell it
            self.close_connection = True


def open_server(secret: bytes, *, port: int | None = None, bind: str = "127.0.0.1") -> WorkerServer:
    """Bind a worker server (not yet serving).

    Args:
        secret: the shared secret.
        port: the port; None binds port 0, a free port the system picks.
        bind: the address to listen on.

    Returns:
        The bound :class:`WorkerServer`; its ``url`` names the port actually bound.

    Raises:
        ConfigError: the port is in use or the address cannot be bound (one sentence with the fix).
    """
    if port is not None and not 0 <= port <= 65535:
        raise ConfigError(f"port must be between 0 and 65535, got {port}")
    try:
        return WorkerServer((bind, port or 0), secret)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {bind} is already in use: pick another --port, or omit "
                "--port to get a free one"
            ) from None
        raise ConfigError(f"cannot listen on {bind}:{port or 0}: {exc.strerror or exc}") from None


def serve(*, port: int | None = None, bind: str = "127.0.0.1", secret_file: str | None = None) -> None:
    """Run a worker until interrupted (``mrkit worker http``).

    Args:
        port: port to listen on (None: a free one).
        bind: address to listen on; anything but loopback exposes the worker to the network, where
            requests are signed but not encrypted.
        secret_file: file holding the shared secret (else ``$MRKIT_SECRET_FILE``, ``$MRKIT_SECRET``).

    Raises:
        ConfigError: no usable secret, or the port cannot be bound.
    """
    secret = load_secret(secret_file)
    server = open_server(secret, port=port, bind=bind)
    try:
        server.state.tasks.prestart()  # its imports overlap our start-up: the first task is not slow
        if not is_loopback(bind):
            print(
                f"mrkit worker: listening on {bind}, reachable from the network: requests are signed but "
                "not encrypted (use a private network or a TLS tunnel)",
                file=sys.stderr,
            )
        print(server.url, flush=True)
        print(f"mrkit worker: ready at {server.url}; Ctrl-C stops it", file=sys.stderr, flush=True)
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# --------------------------------------------------------------------------------------------------
# Workers started by a driver


def _exit_when_orphaned(parent_pid: int) -> None:
    # Daemon thread. stdin is a pipe from the driver that it never writes again: read() returns at
    # end-of-file, i.e. when the driver closed it or died (the kernel closes its end). os._exit, not
    # sys.exit: a task may be running in another thread and must not keep the process alive.
    def watch_stdin() -> None:
        try:
            while sys.stdin.buffer.read(65536):
                pass
        except (OSError, ValueError):
            pass
        os._exit(0)

    def watch_parent() -> None:
        # Belt and braces: a stdin end inherited by some grandchild would otherwise keep us alive.
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_POLL_SECONDS)
        os._exit(0)

    for target in (watch_stdin, watch_parent):
        threading.Thread(target=target, name=f"mrkit-{target.__name__}", daemon=True).start()


def driver_main(argv: list[str] | None = None) -> int:
    """Entry point of a worker started by an ``http`` driver (internal; see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m mrkit.backends.http.server")
    parser.add_argument(
        wire.DRIVER_FLAG,
        action="store_true",
        required=True,
        help="read the configuration from stdin and exit when stdin closes",
    )
    parser.parse_args(argv)
    # The process group's Ctrl-C is the driver's to handle; it stops us by closing our stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    line = sys.stdin.buffer.readline()
    if not line:
        return 0
    secret, sys_path, ready_fd = wire.parse_startup_line(line)
    _exit_when_orphaned(parent)
    sys.path[:] = sys_path  # as the driver sees it, so jobs pickled by reference import here
    server = open_server(secret, port=0, bind="127.0.0.1")
    server.state.tasks.prestart()
    os.write(ready_fd, f"{server.url}\n".encode())
    os.close(ready_fd)
    server.serve_forever(poll_interval=0.5)
    return 0


if __name__ == "__main__":
    sys.exit(driver_main())
