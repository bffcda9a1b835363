"""Resume: a failed or SIGKILLed job run again with the same id re-uses its committed tasks.

Each test writes its job module into ``tmp_path`` (the driver subprocesses import it from there, the
workers get it shipped by value), runs every file under ``tmp_path`` and uses its own job id.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mrkit
from mrkit.cli.jobfile import load_job
from mrkit.coordination.resume import ResumeRefused
from mrkit.errors import JobFailed
from mrkit.storage import open_storage
from mrkit.storage.base import Storage
from tests.redis_fixtures import WorkerThreads, redis_server, redis_url  # noqa: F401 - fixtures
from tests.s3_fixtures import moto_server, s3_bucket, s3_url  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parent.parent

JOB_SOURCE = '''
import os
import time
import uuid

import mrkit


class Slow(mrkit.Job):
    """Word count that logs each attempt it starts, sleeps per record, and can fail one task."""

    def mapper_init(self):
        ctx = mrkit.context()
        log = self.params.get("log")
        if log:
            open(os.path.join(log, f"{ctx.task_id}.{uuid.uuid4().hex}"), "w").close()
        flag = self.params.get("fail_flag")
        if flag and ctx.task_id == self.params.get("fail_task") and os.path.exists(flag):
            raise RuntimeError("planned failure")

    def mapper(self, line):
        time.sleep(self.params.get("delay", 0))
        for word in line.split():
            yield word, 1

    def reducer(self, word, counts):
        flag = self.params.get("fail_flag")
        if flag and mrkit.context().task_id == self.params.get("fail_task") and os.path.exists(flag):
            raise RuntimeError("planned failure")
        return sum(counts)
'''

LINES = 8  # one map task per line (split_size=1)


def write_inputs(tmp_path: Path) -> tuple[Path, Path]:
    """The job module and an input of LINES lines; returns their paths."""
    module = tmp_path / "resjob.py"
    module.write_text(JOB_SOURCE)
    data = tmp_path / "in.txt"
    data.write_text("".join(f"w{i % 3} w{i % 5} shared line{i}\n" for i in range(LINES)))
    return module, data


def ran_tasks(log: Path) -> list[str]:
    """The task ids of the attempts logged in ``log`` (one file per attempt started)."""
    return sorted(name.split(".")[0] for name in os.listdir(log))


def committed_maps(storage: Storage, job_id: str) -> set[str]:
    return {k.split("/")[2] for k in storage.list(f"{job_id}/map/") if k.endswith("/COMMIT")}


def parts(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("part-*"))}


def reference_parts(module: Path, data: Path, out: Path, n_reduce: int) -> dict[str, bytes]:
    """The output of an uninterrupted inline run of the same job and inputs."""
    job = load_job(f"{module}:Slow")
    mrkit.run(job, str(data), output=str(out), executor="inline", split_size=1, n_reduce=n_reduce, quiet=True)
    return parts(out)


@pytest.mark.parametrize(
    "executor", ["inline", "processes", "redis", "http", pytest.param("s3", marks=pytest.mark.slow)]
)
def test_a_failed_job_resumes_and_runs_only_the_uncommitted_tasks(
    executor: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    module, data = write_inputs(tmp_path)
    log = tmp_path / "log"
    log.mkdir()
    flag = tmp_path / "fail"
    flag.touch()
    params = {"log": str(log), "fail_flag": str(flag), "fail_task": "map-00005"}
    job = load_job(f"{module}:Slow", params)
    out = tmp_path / "out"
    job_id = f"resume-{executor}"
    ex: str
    threads = None
    extra: dict[str, str] = {}
    if executor == "s3":  # the state in an object store (moto's S3 server)
        extra["storage"] = request.getfixturevalue("s3_url")
        ex = "inline"
        state = open_storage(extra["storage"])
    elif executor == "redis":
        url = request.getfixturevalue("redis_url")
        threads = WorkerThreads(url, 2).__enter__()
        ex = url
        state = open_storage(url)
    else:
        ex = executor
        state = open_storage(str(out / "_temporary"))
    options = dict(
        output=str(out),
        executor=ex,
        workers=2,
        split_size=1,
        n_reduce=2,
        job_id=job_id,
        policy=mrkit.RetryPolicy(max_attempts=1, speculative=False),
        quiet=True,
        **extra,
    )
    try:
        with pytest.raises(JobFailed, match="planned failure"):
            mrkit.run(job, str(data), **options)  # type: ignore[arg-type]
        before = committed_maps(state, job_id)
        assert before and "map-00005" not in before
        assert not (out / "_SUCCESS").exists()

        flag.unlink()
        for name in os.listdir(log):
            os.unlink(log / name)
        result = mrkit.run(job, str(data), resume=True, **options)  # type: ignore[arg-type]
    finally:
        if threads is not None:
            threads.__exit__(None, None, None)

    all_maps = {f"map-{i:05d}" for i in range(LINES)}
    assert result.counters["map.tasks_resumed"] == len(before)
    assert result.counters["reduce.tasks_resumed"] == 0
    assert set(ran_tasks(log)) == all_maps - before  # committed tasks did not run again
    assert result.counters["map.records_in"] == LINES  # counters as if it ran once, uninterrupted
    assert parts(out) == reference_parts(module, data, tmp_path / "ref", 2)
    assert not list(state.list(f"{job_id}/")), "a finished job leaves no state behind"
    assert not (out / "_temporary").exists()


def test_resume_refuses_a_different_plan_and_a_job_it_cannot_find(tmp_path: Path) -> None:
    module, data = write_inputs(tmp_path)
    flag = tmp_path / "fail"
    flag.touch()
    params = {"fail_flag": str(flag), "fail_task": "map-00003"}
    job = load_job(f"{module}:Slow", params)
    out = tmp_path / "out"
    common = dict(output=str(out), executor="inline", split_size=1, job_id="refuse", quiet=True)
    with pytest.raises(JobFailed):
        mrkit.run(job, str(data), n_reduce=2, **common)  # type: ignore[arg-type]
    state = sorted(p.relative_to(out) for p in out.rglob("*"))

    with pytest.raises(
        ResumeRefused, match=r"cannot resume job refuse: its n_reduce is 3, the stored plan's is 2"
    ):
        mrkit.run(job, str(data), n_reduce=3, resume=True, **common)  # type: ignore[arg-type]
    other = load_job(f"{module}:Slow", {**params, "extra": 1})
    with pytest.raises(ResumeRefused, match=r"cannot resume job refuse: its code differs .*job code hash"):
        mrkit.run(other, str(data), n_reduce=2, resume=True, **common)  # type: ignore[arg-type]
    with pytest.raises(ResumeRefused, match=r"its inputs differ from the stored plan's \(9 splits now, 8"):
        with open(data, "a") as f:
            f.write("one more line\n")
        mrkit.run(job, str(data), n_reduce=2, resume=True, **common)  # type: ignore[arg-type]
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == state, "a refused resume changes nothing"

    with pytest.raises(ResumeRefused, match=r"cannot resume job nothing-here: nothing of it was found in"):
        mrkit.run(
            job,
            str(data),
            **{**common, "job_id": "nothing-here", "output": str(tmp_path / "o2")},
            resume=True,
        )  # type: ignore[arg-type]
    assert not (tmp_path / "o2").exists(), "a refused resume leaves no folder behind"
    with pytest.raises(ResumeRefused, match=r"give it its id"):
        mrkit.run(job, str(data), output=str(tmp_path / "o3"), executor="inline", resume=True, quiet=True)


def test_a_fresh_run_under_the_same_id_replaces_what_a_failed_run_left(tmp_path: Path) -> None:
    module, data = write_inputs(tmp_path)
    flag = tmp_path / "fail"
    flag.touch()
    job = load_job(f"{module}:Slow", {"fail_flag": str(flag), "fail_task": "map-00003"})
    out = tmp_path / "out"
    common = dict(output=str(out), executor="inline", split_size=1, n_reduce=2, job_id="again", quiet=True)
    with pytest.raises(JobFailed):
        mrkit.run(job, str(data), **common)  # type: ignore[arg-type]
    assert (out / "_temporary" / "again" / "plan.json").exists()  # kept for a resume
    flag.unlink()
    result = mrkit.run(job, str(data), **common)  # type: ignore[arg-type]
    assert "map.tasks_resumed" not in result.counters and result.counters["map.attempts_launched"] == LINES
    assert not (out / "_temporary").exists()


def mrkit_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mrkit", *args]


def cli_env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }


def wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("executor", ["processes", "inline"])
def test_a_sigkilled_driver_is_resumed_with_the_same_output(executor: str, tmp_path: Path) -> None:
    module, data = write_inputs(tmp_path)
    log = tmp_path / "log"
    log.mkdir()
    out = tmp_path / "out"
    job_id = f"killed-{executor}"
    args = [
        "run",
        f"{module}:Slow",
        str(data),
        "-o",
        str(out),
        "--executor",
        executor,
        "--workers",
        "2",
        "--split-size",
        "1",
        "-M",
        "2",
        "--job-id",
        job_id,
        "--param",
        "delay=0.3",
        "--param",
        f"log={log}",
        "-q",
    ]
    state = open_storage(str(out / "_temporary"))
    # Its own session, so that the whole group (driver and its worker processes) can be SIGKILLed.
    driver = subprocess.Popen(mrkit_cli(*args), env=cli_env(), start_new_session=True, stderr=subprocess.PIPE)
    try:
        wait_until(
            lambda: len(committed_maps(state, job_id)) >= 2 or driver.poll() is not None, 60, "2 commits"
        )
        assert driver.poll() is None, driver.stderr.read() if driver.stderr else ""
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        if driver.stderr:
            driver.stderr.close()
    time.sleep(0.2)
    before = committed_maps(state, job_id)
    assert 2 <= len(before) < LINES and not (out / "_SUCCESS").exists()
    for name in os.listdir(log):
        os.unlink(log / name)

    resumed = subprocess.run(
        mrkit_cli(*args[:-1], "--resume", "--counters"),
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    counters = dict(line.split() for line in resumed.stderr.splitlines() if line.startswith("  "))
    assert int(counters["map.tasks_resumed"].replace(",", "")) == len(before)
    all_maps = {f"map-{i:05d}" for i in range(LINES)}
    assert set(ran_tasks(log)) == all_maps - before
    assert parts(out) == reference_parts(module, data, tmp_path / "ref", 2)
    assert not (out / "_temporary").exists()


def test_committed_reduce_tasks_are_reused_too(tmp_path: Path) -> None:
    module, data = write_inputs(tmp_path)
    flag = tmp_path / "fail"
    flag.touch()
    job = load_job(f"{module}:Slow", {"fail_flag": str(flag), "fail_task": "reduce-00001"})
    out = tmp_path / "out"
    common = dict(output=str(out), executor="inline", split_size=1, n_reduce=2, job_id="red", quiet=True)
    policy = mrkit.RetryPolicy(max_attempts=1)
    with pytest.raises(JobFailed, match="reduce task reduce-00001"):
        mrkit.run(job, str(data), policy=policy, **common)  # type: ignore[arg-type]
    flag.unlink()
    result = mrkit.run(job, str(data), policy=policy, resume=True, **common)  # type: ignore[arg-type]
    assert (result.counters["map.tasks_resumed"], result.counters["reduce.tasks_resumed"]) == (LINES, 1)
    assert (result.counters["map.attempts_launched"], result.counters["reduce.attempts_launched"]) == (0, 1)
    assert parts(out) == reference_parts(module, data, tmp_path / "ref", 2)


def test_the_cli_refuses_a_resume_with_one_sentence(tmp_path: Path) -> None:
    module, data = write_inputs(tmp_path)
    args = ["run", f"{module}:Slow", str(data), "-o", str(tmp_path / "out"), "--job-id", "none", "--resume"]
    done = subprocess.run(mrkit_cli(*args), env=cli_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("mrkit: error: cannot resume job none: nothing of it was found in")
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
