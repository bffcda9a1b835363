"""Seed-001-style jobs: decorated functions of a module become a job, from Python and the CLI."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import mrkit
from mrkit.cli.jobfile import load_job
from mrkit.errors import ConfigError
from mrkit.model.reference import reference

ROOT = Path(__file__).resolve().parents[1]
ROWS = [
    f"10.0.0.{i % 7},site{i % 5}.example/page{i % 3}.html,2020-01-0{1 + i % 9},{i % 13}.5,ua,USA,en,w,{i}"
    for i in range(400)
]


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_decorators_leave_the_function_callable_and_mark_its_roles():
    @mrkit.combine_handler
    @mrkit.reduce_handler
    def total(key, values):
        return sum(values)

    assert total("k", [1, 2]) == 3
    assert total.__mrkit_role__ == {"combiner", "reducer"}
    with pytest.raises(ConfigError, match="decorates a function"):
        mrkit.map_handler(42)


def test_the_handlers_example_equals_the_class_example_and_the_reference(tmp_path):
    module = _load(ROOT / "examples" / "adrevenue_handlers.py")
    job = mrkit.job_from_module(module)
    assert job.mapper is module.map_function and job.partitioner is module.partition
    assert job.reducer is module.reduce_function and job.combiner is module.reduce_function
    expected = dict(reference(job, ROWS))
    for executor in ("inline", "processes"):
        got = dict(mrkit.run(job, mrkit.Records(ROWS), executor=executor, workers=2, n_map=3, n_reduce=2))
        assert got.keys() == expected.keys()
        assert all(abs(got[k] - expected[k]) < 1e-9 for k in got)
    # The partition function decides the part: every page of one host lands in one part.
    out = tmp_path / "out"
    mrkit.run(job, mrkit.Records(ROWS), executor="inline", n_reduce=3, output=str(out))
    hosts_per_part = [
        {json.loads(line.split("\t")[0]).partition("/")[0] for line in p.read_text().splitlines()}
        for p in sorted(out.glob("part-*"))
    ]
    assert sum(len(h) for h in hosts_per_part) == 5


def test_cli_runs_a_module_of_handlers_and_a_job_file_naming_one(tmp_path):
    data = tmp_path / "visits.txt"
    data.write_text("\n".join(ROWS) + "\n")
    example = ROOT / "examples" / "adrevenue_handlers.py"
    expected = dict(reference(mrkit.job_from_module(_load(example)), ROWS))
    job = load_job(str(example))
    assert job.name == "adrevenue_handlers"
    (tmp_path / "job.json").write_text(
        json.dumps({"job": str(example), "inputs": ["visits.txt"], "n_reduce": 2, "output": "out"})
    )
    done = subprocess.run(
        [sys.executable, "-m", "mrkit", "run", str(tmp_path / "job.json"), "--executor", "inline"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    got = dict(mrkit.read_output(str(tmp_path / "out")))
    assert got.keys() == expected.keys() and all(abs(got[k] - expected[k]) < 1e-9 for k in got)


def test_a_package_with_map_and_reduce_submodules_as_in_seed_001(tmp_path, monkeypatch):
    pkg = tmp_path / "user_job"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "map.py").write_text(
        textwrap.dedent(
            """
            import mrkit
            @mrkit.map_handler
            def map_function(line):
                for word in line.split():
                    yield word, 1
            """
        )
    )
    (pkg / "reduce.py").write_text(
        "import mrkit\n@mrkit.reduce_handler\ndef reduce_function(word, counts):\n    return sum(counts)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    job = load_job("user_job")
    assert dict(mrkit.run(job, mrkit.Records(["a b a", "b c"]), executor="inline")) == {
        "a": 2,
        "b": 2,
        "c": 1,
    }


def test_missing_or_doubled_handlers_are_config_errors(tmp_path):
    none = tmp_path / "nothing.py"
    none.write_text("def helper(x):\n    return x\n")
    with pytest.raises(ConfigError, match="no @mrkit.map_handler function"):
        load_job(str(none))
    two = tmp_path / "two.py"
    two.write_text(
        "import mrkit\n"
        "@mrkit.map_handler\ndef a(x):\n    return []\n"
        "@mrkit.map_handler\ndef b(x):\n    return []\n"
    )
    with pytest.raises(ConfigError, match="marks two functions as mapper: a and b"):
        load_job(str(two))


@pytest.mark.parametrize("ref", ["smr", "smr/", "smr:job"])
def test_the_mrkit_command_finds_a_package_in_the_current_folder(tmp_path, ref):
    # The console script (unlike `python -m mrkit`) does not put the current folder on sys.path.
    import shutil

    command = shutil.which("mrkit", path=os.path.dirname(sys.executable)) or shutil.which("mrkit")
    assert command, "the mrkit console script is not installed (pip install -e .)"
    (tmp_path / "smr").mkdir()
    (tmp_path / "smr" / "__init__.py").write_text(
        textwrap.dedent(
            """
            import mrkit
            @mrkit.map_handler
            def map_function(line):
                for word in line.split():
                    yield word, 1
            @mrkit.reduce_handler
            def reduce_function(word, counts):
                return sum(counts)
            job = mrkit.Job(mapper=map_function, reducer=reduce_function)
            """
        )
    )
    (tmp_path / "in.txt").write_text("a b a\nc\n")
    done = subprocess.run(
        [command, "run", ref, "in.txt", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == ['"a"\t2', '"b"\t1', '"c"\t1']
