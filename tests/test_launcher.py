"""``python -m mrkit [-n N] [--executor E] script.py args``: parsing, exit codes, and real runs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from mrkit import futures, launcher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "futures_sum_of_products.py")
ANSWER = "Sum of the products equals 843350"


def python(*args, cwd=ROOT):
    paths = [os.path.join(ROOT, "src"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60
    )


def script(tmp_path, body, name="job.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


# -- the command line ---------------------------------------------------------------------------------


def test_parse_args_reads_options_only_before_the_script():
    opts = launcher.parse_args(["-n", "3", "--executor=inline", "s.py", "-n", "9", "-h"])
    assert (opts.workers, opts.executor, opts.script, opts.args) == (3, "inline", "s.py", ["-n", "9", "-h"])
    opts = launcher.parse_args(["-n4", "-einline", "--", "-weird.py"])
    assert (opts.workers, opts.executor, opts.script, opts.args) == (4, "inline", "-weird.py", [])
    assert launcher.parse_args(["s.py"]).executor == "processes"
    assert launcher.parse_args(["-h", "s.py"]).help


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "no script given"),
        (["-n"], "option -n needs a value"),
        (["-n", "zero", "s.py"], "positive integer, got 'zero'"),
        (["--workers=0", "s.py"], "positive integer, got '0'"),
        (["--bogus", "s.py"], "unknown option '--bogus'"),
    ],
)
def test_usage_errors(argv, message):
    with pytest.raises(launcher.UsageError, match=message):
        launcher.parse_args(argv)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["script.py"], True),
        (["-n", "2", "anything"], True),
        (["--executor", "inline", "x"], True),
        (["-n2", "x.py"], True),
        (["run", "job.py:Job", "in.txt"], False),
        (["worker", "http"], False),
        (["-h"], False),
        (["--version"], False),
        ([], False),
    ],
)
def test_looks_like_script(argv, expected):
    assert launcher.looks_like_script(argv) is expected


def test_looks_like_script_accepts_a_path_to_an_existing_file(tmp_path):
    path = tmp_path / "tool"
    path.write_text("print(1)\n")
    assert launcher.looks_like_script([str(path)])
    assert not launcher.looks_like_script([str(tmp_path / "missing")])


# -- in this process, on the inline executor ----------------------------------------------------------


def test_help_and_usage_errors_exit_0_and_2(capsys):
    assert launcher.main(["-h"]) == 0
    assert capsys.readouterr().out.startswith("usage: python -m mrkit [-n WORKERS]")
    assert launcher.main(["--nope", "x.py"]) == 2
    assert capsys.readouterr().err.startswith("mrkit: error: unknown option '--nope'")
    assert launcher.main(["missing.py"]) == 2
    assert "cannot open script 'missing.py'" in capsys.readouterr().err


def test_unknown_executor_exits_2(tmp_path, capsys):
    path = script(tmp_path, "print('never')\n")
    assert launcher.main(["--executor", "nope", path]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("mrkit: error: unknown executor 'nope'") and "never" not in captured.out


def test_script_runs_as_main_with_its_argv_and_folder(tmp_path, capsys):
    (tmp_path / "helper.py").write_text("def triple(x):\n    return 3 * x\n")
    path = script(
        tmp_path,
        """
        import sys
        from mrkit import futures
        from helper import triple
        if __name__ == "__main__":
            print(sys.argv[1:], type(futures.get_executor()).__name__)
            print(list(futures.map(triple, range(4))))
    """,
    )
    saved_argv, saved_path = list(sys.argv), list(sys.path)
    try:
        assert launcher.main(["--executor", "inline", path, "a", "-n", "1"]) == 0
    finally:
        sys.modules.pop("helper", None)
    assert capsys.readouterr().out == "['a', '-n', '1'] InlineExecutor\n[0, 3, 6, 9]\n"
    assert sys.argv == saved_argv and sys.path == saved_path
    assert futures._Defaults.executor is None  # shut down and forgotten


@pytest.mark.parametrize(
    "body, status",
    [
        ("import sys\nsys.exit(3)\n", 3),
        ("import sys\nsys.exit()\n", 0),
        ("import sys\nsys.exit('bad input')\n", 1),
        ("pass\n", 0),
    ],
)
def test_exit_status_is_the_scripts(tmp_path, body, status):
    assert launcher.main(["-e", "inline", script(tmp_path, body)]) == status


def test_uncaught_exception_exits_1_with_one_line_then_traceback(tmp_path, capsys):
    path = script(
        tmp_path,
        """
        def fail():
            raise KeyError("missing")
        fail()
    """,
    )
    assert launcher.main(["-e", "inline", path]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"mrkit: error: {path} raised KeyError: 'missing'"
    assert lines[1] == "Traceback (most recent call last):"
    assert path in lines[2]  # the traceback starts in the script, not in runpy
    assert lines[-1] == "KeyError: 'missing'"


# -- real runs: python script.py, python -m mrkit [-n 2] script.py ------------------------------------


@pytest.mark.parametrize(
    "args",
    [[EXAMPLE], ["-m", "mrkit", EXAMPLE], ["-m", "mrkit", "-n", "2", EXAMPLE]],
    ids=["python", "python -m mrkit", "python -m mrkit -n 2"],
)
def test_seed_example_prints_843350(args):
    proc = python(*args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [ANSWER, ANSWER]


def test_main_module_functions_and_lambdas_reach_worker_processes(tmp_path):
    (tmp_path / "helper.py").write_text("def offset():\n    return 100\n")
    path = script(
        tmp_path,
        """
        import os, sys
        from helper import offset
        from mrkit import futures

        def work(x):
            return x + offset()

        if __name__ == "__main__":
            pids = set(futures.map(lambda _: os.getpid(), range(50), chunksize=1))
            print(list(futures.map(work, range(3))), futures.map_reduce(work, max, range(10)),
                  os.getpid() not in pids, futures.get_executor().workers, sys.argv[1:])
    """,
    )
    proc = python("-m", "mrkit", "-n", "2", path, "--flag", cwd=str(tmp_path.parent))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "[100, 101, 102] 109 True 2 ['--flag']\n"


def test_failures_in_workers_exit_nonzero_with_the_item(tmp_path):
    path = script(
        tmp_path,
        """
        import sys
        from mrkit import futures

        def f(x):
            return 1 / (x - 3)

        if __name__ == "__main__":
            if sys.argv[1:] == ["exit"]:
                sys.exit(3)
            print(list(futures.map(f, range(10))))
    """,
    )
    assert python("-m", "mrkit", "-n", "2", path, "exit").returncode == 3
    proc = python("-m", "mrkit", "-n", "2", path)
    assert proc.returncode == 1
    first = proc.stderr.splitlines()[0]
    assert first.startswith(
        f"mrkit: error: {path} failed: futures.map: item 3 raised ZeroDivisionError: "
        "division by zero (task call-"
    )
    assert "return 1 / (x - 3)" in proc.stderr  # the worker's traceback
