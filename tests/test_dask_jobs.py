"""Asynchronous jobs on a real Dask cluster (``dask scheduler`` + ``dask worker`` processes on
127.0.0.1): submitted, followed and ended without the submitting process
(:mod:`mrkit.backends.aws_lambda.dask_jobs`).

Each test starts its own small cluster when it kills part of it; the others share one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("distributed")

import mrkit  # noqa: E402
from mrkit.coordination.plan import RetryPolicy  # noqa: E402
from tests import contract_jobs as C  # noqa: E402
from tests import dask_jobs as D  # noqa: E402
from tests.dask_fixtures import DaskCluster, closing_submitted_clients, start_cluster  # noqa: E402

MRKIT = [sys.executable, "-m", "mrkit"]
LINES = ["the cat sat on the mat", "a b c a b a", "zebra yak xylophone"] * 200


@pytest.fixture(autouse=True)
def _close_clients(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from closing_submitted_clients(monkeypatch)


@pytest.fixture(scope="module")
def cluster() -> Iterator[DaskCluster]:
    c = start_cluster(n_workers=2)
    try:
        yield c
    finally:
        c.stop()


def executor_of(cluster: DaskCluster) -> str:
    return cluster.address.replace("tcp://", "dask://")


def write_input(tmp_path: Path, lines: list[str] = LINES, name: str = "input.txt") -> str:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def expected_output(tmp_path: Path, job: mrkit.Job, source: str, **options: object) -> dict[str, object]:
    out = tmp_path / "expected"
    mrkit.run(job, source, executor="inline", output=str(out), quiet=True, **options)
    return dict(mrkit.read_output(str(out)))


@dataclass
class Stalled:
    """A job submitted over an input with a ``stall`` line (tests/dask_jobs.py), and its files."""

    handle: Any
    source: str
    out: Path
    marker: Path  # where the stalling attempt writes its worker's pid

    def wait_for_stall(self, timeout: float = 60.0) -> int:
        """Wait until the stalling attempt has started; return its worker's pid."""
        deadline = time.monotonic() + timeout
        while not self.marker.exists():
            assert time.monotonic() < deadline, self.handle.status()
            time.sleep(0.05)
        return int(self.marker.read_text())


def submit_stalling(
    executor: str,
    tmp_path: Path,
    *,
    job: mrkit.Job = D.STALL_IN_MAP,
    lines: list[str] | None = None,
    stall_seconds: float | None = 8,
    **options: Any,
) -> Stalled:
    """Submit ``job`` (a stalling one) with its marker; ``stall_seconds`` None: the long default
    stall, for a worker the test kills anyway (a shared cluster's workers get the short one)."""
    source = write_input(tmp_path, lines if lines is not None else [*LINES, "stall here"])
    marker, out = tmp_path / "stalled-pid", tmp_path / "out"
    params: dict[str, Any] = {"marker": str(marker)}
    if stall_seconds is not None:
        params["stall_seconds"] = stall_seconds
    handle = mrkit.submit(
        job, source, executor=executor, output=str(out), params=params, quiet=True, **options
    )
    return Stalled(handle, source, out, marker)


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, **(env or {})}
    environ["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent), environ.get("PYTHONPATH", "")]
    )
    return subprocess.run([*MRKIT, *args], capture_output=True, text=True, timeout=timeout, env=environ)


