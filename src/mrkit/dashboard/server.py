"""Serving the dashboard: in the foreground (``mrkit dashboard``) or beside a run
(``mrkit run --dashboard``, ``mrkit.run(..., dashboard=True)``), with uvicorn.

The default bind is 127.0.0.1. Binding any other address needs a token (:func:`make_token`, or the
user's ``--token-file``): the URL printed then carries it once.
"""

from __future__ import annotations

import ipaddress
import secrets
import threading
import time
from typing import Any

from mrkit.dashboard.app import create_app
from mrkit.dashboard.sources import Source, open_sources
from mrkit.errors import ConfigError


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def make_token() -> str:
    return secrets.token_urlsafe(24)


def read_token_file(path: str) -> str:
    """The token in ``path`` (its first line, stripped); a missing or empty file is one sentence."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.readline().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the dashboard's token file {path}: {exc.strerror or exc}") from None
    if len(token) < 16:
        raise ConfigError(f"the dashboard's token file {path} must hold a token of 16 characters or more")
    return token


class DashboardServer:
    """A dashboard served by uvicorn in a daemon thread of this process.

    Args:
        sources: what it shows (default: this machine's job registry).
        host, port: where it listens (port 0: a free one; :attr:`url` tells which).
        token: required from clients; None on loopback.
    """

    def __init__(
        self,
        sources: dict[str, Source] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        poll: float = 0.5,
    ) -> None:
        import uvicorn

        if not is_loopback(host) and token is None:
            raise ConfigError(f"a dashboard bound to {host} (beyond loopback) needs a token")
        self.sources = sources if sources is not None else open_sources([])
        self.host, self.token = host, token
        app = create_app(self.sources, token=token, loopback_only=is_loopback(host), poll=poll)
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=1, lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="mrkit-dashboard", daemon=True)
        self.port = 0

    def start(self, timeout: float = 10.0) -> DashboardServer:
        """Start serving; return once the socket listens.

        Raises:
            ConfigError: the address cannot be bound (in use, not this machine's).
        """
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(f"the dashboard could not listen on {self.host}: is the port in use?")
            time.sleep(0.02)
        sockets: Any = self._server.servers[0].sockets
        self.port = sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        """The dashboard's address (with ``?token=`` when it needs one)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        base = f"http://{host}:{self.port}/"
        return base + (f"?token={self.token}" if self.token else "")

    def job_url(self, source: str, job_id: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        base = f"http://{host}:{self.port}/jobs/{source}/{job_id}"
        return base + (f"?token={self.token}" if self.token else "")

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
        for source in self.sources.values():
            close = getattr(source, "close", None)
            if close is not None:
                close()
