"""The fleet worker's lifecycle: signals, hand-back, pools, leases kept alive by heartbeats."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import mrkit
from mrkit.backends.redis.job_state import JobKeys
from mrkit.backends.redis.wire import WORKERS
from mrkit.model.reference import reference
from tests import jobs_for_tests as J
from tests.redis_fixtures import (  # noqa: F401 - fixtures
    WorkerThreads,
    process_tree,
    redis_server,
    redis_url,
    secret_env,
    start_worker,
    stop_worker,
    wait_for,
)

TEXT = ["the cat sat on the mat", "The dog sat", "a b c a b a", "it's 42 o'clock"] * 10
WORDS = mrkit.Job(mapper=J.words, reducer=J.total)
GATE_SECONDS = 60.0


def gated_mapper(line: str) -> Iterator[tuple[str, int]]:
    """The first attempt of the task ``params["hold"]`` says it started, then waits for a go file."""
    ctx = mrkit.context()
    gate = ctx.params["gate"]
    if ctx.task_id == ctx.params["hold"] and ctx.attempt == 1:
        started = os.path.join(gate, f"started-{os.getpid()}")
        if not os.path.exists(started):
            with open(started, "w") as f:
                f.write(str(os.getpid()))
        deadline = time.monotonic() + GATE_SECONDS
        while not os.path.exists(os.path.join(gate, "go")) and time.monotonic() < deadline:
            time.sleep(0.02)
    yield from J.words(line)


def slow_mapper(line: str) -> Iterator[tuple[str, int]]:
    """Each map task outlasts several leases (one record sleeps ``params["sleep"]`` seconds)."""
    if line == "sleep here":
        time.sleep(float(mrkit.context().params["sleep"]))
    yield from J.words(line)


def gated_job(gate: str, hold: str = "map-00000") -> mrkit.Job:
    return mrkit.Job(mapper=gated_mapper, reducer=J.total, params={"gate": gate, "hold": hold})


def started_pids(gate: str) -> list[int]:
    return [int(name.split("-", 1)[1]) for name in os.listdir(gate) if name.startswith("started-")]


def open_gate(gate: str) -> None:
    with open(os.path.join(gate, "go"), "w"):
        pass


def test_sigterm_finishes_the_task_in_hand_then_exits(redis_url, redis_server, tmp_path, secret_env):  # noqa: F811
    gate = str(tmp_path)
    handle = mrkit.submit(gated_job(gate), mrkit.Records(TEXT), executor=redis_url, n_map=3, n_reduce=1)
    worker = start_worker(redis_url, name="leaver", burst=False)
    try:
        wait_for(lambda: started_pids(gate), what="the held map task to start")
        worker.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # the signal is handled at once; the task is still held at the gate
        assert worker.poll() is None, "the worker left before finishing its task"
        open_gate(gate)
        assert worker.wait(timeout=60) == 0
    finally:
        err = stop_worker(worker)
    assert "stopping after the current task" in err, err
    client = redis_server.client()
    k = JobKeys(handle.id)
    assert client.hget(k.done("map"), "map-00000") == b"1", err  # committed by the worker that left
    assert client.zscore(WORKERS, "leaver") is None  # it deregistered
    with WorkerThreads(redis_url, 1, burst=True):
        result = handle.result(timeout=60)
    assert sorted(result) == reference(WORDS, TEXT)
    st = handle.status()
    assert st["lost"] == {"map": 0, "reduce": 0} and st["attempts"]["map"] == 3


def test_ctrl_c_on_a_worker_pool_finishes_the_task_in_hand(redis_url, redis_server, tmp_path, secret_env):  # noqa: F811
    """A terminal's Ctrl-C signals the whole process group (the pool's parent and its children): each
    child must still see one request to stop, not two (a second one means "stop now")."""
    gate = str(tmp_path)
    handle = mrkit.submit(gated_job(gate), mrkit.Records(TEXT), executor=redis_url, n_map=3, n_reduce=1)
    pool = start_worker(redis_url, name="pool", concurrency=2, burst=False, new_session=True)
    client = redis_server.client()
    try:
        wait_for(
            lambda: {b"pool/0", b"pool/1"} <= set(client.zrange(WORKERS, 0, -1)), what="both pool workers"
        )
        wait_for(lambda: started_pids(gate), what="the held map task to start")
        os.killpg(pool.pid, signal.SIGINT)
        time.sleep(0.3)
        open_gate(gate)
        assert pool.wait(timeout=60) == 0
    finally:
        if pool.poll() is None:
            os.killpg(pool.pid, signal.SIGKILL)
        err = stop_worker(pool)
    assert client.hget(JobKeys(handle.id).done("map"), "map-00000") == b"1", err
    assert client.zrange(WORKERS, 0, -1) == []
    with WorkerThreads(redis_url, 1, burst=True):
        result = handle.wait(timeout=60)
    assert sorted(result) == reference(WORDS, TEXT)
    assert handle.status()["lost"] == {"map": 0, "reduce": 0}


def test_stop_hands_back_prefetched_entries_without_counting_them_lost(redis_url, tmp_path):  # noqa: F811
    gate = str(tmp_path)
    handle = mrkit.submit(gated_job(gate), mrkit.Records(TEXT), executor=redis_url, n_map=6, n_reduce=1)
    first = WorkerThreads(redis_url, 1)
    first.workers[0]._count = 8  # read every map entry at once, as a worker running tiny tasks does
    with first:
        wait_for(lambda: started_pids(gate), what="the held map task to start")
        assert handle.status()["in_flight"] == 6  # all six were delivered to it
        first.workers[0].stop()
        open_gate(gate)
    assert first.workers[0].tasks_done == 1
    with WorkerThreads(redis_url, 1, burst=True):
        result = handle.wait(timeout=60)
    assert sorted(result) == reference(WORDS, TEXT)
    st = handle.status()
    assert st["lost"] == {"map": 0, "reduce": 0} and st["attempts"]["map"] == 6
    assert not [line for line in handle.logs() if "reclaimed" in line]


def test_heartbeats_keep_a_long_task_leased(redis_url, secret_env):  # noqa: F811
    """Tasks lasting 2.5 leases are never reclaimed while their workers live (asynchronous and
    blocking). Workers renew every half second, so a loaded machine has 1.5 s of slack."""
    url = redis_url + "?lease=2"
    records = ["sleep here", *TEXT[:20], "sleep here", *TEXT[20:]]  # one sleep in each of 2 splits
    job = mrkit.Job(mapper=slow_mapper, reducer=J.total, params={"sleep": 5})
    handle = mrkit.submit(job, mrkit.Records(records), executor=url, n_map=2, n_reduce=1)
    workers = [start_worker(url, name=f"hb{i}") for i in range(2)]
    try:
        result = handle.wait(timeout=90)
    finally:
        errs = [stop_worker(w) for w in workers]
    assert sorted(result) == reference(WORDS, records), errs
    st = handle.status()
    assert st["lost"] == {"map": 0, "reduce": 0} and st["attempts"]["map"] == 2, (st, errs)

    policy = mrkit.RetryPolicy(speculative=False)
    with WorkerThreads(url, 2):
        got = mrkit.run(
            job, mrkit.Records(records), executor=url, n_map=2, n_reduce=1, policy=policy, quiet=True
        )
    assert sorted(got) == reference(WORDS, records)
    assert got.counters["map.attempts_lost"] == 0 and got.counters["map.attempts_launched"] == 2


def test_task_timeout_ends_a_hung_task_of_an_async_job(redis_url, tmp_path, secret_env):  # noqa: F811
    """A user function that never returns keeps its worker heartbeating; with RetryPolicy.task_timeout
    the worker's watchdog reports the attempt as failed (timed out, naming the record), ends its task
    process and the supervisor replaces it; the next attempt runs and the job completes."""
    gate = str(tmp_path)
    url = redis_url + "?lease=1"
    policy = mrkit.RetryPolicy(task_timeout=2)
    handle = mrkit.submit(
        gated_job(gate), mrkit.Records(TEXT), executor=url, n_map=2, n_reduce=1, policy=policy
    )
    workers = [start_worker(url, name=f"t{i}", burst=False) for i in range(2)]
    try:
        wait_for(lambda: started_pids(gate), what="the map task to hang")
        result = handle.wait(timeout=90)  # never returns if the hung task keeps its lease
    finally:
        open_gate(gate)
        for w in workers:
            w.send_signal(signal.SIGTERM)
        errs = [stop_worker(w) for w in workers]
    assert sorted(result) == reference(WORDS, TEXT), errs
    st = handle.status()
    assert st["lost"]["map"] == 0 and st["failures"]["map"] == 1, st
    assert [line for line in handle.logs() if "timed out after 2 s" in line and "record" in line]


def test_a_stop_request_during_a_task_process_restart_still_stops_the_supervisor(redis_url):  # noqa: F811
    """SIGKILL a fleet worker's task process, then SIGTERM its supervisor at moments that fall before,
    during and after the replacement is started: every time, the supervisor (and the replacement)
    stop within seconds and exit 0. (The narrowest window, a request landing while the replacement is
    being forked, is hit deterministically by the next test.)"""
    for delay in (0.0, 0.05, 0.2, 0.45, 0.55, 1.0):
        proc = start_worker(redis_url, burst=False, name=f"restart-{int(delay * 100)}")
        try:
            wait_for(lambda: len(process_tree(proc.pid)) >= 2, what="the task process")  # noqa: B023
            task = process_tree(proc.pid)[1]
            os.kill(task, signal.SIGKILL)
            time.sleep(delay)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
        finally:
            errs = stop_worker(proc)
        assert proc.returncode == 0, (delay, errs)


class _SleeperContext:
    """Stands in for the supervisor's multiprocessing context: its processes only sleep."""

    def __init__(self) -> None:
        import multiprocessing

        self._ctx = multiprocessing.get_context("fork")

    def Process(self, target, args, daemon):  # noqa: N802 - the multiprocessing name
        return self._ctx.Process(target=time.sleep, args=(30,), daemon=True)


