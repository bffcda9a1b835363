"""``python -m mrkit [-n WORKERS] [--executor E] script.py [args]``: run a script with its workers set up.

The futures launcher (seed 002's ``python -m scoop script.py``). It:

1. puts the script's folder first on ``sys.path`` (before any worker starts, so workers can import
   the script's sibling modules too) and sets ``sys.argv`` to ``[script, *args]``;
2. makes ``--executor`` (default ``processes``) with ``-n`` workers (default: every core) the
   default executor of :mod:`mrkit.futures`;
3. runs the script as ``__main__`` (:func:`runpy.run_path`), so its ``if __name__ == "__main__":``
   block runs, and functions it defines reach the workers by value (cloudpickle ships ``__main__``);
4. shuts the executor down, whatever happened.

Exit status: the script's own ``sys.exit`` code (0 when it simply ends); 1 for an uncaught
exception, after one line ``mrkit: error: script.py raised Type: message`` and then the traceback;
2 for a usage error (bad option, missing script, unknown executor); 130 on Ctrl-C.

The same script also runs as ``python script.py``: :mod:`mrkit.futures` then opens its default
executor on first use.
"""

from __future__ import annotations

import os
import runpy
import sys
import traceback
from dataclasses import dataclass, field
from types import TracebackType

from mrkit.errors import MrkitError

USAGE = """\
usage: python -m mrkit [-n WORKERS] [--executor EXECUTOR] script.py [args ...]

Run script.py as __main__ with mrkit.futures set up: futures.map, futures.map_reduce and
futures.submit in the script run on EXECUTOR. Everything after the script goes to the script.

options:
  -n, --workers WORKERS  number of workers (default: every core)
  -e, --executor EXECUTOR
                         inline, processes (default), redis://host:port/db, http, ...
  -h, --help             show this message and exit

For MapReduce jobs, use the mrkit command: python -m mrkit run JOB INPUT... (python -m mrkit --help).
"""

_SCRIPT_SUFFIXES = (".py", ".pyw", ".pyz")
_VALUE_OPTIONS = {"-n": "workers", "--workers": "workers", "-e": "executor", "--executor": "executor"}


class UsageError(MrkitError):
    """Raised for a bad launcher command line; the message says what is wrong."""


@dataclass
class LaunchOptions:
    """A parsed launcher command line."""

    script: str = ""
    args: list[str] = field(default_factory=list)
    workers: int | None = None
    executor: str = "processes"
    help: bool = False


def parse_args(argv: list[str]) -> LaunchOptions:
    """Parse the launcher's options; the first other word is the script, the rest are its arguments.

    Options are only read before the script, so the script's own ``-n`` or ``-h`` reach it intact.

    Args:
        argv: the command line after ``python -m mrkit``.

    Returns:
        The options (``help`` set when ``-h`` came before the script).

    Raises:
        UsageError: for an unknown option, a missing value, a bad worker count or no script.
    """
    opts = LaunchOptions()
    values: dict[str, str] = {}
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            i += 1
            break
        if word in ("-h", "--help"):
            opts.help = True
            return opts
        if not word.startswith("-") or word == "-":
            break
        name, eq, value = word.partition("=")
        if name not in _VALUE_OPTIONS and word[:2] in ("-n", "-e") and len(word) > 2:
            name, eq, value = word[:2], "=", word[2:]  # -n4, -einline
        if name not in _VALUE_OPTIONS:
            raise UsageError(
                f"unknown option {word!r}; the options are -n/--workers, -e/--executor, -h/--help"
            )
        if not eq:
            i += 1
            if i == len(argv):
                raise UsageError(f"option {name} needs a value")
            value = argv[i]
        values[_VALUE_OPTIONS[name]] = value
        i += 1
    if i >= len(argv):
        raise UsageError("no script given: python -m mrkit [-n WORKERS] [--executor E] script.py [args]")
    opts.script, opts.args = argv[i], list(argv[i + 1 :])
    if "workers" in values:
        try:
            opts.workers = int(values["workers"])
        except ValueError:
            opts.workers = 0
        if opts.workers < 1:
            raise UsageError(f"-n/--workers must be a positive integer, got {values['workers']!r}")
    opts.executor = values.get("executor", opts.executor)
    return opts


