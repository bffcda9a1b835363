"""Faults of user code on the local executors, end to end through ``mrkit.run`` (docs/faults.md).

Each job here is :class:`Poison`: a word count whose mapper misbehaves on the record ``"poison"``
in the way ``params["action"]`` says (hang, exit, segfault...), after noting the attempt and its pid
in ``params["dir"]``. Everything runs real worker processes and is bounded in time.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

import mrkit
from mrkit import RetryPolicy
from mrkit.errors import JobFailed

LINES = ["the cat", "a poison b", "the end", "one more", "last line"]


class Poison(mrkit.Job):
    """Counts words; the record containing ``poison`` does ``params["action"]``."""

    def mapper(self, line: str) -> Iterator[tuple[str, int]]:
        if "poison" in line:
            folder = Path(self.params["dir"])
            with open(folder / "attempts", "a") as fh:
                fh.write(f"{os.getpid()}\n")
            act(self.params["action"], folder)
        for word in line.split():
            yield word, 1

    def reducer(self, word: str, counts: Iterable[int]) -> int:
        return sum(counts)


def act(action: str, folder: Path) -> None:
    if action == "hang":
        time.sleep(3600)
    elif action == "exit":
        os._exit(3)
    elif action == "segfault":
        ctypes.string_at(0)
    elif action == "abort":
        os.abort()
    elif action == "system_exit":
        sys.exit(5)
    elif action == "keyboard_interrupt":
        raise KeyboardInterrupt
    elif action == "hold_gil":
        re.match(r"(a+)+$", "a" * 64 + "b")  # catastrophic backtracking in C, never releasing the GIL
    elif action == "sigkill-once":
        if attempts(folder) == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # as an operator or the OOM killer would
    elif action.startswith("grandchild-"):
        child = subprocess.Popen(["sleep", "600"])
        (folder / "grandchild").write_text(str(child.pid))
        act(action.removeprefix("grandchild-"), folder)


def alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def wait_until(predicate, timeout: float = 8.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def text(tmp_path: Path) -> Path:
    path = tmp_path / "in.txt"
    path.write_text("\n".join(LINES) + "\n")
    return path


def run_poison(action: str, text: Path, folder: Path, **options) -> tuple[JobFailed, float]:
    options.setdefault("executor", "processes")
    options.setdefault("workers", 2)
    options.setdefault("policy", RetryPolicy(max_attempts=2, task_timeout=options.pop("timeout", None)))
    started = time.monotonic()
    with pytest.raises(JobFailed) as caught:
        mrkit.run(
            Poison(), str(text), n_map=1, quiet=True, params={"action": action, "dir": str(folder)}, **options
        )
    return caught.value, time.monotonic() - started


def attempts(folder: Path) -> int:
    return len((folder / "attempts").read_text().split())


# -- 1. hanging user code -------------------------------------------------------------------------


def test_a_hanging_mapper_fails_the_job_after_its_attempts_naming_the_record(
    text: Path, tmp_path: Path
) -> None:
    error, seconds = run_poison("hang", text, tmp_path, timeout=1)
    message = str(error)
    assert seconds < 2 * 1 + 10, f"took {seconds:.1f} s"
    assert "map task map-00000" in message and "failed after 2 attempts" in message
    assert "timed out after 1 s" in message
    assert f"mapper on {text} bytes 0-" in message and "record 1" in message, message
    assert attempts(tmp_path) == 2


def hang_on_poison(word: str, counts: Iterable[int]) -> int:
    if word == "poison":
        time.sleep(3600)
    return sum(counts)


def test_a_hanging_reducer_fails_the_job_naming_the_key(text: Path, tmp_path: Path) -> None:
    # The worker's watchdog reads the key from the reduce loop's frame (mrkit.execution.watchdog).
    job = mrkit.Job(mapper=lambda line: ((w, 1) for w in line.split()), reducer=hang_on_poison)
    policy = RetryPolicy(max_attempts=2, task_timeout=1)
    started = time.monotonic()
    with pytest.raises(JobFailed) as caught:
        mrkit.run(
            job, str(text), n_map=1, n_reduce=1, executor="processes", workers=2, policy=policy, quiet=True
        )
    message = str(caught.value)
    assert time.monotonic() - started < 2 * 1 + 10
    assert "reduce task reduce-00000" in message and "failed after 2 attempts" in message, message
    assert "timed out after 1 s" in message and "reducer on key 'poison'" in message, message


def test_inline_ends_a_hanging_mapper_too(text: Path, tmp_path: Path) -> None:
    error, seconds = run_poison("hang", text, tmp_path, timeout=1, executor="inline", workers=None)
    assert "timed out after 1 s" in str(error) and seconds < 10
    assert attempts(tmp_path) == 2


@pytest.mark.slow
def test_a_mapper_stuck_in_c_holding_the_gil_is_ended_by_the_parent(text: Path, tmp_path: Path) -> None:
    # Its watchdog thread cannot run; its heartbeats stop, and the parent ends it after the timeout
    # plus a grace of silence. It still counts as a timed-out (failed) attempt.
    error, seconds = run_poison(
        "hold_gil", text, tmp_path, policy=RetryPolicy(max_attempts=1, task_timeout=1)
    )
    assert "timed out after 1 s" in str(error) and "failed after 1 attempt" in str(error)
    assert seconds < 1 + 5 + 8, f"took {seconds:.1f} s"


def test_a_slow_mapper_that_keeps_making_progress_is_not_timed_out(tmp_path: Path) -> None:
    path = tmp_path / "slow.txt"
    path.write_text("".join(f"w{i}\n" for i in range(10)))
    job = mrkit.Job(mapper=slow_words, reducer=lambda key, counts: sum(counts))
    policy = RetryPolicy(max_attempts=1, task_timeout=1, speculative=False)
    result = mrkit.run(job, str(path), n_map=1, workers=2, policy=policy, quiet=True)  # ~3 s in one task
    assert dict(result) == {f"w{i}": 1 for i in range(10)}


def slow_words(line: str) -> Iterator[tuple[str, int]]:
    time.sleep(0.3)
    yield line.strip(), 1


# -- 2. user code that ends its worker -------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "named"),
    [
        ("exit", "exited with code 3"),
        ("segfault", "SIGSEGV"),
        ("abort", "SIGABRT"),
        ("system_exit", "SystemExit(5)"),
        ("keyboard_interrupt", "KeyboardInterrupt"),
    ],
)
def test_a_task_that_ends_its_worker_is_a_failed_attempt(
    action: str, named: str, text: Path, tmp_path: Path
) -> None:
    error, _ = run_poison(action, text, tmp_path)
    message = str(error)
    assert "map task map-00000" in message and "failed after 2 attempts" in message, message
    assert "WorkerCrashed" in message and named in message, message
    assert str(text) in message
    assert attempts(tmp_path) == 2  # exactly max_attempts, not max_lost


# -- 3. grandchildren -------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["hang", "exit"])
def test_programs_a_task_started_do_not_outlive_its_attempt(how: str, text: Path, tmp_path: Path) -> None:
    run_poison(
        f"grandchild-{how}", text, tmp_path, timeout=1, policy=RetryPolicy(max_attempts=1, task_timeout=1)
    )
    pid = int((tmp_path / "grandchild").read_text())
    assert wait_until(lambda: not alive(pid)), f"grandchild {pid} survived its attempt"


def test_a_worker_killed_from_outside_is_lost_not_failed(text: Path, tmp_path: Path) -> None:
    # SIGKILL from outside does not count against max_attempts: the retry (on a new worker) runs.
    from mrkit.execution.processes import ProcessExecutor

    executor = ProcessExecutor(workers=1)
    try:
        result = mrkit.run(
            Poison(),
            str(text),
            n_map=1,
            executor=executor,
            quiet=True,
            policy=RetryPolicy(max_attempts=1, speculative=False),
            params={"action": "sigkill-once", "dir": str(tmp_path)},
        )
    finally:
        executor.shutdown()
    assert dict(result)["poison"] == 1
    assert attempts(tmp_path) == 2
    assert result.counters["map.attempts_lost"] == 1 and result.counters["map.attempts_failed"] == 0


# -- 7. deterministic user errors ---------------------------------------------------------------------


def yields_words(line: str) -> Iterator[str]:
    yield from line.split()  # not (key, value) pairs


def test_a_mapper_that_does_not_yield_pairs_fails_at_once_naming_the_record(text: Path) -> None:
    job = mrkit.Job(mapper=yields_words, reducer=lambda key, values: sum(values))
    with pytest.raises(JobFailed) as caught:
        mrkit.run(job, str(text), n_map=1, executor="inline", quiet=True)
    message = str(caught.value)
    assert "failed after 1 attempt (not retried" in message, message
    assert "mapper must take one record and yield (key, value) pairs" in message
    assert f"mapper on {text} bytes 0-" in message and "record 0" in message


# -- 9. what JobFailed tells ------------------------------------------------------------------------


def fails_on_cat(word: str, counts: Iterable[int]) -> int:
    if word == "cat":
        raise ValueError("no cats")
    return sum(counts)


def test_job_failed_carries_counters_and_per_task_status_and_names_the_partition(text: Path) -> None:
    import pickle

    job = mrkit.Job(mapper=lambda line: ((w, 1) for w in line.split()), reducer=fails_on_cat)
    policy = RetryPolicy(max_attempts=2, speculative=False)
    with pytest.raises(JobFailed) as caught:
        mrkit.run(job, str(text), n_map=1, n_reduce=1, executor="inline", policy=policy, quiet=True)
    error = caught.value
    assert "reduce task reduce-00000" in str(error) and "partition 0: reducer on key 'cat'" in str(error)
    assert error.counters["map.attempts_launched"] == 1 and error.counters["map.records_in"] == len(LINES)
    assert error.counters["reduce.attempts_failed"] == 2
    assert error.status["map-00000"] == {"state": "committed", "launched": 1, "failed": 0, "lost": 0}
    assert error.status["reduce-00000"] == {"state": "failed", "launched": 2, "failed": 2, "lost": 0}
    again = pickle.loads(pickle.dumps(error))
    assert (again.counters, again.status, str(again)) == (error.counters, error.status, str(error))


def test_a_job_that_fails_before_running_leaves_no_output_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(mrkit.errors.InputError):
        mrkit.run(Poison(), str(tmp_path / "missing.txt"), output=str(out), executor="inline", quiet=True)
    assert not out.exists()


def test_a_full_disk_names_the_storage_that_filled_up(text: Path, tmp_path: Path, monkeypatch) -> None:
    import errno

    from mrkit.storage import local

    original = local._AtomicWriter.write

    def full(self, data):  # the disk fills up when a map task writes its output
        if "map-0" in self._final:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, data)

    monkeypatch.setattr(local._AtomicWriter, "write", full)
    storage = tmp_path / "inter"
    with pytest.raises(JobFailed) as caught:
        mrkit.run(
            Poison(),
            str(text),
            storage=str(storage),
            executor="inline",
            quiet=True,
            policy=RetryPolicy(max_attempts=1),
            params={"action": "none", "dir": str(tmp_path)},
        )
    message = str(caught.value)
    assert "no space left on the device holding" in message and str(storage) in message, message
