"""``mrkit worker``: start a worker of the Redis fleet or an HTTP worker.

    mrkit worker redis://host:port/db [--concurrency K] [--burst] [--name N] [--redis-password-file F]
    mrkit worker http [--port P] [--bind 127.0.0.1] [--secret-file F]

The backends are imported only for the kind asked for; each provides ``serve(...)``.
"""

from __future__ import annotations

import click

from mrkit.cli.options import redis_password_option
from mrkit.errors import ConfigError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("target")
@click.option("--concurrency", type=int, default=None, help="Redis: tasks run at once (default: cores).")
@click.option("--burst", is_flag=True, help="Redis: exit when no work is left.")
@click.option("--name", default=None, help="Redis: worker name shown in status (default host:pid).")
@click.option(
    "--port", type=int, default=None, help="HTTP: port to listen on (default: a free one, printed)."
)
@click.option("--bind", default="127.0.0.1", show_default=True, help="HTTP: address to listen on.")
@click.option(
    "--secret-file",
    type=click.Path(dir_okay=False),
    default=None,
    envvar="MRKIT_SECRET_FILE",
    help="File holding the shared secret (else $MRKIT_SECRET).",
)
@redis_password_option
def worker(
    target: str,
    concurrency: int | None,
    burst: bool,
    name: str | None,
    port: int | None,
    bind: str,
    secret_file: str | None,
) -> None:
    """Start a worker for TARGET: a redis:// URL, or the word http."""
    if target.startswith(("redis://", "rediss://", "unix://")):
        from mrkit.backends.redis.supervisor import serve as serve_redis

        serve_redis(target, concurrency=concurrency, burst=burst, name=name, secret_file=secret_file)
    elif target == "http":
        redis_only = [
            opt
            for opt, given in (
                ("--concurrency", concurrency is not None),
                ("--burst", burst),
                ("--name", name is not None),
            )
            if given
        ]
        if redis_only:  # an HTTP worker runs what its driver sends, one task per connection, until stopped
            raise click.UsageError(
                f"{', '.join(redis_only)} is for Redis workers; "
                "an HTTP worker takes --port, --bind and --secret-file"
            )
        from mrkit.backends.http.server import serve as serve_http

        serve_http(port=port, bind=bind, secret_file=secret_file)
    else:
        raise ConfigError(
            f"unknown worker target {target!r}: give a redis://host:port/db URL or the word http"
        )