def test_a_job_submitted_from_a_process_that_exits_is_followed_from_others(
    cluster: DaskCluster, tmp_path: Path
) -> None:
    """``mrkit submit --executor dask://…`` prints the id and exits; ``mrkit status``, ``logs``,
    ``jobs`` and ``result --wait`` from other processes follow the job to its output, without
    ``--storage`` (the scheduler knows where the job's state lives)."""
    source = write_input(tmp_path)
    out = tmp_path / "out"
    submitted = cli(
        "submit",
        "tests.contract_jobs:WORD_COUNT",
        source,
        "--executor",
        executor_of(cluster),
        "--output",
        str(out),
        "-M",
        "3",
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[-1]
    waited = cli("result", job_id, "--executor", executor_of(cluster), "--wait", "--timeout", "90")
    assert waited.returncode == 0, waited.stderr
    got = {json.loads(k): json.loads(v) for k, v in (line.split("\t") for line in waited.stdout.splitlines())}
    assert got == expected_output(tmp_path, C.WORD_COUNT, source)
    assert dict(mrkit.read_output(str(out))) == got
    status = cli("status", job_id, "--executor", executor_of(cluster), "--json")
    assert status.returncode == 0, status.stderr
    st = json.loads(status.stdout)
    assert st["state"] == "done" and st["tasks"]["reduce"] == {"done": 3, "total": 3}, st
    assert st["counters"]["reduce.records_out"] == len(got)
    # The scheduler runs with --no-dashboard: its HTTP server answers 404 for the page, so no link.
    assert "dashboard" not in st, st
    listed = cli("jobs", "--executor", executor_of(cluster))
    assert listed.returncode == 0 and job_id in listed.stdout, listed.stdout + listed.stderr
    logs = cli("logs", job_id, "--executor", executor_of(cluster))
    assert logs.returncode == 0, logs.stderr


def test_an_unknown_job_id_is_one_clear_sentence(cluster: DaskCluster) -> None:
    done = cli("status", "no-such-job", "--executor", executor_of(cluster))
    assert done.returncode != 0
    assert "no job no-such-job on the Dask scheduler" in done.stderr, done.stderr


def test_a_raising_mapper_fails_the_job_like_processes_and_publishes_nothing(
    cluster: DaskCluster, tmp_path: Path
) -> None:
    source = write_input(tmp_path, [*LINES[:50], "poison here"])
    out = tmp_path / "out"
    handle = mrkit.submit(
        C.RAISING_MAPPER,
        source,
        executor=executor_of(cluster),
        output=str(out),
        policy=RetryPolicy(max_attempts=2),
        quiet=True,
    )
    with pytest.raises(mrkit.JobFailed) as failed:
        handle.wait(90)
    with pytest.raises(mrkit.JobFailed) as on_processes:
        mrkit.run(
            C.RAISING_MAPPER,
            source,
            executor="processes",
            output=str(tmp_path / "p"),
            policy=RetryPolicy(max_attempts=2),
            quiet=True,
        )
    shape = lambda m: m.split(" of job ")[0] + m.split(" of job ")[1].split(" ", 1)[1]  # noqa: E731 - ids differ
    assert shape(str(failed.value)) == shape(str(on_processes.value))
    assert "after 2 attempts" in str(failed.value)
    assert not (out / "_SUCCESS").exists() and not list(out.glob("part-*"))
    assert handle.status().state == "failed"


@pytest.mark.parametrize("phase", ["map", "reduce"])
def test_a_worker_killed_mid_task_loses_nothing_and_counts_nothing_twice(phase: str, tmp_path: Path) -> None:
    """SIGKILL the ``dask worker`` running a map (or reduce) task, then start another: Dask runs the
    task again (another delivery of the same event), the job goes on without its submitter's help,
    and the output is what an undisturbed run publishes."""
    c = start_cluster(n_workers=2)
    try:
        job = D.STALL_IN_MAP if phase == "map" else D.STALL_IN_REDUCE
        lines = [*LINES, "stall here", *LINES]
        stalled = submit_stalling(
            executor_of(c), tmp_path, job=job, lines=lines, stall_seconds=None, n_reduce=2
        )
        handle, source, out = stalled.handle, stalled.source, stalled.out
        os.kill(stalled.wait_for_stall(), signal.SIGKILL)
        c.add_worker()
        result = handle.wait(120)
        assert dict(mrkit.read_output(str(out))) == expected_output(tmp_path, C.WORD_COUNT, source)
        assert result.counters["map.records_in"] == len(LINES) * 2 + 1
        assert result.counters[f"{phase}.deliveries"] >= result.counters[f"{phase}.tasks"] + 1  # the re-run
        assert handle.status().state == "done"
    finally:
        c.stop()


def test_cancel_stops_the_jobs_dask_tasks_and_publishes_nothing(cluster: DaskCluster, tmp_path: Path) -> None:
    stalled = submit_stalling(executor_of(cluster), tmp_path)
    handle, out = stalled.handle, stalled.out
    stalled.wait_for_stall()
    assert handle.cancel() is True
    assert handle.status().state == "cancelled"
    with pytest.raises(mrkit.JobCancelled):
        handle.wait(10)
    assert not out.exists() or not list(out.iterdir())
    from mrkit.backends.aws_lambda.dask_invoker import job_key_prefix
    from mrkit.backends.aws_lambda.dask_jobs import _job_task_keys

    deadline = time.monotonic() + 30
    while handle.client.run_on_scheduler(_job_task_keys, job_key_prefix(handle.id)):
        assert time.monotonic() < deadline, "the cancelled job's Dask tasks are still on the scheduler"
        time.sleep(0.2)
    # The stalled task's thread still sleeps in its worker (Python cannot stop it); the worker stays usable.
    assert (
        mrkit.run(
            C.WORD_COUNT,
            write_input(tmp_path, name="small.txt"),
            executor=executor_of(cluster),
            output=str(tmp_path / "after"),
            quiet=True,
        ).counters["map.tasks"]
        >= 1
    )


def test_a_job_whose_tasks_vanish_from_the_scheduler_fails_clearly_and_resumes(
    cluster: DaskCluster, tmp_path: Path
) -> None:
    """Dask forgets a task it gave up on (its workers kept dying) and tells nobody: the follower that
    finds none of the job's tasks left fails the job in one sentence, and ``mrkit.resume`` runs the
    rest (the committed tasks are kept) to the output of an undisturbed run."""
    from distributed import Future

    from mrkit.backends.aws_lambda.dask_invoker import job_key_prefix
    from mrkit.backends.aws_lambda.dask_jobs import _job_task_keys

    stalled = submit_stalling(executor_of(cluster), tmp_path, split_size=2000)
    handle, source, out = stalled.handle, stalled.source, stalled.out
    stalled.wait_for_stall()
    keys = handle.client.run_on_scheduler(_job_task_keys, job_key_prefix(handle.id))
    handle.client.cancel([Future(k, handle.client) for k in keys], force=True)  # as Dask giving up
    started = time.monotonic()
    with pytest.raises(mrkit.JobFailed, match="none of its tasks is left on the Dask scheduler"):
        handle.wait(30)
    assert time.monotonic() - started < 15
    assert not (out / "_SUCCESS").exists()
    resumed = mrkit.resume(handle.id, executor=executor_of(cluster))
    result = resumed.wait(90)
    resumed.client.close(timeout=10)  # type: ignore[attr-defined]  # opened by mrkit.resume
    assert dict(mrkit.read_output(str(out))) == expected_output(tmp_path, C.WORD_COUNT, source)
    assert result.counters["map.tasks_resumed"] >= 1


def test_a_scheduler_that_goes_away_fails_the_job_and_never_hangs(tmp_path: Path) -> None:
    c = start_cluster(n_workers=1)
    try:
        stalled = submit_stalling(executor_of(c), tmp_path, stall_seconds=None)
        handle = stalled.handle
        stalled.wait_for_stall()
        assert c.scheduler is not None
        os.kill(c.scheduler.pid, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(mrkit.JobFailed, match="Dask scheduler at .* could not be reached"):
            handle.wait(60)
        assert time.monotonic() - started < 40
    finally:
        c.stop()


def test_a_stuck_attempt_times_out_without_killing_its_worker(cluster: DaskCluster, tmp_path: Path) -> None:
    """``task_timeout`` on Dask: the stuck attempt is reported failed and the next attempt runs; the
    worker process that other jobs share is not ended."""
    stalled = submit_stalling(executor_of(cluster), tmp_path, policy=RetryPolicy(task_timeout=2))
    result = stalled.handle.wait(90)
    assert result.counters["map.attempts_failed"] == 1
    assert dict(mrkit.read_output(str(stalled.out))) == expected_output(
        tmp_path, C.WORD_COUNT, stalled.source
    )
    os.kill(
        int(stalled.marker.read_text()), 0
    )  # still alive: raises ProcessLookupError if the timeout ended the worker
    assert all(w.poll() is None for w in cluster.workers)


def test_status_shows_the_dashboard_of_a_cluster_that_serves_one(tmp_path: Path) -> None:
    """A job submitted through a ``Client`` of yours is asynchronous too; its status names the
    dashboard page the scheduler serves (without bokeh, a page saying what to install)."""
    from distributed import Client, LocalCluster

    source = write_input(tmp_path)
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0"
        ) as cl,
        Client(cl) as client,
    ):
        handle = mrkit.submit(C.WORD_COUNT, source, executor=client, output=str(tmp_path / "out"), quiet=True)
        assert type(handle).__name__ == "DaskJobHandle"
        handle.wait(60)
        st = handle.status()
        assert st.state == "done" and (st.dashboard or "").startswith("http://127.0.0.1:"), st
        assert st.to_dict()["dashboard"] == st.dashboard


