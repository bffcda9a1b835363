"""``mrkit dashboard``: serve the web dashboard (:mod:`mrkit.dashboard`) until interrupted."""

from __future__ import annotations

import signal
import time

import click

from mrkit.cli.options import redis_password_option
from mrkit.errors import ConfigError, MissingExtra


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--executor",
    "executors",
    multiple=True,
    envvar="MRKIT_EXECUTOR",
    help="An asynchronous executor whose jobs to show too (redis://…, lambda://…?storage=…, dask://…); "
    "may repeat. The runs of this machine (the job registry) are always shown.",
)
@redis_password_option
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option("--port", type=int, default=8765, show_default=True, help="The port (0: a free one).")
@click.option(
    "--token-file",
    default=None,
    help="A file whose first line is the token clients must give; default: a new token, printed, "
    "whenever --host is beyond loopback.",
)
def dashboard(executors: tuple[str, ...], host: str, port: int, token_file: str | None) -> None:
    """Serve the web dashboard: every job of this machine and of each --executor, live.

    Binds 127.0.0.1 unless --host says otherwise; beyond loopback every client needs the token.

    \b
    Example:
      mrkit dashboard --executor redis://127.0.0.1:6379/0
    """
    try:
        from mrkit.dashboard.server import DashboardServer, is_loopback, make_token, read_token_file
        from mrkit.dashboard.sources import open_sources
    except ImportError as exc:
        raise MissingExtra("mrkit dashboard", "dashboard", exc.name or "starlette") from None
    token = read_token_file(token_file) if token_file else None
    if token is None and not is_loopback(host):
        token = make_token()
    if len(set(executors)) != len(executors):
        raise ConfigError("an --executor is given twice")
    server = DashboardServer(open_sources(list(executors)), host=host, port=port, token=token).start()
    stopped: list[int] = []
    # Appending to a list takes no lock (a handler that set a threading.Event could wait forever
    # on the lock the main thread holds inside that event's wait()).
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopped.append(signum))
    click.echo(f"mrkit: dashboard at {server.url} (Ctrl-C stops it)", err=True)
    try:
        while not stopped:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
