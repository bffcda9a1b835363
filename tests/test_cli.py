"""The mrkit command: exit codes, messages, output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mrkit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mrkit_cli(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "mrkit", *args], capture_output=True, text=True, cwd=ROOT, timeout=120, **kw
    )


def test_run_prints_pairs_and_exits_zero(tmp_path):
    (tmp_path / "in.txt").write_text("b a\na\n")
    proc = mrkit_cli(
        "run", "tests/jobs_for_tests.py:WordCount", str(tmp_path / "in.txt"), "--executor", "inline"
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.splitlines()) == ['"a"\t2', '"b"\t1']
    assert "records in" in proc.stderr and "MB/s" in proc.stderr  # the one-line summary


def test_run_to_folder_with_counters_and_overwrite(tmp_path):
    (tmp_path / "in.txt").write_text("x y\n")
    out = str(tmp_path / "out")
    args = [
        "run",
        "tests/jobs_for_tests.py:WordCount",
        str(tmp_path / "in.txt"),
        "-o",
        out,
        "-M",
        "2",
        "--executor",
        "inline",
        "--counters",
    ]
    first = mrkit_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "map.records_in" in first.stderr
    assert dict(mrkit.read_output(out)) == {"x": 1, "y": 1}
    again = mrkit_cli(*args)
    assert again.returncode == 1
    assert again.stderr.startswith("mrkit: error: output") and "--overwrite" in again.stderr
    assert mrkit_cli(*args, "--overwrite").returncode == 0


def test_failing_job_exits_one_with_sentence_then_traceback(tmp_path):
    (tmp_path / "in.txt").write_text("ok\npoison\n")
    job_file = tmp_path / "job.py"
    job_file.write_text(
        "import mrkit\nfrom tests.jobs_for_tests import failing_mapper, total\n"
        "job = mrkit.Job(mapper=failing_mapper, reducer=total)\n"
    )
    proc = mrkit_cli(
        "run",
        f"{job_file}:job",
        str(tmp_path / "in.txt"),
        "--executor",
        "inline",
        "-o",
        str(tmp_path / "out"),
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert proc.returncode == 1
    first = proc.stderr.splitlines()[0]
    assert (
        first.startswith("mrkit: error: map task map-00000") and "record 1" in first and "ValueError" in first
    )
    assert "Remote traceback" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_usage_and_config_errors_exit_two(tmp_path):
    assert mrkit_cli("run").returncode == 2
    bad_ref = mrkit_cli("run", "no_such_module:Job", "x.txt")
    assert bad_ref.returncode == 2 and "cannot import job module" in bad_ref.stderr
    missing = mrkit_cli("run", "tests/jobs_for_tests.py:WordCount", str(tmp_path / "nope.txt"))
    assert missing.returncode == 1 and str(tmp_path / "nope.txt") in missing.stderr
    assert mrkit_cli("run", "tests/jobs_for_tests.py:WordCount", "x", "--executor", "warp").returncode == 2


def test_job_file_with_inline_values_and_params(tmp_path):
    (tmp_path / "job.json").write_text(
        json.dumps(
            {
                "job": f"{ROOT}/tests/jobs_for_tests.py:WordCount",
                "inputs": [1, 2],
                "n_reduce": 1,
                "output": "out",
                "params": {"min_length": 1},
                "executor": "inline",
            }
        )
    )
    # WordCount maps lines of text; inline JSON values reach the mapper as they are.
    proc = mrkit_cli("run", str(tmp_path / "job.json"))
    assert proc.returncode == 1 and "AttributeError" in proc.stderr  # ints have no .lower(): a clear failure
    (tmp_path / "job.json").write_text(
        json.dumps(
            {
                "job": f"{ROOT}/tests/jobs_for_tests.py:WordCount",
                "inputs": ["*.txt"],
                "output": "out2",
                "executor": "inline",
                "params": {"min_length": 2},
            }
        )
    )
    (tmp_path / "a.txt").write_text("to be or not\n")
    proc = mrkit_cli("run", str(tmp_path / "job.json"))
    assert proc.returncode == 0, proc.stderr
    assert dict(mrkit.read_output(str(tmp_path / "out2"))) == {"to": 1, "be": 1, "or": 1, "not": 1}


def test_help_lists_every_command():
    proc = mrkit_cli("--help")
    assert proc.returncode == 0
    for name in ("run", "demo", "submit", "status", "logs", "result", "cancel", "jobs", "worker", "lambda"):
        assert name in proc.stdout


def test_max_concurrency_is_the_workers_option_for_function_executors(tmp_path):
    (tmp_path / "in.txt").write_text("b a\na\n")
    job = "tests/jobs_for_tests.py:WordCount"
    proc = mrkit_cli(
        "run", job, str(tmp_path / "in.txt"), "--executor", "lambda-local", "--max-concurrency", "1"
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.splitlines()) == ['"a"\t2', '"b"\t1']
    help_text = mrkit_cli("run", "--help").stdout
    assert "--workers, --max-concurrency" in help_text


def test_submit_refuses_counters_it_could_not_print(tmp_path):
    proc = mrkit_cli(
        "submit",
        "tests/jobs_for_tests.py:WordCount",
        "x.txt",
        "--executor",
        "redis://127.0.0.1:1/0",
        "--counters",
    )
    assert proc.returncode == 2 and "--counters applies to mrkit run" in proc.stderr


def test_other_libraries_info_logs_stay_out_of_verbose_and_quiet_runs(tmp_path):
    """A library that sets its own logger to INFO (Dask's distributed does) must not flood ``-v`` or
    ``-q`` runs through the handler mrkit installs; its warnings still show, and mrkit's INFO with -v."""
    (tmp_path / "in.txt").write_text("a b\n")
    (tmp_path / "noisy.py").write_text(
        "import logging\nimport mrkit\n"
        "chatty = logging.getLogger('chattylib')\nchatty.setLevel(logging.INFO)\n"
        "def words(line):\n"
        "    chatty.info('CHATTY-INFO')\n    chatty.warning('CHATTY-WARNING')\n"
        "    yield from ((w, 1) for w in line.split())\n"
        "Job = mrkit.Job(mapper=words, reducer=lambda k, vs: sum(vs))\n"
    )
    job = f"{tmp_path / 'noisy.py'}:Job"
    for flag in ("-v", "-q"):
        proc = mrkit_cli("run", job, str(tmp_path / "in.txt"), "--executor", "inline", flag)
        assert proc.returncode == 0, proc.stderr
        assert "CHATTY-INFO" not in proc.stderr, (flag, proc.stderr)
        assert ("CHATTY-WARNING" in proc.stderr) == (flag == "-v"), (flag, proc.stderr)
