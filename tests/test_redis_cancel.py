"""``mrkit cancel`` on the fleet: entries a worker read ahead are dropped, not run, and the cancelled
status names the phase it stopped in ("map"/"reduce"), as the in-process driver does."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import mrkit
from mrkit.backends.redis.job_state import JobKeys
from mrkit.errors import JobCancelled
from tests import jobs_for_tests as J
from tests.redis_fixtures import WorkerThreads, mrkit_cmd, redis_server, redis_url, wait_for  # noqa: F401

N_TASKS = 40
HOLD = "map-00003"  # the worker reads 8 entries at once (as it does while tasks are tiny): 4-7 wait behind it


def marking_mapper(record: int) -> Iterator[tuple[int, int]]:
    """Marks each attempt in ``params["marks"]``; the task HOLD waits for a ``go`` file there."""
    ctx = mrkit.context()
    marks = ctx.params["marks"]
    with open(os.path.join(marks, f"{ctx.task_id}-a{ctx.attempt}"), "w"):
        pass
    if ctx.task_id == HOLD:
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(marks, "go")) and time.monotonic() < deadline:
            time.sleep(0.02)
    yield record % 2, 1


def test_cancel_drops_prefetched_entries_and_names_the_phase(redis_url, redis_server, tmp_path):  # noqa: F811
    marks = tmp_path / "marks"
    marks.mkdir()
    job = mrkit.Job(mapper=marking_mapper, reducer=J.total, params={"marks": str(marks)})
    handle = mrkit.submit(job, mrkit.Records(list(range(N_TASKS))), executor=redis_url, n_map=N_TASKS)
    client = redis_server.client()
    k = JobKeys(handle.id)
    fleet = WorkerThreads(redis_url, 1)
    fleet.workers[0]._count = 8  # its read-ahead after tiny tasks, from the first read on
    with fleet:
        wait_for(lambda: (marks / f"{HOLD}-a1").exists(), what="the held map task")
        held = client.xpending(k.tasks, "workers")["pending"]
        assert held >= 2, f"the worker read nothing ahead of the held task ({held} pending)"
        before = set(os.listdir(marks))
        assert handle.cancel()
        (marks / "go").touch()
        wait_for(lambda: client.xpending(k.tasks, "workers")["pending"] == 0, what="the prefetched entries")
        assert fleet.workers[0].tasks_done >= len(before)
    ran_after = set(os.listdir(marks)) - before - {"go"}
    assert not ran_after, f"tasks ran after the cancel: {sorted(ran_after)}"
    st = handle.status()
    assert st["state"] == "cancelled" and st["phase"] == "map", st
    assert st["error"] == f"job {handle.id} was cancelled during the map phase", st
    try:
        handle.wait(timeout=10)
    except JobCancelled as exc:
        assert "during the map phase" in str(exc)
    else:
        raise AssertionError("wait() returned for a cancelled job")
    logs = "\n".join(handle.logs())
    assert logs.count("dropped: the job was cancelled") == held - 1, logs


def test_cancel_is_refused_once_the_output_is_being_published(redis_url, redis_server, tmp_path, monkeypatch):  # noqa: F811
    """Publishing is the commit: a cancel that arrives while a worker publishes is refused, and the job
    ends done with its whole output, never cancelled with its output in place."""
    import threading

    from mrkit.backends.redis import job_steps

    publishing, release = threading.Event(), threading.Event()
    real_publish = job_steps.publish_output

    def held_publish(*args, **kwargs):  # type: ignore[no-untyped-def]
        publishing.set()
        assert release.wait(30), "the test never released the publisher"
        return real_publish(*args, **kwargs)

    monkeypatch.setattr(job_steps, "publish_output", held_publish)
    out = tmp_path / "out"
    handle = mrkit.submit(
        J.WORDCOUNT, mrkit.Records(["a b", "b c"]), executor=redis_url, output=str(out), n_map=2
    )
    with WorkerThreads(redis_url, 1):
        assert publishing.wait(30), "the job never reached its publish step"
        assert handle.cancel() is False
        said = mrkit_cmd("cancel", handle.id, "--executor", redis_url).stderr
        assert "is already publishing its output: too late to cancel" in said, said
        st = handle.status()
        assert st.state == "running" and st.phase == "publish", st
        release.set()
        result = handle.wait(timeout=30)
    assert handle.status().state == "done"
    assert (out / "_SUCCESS").exists() and dict(result) == {"a": 1, "b": 2, "c": 1}
    assert sorted(mrkit.read_output(str(out))) == [("a", 1), ("b", 2), ("c", 1)]
