"""The job's code reaches workers that cannot import it: local helper modules, real file names, source.

Each case pickles in one interpreter and loads in another whose ``sys.path`` lacks the job's folder,
after the folder was moved away, as on a Redis/HTTP/serverless worker on another machine.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mrkit.errors import ConfigError
from mrkit.execution import shipping

PICKLE = """
import sys
sys.path.insert(0, sys.argv[1])
import job
from mrkit.coordination.plan import pickle_job
open(sys.argv[2], "wb").write(pickle_job(job.WordCount()))
"""

LOAD = """
import pickle, sys, traceback
job = pickle.loads(open(sys.argv[1], "rb").read())
print(sorted(job.mapper("Hello hello World")))
try:
    job.reducer("boom", iter([1]))
except ZeroDivisionError:
    traceback.print_exc()
"""


def _run(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def job_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    (folder / "helpers").mkdir(parents=True)
    (folder / "helpers" / "__init__.py").write_text("")
    (folder / "helpers" / "text.py").write_text("def lower(s):\n    return s.lower()\n")
    (folder / "common.py").write_text(
        textwrap.dedent(
            """
            from helpers.text import lower

            def tokenize(line):
                return lower(line).split()
            """
        )
    )
    (folder / "job.py").write_text(
        textwrap.dedent(
            """
            import mrkit
            import common

            class WordCount(mrkit.Job):
                def mapper(self, line):
                    return [(w, 1) for w in common.tokenize(line)]

                def reducer(self, key, values):
                    return sum(values) / 0  # the line a traceback must show
            """
        )
    )
    return folder


def test_local_helper_modules_travel_with_the_job_and_tracebacks_show_their_source(
    job_folder: Path, tmp_path: Path
) -> None:
    blob = tmp_path / "job.pkl"
    made = _run(PICKLE, str(job_folder), str(blob), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    job_file = job_folder / "job.py"
    job_folder.rename(tmp_path / "elsewhere")  # the worker has no copy of the files
    elsewhere = tmp_path / "run-here"
    elsewhere.mkdir()
    loaded = _run(LOAD, str(blob), cwd=elsewhere)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.splitlines()[0] == "[('hello', 1), ('hello', 1), ('world', 1)]"
    assert f'File "{job_file}", line 10, in reducer' in loaded.stderr
    assert "return sum(values) / 0  # the line a traceback must show" in loaded.stderr
    assert "<dynamic-code>" not in loaded.stderr


def test_local_modules_are_found_transitively(job_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(job_folder))
    for name in ("job", "common", "helpers", "helpers.text"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import job  # type: ignore[import-not-found]

    names = {m.__name__ for m in shipping.local_modules(job.WordCount())}
    assert {"job", "common", "helpers.text"} <= names
    assert not any(name.startswith(("mrkit", "pytest")) for name in names)


def test_installed_and_standard_modules_are_not_local() -> None:
    import json

    import click

    assert not shipping.is_local(json)
    assert not shipping.is_local(click)
    assert not shipping.is_local(shipping)


def test_a_compiled_local_module_cannot_go_to_remote_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    fake = types.ModuleType("fastpart")
    fake.__file__ = str(tmp_path / "fastpart.cpython-311-x86_64-linux-gnu.so")
    monkeypatch.setitem(sys.modules, "fastpart", fake)

    def partition(key: str, n: int) -> int:
        return 0

    partition.__module__ = "fastpart"
    assert shipping.dumps(partition.__name__, roots=(partition,))  # local workers import it themselves
    with pytest.raises(ConfigError, match="fastpart.*compiled extension.*install it on the workers"):
        shipping.dumps(partition.__name__, roots=(partition,), remote=True)
