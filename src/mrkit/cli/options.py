"""Options shared by ``mrkit run`` and ``mrkit submit``; the ones a fleet or shell sets once have an
``MRKIT_*`` variable: EXECUTOR, WORKERS, STORAGE, STORAGE_OPTIONS, MEMORY_MB (STYLE 40)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import click

from mrkit.errors import ConfigError


def parse_params(items: tuple[str, ...]) -> dict[str, Any]:
    """``("k=1", "name=x")`` -> ``{"k": 1, "name": "x"}``; values are JSON when they parse as JSON."""
    params: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--param {item!r} must look like NAME=VALUE")
        name, _, raw = item.partition("=")
        try:
            params[name] = json.loads(raw)
        except json.JSONDecodeError:
            params[name] = raw
    return params


def apply_storage_options(raw: str | None) -> None:
    """Make ``--storage-options`` (a JSON object) the object-store options of this process and of
    every worker process it starts, through ``MRKIT_STORAGE_OPTIONS`` (which they inherit).

    Workers started elsewhere (a Redis fleet, user-started HTTP workers, deployed functions) read
    their own ``MRKIT_STORAGE_OPTIONS`` or AWS variables.

    Raises:
        ConfigError: ``raw`` is not a JSON object.
    """
    if raw is None:
        return
    from mrkit.storage.fsspec import parse_storage_options  # no object-store package is imported

    parse_storage_options(raw, "--storage-options")
    os.environ["MRKIT_STORAGE_OPTIONS"] = raw


def _apply_redis_password_file(_ctx: click.Context, _param: click.Parameter, path: str | None) -> None:
    if path is not None:
        from mrkit.storage.redis import PASSWORD_ENV, read_password_file

        # The environment, not argv: this process and every worker process it starts read it, and
        # `ps` shows none of it.
        try:
            os.environ[PASSWORD_ENV] = read_password_file(path)
        except ConfigError as exc:
            raise click.BadParameter(str(exc)) from None


def redis_password_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a command with ``--redis-password-file PATH`` (also ``$MRKIT_REDIS_PASSWORD_FILE``):
    the Redis password is read from the file into ``MRKIT_REDIS_PASSWORD`` before the command runs,
    so it never appears on a command line. Commands see no extra argument."""
    return click.option(
        "--redis-password-file",
        type=click.Path(dir_okay=False),
        default=None,
        envvar="MRKIT_REDIS_PASSWORD_FILE",
        expose_value=False,
        callback=_apply_redis_password_file,
        help="File holding the Redis password (else $MRKIT_REDIS_PASSWORD; $MRKIT_REDIS_USERNAME "
        "for an ACL user), instead of a password in the redis:// URL.",
    )(fn)


def run_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a command with the options of ``mrkit.run``."""
    options = [
        click.option("-N", "--n-map", "n_map", type=int, default=None, help="Number of map tasks."),
        click.option(
            "--split-size",
            "split_size",
            type=click.IntRange(min=1),
            default=None,
            help="Cut file inputs into map tasks of about this many bytes, at line ends (1: one line each).",
        ),
        click.option(
            "-M",
            "--n-reduce",
            "n_reduce",
            type=int,
            default=None,
            help="Number of reduce tasks (output parts).",
        ),
        click.option("-o", "--output", default=None, help="Output folder or URL (default: print to stdout)."),
        click.option(
            "--executor",
            default=None,
            envvar="MRKIT_EXECUTOR",
            help="inline, processes (default), redis://…, http, http://h:p,…, lambda://fn, dask, dask://h:p, tls://h:p.",
        ),
        click.option(
            "--workers",
            "--max-concurrency",
            "workers",
            type=int,
            default=None,
            envvar="MRKIT_WORKERS",
            help="Parallelism: worker processes, HTTP workers, or function invocations in flight "
            "(--max-concurrency, for lambda://). Default: all cores.",
        ),
        click.option("--storage", default=None, envvar="MRKIT_STORAGE", help="Intermediate storage URL."),
        click.option(
            "--storage-options",
            default=None,
            metavar="JSON",
            help='Object-store options for inputs, shuffle and output, e.g. \'{"endpoint_url": '
            '"http://127.0.0.1:9000", "region_name": "eu-west-1"}\' (also $MRKIT_STORAGE_OPTIONS; '
            "credentials are better left to the AWS variables).",
        ),
        click.option(
            "--format",
            "format",
            type=click.Choice(["tsv", "jsonl"]),
            default=None,
            help="Output format (default tsv: JSON key TAB JSON value).",
        ),
        click.option(
            "--memory-mb",
            type=float,
            default=None,
            envvar="MRKIT_MEMORY_MB",
            help="Map-side buffer per task before spilling (default 256).",
        ),
        click.option(
            "--errors",
            type=click.Choice(["strict", "replace", "skip"]),
            default=None,
            help="Undecodable input: fail (strict, default), replace or skip (counted).",
        ),
        click.option("--overwrite", is_flag=True, default=None, help="Replace an existing output."),
        click.option(
            "--sort-values",
            "sort_values",
            is_flag=True,
            default=None,
            help="Each reducer sees its key's values sorted (secondary sort).",
        ),
        click.option(
            "--sort-output",
            "sort_output",
            is_flag=True,
            default=None,
            help="Totally ordered output: parts read in order are sorted by key (sampled range partitions).",
        ),
        click.option("--param", multiple=True, metavar="NAME=VALUE", help="Job parameter (repeatable)."),
        click.option(
            "--input-mapper",
            "input_mappers",
            multiple=True,
            metavar="PATH=MAPPER",
            help="Read PATH with its own mapper, a function of the job's module or module:function "
            "(repeatable; Hadoop's MultipleInputs, for joins). Replaces INPUT.",
        ),
        click.option("--counters", is_flag=True, default=False, help="Print every counter at the end."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return redis_password_option(fn)
