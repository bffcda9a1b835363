"""The processes executor's fast start: first workers forked from a single-threaded driver.

Each test runs a driver in a fresh interpreter (pytest's own process has threads, so it never
qualifies) and asks its workers to report what they inherited (``tests._process_targets:act``,
order ``report``). What must hold for a forked worker to be as good as a fork-server one:

* it holds none of the driver's private pipe ends (the lifeline's write end, the dispatcher's
  wake-up pipe, the other workers' task pipes), so EOF on them keeps its meaning;
* the driver's Python signal handlers are gone, and NumPy's global generator is reseeded;
* the driver's objects are frozen for the worker's cyclic collector (``gc.freeze``), not the driver's;
* a driver with a second thread, or a user who names a start method, gets no fork at all;
* a worker that dies is replaced through the fork server (the driver is threaded by then).
* ``mrkit.run`` takes this path for a one-step and a multi-step job alike.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.test_processes_executor import ROOT, RUNNER, alive, wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fast start is Linux-only")

DRIVER = textwrap.dedent(
    """
    import json, os, signal, sys, threading, types
    from mrkit.execution.processes import ProcessExecutor
    from mrkit.model.task import TaskKind, TaskSpec

    def identity(conn):
        return os.readlink(f"/proc/self/fd/{conn.fileno()}")

    def reports(executor, n):
        orders = json.dumps({"report": True, "sleep": 0.4}).encode()
        futures = [executor.submit(TaskSpec("job", f"r{i}", TaskKind.CALL, call=orders)) for i in range(n)]
        return [json.loads(f.result(timeout=30).output) for f in futures]

    if __name__ == "__main__":
        mode, runner = sys.argv[1], sys.argv[2]
        signal.signal(signal.SIGTERM, lambda *args: None)  # the driver's own handler
        fake = types.ModuleType("numpy.random")  # stands for NumPy's global generator
        fake.seeded = False
        def seed():
            fake.seeded = True
        fake.seed = seed
        sys.modules["numpy.random"] = fake
        if mode == "threaded":
            threading.Thread(target=threading.Event().wait, daemon=True).start()
        options = {"start_method": "forkserver"} if mode == "named" else {}
        executor = ProcessExecutor(workers=2, runner=runner, **options)
        executor.start()
        private = {
            "lifeline": identity(executor._lifeline_w),
            "wake": identity(executor._wake_w),
            "task_pipes": [identity(w.conn) for w in executor._workers],
        }
        first = reports(executor, 2)
        later = []
        if mode == "replace":
            crash = TaskSpec("job", "crash", TaskKind.CALL, call=json.dumps({"exit": 1}).encode())
            assert not executor.submit(crash).result(timeout=30).ok
            executor.warm_up(timeout=30)  # the replacement said hello: both workers are idle
            later = reports(executor, 2)  # one task to each idle worker
        import gc
        print(json.dumps({"pid": os.getpid(), "fast": executor.fast_started, "private": private,
                          "driver_frozen": gc.get_freeze_count(),
                          "first": first, "later": later, "workers": executor.worker_pids()}))
        executor.shutdown()
    """
)


def run_driver(tmp_path: Path, mode: str) -> dict[str, Any]:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    proc = subprocess.run(
        [sys.executable, str(script), mode, RUNNER], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    wait_until(lambda: not any(alive(pid) for pid in report["workers"]), 5.0, "workers to exit")
    return report


def test_a_single_threaded_driver_forks_its_workers_and_they_keep_nothing_of_it(tmp_path: Path) -> None:
    report = run_driver(tmp_path, "plain")
    assert report["fast"] is True
    private = report["private"]
    for worker in report["first"]:
        assert worker["ppid"] == report["pid"]  # forked from the driver itself
        held = list(worker["fds"].values())
        # Its lifeline's read end only (a pipe's two ends read alike in /proc): not the write end.
        assert held.count(private["lifeline"]) == 1
        assert private["wake"] not in held
        assert not set(private["task_pipes"]) & set(held)
        assert worker["sigterm_default"] is True
        assert worker["seeded"] is True
        # The driver's objects stay out of the worker's collector (no copy-on-write by gc scans)...
        assert worker["frozen"] > 1000
    assert report["driver_frozen"] == 0  # ...and the driver collects its own as before


@pytest.mark.parametrize("mode", ["threaded", "named"])
def test_a_threaded_driver_or_a_named_start_method_gets_no_fork(tmp_path: Path, mode: str) -> None:
    report = run_driver(tmp_path, mode)
    assert report["fast"] is False
    for worker in report["first"]:
        assert worker["ppid"] != report["pid"]  # a fork server's child
        assert worker["sigterm_default"] is True
        assert worker["seeded"] is None  # the fork server never saw the driver's modules


def test_a_dead_fast_started_worker_is_replaced_through_the_fork_server(tmp_path: Path) -> None:
    report = run_driver(tmp_path, "replace")
    assert report["fast"] is True
    parents = {worker["ppid"] for worker in report["later"]}
    # The survivor is the driver's child; its replacement came from the fork server.
    assert report["pid"] in parents and len(parents) == 2


RUNS = textwrap.dedent(
    """
    import json, os
    import mrkit

    def parent(record):
        yield "ppid", os.getppid()

    def distinct(key, values):
        return sorted(set(values))

    if __name__ == "__main__":
        records = mrkit.Records(["a"] * 8)
        one = mrkit.run(mrkit.Job(mapper=parent, reducer=distinct), records, n_map=4, quiet=True)
        steps = mrkit.Job(steps=[mrkit.Step(mapper=parent, reducer=distinct)] * 2)
        two = mrkit.run(steps, records, n_map=4, quiet=True)
        print(json.dumps({"pid": os.getpid(), "one": dict(one), "two": dict(two)}))
    """
)


def test_mrkit_run_forks_the_workers_of_one_step_and_multi_step_jobs_from_the_driver(tmp_path: Path) -> None:
    # mrkit.run (and a multi-step job's loop over its steps) start the executor before any thread
    # of their own; a mapper reports its worker's parent.
    script = tmp_path / "runs.py"
    script.write_text(RUNS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["one"] == {"ppid": [report["pid"]]}
    assert report["two"] == {"ppid": [report["pid"]]}
