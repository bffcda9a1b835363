"""Detached deliveries of a local function: the supervising process each one gets, and stopping them.

An asynchronous invocation made with ``detached=True``
(:class:`~mrkit.backends.aws_lambda.emulator.LocalFunction`) writes its event to
``{state_dir}/event-*.json`` and starts ``python -m mrkit.backends.aws_lambda.detached FILE``
in a new session: :func:`run_supervisor` delivers it (retries included) and so outlives whoever
invoked it, as a serverless job must outlive its submitter. While it runs it holds the ``flock`` of
``{state_dir}/running/{event}.lock``, which holds its pid. :func:`stop_detached` stops them all (a
test's teardown, an operator clearing a local function).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sys
import time
from typing import Any

from mrkit.backends.aws_lambda.emulator import FunctionConfig, LocalFunction, lock_held


def stop_detached(folder: str, timeout: float = 10.0) -> int:
    """Stop every detached delivery of the function whose state folder is ``folder``: the events
    no supervisor took yet are removed, and every supervisor is sent SIGTERM (it kills its
    delivery's process group and exits; SIGKILL after ``timeout / 2`` seconds). Repeated until
    nothing runs, since a delivery may have invoked more before it was stopped.

    Returns:
        how many supervisors were signalled.

    Raises:
        TimeoutError: deliveries still ran after ``timeout`` seconds.
    """
    running = os.path.join(folder, "running")
    if not os.path.isdir(running):
        return 0
    deadline = time.monotonic() + timeout
    signalled: dict[int, float] = {}
    idle_checks = 0
    while True:
        for name in os.listdir(folder):
            if name.startswith("event-") and name.endswith(".json"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, name))
        busy = False
        for name in os.listdir(running):
            path = os.path.join(running, name)
            if not lock_held(path, remove_stale=True):
                continue
            busy = True
            with contextlib.suppress(FileNotFoundError, ValueError):
                with open(path, "rb") as f:
                    pid = int(f.read() or b"0")  # 0: the supervisor has not written it yet
                first = signalled.setdefault(pid, time.monotonic()) if pid else None
                if first is not None:
                    late = time.monotonic() - first > timeout / 2
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL if late else signal.SIGTERM)
        # Idle twice in a row: a supervisor that read its event just before the event was removed
        # takes its lock within milliseconds, and is stopped on the next round.
        idle_checks = 0 if busy else idle_checks + 1
        if idle_checks == 2:
            return len(signalled)
        if time.monotonic() > deadline:
            raise TimeoutError(f"detached deliveries of {folder} still ran after {timeout:g} s")
        time.sleep(0.05)


def run_supervisor(path: str) -> int:
    """Body of ``python -m mrkit.backends.aws_lambda.detached FILE``: deliver one detached event.

    The supervisor holds the ``flock`` of ``running/{event file}.lock`` from before it removes the
    event file until it ends, so :meth:`LocalFunction.wait_idle` always sees it (the lock is
    released by the kernel even if the supervisor is killed).
    """
    try:
        with open(path) as f:
            job = json.load(f)
    except FileNotFoundError:
        return 0  # removed by stop_detached before it started: never delivered
    config = FunctionConfig.from_dict(job["config"])
    lock_path = os.path.join(config.folder(), "running", os.path.basename(path) + ".lock")
    function = LocalFunction(config, detached=True)

    def stop(signum: int, _frame: Any) -> None:  # stop_detached: no retry, no new delivery
        function.kill_now()
        os._exit(128 + signum)  # the kernel releases the lock; lock_held removes the stale file

    signal.signal(signal.SIGTERM, stop)
    with open(lock_path, "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        lock.truncate(0)
        lock.write(str(os.getpid()).encode())  # for stop_detached
        lock.flush()
        with contextlib.suppress(FileNotFoundError):  # stop_detached may have removed it already
            os.unlink(path)
        try:
            function.deliver_async(job["event"], job["request_id"])
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock_path)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m mrkit.backends.aws_lambda.detached EVENT_FILE", file=sys.stderr)
        sys.exit(2)
    sys.exit(run_supervisor(sys.argv[1]))