def test_a_multi_step_job_advances_on_the_cluster_without_its_submitter(
    cluster: DaskCluster, tmp_path: Path
) -> None:
    """``mrkit submit`` of a two-step job exits at once; the Dask task that publishes step 1 submits
    step 2 (the chain ends before anyone follows it); ``mrkit result/status/jobs`` follow the job."""
    from mrkit.backends.aws_lambda.dask_jobs import default_storage

    source = write_input(tmp_path)
    submitted = cli("submit", "tests.contract_jobs:TOP_WORDS", source, "--executor", executor_of(cluster))
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().splitlines()[-1]
    end = Path(default_storage()) / job_id / "chain" / "end.json"
    deadline = time.monotonic() + 90
    while not end.exists():  # nobody follows the job meanwhile
        assert time.monotonic() < deadline, "the chain did not end within 90 s"
        time.sleep(0.2)
    waited = cli("result", job_id, "--executor", executor_of(cluster), "--wait", "--timeout", "90")
    assert waited.returncode == 0, waited.stderr
    got = [tuple(json.loads(x) for x in line.split("\t")) for line in waited.stdout.splitlines()]
    assert got == list(mrkit.run(C.TOP_WORDS, source, executor="inline", quiet=True))
    st = json.loads(cli("status", job_id, "--executor", executor_of(cluster), "--json").stdout)
    assert (st["state"], st["step"], st["steps"]) == ("done", 2, 2), st
    assert st["counters"]["step2.map.records_in"] == st["counters"]["step1.reduce.records_out"], st
    assert job_id in cli("jobs", "--executor", executor_of(cluster)).stdout


def test_a_failing_step_of_a_multi_step_job_is_named(cluster: DaskCluster, tmp_path: Path) -> None:
    source = write_input(tmp_path)
    out = tmp_path / "out"
    handle = mrkit.submit(
        C.TopWordsWithPoison(params={"poison": "zebra"}),
        source,
        executor=executor_of(cluster),
        output=str(out),
        policy=RetryPolicy(max_attempts=1),
        quiet=True,
    )
    with pytest.raises(mrkit.JobFailed) as failed:
        handle.wait(90)
    message = str(failed.value)
    assert message.startswith(f"step 2 of 2 (top) of job {handle.id}: "), message
    assert "ValueError: cannot rank 'zebra'" in message
    assert not (out / "_SUCCESS").exists() and not list(out.glob("part-*"))
