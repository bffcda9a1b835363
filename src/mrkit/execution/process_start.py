"""How the processes executor starts its worker processes safely, on every platform.

Three things each worker start needs: a start method that is safe in a multi-threaded driver
(:func:`default_start_method`: never ``fork``), a socket path that fits (:func:`short_socket_dir`:
the fork server's socket under a long ``TMPDIR``), and a child that does not re-run the driver's
script (:func:`main_module_hidden`).

The one exception to "never fork" is the *fast start*: while the driver is still single-threaded
(:func:`~mrkit.data.prefetch.single_threaded`, which counts native threads too), forking it is as
safe as forking any single-threaded program, and ~0.1 s faster per run than starting a fork server
and importing the runtime in it. The executor uses it for its first workers only, and never when the
user chose a start method; :func:`~.process_worker.after_fork_from_driver` makes such a worker look like a
freshly started one.

Hash salts follow from the start method: with ``forkserver`` every worker is forked from the one
fork server, so all share the server's ``str`` hash salt (drawn when the server started, different
from the driver's); fast-started workers share the driver's; with ``spawn`` each worker draws its
own. ``PYTHONHASHSEED`` fixes all of them, but under forkserver only if it was set before the server
started. Either way ``hash()`` must not decide where a key goes: partitioners use digests.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import sys
import tempfile
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

from mrkit.errors import ConfigError
from mrkit.execution.process_worker import worker_main


def default_start_method() -> str:
    """The start method used when none is given: ``forkserver`` on Linux, ``spawn`` elsewhere.

    Never ``fork``: the driver is multi-threaded (at least our dispatcher thread; often the user's
    threads too), and forking a multi-threaded process copies locks held by other threads in a
    locked state, so the child can deadlock in ``logging``, ``malloc`` or an import lock. Python
    3.12+ warns about exactly this (a ``DeprecationWarning``, an error under our test settings).
    ``forkserver`` forks from a small single-threaded server that has already imported
    :mod:`mrkit.execution.runtime` (preloaded), so a worker starts in milliseconds with the runtime warm;
    ``spawn`` (macOS, Windows) starts a fresh interpreter per worker, which is slower but safe.
    """
    if sys.platform.startswith("linux") and "forkserver" in multiprocessing.get_all_start_methods():
        return "forkserver"
    return "spawn"


def start_worker(
    ctx: Any, lifeline_r: Connection, runner: str, driver_only: list[Connection]
) -> tuple[Any, Connection]:
    """Start one worker process running :func:`~.process_worker.worker_main` with ``ctx``.

    Args:
        lifeline_r: the read end of the driver's lifeline pipe (the worker watches it).
        driver_only: for a worker forked from the driver (the fast start), the driver's own ends
            of its pipes, which the child closes with its copy of this task pipe's driver end
            (:func:`~.process_worker.after_fork_from_driver`); empty otherwise (other start
            methods pass a child only the descriptors in its arguments).

    Returns:
        The process and the driver's end of the worker's task pipe.
    """
    parent_conn, child_conn = ctx.Pipe(duplex=True)
    inherited = [parent_conn, *driver_only] if driver_only else []
    # Not a daemon process: daemonic processes may not start children, and user code in a task
    # may well use multiprocessing. The executor's atexit hook stops workers before
    # multiprocessing's own hook would join them.
    process = ctx.Process(
        target=worker_main,
        name="mrkit-worker",
        args=(child_conn, lifeline_r, runner, list(sys.path), dict(os.environ), inherited),
    )
    with main_module_hidden():
        process.start()
    # Only the child may hold its end: if the parent kept it, a dead child would never read as EOF.
    child_conn.close()
    return process, parent_conn


@contextlib.contextmanager
def gc_frozen_for_fork() -> Iterator[None]:
    """Fork inside this block: the children never scan (and so never copy) the driver's objects.

    A forked child shares the driver's memory pages until it writes to them, and CPython's cyclic
    collector writes to every object it scans: without this, each worker's first full collection
    would copy every page of the driver's Python objects (a driver holding 2 GB of records would
    cost 2 GB more per worker). :func:`gc.freeze` moves every object the driver has now out of the
    collector's sight; the children keep that, and the driver takes its objects back at once
    (:func:`gc.unfreeze`), so its own collections are as before. Both are constant-time. A driver
    that froze objects itself is left alone: unfreezing would undo its own choice.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


