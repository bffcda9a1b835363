"""The ``mrkit`` command: a click group whose subcommands load lazily (STYLE 40).

Every failure exits non-zero: 1 for a failed job or runtime error, 2 for a usage or configuration
error. A failure prints one sentence first (``mrkit: error: …``), then the traceback (the remote one
for a failed task).
"""

from __future__ import annotations

import importlib
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
    "jobs": "mrkit.cli.jobs_cmd:jobs",
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
    "jobs": "List the jobs an executor knows.",
    "worker": "Start a worker: mrkit worker redis://host:port/db, or mrkit worker http.",
    "lambda": "Deploy or remove the mrkit function on AWS Lambda.",
}


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
        return getattr(module, attr)  # type: ignore[no-any-return]

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


def report_error(exc: BaseException) -> int:
    """Print ``exc`` as one sentence, then its traceback; return the exit code."""
    if isinstance(exc, ConfigError):
        click.echo(f"mrkit: error: {exc}", err=True)
        return 2
    if isinstance(exc, MrkitError):
        click.echo(f"mrkit: error: {exc}", err=True)
        # mrkit's own errors say everything in their sentence; only a task's remote traceback adds to it.
        remote = getattr(exc, "remote_traceback", "")
        if remote:
            click.echo("\nRemote traceback (most recent call last):\n" + remote.rstrip(), err=True)
        return 1
    click.echo(f"mrkit: error: {type(exc).__name__}: {exc}", err=True)
    click.echo("".join(traceback.format_exception(exc)).rstrip(), err=True)
    return 1


def main(argv: list[str] | None = None) -> Any:
    """Console entry point; returns (exits with) the command's status."""
    try:
        return cli.main(args=argv, prog_name="mrkit", standalone_mode=False)
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
        sys.exit(report_error(exc))
