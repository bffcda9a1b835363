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
