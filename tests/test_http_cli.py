"""``mrkit run --executor http…`` as a user types it: real driver processes, real workers, and what
each leaves behind.

Every driver here runs with ``MRKIT_TEST_PROCESS_TAG`` set to a fresh value; its workers inherit it,
so :func:`tagged_processes` finds any worker left running after the driver exited, whatever its
parent became. ``PidWordCount`` notes which processes ran map and reduce tasks.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import mrkit
from mrkit.model.reference import reference
from tests.http_fixtures import (  # noqa: F401 - fixtures
    ROOT,
    TAG_VARIABLE,
    CliWorkers,
    cli_workers_fixture,
    get_json,
    noted_pids,
    parent_of,
    tagged_processes,
    wait_until,
    worker_env,
    write_secret,
)
from tests.jobs_for_tests import WORDCOUNT

JOB = "tests.http_fixtures:PidWordCount"
POISON = "poison=line 96 of"  # the mapper raises on the line holding "line 96 of"
LINES = [f"line {i} of the text with words {i % 13} and more {i % 7}" for i in range(300)]


@pytest.fixture(name="inputs")
def inputs_fixture(tmp_path: Path) -> Path:
    path = tmp_path / "input.txt"
    path.write_text("\n".join(LINES) + "\n")
    (tmp_path / "pids").mkdir()
    return path


@pytest.fixture(name="tag")
def tag_fixture() -> Iterator[str]:
    """A fresh process tag; the test fails if a process carrying it is still alive at the end."""
    tag = uuid.uuid4().hex
    yield tag
    left = tagged_processes(tag)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind: {left}"


def _env(tag: str, **extra: str) -> dict[str, str]:
    return worker_env(**{TAG_VARIABLE: tag}, **extra)


def _run(args: list[str], tag: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mrkit", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(tag, **extra),
        cwd=ROOT,
    )


def _job_args(inputs: Path, *options: str) -> list[str]:
    """``mrkit run`` of :class:`PidWordCount` over ``inputs`` into ``out/`` beside it, noting pids."""
    folder = inputs.parent
    return [
        "run",
        JOB,
        str(inputs),
        "-o",
        str(folder / "out"),
        "--param",
        f"pids={folder / 'pids'}",
        *options,
    ]


def _output(folder: Path) -> list[tuple[str, int]]:
    return sorted(mrkit.read_output(str(folder)))


def test_mrkit_run_on_workers_you_started(
    cli_workers: CliWorkers, inputs: Path, tmp_path: Path, tag: str
) -> None:
    workers = [cli_workers.start() for _ in range(2)]
    ports = [int(url.rsplit(":", 1)[1]) for _, url in workers]
    out = tmp_path / "out"
    done = _run(
        _job_args(
            inputs, "-N", "4", "-M", "2", "--counters", "--executor", ",".join(url for _, url in workers)
        ),
        tag,
        MRKIT_SECRET_FILE=str(write_secret(tmp_path)),
    )
    assert done.returncode == 0, done.stderr
    assert _output(out) == reference(WORDCOUNT, LINES)
    # User code ran in the task processes of your workers, which keep them for the next job.
    assert {parent_of(pid) for pid in noted_pids(tmp_path / "pids")} <= {proc.pid for proc, _ in workers}
    counters = dict(re.findall(r"^\s+(\S+)\s+([\d,]+)$", done.stderr, re.MULTILINE))
    launched = sum(
        int(counters[f"{phase}.attempts_launched"].replace(",", "")) for phase in ("map", "reduce")
    )
    assert sum(get_json(port, "/status")[1]["completed"] for port in ports) == launched >= 3
    assert all(proc.poll() is None for proc, _ in workers)  # the driver leaves your workers running


def test_mrkit_run_starts_at_most_k_workers_reuses_them_across_phases_and_stops_them(
    inputs: Path, tmp_path: Path, tag: str
) -> None:
    out = tmp_path / "out"
    done = _run(
        _job_args(inputs, "-N", "6", "-M", "3", "--executor", "http", "--workers", "2"),
        tag,
    )
    assert done.returncode == 0, done.stderr
    assert _output(out) == reference(WORDCOUNT, LINES)
    pids = noted_pids(tmp_path / "pids")
    assert noted_pids(tmp_path / "pids", "reduce") and 1 <= len(pids) <= 2, pids  # both phases, <= 2 workers
    assert not tagged_processes(tag)


def test_a_failing_mapper_exits_non_zero_with_one_sentence_publishes_nothing_and_stops_the_workers(
    inputs: Path, tmp_path: Path, tag: str
) -> None:
    out = tmp_path / "out"
    done = _run(
        _job_args(inputs, "-N", "2", "-M", "2", "--executor", "http", "--workers", "2", "--param", POISON),
        tag,
    )
    assert done.returncode == 1
    sentence = done.stderr.splitlines()[0]
    assert re.fullmatch(
        rf"mrkit: error: map task map-00000 of job \S+ failed after 4 attempts: mapper on "
        rf"{re.escape(str(inputs))} bytes 0-\d+, record 96 \(byte \d+\): ValueError: cannot map "
        rf"'{re.escape(LINES[96])}'",
        sentence,
    ), sentence
    assert "Remote traceback" in done.stderr and "in mapper" in done.stderr
    assert not out.exists()
    assert not tagged_processes(tag)


def test_ctrl_c_stops_the_driver_and_every_worker_it_started(inputs: Path, tmp_path: Path, tag: str) -> None:
    lines = [*LINES[:150], "a sleepy line", *LINES[150:]]
    inputs.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    args = _job_args(inputs, "-N", "4", "--param", "sleep=120", "--executor", "http", "--workers", "2")
    # Its own session, so that signalling its process group is what Ctrl-C in a terminal does.
    driver = subprocess.Popen(
        [sys.executable, "-m", "mrkit", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=_env(tag),
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        assert wait_until(lambda: bool(noted_pids(tmp_path / "pids", "sleep")), timeout=60)  # mid-task
        sleeper = noted_pids(tmp_path / "pids", "sleep").pop()
        assert sleeper in tagged_processes(tag)
        os.killpg(driver.pid, signal.SIGINT)
        assert driver.wait(timeout=60) == 130
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        assert driver.stderr is not None
        stderr = driver.stderr.read().decode()
        driver.stderr.close()
    assert re.search(r"^mrkit: (aborted|interrupted)$", stderr, re.MULTILINE), stderr
    assert wait_until(lambda: not tagged_processes(tag), timeout=10), tagged_processes(tag)
    assert not out.exists()
