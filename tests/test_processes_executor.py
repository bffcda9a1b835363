"""ProcessExecutor against real worker processes: results, dead and hung workers, cancel, shutdown.

Every test runs real processes and is bounded in time. The runner is ``tests._process_targets:act``,
which follows JSON instructions in ``spec.call`` (sleep, write its pid to a file, die, report its
hash salt), so each test says plainly what its task does.

What the hash-salt tests establish: forkserver workers all share the fork server's salt (not the
driver's); spawned workers each draw their own; PYTHONHASHSEED in the environment fixes every salt,
for forkserver only if it was set before the fork server started (i.e. before the driver's first use).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from mrkit.errors import ConfigError, WorkerLost
from mrkit.execution.base import open_executor
from mrkit.execution.processes import ProcessExecutor, default_start_method
from mrkit.model.task import TaskKind, TaskResult, TaskSpec

ROOT = Path(__file__).resolve().parents[1]  # tests/ is a package: workers import tests._process_targets
MakeExecutor = Callable[..., ProcessExecutor]
RUNNER = "tests._process_targets:act"
START_METHODS = ["forkserver", "spawn"] if sys.platform.startswith("linux") else ["spawn"]


def task(task_id: str, attempt: int = 1, **orders: Any) -> TaskSpec:
    """A CALL task whose ``call`` bytes carry instructions for ``_process_targets.act``."""
    return TaskSpec("job", task_id, TaskKind.CALL, attempt=attempt, call=json.dumps(orders).encode())


def alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: fall back to signal 0 (sees zombies as alive)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def wait_until(predicate: Callable[[], object], timeout: float = 8.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def read_pid(path: Path, timeout: float = 8.0) -> int:
    wait_until(path.exists, timeout, f"{path.name} to be written by a worker")
    return int(path.read_text())


@pytest.fixture
def make_executor() -> Iterator[Callable[..., ProcessExecutor]]:
    """Build executors that are shut down after the test, and check none of their workers survive."""
    made: list[ProcessExecutor] = []
    pids: set[int] = set()

    def make(**options: Any) -> ProcessExecutor:
        options.setdefault("runner", RUNNER)
        executor = ProcessExecutor(**options)
        made.append(executor)
        return executor

    yield make
    for executor in made:
        pids.update(executor.worker_pids())
        executor.shutdown(wait=True)
    wait_until(lambda: not any(alive(pid) for pid in pids), 5.0, "workers to exit after shutdown")


# -- construction ---------------------------------------------------------------------------------


def test_from_name_options_and_defaults() -> None:
    executor = ProcessExecutor.from_name("processes", workers=3, task_timeout=9.0)
    assert (executor.name, executor.local, executor.workers) == ("processes", True, 3)
    assert executor.task_timeout == 9.0
    assert ProcessExecutor().workers == (os.cpu_count() or 1)
    assert ProcessExecutor().start_method == default_start_method()
    if sys.platform.startswith("linux"):
        assert default_start_method() == "forkserver"
    via_registry = open_executor("processes", workers=2)
    assert isinstance(via_registry, ProcessExecutor) and via_registry.workers == 2
    assert executor.worker_pids() == []  # nothing starts before the first submit


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"workers": 0}, "workers must be a positive integer"),
        ({"task_timeout": 0}, "task_timeout"),
        ({"start_method": "threads"}, "start_method must be one of"),
        ({"runner": "no_colon"}, "package.module:function"),
        ({"prefetch": -1}, "prefetch"),
        ({"shutdown_grace": -1}, "shutdown_grace"),
    ],
)
def test_bad_options_raise_config_error(options: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        ProcessExecutor(**options)


def test_from_name_rejects_other_names() -> None:
    with pytest.raises(ConfigError, match="'processes'"):
        ProcessExecutor.from_name("inline")


# -- results ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("start_method", START_METHODS)
def test_results_come_back_right_for_many_tasks(make_executor: MakeExecutor, start_method: str) -> None:
    executor = make_executor(workers=2, start_method=start_method)
    futures = [executor.submit(task(f"call-{i:04d}", value=i)) for i in range(400)]
    results = [future.result(timeout=20) for future in futures]
    assert [r.counters["value"] for r in results] == [2 * i for i in range(400)]
    assert [r.task_id for r in results] == [f"call-{i:04d}" for i in range(400)]
    labels = {r.worker for r in results}
    assert labels <= {f"pid:{pid}" for pid in executor.worker_pids()}
    assert all(r.worker == f"pid:{r.counters['pid']}" for r in results)


def test_a_raising_runner_is_a_failed_result_not_a_lost_worker(make_executor: MakeExecutor) -> None:
    executor = make_executor(workers=1)
    result = executor.submit(task("call-1", **{"raise": "boom"})).result(timeout=10)
    assert not result.ok and result.failure is not None
    assert (result.failure.exc_type, result.failure.message) == ("RuntimeError", "boom")
    assert "RuntimeError: boom" in result.failure.traceback
    pids = executor.worker_pids()
    assert executor.submit(task("call-2", value=1)).result(timeout=10).ok
    assert executor.worker_pids() == pids  # same worker, not replaced


def test_large_specs_and_results_cross_the_pipe(make_executor: MakeExecutor) -> None:
    executor = make_executor(workers=2)
    pad = "p" * 300_000
    futures = []
    for i in range(30):
        if i % 3 == 0:
            big = task(f"call-{i}", value=i, pad=pad, output=1_000_000)
            futures.append((executor.submit(big), 1_000_000))
        else:
            futures.append((executor.submit(task(f"call-{i}", value=i)), 0))
    for i, (future, size) in enumerate(futures):
        result = future.result(timeout=20)
        assert result.counters["value"] == 2 * i and len(result.output) == size


def test_the_real_runtime_runs_a_call_task(make_executor: MakeExecutor) -> None:
    cloudpickle = pytest.importorskip("cloudpickle")
    fn = cloudpickle.dumps(lambda x: x * 10)
    spec = TaskSpec(
        "job",
        "call-000001",
        TaskKind.CALL,
        call_fn=fn,
        call_digest=hashlib.sha256(fn).hexdigest(),
        call=pickle.dumps([(1,), (2,), (3,)]),
    )
    executor = make_executor(workers=1, runner="mrkit.execution.runtime:run_task")
    result = executor.submit(spec).result(timeout=20)
    assert result.ok, result.failure
    assert pickle.loads(result.output) == [10, 20, 30]
    assert result.worker == f"pid:{executor.worker_pids()[0]}"


def test_a_done_callback_may_submit_more_work(make_executor: MakeExecutor) -> None:
    executor = make_executor(workers=2)
    chained: list[Future[TaskResult]] = []
    done = threading.Event()

    def follow_up(future: Future[TaskResult]) -> None:  # runs in the dispatcher thread
        second = executor.submit(task("call-2", value=future.result().counters["value"]))
        chained.append(second)
        second.add_done_callback(lambda _: done.set())

    executor.submit(task("call-1", value=5)).add_done_callback(follow_up)
    assert done.wait(10)
    assert chained[0].result().counters["value"] == 20


# -- dead, hung and broken workers -----------------------------------------------------------------------


@pytest.mark.parametrize("start_method", START_METHODS)
def test_a_sigkilled_worker_fails_only_its_task_and_is_replaced(
    make_executor: MakeExecutor, start_method: str, tmp_path: Path
) -> None:
    executor = make_executor(workers=2, start_method=start_method)
    executor.warm_up()
    doomed = executor.submit(task("map-00003", attempt=2, pidfile=str(tmp_path / "doomed"), sleep=30))
    survivor = executor.submit(task("map-00004", pidfile=str(tmp_path / "survivor"), sleep=1.0, value=4))
    pid = read_pid(tmp_path / "doomed")
    read_pid(tmp_path / "survivor")
    os.kill(pid, signal.SIGKILL)

    with pytest.raises(WorkerLost) as caught:
        doomed.result(timeout=8)
    message = str(caught.value)
    assert "map-00003" in message and "attempt 2" in message and f"pid:{pid}" in message
    assert "SIGKILL" in message and "-9" in message
    assert (caught.value.task_id, caught.value.attempt, caught.value.worker) == ("map-00003", 2, f"pid:{pid}")

    assert survivor.result(timeout=8).counters["value"] == 8  # the other worker carried on
    wait_until(lambda: len(executor.worker_pids()) == 2, what="a replacement worker")
    assert pid not in executor.worker_pids()
    assert not alive(pid)
    results = [f.result(timeout=10) for f in [executor.submit(task(f"call-{i}", value=i)) for i in range(20)]]
    assert [r.counters["value"] for r in results] == [2 * i for i in range(20)]


def test_a_task_that_exits_its_worker_is_a_failed_attempt_naming_the_exit_code(
    make_executor: MakeExecutor,
) -> None:
    # os._exit(3) in user code is the task's doing (a poison task), not a lost worker.
    executor = make_executor(workers=1)
    result = executor.submit(task("reduce-00001", exit=3)).result(timeout=10)
    assert not result.ok and result.failure is not None
    assert result.failure.exc_type == "WorkerCrashed"
    assert re.search(r"worker pid:\d+ exited with code 3", result.failure.message)
    assert executor.submit(task("call-1", value=1)).result(timeout=10).ok


def test_tasks_sent_ahead_to_a_dying_worker_run_elsewhere(make_executor: MakeExecutor) -> None:
    # Tiny tasks make the dispatcher send several at once (prefetch); when the worker then dies,
    # only the task it was running is lost, and the ones queued behind it in its pipe run again.
    executor = make_executor(workers=1, prefetch=4)
    warm = [executor.submit(task(f"warm-{i}", value=i)) for i in range(50)]
    killer = executor.submit(task("killer", sleep=0.05, exit=9))
    after = [executor.submit(task(f"after-{i}", value=i)) for i in range(10)]
    assert all(f.result(timeout=10).ok for f in warm)
    failed = killer.result(timeout=10)
    assert not failed.ok and failed.failure is not None and "exited with code 9" in failed.failure.message
    assert [f.result(timeout=10).counters["value"] for f in after] == [2 * i for i in range(10)]


def test_ctrl_c_does_not_kill_workers(make_executor: MakeExecutor, tmp_path: Path) -> None:
    # SIGINT reaches the whole process group on Ctrl-C; the driver, not each worker, decides.
    executor = make_executor(workers=1)
    running = executor.submit(task("call-1", pidfile=str(tmp_path / "running"), sleep=0.4, value=1))
    pid = read_pid(tmp_path / "running")
    os.kill(pid, signal.SIGINT)
    assert running.result(timeout=8).counters["value"] == 2
    assert executor.worker_pids() == [pid]


def test_task_timeout_kills_a_hung_task(make_executor: MakeExecutor, tmp_path: Path) -> None:
    executor = make_executor(workers=1, task_timeout=0.5)
    executor.warm_up()
    started = time.monotonic()
    hung = executor.submit(task("map-00001", pidfile=str(tmp_path / "hung"), sleep=60))
    with pytest.raises(WorkerLost, match=r"task map-00001 attempt 1 lost: .*task_timeout=0.5s.*-9"):
        hung.result(timeout=8)
    assert time.monotonic() - started < 5
    assert not alive(read_pid(tmp_path / "hung"))
    # A task that finishes in time is not affected, and the replacement serves it.
    assert executor.submit(task("map-00002", sleep=0.1, value=2)).result(timeout=8).counters["value"] == 4


def test_a_runner_that_cannot_be_imported_is_a_config_error(make_executor: MakeExecutor) -> None:
    executor = make_executor(workers=2, runner="tests._process_targets:no_such_function")
    future = executor.submit(task("call-1"))
    with pytest.raises(ConfigError, match="no_such_function"):
        future.result(timeout=10)
    with pytest.raises(ConfigError, match="could not import its runner"):
        executor.submit(task("call-2"))
    with pytest.raises(ConfigError):
        executor.warm_up()


# -- cancel and shutdown -------------------------------------------------------------------------------


def test_cancel_of_a_queued_future_means_it_never_runs(make_executor: MakeExecutor, tmp_path: Path) -> None:
    executor = make_executor(workers=1, prefetch=0)
    running = executor.submit(task("call-1", pidfile=str(tmp_path / "running"), sleep=0.5, value=1))
    queued = executor.submit(task("call-2", pidfile=str(tmp_path / "never")))
    last = executor.submit(task("call-3", value=3))
    read_pid(tmp_path / "running")
    assert not running.cancel()  # it was sent: it runs to completion
    assert queued.cancel()
    assert running.result(timeout=8).counters["value"] == 2
    assert last.result(timeout=8).counters["value"] == 6
    assert queued.cancelled()
    assert not (tmp_path / "never").exists()


def test_shutdown_fails_pending_futures_and_kills_stragglers(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    executor = make_executor(workers=1, shutdown_grace=0.3)
    running = executor.submit(task("call-1", pidfile=str(tmp_path / "running"), sleep=60))
    queued = [executor.submit(task(f"call-{i}")) for i in (2, 3)]
    pid = read_pid(tmp_path / "running")
    started = time.monotonic()
    executor.shutdown(wait=True)
    assert time.monotonic() - started < 3
    for future in queued:
        with pytest.raises(WorkerLost, match="executor shut down before task call-. attempt 1 started"):
            future.result(timeout=1)
    with pytest.raises(WorkerLost, match="executor shut down: task call-1 attempt 1 on worker"):
        running.result(timeout=1)
    assert not alive(pid)
    assert executor.worker_pids() == []
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(task("call-4"))
    executor.shutdown()  # again: harmless


def test_shutdown_lets_a_running_task_finish_within_the_grace(
    make_executor: MakeExecutor, tmp_path: Path
) -> None:
    executor = make_executor(workers=1, shutdown_grace=5.0)
    running = executor.submit(task("call-1", pidfile=str(tmp_path / "running"), sleep=0.3, value=21))
    read_pid(tmp_path / "running")
    executor.shutdown(wait=True)
    assert running.result(timeout=1).counters["value"] == 42


@pytest.mark.parametrize("start_method", START_METHODS)
def test_no_worker_outlives_shutdown(make_executor: MakeExecutor, start_method: str) -> None:
    executor = make_executor(workers=2, start_method=start_method)
    executor.warm_up()
    first = executor.worker_pids()
    assert not executor.submit(task("call-1", exit=1)).result(timeout=10).ok  # its worker died
    wait_until(lambda: len(executor.worker_pids()) == 2, what="a replacement worker")
    every = set(first) | set(executor.worker_pids())
    assert len(every) == 3
    executor.shutdown(wait=True)
    assert not [pid for pid in every if alive(pid)]


# None: the default, which in this fresh single-threaded driver is the fast start (forked workers).
@pytest.mark.parametrize("start_method", [*START_METHODS, None])
def test_workers_exit_when_the_driver_is_killed(start_method: str | None, tmp_path: Path) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(
        textwrap.dedent(f"""
        import json, sys, time
        from mrkit.execution.processes import ProcessExecutor
        from mrkit.model.task import TaskKind, TaskSpec

        if __name__ == "__main__":
            executor = ProcessExecutor(workers=2, runner={RUNNER!r}, start_method={start_method!r})
            executor.warm_up()
            orders = json.dumps({{"pidfile": {str(tmp_path / "busy")!r}, "sleep": 60}}).encode()
            executor.submit(TaskSpec("job", "busy", TaskKind.CALL, call=orders))
            print(json.dumps(executor.worker_pids()), flush=True)
            time.sleep(60)
    """)
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    proc = subprocess.Popen([sys.executable, str(driver)], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout is not None
        pids = json.loads(proc.stdout.readline())
        assert len(pids) == 2
        read_pid(tmp_path / "busy")  # one worker is busy in a task, the other idle
        proc.kill()
        proc.wait(timeout=5)
        # The idle one sees EOF on its pipe at once; the busy one notices its parent changed.
        wait_until(lambda: not any(alive(pid) for pid in pids), 5.0, "orphaned workers to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_driver_that_exits_without_shutdown_exits_promptly(tmp_path: Path) -> None:
    # The atexit hook stops the workers (a busy one is killed after shutdown_grace) before
    # multiprocessing's own exit hook joins them, which would otherwise wait for ever.
    driver = tmp_path / "driver.py"
    driver.write_text(
        textwrap.dedent(f"""
        import json
        from mrkit.execution.processes import ProcessExecutor
        from mrkit.model.task import TaskKind, TaskSpec

        if __name__ == "__main__":
            executor = ProcessExecutor(workers=2, runner={RUNNER!r}, shutdown_grace=0.2)
            orders = json.dumps({{"pidfile": {str(tmp_path / "busy")!r}, "sleep": 60}}).encode()
            executor.submit(TaskSpec("job", "busy", TaskKind.CALL, call=orders))
            executor.warm_up()
            import os, time
            while not os.path.exists({str(tmp_path / "busy")!r}):
                time.sleep(0.01)
            print(json.dumps(executor.worker_pids()), flush=True)
    """)
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(driver)], capture_output=True, text=True, env=env, timeout=15)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 8
    pids = json.loads(proc.stdout)
    wait_until(lambda: not any(alive(pid) for pid in pids), 3.0, "workers to exit with the driver")


@pytest.mark.skipif("forkserver" not in START_METHODS, reason="only the fork server uses a Unix socket")
def test_a_long_tmpdir_does_not_break_the_fork_server_socket(tmp_path: Path) -> None:
    # TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX must fit in sun_path (108 bytes): with a TMPDIR of 80+
    # characters binding the fork server's socket failed with "AF_UNIX path too long".
    long_tmp = tmp_path / ("t" * max(1, 100 - len(str(tmp_path))))
    long_tmp.mkdir()
    assert len(str(long_tmp)) >= 100
    driver = tmp_path / "driver.py"
    driver.write_text(
        textwrap.dedent(f"""
        import json, tempfile
        from mrkit.execution.processes import ProcessExecutor
        from mrkit.model.task import TaskKind, TaskSpec

        if __name__ == "__main__":
            assert tempfile.gettempdir() == {str(long_tmp)!r}
            with ProcessExecutor(workers=1, runner={RUNNER!r}, start_method="forkserver") as executor:
                spec = TaskSpec("job", "call-1", TaskKind.CALL, call=json.dumps({{"value": 4}}).encode())
                print(executor.submit(spec).result(timeout=20).counters["value"])
    """)
    )
    env = dict(os.environ, TMPDIR=str(long_tmp), PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    proc = subprocess.run([sys.executable, str(driver)], capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "8"


def test_many_threads_may_submit_at_once(make_executor: MakeExecutor) -> None:
    executor = make_executor(workers=2)
    futures: dict[int, Future[TaskResult]] = {}

    def submit_range(start: int) -> None:
        for i in range(start, start + 150):
            futures[i] = executor.submit(task(f"call-{i}", value=i))

    threads = [threading.Thread(target=submit_range, args=(k * 150,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    values = {i: f.result(timeout=20).counters["value"] for i, f in futures.items()}
    assert values == {i: 2 * i for i in range(600)}


# -- hash salts -------------------------------------------------------------------------------------------


def _hashes_of_two_workers(executor: ProcessExecutor) -> tuple[set[int], set[int]]:
    futures = [executor.submit(task(f"call-{i}", hash="mrkit", sleep=0.3)) for i in range(2)]
    results = [f.result(timeout=20) for f in futures]
    return {r.counters["pid"] for r in results}, {r.counters["hash"] for r in results}


@pytest.mark.skipif("forkserver" not in START_METHODS, reason="forkserver is the Linux default")
def test_forkserver_workers_share_one_hash_salt(make_executor: MakeExecutor) -> None:
    # Every worker is forked from the same fork server, so they inherit its salt; a replacement too.
    executor = make_executor(workers=2, start_method="forkserver")
    pids, hashes = _hashes_of_two_workers(executor)
    assert len(pids) == 2 and len(hashes) == 1
    assert not executor.submit(task("call-x", exit=1)).result(timeout=10).ok  # its worker died
    _, again = _hashes_of_two_workers(executor)
    assert again == hashes
    if "PYTHONHASHSEED" not in os.environ:  # ...and it is not the driver's salt
        assert hashes != {hash("mrkit")}


@pytest.mark.skipif("PYTHONHASHSEED" in os.environ, reason="a fixed PYTHONHASHSEED makes every salt equal")
def test_spawned_workers_draw_their_own_hash_salts(make_executor: MakeExecutor) -> None:
    pids, hashes = _hashes_of_two_workers(make_executor(workers=2, start_method="spawn"))
    assert len(pids) == 2 and len(hashes) == 2


def test_pythonhashseed_fixes_the_salt_of_spawned_workers(
    make_executor: MakeExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONHASHSEED", "1234")
    expected = subprocess.run(
        [sys.executable, "-c", "print(hash('mrkit'))"],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ),
    ).stdout
    pids, hashes = _hashes_of_two_workers(make_executor(workers=2, start_method="spawn"))
    assert len(pids) == 2 and hashes == {int(expected)}


@pytest.mark.skipif("forkserver" not in START_METHODS, reason="forkserver is the Linux default")
def test_pythonhashseed_set_before_the_fork_server_starts_fixes_every_salt(tmp_path: Path) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(
        textwrap.dedent(f"""
        import json
        from mrkit.execution.processes import ProcessExecutor
        from mrkit.model.task import TaskKind, TaskSpec

        if __name__ == "__main__":
            with ProcessExecutor(workers=2, runner={RUNNER!r}, start_method="forkserver") as executor:
                orders = json.dumps({{"hash": "mrkit", "sleep": 0.3}}).encode()
                specs = [TaskSpec("job", str(i), TaskKind.CALL, call=orders) for i in (1, 2)]
                futures = [executor.submit(spec) for spec in specs]
                results = [f.result(timeout=20).counters for f in futures]
            print(json.dumps({{"driver": hash("mrkit"), "workers": results}}))
    """)
    )
    env = dict(os.environ, PYTHONHASHSEED="1234", PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    proc = subprocess.run([sys.executable, str(driver)], capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert len({r["pid"] for r in report["workers"]}) == 2
    assert {r["hash"] for r in report["workers"]} == {report["driver"]}


# -- many small tasks -----------------------------------------------------------------------------------


def test_thousands_of_tiny_tasks_all_come_back_in_order(make_executor: MakeExecutor) -> None:
    # Throughput is measured by benchmarks/run.py (the `futures` workload), not asserted here: this
    # checks that a burst of small tasks through the pipes loses, duplicates or mixes up none.
    executor = make_executor(workers=2, runner="tests._process_targets:tiny")
    executor.warm_up()
    specs = [TaskSpec("job", f"call-{i:06d}", TaskKind.CALL, partition=i) for i in range(3000)]
    results = [f.result(timeout=60) for f in [executor.submit(spec) for spec in specs]]
    assert [r.counters["p"] for r in results] == list(range(3000))
    assert [r.task_id for r in results] == [s.task_id for s in specs]
