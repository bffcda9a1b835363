"""Fencing: a paused driver whose job was resumed by a newer driver is refused when it wakes up."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from mrkit.coordination.fencing import Epoch, JobFenced, JobStateLost, epoch_key
from mrkit.storage import LocalStorage, open_storage
from tests.test_resume import (
    LINES,
    cli_env,
    committed_maps,
    mrkit_cli,
    parts,
    reference_parts,
    wait_until,
    write_inputs,
)


def test_a_zombie_driver_is_fenced_and_leaves_the_output_to_the_newer_driver(tmp_path: Path) -> None:
    module, data = write_inputs(tmp_path)
    out = tmp_path / "out"
    job_id = "zombie"
    args = [
        "run",
        f"{module}:Slow",
        str(data),
        "-o",
        str(out),
        "--executor",
        "processes",
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
        "-q",
    ]
    state = open_storage(str(out / "_temporary"))
    driver_a = subprocess.Popen(
        mrkit_cli(*args), env=cli_env(), start_new_session=True, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until(
            lambda: len(committed_maps(state, job_id)) >= 2 or driver_a.poll() is not None, 60, "2 commits"
        )
        os.kill(driver_a.pid, signal.SIGSTOP)  # the driver only: its workers finish what they hold
        assert driver_a.poll() is None
        assert len(committed_maps(state, job_id)) < LINES

        driver_b = subprocess.run(
            mrkit_cli(*args, "--resume"), env=cli_env(), capture_output=True, text=True, timeout=120
        )
        assert driver_b.returncode == 0, driver_b.stderr
        published = {**parts(out), "_SUCCESS": (out / "_SUCCESS").read_bytes()}
        assert b'"epoch": 2' in published["_SUCCESS"]

        os.kill(driver_a.pid, signal.SIGCONT)
        _, stderr_a = driver_a.communicate(timeout=60)
    finally:
        if driver_a.poll() is None:
            os.killpg(driver_a.pid, signal.SIGKILL)
            driver_a.wait(timeout=30)
    assert driver_a.returncode != 0
    assert f"fenced by a newer driver of job {job_id} (epoch 2 > 1)" in stderr_a
    assert {**parts(out), "_SUCCESS": (out / "_SUCCESS").read_bytes()} == published  # B's output
    assert parts(out) == reference_parts(module, data, tmp_path / "ref", 2)


def test_an_epoch_is_fenced_by_the_next_claim_and_by_a_removed_state(tmp_path: Path) -> None:
    storage = LocalStorage(str(tmp_path / "state"))
    first = Epoch.claim(storage, "j")
    first.check()
    second = Epoch.claim(storage, "j")
    assert (first.number, second.number) == (1, 2)
    second.check()
    with pytest.raises(JobFenced, match=r"fenced by a newer driver of job j \(epoch 2 > 1\)"):
        first.check()
    # A fresh driver that recreated epoch 2 (another token) fences the one that held it before.
    storage.delete(epoch_key("j", 2))
    third = Epoch.claim(storage, "j")
    assert third.number == 2
    with pytest.raises(JobFenced, match="fenced by a newer driver of job j"):
        second.check()
    third.check()
    # Throttled checks skip the reads inside the interval, and check again after it. With every
    # epoch gone and nothing published, no newer driver exists: the storage lost the state.
    storage.delete_prefix("j/")
    third.check(force=False)
    time.sleep(0.3)
    with pytest.raises(JobStateLost, match="lost the state of job j"):
        third.check(force=False)
