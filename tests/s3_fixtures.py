"""A real S3-protocol server on 127.0.0.1 for the object-store tests: moto's standalone server.

``moto_server`` (session-scoped) starts moto's server (``tests/moto_s3_server.py``: its conditional
PUT made atomic, as S3's is) with ``-H 127.0.0.1 -p PORT`` as a subprocess on a free loopback
port, waits until it answers, points the usual AWS environment variables at it (dummy
credentials, ``AWS_ENDPOINT_URL_S3``), and kills it at the end. Subprocesses started by the tests
(lambda-local invocations) inherit those variables, so they reach the same server. ``s3_bucket``
gives each test a fresh, empty bucket name; ``s3_url`` an ``s3://`` URL in it.

When ``moto[server]`` is not installed the tests are skipped on a laptop and fail in CI
(``CI`` set), like the Redis fixtures (STYLE 32).

``MotoServer`` is also usable outside pytest (the benchmark uses it).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = ["FaultProxy", "MotoServer", "moto_server", "patched_env", "s3_bucket", "s3_url"]

# Dummy credentials: moto accepts any; real ones must never be picked up by the tests.
DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    """moto's S3 server in a subprocess bound to 127.0.0.1.

    Args:
        port: the port (default: a free one).
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> MotoServer:
        """Start the server and wait until it answers.

        Raises:
            RuntimeError: it exited or did not answer within ``timeout`` seconds.
        """
        self._proc = subprocess.Popen(
            # moto's server with its conditional PUT made atomic (see that module).
            [
                sys.executable,
                str(Path(__file__).with_name("moto_s3_server.py")),
                "-H",
                "127.0.0.1",
                "-p",
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto server exited with status {self._proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1):
                    return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"moto server did not answer on {self.endpoint} within {timeout}s")

    def stop(self) -> None:
        """Kill the server (it holds only in-memory state)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)
        self._proc = None

    def restart(self) -> None:
        """Stop and start on the same port; every bucket and object is gone afterwards."""
        self.stop()
        self.start()

    def env(self) -> dict[str, str]:
        """The environment variables that point boto3, s3fs and mrkit at this server."""
        return {**DUMMY_ENV, "AWS_ENDPOINT_URL_S3": self.endpoint}

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (default: a fresh random name) and return its name."""
        import boto3

        name = name or f"mrkit-test-{uuid.uuid4().hex[:12]}"
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket=name)
        client.close()
        return name


@contextlib.contextmanager
def patched_env(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block (an empty value removes one)."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for key, value in values.items():
            if value:
                os.environ[key] = value
            else:
                os.environ.pop(key, None)
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


# One server per test process. Each test module star-imports these fixtures, and pytest then sees one
# session-scoped `moto_server` fixture *per module*; without sharing, a second module would start a
# second server and re-point the environment while clients cached by the first still talk to the first.
_SHARED: dict[str, Any] = {"server": None, "users": 0, "env": None}


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"moto[server] and boto3 are needed for the S3 tests: {exc}")
    if _SHARED["server"] is None:
        server = MotoServer().start()
        # AWS_CONFIG_FILE/AWS_SHARED_CREDENTIALS_FILE pointed at nothing: never read a developer's profile.
        env = {
            **server.env(),
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_PROFILE": "",
        }
        patch = patched_env(env)
        patch.__enter__()
        _SHARED.update(server=server, env=patch)
    _SHARED["users"] += 1
    try:
        yield _SHARED["server"]
    finally:
        _SHARED["users"] -= 1
        if _SHARED["users"] == 0:
            _SHARED["env"].__exit__(None, None, None)
            _SHARED["server"].stop()
            _SHARED.update(server=None, env=None)


@pytest.fixture
def s3_bucket(moto_server: MotoServer) -> str:
    """A fresh, empty bucket in the moto server."""
    return moto_server.create_bucket()


@pytest.fixture
def s3_url(s3_bucket: str) -> str:
    """``s3://<fresh bucket>/mrkit`` (a prefix, as a user would give)."""
    return f"s3://{s3_bucket}/mrkit"


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream`` that cuts responses mid-body.

    While ``cuts`` is positive, a connection whose server-to-client bytes would pass ``after`` is
    cut there (both sockets closed) and ``cuts`` drops by one; ``cuts=-1`` cuts every connection
    that gets that far. Small responses (PUT, HEAD, listings) pass; large ranged GETs are cut in the
    middle of their body, as a dropped connection would.

    With ``match``, only responses to ``GET`` requests whose request line contains it are cut, each
    after its headers and ``after`` bytes of its body (so ``after=0`` delivers no byte of a body:
    every such request fails without progress); other requests pass untouched.

    Args:
        upstream: ``http://127.0.0.1:PORT`` of the real server.
        after: bytes of a connection's responses (with ``match``: of a body) let through before a cut.
        cuts: how many connections to cut (``-1``: all).
        match: cut only responses to GETs whose request line holds these bytes (e.g. ``b"/in/"``).
    """

    def __init__(
        self, upstream: str, *, after: int = 64 << 10, cuts: int = 0, match: bytes | None = None
    ) -> None:
        import threading

        self.upstream_port = int(upstream.rsplit(":", 1)[1])
        self.after = after
        self.cuts = cuts
        self.match = match
        self.cut_count = 0
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._open: set[socket.socket] = set()
        self._stopped = False
        self._thread = threading.Thread(target=self._accept, name="fault-proxy", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        import threading

        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self._open.update((client, server))
            doomed: dict[str, Any] = {"on": False, "head": b""}  # the connection's current response
            threading.Thread(target=self._pump, args=(client, server, False, doomed), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True, doomed), daemon=True).start()

    def _take_cut(self) -> bool:
        with self._lock:
            if self.cuts == 0:
                return False
            self.cuts -= 1 if self.cuts > 0 else 0
            self.cut_count += 1
            return True

    def _pump(self, src: socket.socket, dst: socket.socket, response: bool, doomed: dict[str, Any]) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self.match is not None:
                    if not response and data[:1].isalpha():  # a request line (HTTP/1.1: one at a time)
                        line = data.split(b"\r\n", 1)[0]
                        doomed.update(
                            on=line.startswith(b"GET ") and self.match in line and self._take_cut(), head=b""
                        )
                    elif response and doomed["on"]:
                        head = doomed["head"] + data
                        end = head.find(b"\r\n\r\n")
                        if end < 0:
                            doomed["head"] = head
                        else:  # headers, `after` bytes of the body, then the connection drops
                            dst.sendall(data[: max(0, end + 4 + self.after - len(doomed["head"]))])
                            break
                    dst.sendall(data)
                    continue
                if response and sent + len(data) > self.after and self._take_cut():
                    dst.sendall(data[: max(0, self.after - sent)])
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            self._close(src)
            self._close(dst)

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def stop(self) -> None:
        self._stopped = True
        self._listener.close()
        with self._lock:
            socks = list(self._open)
        for sock in socks:
            self._close(sock)
