"""Multi-step jobs (mrkit.Step): what is refused before anything runs, and the edges of the steps.

The contract suite (tests/test_executor_contract.py) runs a two-step job and a failing step on every
backend; this file checks the rest on inline and processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import mrkit
from tests import contract_jobs as C
from tests.jobs_for_tests import total, words

ROOT = Path(__file__).resolve().parent.parent
TEXT = ["the cat and the hat", "a cat is a cat", "the end"] * 10


def source(tmp_path: Path) -> str:
    path = tmp_path / "in.txt"
    path.write_text("\n".join(TEXT) + "\n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    ("job", "sentence"),
    [
        (lambda: mrkit.Job(steps=[], name="empty"), "job 'empty' lists no steps"),
        (
            lambda: mrkit.Job(steps=[mrkit.Step()], name="blank"),
            "job 'blank': step 1 has neither a mapper nor a reducer",
        ),
        (
            lambda: mrkit.Job(steps=[mrkit.Step(mapper=words), "x"], name="odd"),
            "job 'odd': step 2 is a str, not an mrkit.Step",
        ),
        (
            lambda: mrkit.Job(mapper=words, steps=[mrkit.Step(mapper=words)], name="both"),
            "job 'both' lists steps and also defines mapper",
        ),
    ],
)
def test_a_bad_step_list_is_refused_in_one_sentence_before_anything_is_written(
    job, sentence, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with pytest.raises(mrkit.ConfigError) as refused:
        mrkit.run(job(), source(tmp_path), executor="inline", output=str(out), quiet=True)
    assert str(refused.value).startswith(sentence), refused.value
    assert not out.exists()


def test_a_bad_step_list_exits_2_on_the_command_line(tmp_path: Path) -> None:
    module = tmp_path / "badsteps.py"
    module.write_text("import mrkit\njob = mrkit.Job(steps=[], name='empty')\n", encoding="utf-8")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mrkit",
            "run",
            f"{module}:job",
            source(tmp_path),
            "-o",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "lists no steps" in done.stderr.splitlines()[0]
    assert not (tmp_path / "out").exists()


def test_step_overrides_and_pass_through_steps(tmp_path: Path) -> None:
    """A step without mapper passes pairs through (step 2 here only re-reduces with its own
    n_reduce and params); a step without reducer emits every value under its key."""

    def scaled(key, values):
        return sum(values) * mrkit.context().params["factor"]

    job = mrkit.Job(
        steps=[
            mrkit.Step(mapper=words, combiner=total, reducer=total),
            mrkit.Step(reducer=scaled, n_reduce=3, params={"factor": 10}),
            mrkit.Step(mapper=lambda pair: [(pair[0][0], pair[1])]),  # no reducer: values by first letter
        ],
        params={"factor": 1},
    )
    result = mrkit.run(job, source(tmp_path), executor="processes", workers=2, quiet=True)
    got: dict[str, list[int]] = {}
    for key, value in result:
        got.setdefault(key, []).append(value)
    assert got["c"] == [300]  # "cat" 30 times, scaled by step 2's factor
    assert sorted(got["a"]) == [100, 200]  # "and" 10 and "a" 20: two values under one key
    assert result.counters["step2.reduce.tasks"] == 3


@pytest.mark.parametrize("named_storage", [False, True])
def test_a_step_reads_the_previous_steps_parts_from_storage_and_they_are_deleted(
    tmp_path: Path, named_storage: bool
) -> None:
    """Step 2's map tasks are step 1's reduce parts (one split each, read from the job's storage,
    not from the driver's memory); once step 2 has read them they are gone, and nothing of the
    job is left in the temp folder or in storage=."""
    import tempfile

    storage = tmp_path / "storage"
    job = mrkit.Job(steps=[mrkit.Step(mapper=words, reducer=total, n_reduce=3), mrkit.Step(reducer=total)])
    options = {"storage": f"file://{storage}"} if named_storage else {}
    result = mrkit.run(job, source(tmp_path), executor="processes", workers=2, quiet=True, **options)
    assert dict(result)["cat"] == 30
    assert result.counters["step2.map.tasks"] == 3  # one per part of step 1
    assert result.counters["step2.map.records_in"] == result.counters["step1.reduce.records_out"]
    leftovers = [p for p in os.listdir(tempfile.gettempdir()) if result.job_id in p]
    assert leftovers == []
    if named_storage:
        assert not [str(p) for p in storage.rglob("*") if p.is_file()]


def test_a_step_without_mapper_over_text_names_its_step(tmp_path: Path) -> None:
    job = mrkit.Job(steps=[mrkit.Step(reducer=total)], name="nomap")
    with pytest.raises(mrkit.JobFailed) as failed:
        mrkit.run(
            job, source(tmp_path), executor="inline", quiet=True, policy=mrkit.RetryPolicy(max_attempts=1)
        )
    message = str(failed.value)
    assert message.startswith("step 1 of 1 of job nomap"), message
    assert "a step without a mapper reads (key, value) pairs" in message


def test_resume_is_refused_for_now_and_submit_runs_the_steps_in_the_background(tmp_path: Path) -> None:
    with pytest.raises(mrkit.ConfigError, match="resume=True does not apply to the multi-step job"):
        mrkit.run(
            C.TOP_WORDS,
            source(tmp_path),
            executor="inline",
            resume=True,
            job_id="x",
            output=str(tmp_path / "o"),
        )
    # On an executor that runs jobs in the caller, submit runs the steps in the background.
    handle = mrkit.submit(C.TOP_WORDS, source(tmp_path), executor="inline", quiet=True)
    assert list(handle.wait(60)) == [("cat", 30), ("the", 30), ("a", 20)]


def test_the_top_words_example_runs_from_the_command_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mrkit",
            "run",
            "examples/top_words.py:TopWords",
            source(tmp_path),
            "--param",
            "top=2",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ['"cat"\t30', '"the"\t30']


STEPS_MODULE = """
def words(line):
    for word in line.split():
        yield word, 1


def total(word, counts):
    return sum(counts)


def to_ranking(pair):
    yield None, (pair[1], pair[0])


def top(_key, ranked):
    for count, word in sorted(ranked, key=lambda cw: (-cw[0], cw[1]))[:2]:
        yield word, count
"""


def test_a_job_file_lists_steps_by_function_names(tmp_path: Path) -> None:
    import json

    (tmp_path / "topwords.py").write_text(STEPS_MODULE, encoding="utf-8")
    (tmp_path / "in.txt").write_text("b a b\nc a b\n", encoding="utf-8")
    spec = {
        "job": "topwords.py",
        "inputs": ["in.txt"],
        "output": "out",
        "steps": [
            {"mapper": "words", "combiner": "total", "reducer": "total"},
            {"mapper": "to_ranking", "reducer": "topwords.py:top", "n_reduce": 1, "name": "top"},
        ],
    }
    (tmp_path / "job.json").write_text(json.dumps(spec), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "mrkit", "run", str(tmp_path / "job.json"), "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert list(mrkit.read_output(str(tmp_path / "out"))) == [("b", 3), ("a", 2)]
    spec["steps"] = [{"mapper": "words", "reduce": "total"}]
    (tmp_path / "bad.json").write_text(json.dumps(spec), encoding="utf-8")
    bad = subprocess.run(
        [sys.executable, "-m", "mrkit", "run", str(tmp_path / "bad.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "step 1 has unknown keys ['reduce']" in bad.stderr.splitlines()[0], (
        bad.stderr
    )