# A Unix socket's path must fit in sun_path: 108 bytes with its NUL on Linux, 104 on macOS. The fork
# server listens on <multiprocessing temp dir>/listener-XXXXXXXX (18 more characters).
SOCKET_PATH_MAX = 103
LISTENER_SUFFIX = len("/listener-XXXXXXXX")


def short_socket_dir() -> None:
    """Make multiprocessing put its sockets where their path fits, whatever ``TMPDIR`` is.

    The fork server's socket lives in multiprocessing's temp folder (``TMPDIR/pymp-XXXXXXXX``). With
    a long ``TMPDIR`` (80 characters or so: CI runners, nested build folders) binding it fails with
    ``OSError: AF_UNIX path too long``. Then multiprocessing is given a private folder (mode 0700,
    removed at exit) under ``/tmp`` instead, before the fork server starts.

    Raises:
        ConfigError: when no short writable folder exists; names TMPDIR and the fix.
    """
    from multiprocessing import process, util

    config = process.current_process()._config  # type: ignore[attr-defined]
    current = config.get("tempdir") or os.path.join(tempfile.gettempdir(), "pymp-XXXXXXXX")
    if len(current) + LISTENER_SUFFIX <= SOCKET_PATH_MAX:
        return
    for base in ("/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(base) and os.access(base, os.W_OK | os.X_OK):
            break
    else:
        raise ConfigError(
            f"TMPDIR={tempfile.gettempdir()!r} is too long for the processes executor's Unix sockets "
            f"({len(current) + LISTENER_SUFFIX} > {SOCKET_PATH_MAX} characters) and /tmp is not "
            "writable: set TMPDIR to a shorter folder (e.g. TMPDIR=/tmp)"
        )
    saved = tempfile.tempdir
    config.pop("tempdir", None)  # a long one made earlier is still removed at exit by its finalizer
    try:
        tempfile.tempdir = base
        util.get_temp_dir()  # mkdtemp (0700) under base, cached for this process, removed at exit
    finally:
        tempfile.tempdir = saved


@contextlib.contextmanager
def main_module_hidden() -> Iterator[None]:
    """Start a worker without making it re-import the driver's ``__main__``.

    multiprocessing's spawn and forkserver re-run the main script in every child (as ``__mp_main__``)
    so that pickles can name its functions. mrkit never needs that: jobs and futures functions are
    cloudpickled, by value for ``__main__``. Re-importing it would only re-run a script that lacks an
    ``if __name__ == "__main__":`` guard (starting jobs in the workers) and break scripts read from
    stdin (``python - <<EOF``). Hiding ``__file__``/``__spec__`` while the child is created makes
    multiprocessing's preparation data omit the main module.
    """
    main = sys.modules.get("__main__")
    names = ("__file__", "__spec__")
    saved = {name: main.__dict__[name] for name in names if main is not None and name in main.__dict__}
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            main.__dict__["__spec__"] = None
        yield
    finally:
        if main is not None:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(saved)


def preload_in_forkserver(ctx: Any, modules: list[str]) -> None:
    """Have the fork server import ``modules`` once, so that every worker forked from it starts warm.

    Keeps whatever preload list is already set, but for ``'__main__'`` (multiprocessing's default,
    left out on purpose: see :func:`main_module_hidden`). The list is process-global and only takes
    effect if the server has not started yet; a running server is simply reused.
    """
    import multiprocessing.forkserver as forkserver  # Unix only, hence imported here

    server = getattr(forkserver, "_forkserver", None)
    current = [m for m in getattr(server, "_preload_modules", []) if m != "__main__"]
    ctx.set_forkserver_preload(current + [m for m in modules if m not in current])
