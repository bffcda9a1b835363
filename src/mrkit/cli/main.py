"""The ``mrkit`` command: a click group whose subcommands load lazily (STYLE 40).

Every failure exits non-zero: 1 for a failed job or runtime error, 2 for a usage or configuration
error. A failure prints one sentence first (``mrkit: error: …``), then the remote traceback of a
failed task; a lost connection or other infrastructure error prints its sentence alone, and ``-v``
adds the local traceback to any error.

Every command (and the group itself) takes ``-v``/``--verbose`` (repeat for debug logs), ``-q``/
``--quiet`` (no progress bar, no summary, only errors) and ``--log-level LEVEL``
(``$MRKIT_LOG_LEVEL``); mrkit logs through the standard :mod:`logging` module, to stderr. Output
piped into a command that stops reading (``mrkit run … | head``) ends the command quietly, exit 0.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from typing import Any

import click

from mrkit.errors import ConfigError, MrkitError

# command name -> "module:attribute"; a module is imported only when its command runs.
COMMANDS: dict[str, str] = {
    "run": "mrkit.cli.run_cmd:run",
    "demo": "mrkit.cli.run_cmd:demo",
    "submit": "mrkit.cli.jobs_cmd:submit",
    "status": "mrkit.cli.jobs_cmd:status",
    "logs": "mrkit.cli.jobs_cmd:logs",
    "result": "mrkit.cli.jobs_cmd:result",
    "cancel": "mrkit.cli.jobs_cmd:cancel",
    "resume": "mrkit.cli.jobs_cmd:resume",
    "jobs": "mrkit.cli.jobs_cmd:jobs",
    "plot": "mrkit.cli.plot_cmd:plot",
    "dashboard": "mrkit.cli.dashboard_cmd:dashboard",
    "worker": "mrkit.cli.worker_cmd:worker",
    "lambda": "mrkit.cli.lambda_cmd:lambda_group",
}

HELP = {
    "run": "Run a job and wait for it: mrkit run JOB INPUT... -o OUT, or mrkit run job.json.",
    "demo": "Generate a word-count corpus and run the demo job on it.",
    "submit": "Submit a job to an asynchronous executor (redis://, lambda://) and print its id.",
    "status": "Show a submitted job's phase, tasks and workers.",
    "logs": "Print a submitted job's task events and user output.",
    "result": "Print a finished job's output.",
    "cancel": "Cancel a submitted job.",
    "resume": "Resume a failed or cancelled submitted job, re-using its committed tasks.",
    "jobs": "List the jobs an executor knows.",
    "plot": "Write a run's timeline and task-duration histogram as SVG: mrkit plot ID -o t.svg.",
    "dashboard": "Serve the web dashboard of this machine's runs and of each --executor's jobs.",
    "worker": "Start a worker: mrkit worker redis://host:port/db, or mrkit worker http.",
    "lambda": "Deploy or remove the mrkit function on AWS Lambda.",
}


VERBOSITY = "mrkit.verbosity"  # key in click's ctx.meta: -1 quiet, 0 normal, 1 -v, 2 -vv


def verbosity(ctx: click.Context | None = None) -> int:
    """The verbosity asked for on the command line (-1 quiet, 0 normal, 1+ verbose)."""
    ctx = ctx or click.get_current_context(silent=True)
    return int(ctx.meta.get(VERBOSITY, 0)) if ctx is not None else 0


def _configure_logging(ctx: click.Context, level: int) -> None:
    logging.basicConfig(format="mrkit: %(levelname)s: %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("mrkit").setLevel(level)
    # Libraries that set their own loggers' level (Dask's distributed logs at INFO) would otherwise
    # reach this handler through propagation: theirs pass only from WARNING (ERROR with -q) on.
    others = max(logging.WARNING, level)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _OwnOrSerious) for f in handler.filters):
            handler.addFilter(_OwnOrSerious(others))
        for f in handler.filters:
            if isinstance(f, _OwnOrSerious):
                f.others = others


class _OwnOrSerious(logging.Filter):
    """mrkit's records at the level its logger allows; anyone else's from ``others`` on."""

    def __init__(self, others: int) -> None:
        super().__init__()
        self.others = others

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name == "mrkit" or record.name.startswith("mrkit.") or record.levelno >= self.others


def _on_verbose(ctx: click.Context, param: click.Parameter, value: int) -> None:
    if value:
        ctx.meta[VERBOSITY] = max(verbosity(ctx), 0) + value
        _configure_logging(ctx, logging.INFO if value == 1 else logging.DEBUG)


def _on_quiet(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[VERBOSITY] = -1
        _configure_logging(ctx, logging.ERROR)


def _on_log_level(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        _configure_logging(ctx, logging.getLevelName(value.upper()))


def verbosity_options() -> list[click.Option]:
    """-v/-q/--log-level, accepted by the group and by every subcommand."""
    return [
        click.Option(
            ["-v", "--verbose"],
            count=True,
            expose_value=False,
            is_eager=True,
            callback=_on_verbose,
            help="More output: the local traceback of errors, info logs (-vv: debug logs).",
        ),
        click.Option(
            ["-q", "--quiet"],
            is_flag=True,
            expose_value=False,
            is_eager=True,
            callback=_on_quiet,
            help="Only errors: no progress bar, no summary line.",
        ),
        click.Option(
            ["--log-level"],
            type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
            envvar="MRKIT_LOG_LEVEL",
            expose_value=False,
            callback=_on_log_level,
            help="Level of mrkit's log messages on stderr (default warning).",
        ),
    ]


def _with_verbosity(command: click.Command) -> click.Command:
    if not getattr(command, "_mrkit_verbosity", False):
        command.params.extend(verbosity_options())
        command._mrkit_verbosity = True  # type: ignore[attr-defined]
        if isinstance(command, click.Group):
            for sub in command.commands.values():
                _with_verbosity(sub)
    return command


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that subcommand is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                raise click.UsageError(
                    f"the {cmd_name!r} command is not available in this build of mrkit"
                ) from None
            raise
        return _with_verbosity(getattr(module, attr))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, HELP[name]) for name in sorted(COMMANDS)])


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Also: python -m mrkit [-n WORKERS] [--executor E] script.py [ARGS] runs a futures script.",
)
@click.version_option(package_name="mrkit")
def cli() -> None:
    """mrkit: MapReduce for Python, from one process to a fleet."""


def _is_infrastructure(exc: BaseException) -> bool:
    """A lost connection, a refused socket, a full disk: the sentence says it all, no traceback."""
    return isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in ("redis", "botocore", "urllib3")


def report_error(exc: BaseException, verbose: int = 0) -> int:
    """Print ``exc`` as one sentence, then the traceback that helps; return the exit code.

    mrkit's own errors say everything in their sentence, and a failed task adds its remote
    traceback; an infrastructure error (a lost connection) prints its sentence alone; anything
    else (a bug) prints its traceback too. ``verbose`` adds the local traceback to every error.
    """
    code = 2 if isinstance(exc, ConfigError) else 1
    if isinstance(exc, MrkitError):
        click.echo(f"mrkit: error: {exc}", err=True)
        remote = getattr(exc, "remote_traceback", "")
        if remote:
            click.echo("\nRemote traceback (most recent call last):\n" + remote.rstrip(), err=True)
        show_local = verbose > 0
    else:
        click.echo(f"mrkit: error: {type(exc).__name__}: {exc}", err=True)
        show_local = verbose > 0 or not _is_infrastructure(exc)
    if show_local:
        click.echo("\n" + "".join(traceback.format_exception(exc)).rstrip(), err=True)
    return code


def _stdout_closed() -> int:
    """The reader of our stdout went away (``| head``): stop quietly, as ``cat`` does."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the flush at exit must not raise again
    except (OSError, ValueError):
        pass
    return 0


def main(argv: list[str] | None = None) -> Any:
    """Console entry point; returns (exits with) the command's status."""
    ctx_meta: dict[str, Any] = {}
    try:
        with cli.make_context("mrkit", list(sys.argv[1:] if argv is None else argv)) as ctx:
            ctx_meta = ctx.meta
            result = cli.invoke(ctx)
        sys.stdout.flush()
        return result
    except BrokenPipeError:
        sys.exit(_stdout_closed())
    except click.exceptions.Abort:
        click.echo("mrkit: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("mrkit: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        sys.exit(report_error(exc, int(ctx_meta.get(VERBOSITY, 0))))


cli.params.extend(verbosity_options())
