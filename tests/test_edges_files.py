"""Side files (``files=[...]``, ``--file``): shipped inside the job, opened with ``context().file``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import mrkit
from mrkit.errors import ConfigError
from mrkit.execution import shipping
from mrkit.model import job as job_module
from tests.jobs_for_tests import total

ROOT = Path(__file__).resolve().parent.parent
LINES = ["the cat and the dog", "a cat or a dog"]
EXPECTED = {"cat": 2, "dog": 2}


def content_words(line: str) -> Iterator[tuple[str, int]]:
    ctx = mrkit.context()
    path = ctx.file("stop.txt")
    ctx.increment("elsewhere", int(not path.startswith(ctx.params.get("source_dir", "\0"))))
    with open(path) as f:
        stop = set(f.read().split())
    for word in line.split():
        if word not in stop:
            yield word, 1


@pytest.fixture
def stop_file(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    path = folder / "stop.txt"
    path.write_text("the and a or\n")
    return path


@pytest.mark.parametrize("executor", ["inline", "processes", "http"])
def test_side_files_reach_the_workers_of_each_executor(executor: str, stop_file: Path) -> None:
    job = mrkit.Job(mapper=content_words, reducer=total, params={"source_dir": str(stop_file.parent)})
    result = mrkit.run(
        job, mrkit.Records(LINES), executor=executor, workers=2, n_map=2, files=[stop_file], quiet=True
    )
    assert dict(result) == EXPECTED
    # Every task read a copy shipped with the job, not the file it was read from.
    assert result.counters["user.elsewhere"] == len(LINES)


def test_side_files_read_when_the_job_is_defined_survive_the_file_being_removed(stop_file: Path) -> None:
    job = mrkit.Job(mapper=content_words, reducer=total, files=[str(stop_file)])
    stop_file.unlink()
    assert dict(mrkit.run(job, mrkit.Records(LINES), executor="processes", workers=2, quiet=True)) == EXPECTED


def test_the_cli_ships_side_files_with_file(stop_file: Path, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("\n".join(LINES) + "\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mrkit",
            "run",
            "tests/test_edges_files.py:STOP_WORDS_JOB",
            str(tmp_path / "in.txt"),
        ]
        + ["--executor", "processes", "--workers", "2", "--file", str(stop_file), "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.splitlines()) == ['"cat"\t2', '"dog"\t2']


STOP_WORDS_JOB = mrkit.Job(mapper=content_words, reducer=total)


def test_a_missing_side_file_is_refused_in_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"side file .*nothing\.txt does not exist"):
        mrkit.run(STOP_WORDS_JOB, mrkit.Records(LINES), files=[tmp_path / "nothing.txt"])
    with pytest.raises(ConfigError, match=r"side file .* is not a file"):
        mrkit.Job(mapper=content_words, files=[tmp_path])


def test_a_side_file_too_big_is_refused_naming_the_limit(
    stop_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(job_module, "MAX_SIDE_FILE_BYTES", 8)
    with pytest.raises(
        ConfigError, match=r"stop\.txt is too big: .* may hold 0 MiB in all \(13 bytes asked\)"
    ):
        mrkit.Job(mapper=content_words, files=[stop_file])


def test_side_files_with_the_same_name_are_refused(stop_file: Path, tmp_path: Path) -> None:
    other = tmp_path / "stop.txt"
    other.write_text("x")
    with pytest.raises(ConfigError, match="two side files are named 'stop.txt'"):
        mrkit.Job(mapper=content_words, files=[stop_file, other])


def test_asking_for_a_file_the_job_does_not_ship_names_those_it_has(stop_file: Path) -> None:
    def wrong_name(line: str) -> Iterator[tuple[str, int]]:
        mrkit.context().file("stopwords.txt")
        yield line, 1

    job = mrkit.Job(mapper=wrong_name, files=[stop_file])
    with pytest.raises(mrkit.JobFailed, match=r"ships no side file 'stopwords.txt' \(it has: stop.txt\)"):
        mrkit.run(job, mrkit.Records(["x"]), executor="inline", quiet=True)


def test_local_modules_with_too_much_source_are_refused_naming_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shipping, "MAX_SOURCE_BYTES", 100)  # less than this test module's source
    with pytest.raises(ConfigError, match=r"local modules hold .* MiB of source, over the 0 MiB shipped"):
        shipping.dumps(content_words, remote=True)
    assert os.path.getsize(__file__) > 100
