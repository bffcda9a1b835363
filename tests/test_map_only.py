"""Map-only jobs (``n_reduce=0``) beyond the contract suite's every-backend case: the command line,
failures and refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import mrkit


def upper(line: str):  # type: ignore[no-untyped-def]
    if line:
        yield line.upper(), len(line)


def test_the_command_line_runs_a_map_only_job_with_m_0(tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("b\na\nc\n", encoding="utf-8")
    module = tmp_path / "mo.py"
    module.write_text(
        "import mrkit\ndef upper(line):\n    yield line.upper(), 1\njob = mrkit.Job(mapper=upper)\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mrkit",
            "run",
            f"{module}:job",
            str(source),
            "-M",
            "0",
            "-o",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert list(mrkit.read_output(str(tmp_path / "out"))) == [("B", 1), ("A", 1), ("C", 1)]  # mapper order
    assert (
        "3 records out" in done.stderr.splitlines()[-1] and "0 reduce tasks" in done.stderr.splitlines()[-1]
    )


def test_a_raising_mapper_names_its_record_and_output_that_is_not_pairs_is_not_retried(
    tmp_path: Path,
) -> None:
    source = tmp_path / "in.txt"
    source.write_text("ok\nboom\n", encoding="utf-8")

    def raising(line):  # type: ignore[no-untyped-def]
        if line == "boom":
            raise ValueError("cannot map boom")
        yield line, 1

    with pytest.raises(mrkit.JobFailed) as failed:
        mrkit.run(mrkit.Job(mapper=raising), str(source), executor="inline", n_reduce=0, quiet=True,
                  policy=mrkit.RetryPolicy(max_attempts=2))  # fmt: skip
    assert "record 1" in str(failed.value) and "ValueError: cannot map boom" in str(failed.value)
    assert "after 2 attempts" in str(failed.value)
    with pytest.raises(mrkit.JobFailed) as failed:
        mrkit.run(
            mrkit.Job(mapper=lambda line: [line]), str(source), executor="inline", n_reduce=0, quiet=True
        )
    assert "mapper must take one record and yield (key, value) pairs" in str(failed.value)
    assert "not retried" in str(failed.value)
    assert not (tmp_path / "out").exists()


def test_refusals_are_one_sentence(tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("a\n", encoding="utf-8")
    with pytest.raises(mrkit.ConfigError, match="sort_output=True needs a reduce phase"):
        mrkit.run(mrkit.Job(mapper=upper), str(source), executor="inline", n_reduce=0, sort_output=True)
    # No records at all is one empty split, hence one empty part: not an error.
    assert (
        list(mrkit.run(mrkit.Job(mapper=upper), mrkit.Records([]), executor="inline", n_reduce=0, quiet=True))
        == []
    )
    with pytest.raises(mrkit.ConfigError, match="n_reduce must be at least 0"):
        mrkit.run(mrkit.Job(mapper=upper), str(source), executor="inline", n_reduce=-1)


def test_a_last_step_without_reducer_is_map_only(tmp_path: Path) -> None:
    from tests.jobs_for_tests import total, words

    job = mrkit.Job(
        steps=[
            mrkit.Step(mapper=words, combiner=total, reducer=total),
            mrkit.Step(mapper=lambda p: [(p[1], p[0])]),
        ]
    )
    result = mrkit.run(job, mrkit.Records(["a b a", "c a"]), executor="inline", quiet=True)
    assert sorted(result) == [(1, "b"), (1, "c"), (3, "a")]
    assert result.counters.get("step2.reduce.tasks", 0) == 0 and result.counters["step2.map.records_out"] == 3