def looks_like_script(argv: list[str]) -> bool:
    """True when ``python -m mrkit`` with ``argv`` is meant for the launcher, not the ``mrkit`` command.

    That is when ``argv`` starts with a launcher option (``-n``, ``--workers``, ``-e``,
    ``--executor``), or its first word names a script: it ends in ``.py``/``.pyw``/``.pyz``, or it
    is a path with a folder part to an existing file. Subcommand names (``run``, ``worker``) and
    ``-h`` on its own go to the ``mrkit`` command.

    Args:
        argv: the command line after ``python -m mrkit``.
    """
    if not argv:
        return False
    first = argv[0]
    if first.partition("=")[0] in _VALUE_OPTIONS:
        return True
    if first[:2] in ("-n", "-e") and len(first) > 2:  # -n4, -einline
        return True
    if first.startswith("-"):
        return False
    if first.endswith(_SCRIPT_SUFFIXES):
        return True
    return os.path.dirname(first) != "" and os.path.isfile(first)


def main(argv: list[str] | None = None) -> int:
    """Run the launcher; return the exit status (never raises, never 0 after a failure).

    Args:
        argv: the command line after ``python -m mrkit`` (default ``sys.argv[1:]``).

    Returns:
        The script's exit status (see the module docstring).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        opts = parse_args(argv)
    except UsageError as exc:
        print(f"mrkit: error: {exc}\n\n{USAGE}", end="", file=sys.stderr)
        return 2
    if opts.help:
        print(USAGE, end="")
        return 0
    script = opts.script
    if not os.path.exists(script):
        print(f"mrkit: error: cannot open script {script!r}: no such file or folder", file=sys.stderr)
        return 2

    from mrkit import futures  # imported here so that `python -m mrkit run …` never pays for it

    saved_argv, saved_path = sys.argv, list(sys.path)
    # Before the executor exists: workers copy sys.path when they start.
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    sys.argv = [script, *opts.args]
    try:
        try:
            futures.set_executor(opts.executor, workers=opts.workers)
        except (MrkitError, ValueError) as exc:
            print(f"mrkit: error: {exc}", file=sys.stderr)
            return 2
        return _run(script)
    finally:
        futures.shutdown()
        sys.argv = saved_argv
        sys.path[:] = saved_path


def _run(script: str) -> int:
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        return _exit_status(exc.code)
    except KeyboardInterrupt:
        print("mrkit: interrupted", file=sys.stderr)
        return 130
    except BaseException as exc:
        # An exception raised again from a worker carries a note (its last) that already says
        # where and why in one sentence; mrkit's own errors are one sentence.
        notes = [note for note in getattr(exc, "__notes__", None) or () if isinstance(note, str)]
        if notes and hasattr(exc, "remote_traceback"):
            line = f"{script} failed: {notes[-1]}"
        elif isinstance(exc, MrkitError):
            line = f"{script} failed: {exc}"
        else:
            line = f"{script} raised {type(exc).__name__}" + (f": {exc}" if str(exc) else "")
        print(f"mrkit: error: {line}", file=sys.stderr)
        traceback.print_exception(type(exc), exc, _from_script(exc.__traceback__, script), file=sys.stderr)
        return 1
    return 0


def _exit_status(code: object) -> int:
    """The process status for ``sys.exit(code)``, as the interpreter computes it."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF if code >= 0 else code % 256
    print(code, file=sys.stderr)  # sys.exit("message") prints the message and exits 1
    return 1


def _from_script(tb: TracebackType | None, script: str) -> TracebackType | None:
    """Skip the launcher's and runpy's frames, so the traceback starts in the script, as usual."""
    start = tb
    while tb is not None and tb.tb_frame.f_code.co_filename != script:
        tb = tb.tb_next
    return tb or start
