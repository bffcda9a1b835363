"""``-o`` refuses outputs that would clobber or mix with something that is not a replaceable result."""

from __future__ import annotations

from pathlib import Path

import pytest

import mrkit
from mrkit.cli.main import main
from mrkit.errors import ConfigError, OutputExistsError
from tests.jobs_for_tests import WORDCOUNT


@pytest.fixture
def text(tmp_path: Path) -> Path:
    path = tmp_path / "in" / "a.txt"
    path.parent.mkdir()
    path.write_text("b a\na\n")
    return path


def test_a_folder_with_other_files_and_no_result_is_refused_unless_overwrite(
    tmp_path: Path, text: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"is not empty \(1 files, no mrkit result\)"):
        mrkit.run(WORDCOUNT, str(text), output=str(out), executor="inline")
    assert sorted(p.name for p in out.iterdir()) == ["notes.md"]  # nothing written
    mrkit.run(WORDCOUNT, str(text), output=str(out), executor="inline", overwrite=True)
    assert (out / "notes.md").read_text() == "mine"  # overwrite adds beside, deletes nothing of theirs
    assert dict(mrkit.read_output(str(out))) == {"a": 2, "b": 1}


def test_an_output_that_is_a_file_says_so(tmp_path: Path, text: Path) -> None:
    target = tmp_path / "result.tsv"
    target.write_text("x")
    with pytest.raises(ConfigError, match=r"result.tsv is a file, not a folder"):
        mrkit.run(WORDCOUNT, str(text), output=str(target), executor="inline")


@pytest.mark.parametrize("inputs", ["in", "in/a.txt", "in/*.txt"])
def test_the_input_folder_is_refused_as_output(tmp_path: Path, text: Path, inputs: str) -> None:
    with pytest.raises(ConfigError, match=r"holds the input"):
        mrkit.run(
            WORDCOUNT, str(tmp_path / inputs), output=str(text.parent), executor="inline", overwrite=True
        )
    assert sorted(p.name for p in text.parent.iterdir()) == ["a.txt"]


def test_cli_refusals_are_one_sentence_with_exit_codes(
    tmp_path: Path, text: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = "tests/jobs_for_tests.py:WordCount"
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        main(["run", job, str(text), "-o", str(target), "--executor", "inline"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"mrkit: error: output {target} is a file, not a folder: name a new or empty folder for the parts"
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(["run", job, str(text), "-o", str(tmp_path), "--executor", "inline"])
    assert exit_info.value.code == 2
    assert "holds the input" in capsys.readouterr().err
