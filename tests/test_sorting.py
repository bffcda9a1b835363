"""``sort_values`` and ``sort_output`` (TeraSort), beyond the contract suite's every-backend case:
the TeraSort example and its checker, the refusals, and what the sample costs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import mrkit
from mrkit.model.partition import RangePartitioner, key_bytes

ROOT = Path(__file__).resolve().parent.parent
TERASORT = str(ROOT / "examples" / "terasort.py")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=180, cwd=ROOT)


@pytest.mark.parametrize("executor", ["inline", "processes"])
def test_the_terasort_example_sorts_and_its_checker_agrees(executor: str, tmp_path: Path) -> None:
    data, out = tmp_path / "in", tmp_path / "out"
    assert cli(TERASORT, "generate", str(data), "20000", "--files", "3").returncode == 0
    done = cli(
        "-m", "mrkit", "run", f"{TERASORT}:TeraSort", str(data), "-M", "4", "-o", str(out),
        "--sort-output", "--sort-values", "--executor", executor, "-q",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    checked = cli(TERASORT, "check", str(out), "20000")
    assert checked.returncode == 0, checked.stderr
    sizes = sorted((out / f"part-{p:05d}").stat().st_size for p in range(4))
    assert sizes[0] > sizes[-1] * 0.7, sizes  # the sampled cut points balance random keys


def test_the_checker_catches_output_that_is_not_totally_ordered(tmp_path: Path) -> None:
    data, out = tmp_path / "in", tmp_path / "out"
    assert cli(TERASORT, "generate", str(data), "5000", "--files", "2").returncode == 0
    done = cli("-m", "mrkit", "run", f"{TERASORT}:TeraSort", str(data), "-M", "3", "-o", str(out), "-q")
    assert done.returncode == 0, done.stderr
    checked = cli(TERASORT, "check", str(out), "5000")  # hash partitions: each part sorted, not the whole
    assert checked.returncode == 1 and "NOT SORTED" in checked.stderr


def test_values_that_cannot_be_sorted_fail_once_naming_the_key() -> None:
    job = mrkit.Job(mapper=lambda record: [("k", record)], reducer=lambda k, vs: list(vs), name="mixed")
    with pytest.raises(mrkit.JobFailed) as failed:
        mrkit.run(job, mrkit.Records([1, "a", 2]), executor="inline", sort_values=True, quiet=True)
    message = str(failed.value)
    assert "sort_values=True, but the values of key 'k' cannot be sorted" in message, message
    assert "after 1 attempt" in message and "not retried" in message, message


def test_sort_output_over_records_and_one_partition() -> None:
    words = ["pear", "apple", "fig", "kiwi", "banana", "cherry", "date"] * 5
    job = mrkit.Job(mapper=lambda w: [(w, 1)], reducer=lambda k, vs: sum(vs), name="fruit")
    for n_reduce in (1, 3):
        result = mrkit.run(
            job, mrkit.Records(words), executor="inline", n_reduce=n_reduce, sort_output=True, quiet=True
        )
        assert list(result) == sorted((w, 5) for w in set(words))


def test_range_partitions_follow_the_key_encoding() -> None:
    cuts = [key_bytes("g"), key_bytes("p")]
    partition = RangePartitioner(cuts)
    assert [partition(k, 3) for k in ("a", "g", "h", "p", "z")] == [0, 1, 1, 2, 2]
    assert partition("z", 2) == 1  # never past the last partition
