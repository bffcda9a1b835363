"""Runner functions for the process executor's tests, importable in worker processes.

A worker imports its runner by name (``"tests._process_targets:act"``), so these must live in a module,
not in the test file. ``act`` reads instructions from ``spec.call`` as JSON, so one runner can sleep,
die, hang or report its hash salt, and tests stay readable::

    {"value": 3}                 -> counters["value"] == 6
    {"pidfile": path}            write this worker's pid to path (atomically) before anything else
    {"sleep": 1.5}               sleep that long
    {"exit": 3}                  os._exit(3): the worker dies
    {"hash": "text"}             counters["hash"] == hash("text") in this worker
    {"raise": "message"}         raise RuntimeError(message) (a runner should not; the executor copes)
    {"output": 1000000}          return that many bytes in ``output`` (large results)
    {"report": true}             ``output`` is JSON: this worker's parent pid, what each of its file
                                 descriptors is (``/proc/self/fd``), whether SIGTERM has its default
                                 handler, ``seeded`` of a ``numpy.random`` module if one is loaded, and how
                                 many objects the cyclic collector never scans (``gc.freeze``)
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import time

from mrkit.model.task import TaskResult, TaskSpec


def act(spec: TaskSpec, *, worker: str = "") -> TaskResult:
    """Follow the JSON instructions in ``spec.call`` and report what happened in the counters."""
    orders = json.loads(spec.call or b"{}")
    counters = {"pid": os.getpid()}
    if "pidfile" in orders:
        tmp = orders["pidfile"] + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(str(os.getpid()))
        os.replace(tmp, orders["pidfile"])
    if "sleep" in orders:
        time.sleep(orders["sleep"])
    if "exit" in orders:
        os._exit(orders["exit"])
    if "raise" in orders:
        raise RuntimeError(orders["raise"])
    if "hash" in orders:
        counters["hash"] = hash(orders["hash"])
    if "value" in orders:
        counters["value"] = 2 * orders["value"]
    output = b"x" * orders.get("output", 0)
    if orders.get("report"):
        output = json.dumps(_report()).encode()
    return TaskResult(spec.task_id, spec.attempt, ok=True, counters=counters, output=output, worker=worker)


def tiny(spec: TaskSpec, *, worker: str = "") -> TaskResult:
    """The smallest useful task: echo the partition number back (for throughput measurements)."""
    return TaskResult(spec.task_id, spec.attempt, ok=True, counters={"p": spec.partition}, worker=worker)


def _report() -> dict[str, object]:
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[name] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # the listing's own descriptor, closed by now
    numpy_random = sys.modules.get("numpy.random")
    return {
        "ppid": os.getppid(),
        "fds": fds,
        "sigterm_default": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
        "seeded": getattr(numpy_random, "seeded", None),
        "frozen": gc.get_freeze_count(),
    }
