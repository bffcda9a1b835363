"""inputs={path: mapper}: a mapper per input (Hadoop's MultipleInputs), and its refusals."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pytest

import mrkit


def left(line: str) -> Iterator[tuple[str, str]]:
    yield line, "left"


def right(line: str) -> Iterator[tuple[str, str]]:
    yield line, "right"


def sides(key: str, values: Iterable[str]) -> list[str]:
    return sorted(values)


JOB = mrkit.Job(reducer=sides, name="sides")


def test_each_input_is_read_by_its_mapper_and_a_tuple_key_groups_paths(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a.txt").write_text("x\ny\n")
    (tmp_path / "b.txt").write_text("y\n")
    (tmp_path / "c.txt").write_text("z\n")
    inputs = {str(tmp_path / "a.txt"): left, (str(tmp_path / "b.txt"), str(tmp_path / "c.txt")): right}
    out = dict(mrkit.run(JOB, inputs, executor="inline", quiet=True))
    assert out == {"x": ["left"], "y": ["left", "right"], "z": ["right"]}


def test_a_job_without_mapper_is_refused_for_inputs_that_bring_none(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a.txt").write_text("x\n")
    with pytest.raises(
        mrkit.ConfigError, match=r"defines neither mapper nor mapper_split .*inputs=\{path: mapper\}"
    ):
        mrkit.run(JOB, str(tmp_path / "a.txt"), executor="inline", quiet=True)


def test_an_input_that_matches_no_file_is_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a.txt").write_text("x\n")
    missing = str(tmp_path / "nothing-*.txt")
    with pytest.raises(mrkit.InputError, match="nothing-"):
        mrkit.run(JOB, {str(tmp_path / "a.txt"): left, missing: right}, executor="inline", quiet=True)


@pytest.mark.parametrize(
    ("inputs", "said"),
    [
        ({}, "names no input"),
        ({42: left}, "must be a path"),
        ({"a.txt": "not a function"}, "must be callable"),
    ],
)
def test_bad_mappings_are_one_sentence(inputs, said) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(mrkit.ConfigError, match=said):
        mrkit.run(JOB, inputs, executor="inline", quiet=True)


def test_the_output_may_not_be_inside_an_input_of_the_mapping(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a.txt").write_text("x\n")
    with pytest.raises(mrkit.ConfigError, match="holds the input"):
        mrkit.run(JOB, {str(tmp_path): left}, executor="inline", output=str(tmp_path), quiet=True)


JOIN_MODULE = """
import mrkit


def user(row):
    yield row[0], ("user", row[1])


def order(row):
    yield row[0], ("order", int(row[1]))


def join(uid, tagged):
    tagged = list(tagged)  # values are streamed: read them once
    names = [v for k, v in tagged if k == "user"]
    spent = sum(v for k, v in tagged if k == "order")
    for name in names:
        yield name, spent


Join = mrkit.Job(reducer=join, name="join")
"""


def test_a_job_file_names_a_mapper_per_input(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``"inputs": {"users.csv": "user", "orders/": "join.py:order"}``, then ``mrkit run join.json``."""
    import json
    import subprocess
    import sys

    (tmp_path / "join.py").write_text(JOIN_MODULE)
    (tmp_path / "users.csv").write_text("u1,ann\nu2,bob\n")
    (tmp_path / "orders").mkdir()
    (tmp_path / "orders" / "o.csv").write_text("u1,5\nu2,7\nu1,1\n")
    spec = {
        "job": "join.py:Join",
        "inputs": {"users.csv": "user", "orders/": "join.py:order"},
        "output": "out",
    }
    (tmp_path / "join.json").write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, "-m", "mrkit", "run", str(tmp_path / "join.json"), "--executor", "processes"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(mrkit.read_output(str(tmp_path / "out"))) == [("ann", 6), ("bob", 7)]
    spec["inputs"] = {"users.csv": "no_such_function"}
    (tmp_path / "bad.json").write_text(json.dumps(spec))
    bad = subprocess.run(
        [sys.executable, "-m", "mrkit", "run", str(tmp_path / "bad.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "has no function 'no_such_function'" in bad.stderr, bad.stderr


def test_the_command_line_names_a_mapper_per_input(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``mrkit run join.py:Join --input-mapper users.csv=user --input-mapper orders/=join.py:order``."""
    import subprocess
    import sys

    (tmp_path / "join.py").write_text(JOIN_MODULE)
    (tmp_path / "users.csv").write_text("u1,ann\nu2,bob\n")
    (tmp_path / "orders").mkdir()
    (tmp_path / "orders" / "o.csv").write_text("u1,5\nu2,7\nu1,1\n")

    def mrkit_run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "mrkit", "run", "join.py:Join", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)

    done = mrkit_run(
        "--input-mapper", "users.csv=user", "--input-mapper", "orders/=join.py:order", "-o", "out"
    )
    assert done.returncode == 0, done.stderr
    assert sorted(mrkit.read_output(str(tmp_path / "out"))) == [("ann", 6), ("bob", 7)]
    for args, said in (
        (
            ("users.csv", "--input-mapper", "orders/=order"),
            "either as INPUT arguments or each with --input-mapper",
        ),
        (("--input-mapper", "users.csv"), "must look like PATH=MAPPER"),
        (
            ("--input-mapper", "users.csv=nothing"),
            "--input-mapper users.csv=nothing: join.py has no function 'nothing'",
        ),
    ):
        bad = mrkit_run(*args)
        assert bad.returncode == 2 and said in bad.stderr.splitlines()[0], bad.stderr


def add_one(pair: tuple[str, int]) -> Iterator[tuple[str, int]]:
    key, value = pair
    yield key, value + 1


def only(key: str, values: Iterable[int]) -> int:
    [value] = values
    return value


def test_an_iterative_loop_feeds_each_result_to_the_next_run_without_text(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``result = mrkit.run(job, result)``: the pairs of an in-memory result are the next run's
    records, exact types kept (stored pickled in the job's storage, never published as text)."""
    step = mrkit.Job(mapper=add_one, reducer=only, name="step")
    result = mrkit.run(
        step, mrkit.Records([("a", 0), ("b", 10)]), executor="processes", workers=2, quiet=True
    )
    for _ in range(9):
        result = mrkit.run(step, result, executor="processes", workers=2, quiet=True)
    assert dict(result) == {"a": 10, "b": 20}
