"""The command line's rough edges, as a new user meets them: -q/-v, pipes, stdin, typos, help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

JOB = "tests/jobs_for_tests.py:WordCount"
ROOT = Path(__file__).resolve().parent.parent


def mrkit(*args: str, stdin: bytes | None = None, shell_pipe: str = "") -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "mrkit", *args]
    if shell_pipe:
        line = " ".join(f"'{a}'" for a in cmd) + f" | {shell_pipe}"
        return subprocess.run(
            ["bash", "-c", f"set -o pipefail; {line}"], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
    return subprocess.run(
        cmd, cwd=ROOT, input=stdin.decode() if stdin else None, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def big_text(tmp_path: Path) -> Path:
    path = tmp_path / "words.txt"
    path.write_text("".join(f"w{i} common\n" for i in range(20000)))
    return path


def test_quiet_prints_only_the_result_and_verbose_adds_the_local_traceback(big_text: Path) -> None:
    quiet = mrkit("run", JOB, str(big_text), "--executor", "inline", "-q")
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert '"common"\t20000' in quiet.stdout
    normal = mrkit("run", JOB, str(big_text), "--executor", "inline", "-o", str(big_text.parent / "out"))
    assert normal.returncode == 0 and "done in" in normal.stderr  # the one-line summary
    missing = mrkit("run", JOB, "no/such/input.txt", "-q")
    assert missing.returncode == 1 and missing.stderr.startswith("mrkit: error: ")
    assert "Traceback" not in missing.stderr
    verbose = mrkit("-v", "run", JOB, "no/such/input.txt")
    assert verbose.returncode == 1 and verbose.stderr.startswith("mrkit: error: ")
    assert "Traceback (most recent call last)" in verbose.stderr


def test_a_closed_pipe_ends_the_command_quietly_with_status_0(big_text: Path) -> None:
    proc = mrkit("run", JOB, str(big_text), "--executor", "inline", "-q", shell_pipe="head -1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1
    assert "BrokenPipe" not in proc.stderr and "Traceback" not in proc.stderr


def test_dash_reads_standard_input() -> None:
    proc = mrkit("run", JOB, "-", "--executor", "processes", "-q", stdin=b"b a\na\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ['"a"\t2', '"b"\t1']


def test_a_mistyped_job_name_lists_the_jobs_in_the_file() -> None:
    proc = mrkit("run", "tests/jobs_for_tests.py:WordCont", "README.md")
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0] == (
        "mrkit: error: tests/jobs_for_tests.py has no attribute 'WordCont'; did you mean 'WordCount'? "
        "(jobs in it: InMapperWordCount, PACED, SplitWordCount, WORDCOUNT, WordCount)"
    )


def test_python_m_mrkit_help_shows_the_launcher_and_the_command() -> None:
    proc = mrkit("--help")
    assert proc.returncode == 0
    assert "usage: python -m mrkit [-n WORKERS] [--executor EXECUTOR] script.py" in proc.stdout
    assert "Usage: mrkit [OPTIONS] COMMAND" in proc.stdout


def test_log_level_and_verbosity_options_are_on_every_command() -> None:
    for command in ("run", "submit", "status", "logs", "result", "cancel", "jobs", "worker", "demo"):
        proc = mrkit(command, "--help")
        assert proc.returncode == 0, (command, proc.stderr)
        for option in ("-v, --verbose", "-q, --quiet", "--log-level"):
            assert option in proc.stdout, (command, option)
