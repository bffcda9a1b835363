"""Faults an asynchronous job on the fleet must shrug off: entries out of their phase, a duplicated
publish, an undecodable signed entry, a zombie worker finishing after the job ended."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterable

import pytest

import mrkit
from mrkit.backends.redis.job_state import JobKeys
from mrkit.backends.redis.wire import DEAD, beat, pack, resolve_secret
from mrkit.errors import JobFailed
from mrkit.model.reference import reference
from tests import jobs_for_tests as J
from tests.redis_fixtures import (  # noqa: F401 - fixtures
    WorkerThreads,
    redis_server,
    redis_url,
    secret_env,
    start_worker,
    stop_worker,
    wait_for,
)
from tests.test_redis_worker import GATE_SECONDS, TEXT, WORDS, open_gate, started_pids


def gated_reducer(key: str, values: Iterable[int]) -> int:
    """The first attempt of reduce-00000 says it started, then waits for a go file."""
    import time

    ctx = mrkit.context()
    gate = ctx.params["gate"]
    if ctx.task_id == "reduce-00000" and ctx.attempt == 1:
        started = os.path.join(gate, f"started-{os.getpid()}")
        if not os.path.exists(started):
            with open(started, "w") as f:
                f.write(str(os.getpid()))
        deadline = time.monotonic() + GATE_SECONDS
        while not os.path.exists(os.path.join(gate, "go")) and time.monotonic() < deadline:
            time.sleep(0.02)
    return sum(values)


def test_entries_before_their_phase_and_a_duplicated_publish_change_nothing(redis_url, redis_server):  # noqa: F811
    handle = mrkit.submit(J.WORDCOUNT, mrkit.Records(TEXT), executor=redis_url, n_map=3, n_reduce=2)
    client = redis_server.client()
    k = JobKeys(handle.id)
    # Hold the map entries back (read by a consumer that is no worker, and that beats its liveness:
    # the workers hand a silent consumer's entries back within a second), so the job stays in its
    # map phase while the workers meet a reduce and the publish step delivered early (as duplicates).
    # Alive before it holds anything: a consumer that holds entries and never beat counts as departed
    # (the CI once saw two of the three maps handed back, in a window of a few milliseconds).
    beat(client, "parked")
    parked = client.xreadgroup("workers", "parked", {k.tasks: ">"})[0][1]
    assert len(parked) == 3
    holding = threading.Event()
    holding.set()

    def keep_parked_alive() -> None:
        while holding.is_set():
            beat(client, "parked")
            time.sleep(0.1)

    beating = threading.Thread(target=keep_parked_alive, daemon=True)
    beating.start()
    try:
        reduce_entry = client.lrange(k.next("reduce"), 0, 1)
        publish_entry = client.lrange(k.next("publish"), 0, 1)
        client.xadd(k.tasks, {"p": reduce_entry[0], "s": reduce_entry[1]})
        client.xadd(k.tasks, {"p": publish_entry[0], "s": publish_entry[1]})
        # And the publish step enqueued twice when the last reduce commits (two publishers at once).
        client.rpush(k.next("publish"), *publish_entry)
        with WorkerThreads(redis_url, 2):
            wait_for(
                lambda: sum("before its phase" in line for line in handle.logs()) == 2,
                what="both early entries to be dropped",
            )
            # Still held by "parked": nothing ran a map before they are released.
            logs = "\n".join(handle.logs())
            assert client.xpending(k.tasks, "workers")["pending"] == 3, logs
            assert "reclaimed" not in logs
            for entry_id, fields in parked:  # release the maps
                client.xack(k.tasks, "workers", entry_id)
                client.xadd(k.tasks, fields)
            holding.clear()
            beating.join()
            result = handle.wait(timeout=60)
    finally:  # a failed assertion must not leave the thread beating into the next test's server
        holding.clear()
        beating.join(5)
    assert sorted(result) == reference(J.WORDCOUNT, TEXT)
    st = handle.status()
    assert st["failures"] == {"map": 0, "reduce": 0} and st["attempts"] == {"map": 3, "reduce": 2}, st
    logs = "\n".join(handle.logs())
    # The second publish entry was dropped: as "already taken" if it came while the first one ran,
    # silently if the job had ended by then.
    assert logs.count("] event: publishing") == 1, logs
    assert client.xpending(k.tasks, "workers")["pending"] == 0


def test_an_undecodable_signed_entry_is_refused_and_the_job_completes(redis_url, redis_server):  # noqa: F811
    handle = mrkit.submit(J.WORDCOUNT, mrkit.Records(TEXT), executor=redis_url, n_map=2, n_reduce=1)
    client = redis_server.client()
    k = JobKeys(handle.id)
    secret = resolve_secret(redis_url)
    client.xadd(k.tasks, pack(secret, {"op": "task", "job": handle.id}, b"not a task spec"))
    with WorkerThreads(redis_url, 1, burst=True):  # a worker that crashed would re-raise here
        result = handle.wait(timeout=60)
    assert sorted(result) == reference(J.WORDCOUNT, TEXT)
    dead = client.xrange(DEAD)
    assert len(dead) == 1 and b"undecodable task" in dead[0][1][b"reason"], dead
    assert client.xpending(k.tasks, "workers")["pending"] == 0


def test_a_zombie_reducer_finishing_after_the_job_ended_changes_nothing(
    redis_url,  # noqa: F811
    redis_server,  # noqa: F811
    tmp_path,
    secret_env,  # noqa: F811
):
    """Freeze (SIGSTOP) the worker running a reduce: its lease expires, another worker re-runs the
    reduce and publishes the job. Thawed, the zombie finishes its reduce late: the output, the
    status and the counters stay as they were, and it leaves nothing behind."""
    url = redis_url + "?lease=1"
    gate = tmp_path / "gate"
    gate.mkdir()
    out = tmp_path / "out"
    job = mrkit.Job(mapper=J.words, reducer=gated_reducer, params={"gate": str(gate)})
    handle = mrkit.submit(job, mrkit.Records(TEXT), executor=url, n_map=2, n_reduce=2, output=str(out))
    zombie = start_worker(url, name="zombie", burst=False)
    helper = None
    try:
        pid = wait_for(lambda: started_pids(str(gate)), what="the held reduce")[0]
        assert _parent(pid) == zombie.pid  # the zombie's task process
        os.kill(pid, signal.SIGSTOP)
        helper = start_worker(url, name="helper", burst=True)
        result = handle.wait(timeout=60)
        before = handle.status()
        published = sorted(os.listdir(out))
        os.kill(pid, signal.SIGCONT)
        open_gate(str(gate))
        # SIGTERM: the worker finishes the task in hand, then exits. The job's publisher removed the
        # zombie's half-written part under it, so its late attempt ends without a commit (either
        # way it must change nothing); its exit proves it is over before the checks below.
        zombie.send_signal(signal.SIGTERM)
        assert zombie.wait(timeout=60) == 0
    finally:
        if zombie.poll() is None:
            os.kill(zombie.pid, signal.SIGCONT)
            zombie.kill()
        errs = stop_worker(zombie) + (stop_worker(helper) if helper else "")
    assert sorted(result) == reference(WORDS, TEXT), errs
    # (a _temporary/ folder may hold the frozen zombie's unfinished part file at this point)
    assert [name for name in published if name != "_temporary"] == ["_SUCCESS", "part-00000", "part-00001"]
    leftovers = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs]
    assert sorted(os.listdir(out)) == ["_SUCCESS", "part-00000", "part-00001"], (leftovers, errs)
    assert sorted(mrkit.read_output(str(out))) == reference(WORDS, TEXT)
    after = handle.status()
    assert after["state"] == "done" and after["counters"] == before["counters"]
    client = redis_server.client()
    keys = client.keys(f"mrkit:{{{handle.id}}}:*")
    assert keys and all(client.ttl(key) > 0 for key in keys), [(key, client.ttl(key)) for key in keys]
    assert not [key for key in keys if b":data:" in key], keys


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def killer_mapper(line: str) -> Iterable[tuple[str, int]]:
    """SIGKILLs its own worker on every attempt of the task that reads 'killme'."""
    if "killme" in line:
        os.kill(os.getpid(), signal.SIGKILL)
    yield from J.words(line)


def test_a_task_that_kills_every_worker_fails_the_job_after_max_lost(redis_url, tmp_path, secret_env):  # noqa: F811
    url = redis_url + "?lease=1"
    out = tmp_path / "out"
    job = mrkit.Job(mapper=killer_mapper, reducer=J.total)
    policy = mrkit.RetryPolicy(max_lost=1)
    records = ["a b", "killme now", "c d"]
    handle = mrkit.submit(
        job, mrkit.Records(records), executor=url, n_map=3, n_reduce=1, output=str(out), policy=policy
    )
    workers = [start_worker(url, name=f"k{i}", burst=False) for i in range(3)]
    try:
        with pytest.raises(JobFailed) as info:
            handle.wait(timeout=90)
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        errs = [stop_worker(w) for w in workers]
    assert str(info.value).startswith("map task map-00001 of job ") and "its worker was lost 2 times" in str(
        info.value
    ), errs
    # The task processes were killed; their supervisors replaced them and exited cleanly when asked.
    assert [w.returncode for w in workers] == [0, 0, 0], errs
    assert sum(err.count("task process killed by signal 9") for err in errs) == 2, errs
    assert handle.status()["lost"]["map"] == 2
    assert not out.exists() or os.listdir(out) == []


def test_only_one_publish_entry_may_publish(redis_server, redis_url):  # noqa: F811
    """The PUBLISH script, on its own: one publisher per job; its own reclaim may resume."""
    from mrkit.backends.redis.job_state import SCRIPTS

    client = redis_server.client()
    script = client.register_script(SCRIPTS["publish"])
    k = JobKeys("job-p")
    client.hset(k.state, mapping={"state": "running", "phase": "reduce"})
    client.xgroup_create(k.tasks, "workers", id="0", mkstream=True)
    first, second = (client.xadd(k.tasks, {"p": "x"}) for _ in range(2))
    client.xreadgroup("workers", "w", {k.tasks: ">"})
    assert script(keys=[k.state, k.tasks], args=["workers", first]) == b"early"
    client.hset(k.state, "phase", "publish")
    assert script(keys=[k.state, k.tasks], args=["workers", second]) == b"ok"
    assert script(keys=[k.state, k.tasks], args=["workers", first]) == b"taken:" + second
    assert script(keys=[k.state, k.tasks], args=["workers", second]) == b"ok"  # a reclaim resumes
    assert client.xpending(k.tasks, "workers")["pending"] == 1  # the dropped ones were acked
    client.hset(k.state, "state", "done")
    assert script(keys=[k.state, k.tasks], args=["workers", second]) == b"ended"
    client.delete(k.state)
    assert script(keys=[k.state, k.tasks], args=["workers", second]) == b"lost"
    assert not client.exists(k.state)  # never re-created