def test_a_replacement_started_after_a_stop_request_is_asked_to_stop(redis_url):  # noqa: F811
    """The stop request lands after the supervisor decided to replace a task process and before the
    replacement is in its table (forward() then cannot see it): the replacement must still get its
    SIGTERM, or the supervisor would wait for it for ever."""
    from mrkit.backends.redis.supervisor import Supervisor

    sup = Supervisor(redis_url, ["w"], burst=True, secret=b"")
    sup.ctx = _SleeperContext()
    sup.stopping, sup.stop_requests = True, 1  # forward() ran while the replacement was being forked
    sup._start(0)
    child = sup.children[0]
    child.join(timeout=10)
    assert child.exitcode == -signal.SIGTERM
    assert sup.asked_to_stop == {child.pid: 1}  # once: a second SIGTERM would mean "stop now"


def test_a_replacement_whose_sigterm_was_lost_in_the_fork_still_stops(redis_url):  # noqa: F811
    """CPython clears the signals pending in a freshly forked child, so a SIGTERM that reaches a
    replacement in the instant after fork() is lost (the supervisor then waited for it forever: one
    run in ~50 of the test above). The replacement also reads the supervisor's shared count of stop
    requests once its handler is installed: here no SIGTERM is sent at all, and it still stops."""
    from mrkit.backends.redis.supervisor import Supervisor

    sup = Supervisor(redis_url, ["lost"], burst=False, secret=b"")
    sup.stop_flag.value = 1  # the request was made; its SIGTERM never arrives
    sup._start(0)
    child = sup.children[0]
    child.join(timeout=15)
    assert child.exitcode == 0


def test_a_stop_request_while_the_supervisor_starts_is_a_clean_stop(redis_url):  # noqa: F811
    """SIGTERM while ``mrkit worker`` is still starting (here: handing back a predecessor's entries,
    before any task process exists): the supervisor's handler is already in place, so it starts no
    task process and returns normally (exit 0), instead of dying of the signal (exit -15)."""
    from mrkit.backends.redis.supervisor import Supervisor

    sup = Supervisor(redis_url, ["early-a", "early-b"], burst=False, secret=b"")
    real = sup._hand_back

    def hand_back_then_stop(name: str) -> None:
        real(name)
        if name == "early-a":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler runs in this (main) thread at the next bytecode

    sup._hand_back = hand_back_then_stop  # type: ignore[method-assign]
    before = signal.getsignal(signal.SIGTERM)
    sup.run()
    assert sup.stop_requests == 1 and all(child is None for child in sup.children)
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's handler is back
