"""The public surface: __all__ is complete, grouped by concern, each name once; `import mrkit` stays light."""

from __future__ import annotations

import subprocess
import sys

import mrkit


def test_all_is_grouped_and_complete():
    assert len(mrkit.__all__) == len(set(mrkit.__all__))
    assert set(mrkit.__all__) == {"__version__", *mrkit._LAZY}
    # A fresh interpreter: other tests import submodules (which then show up as attributes).
    code = (
        "import mrkit, types; print(' '.join(n for n in dir(mrkit) if not n.startswith('_') and not "
        "isinstance(getattr(mrkit, n), types.ModuleType)))"
    )
    public = set(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert public - set(mrkit.__all__) <= {"annotations"}
    for name in mrkit.__all__:
        assert hasattr(mrkit, name), name


def test_import_mrkit_loads_no_optional_package():
    code = (
        "import sys, mrkit\n"
        "heavy = ['redis', 'boto3', 'botocore', 'fsspec', 's3fs', 'zstandard', 'numpy', 'tqdm', 'moto',"
        " 'aiohttp', 'requests', 'werkzeug', 'flask']\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_values_sent_to_workers_survive_pickling_and_json():
    import pickle

    from mrkit.model.task import InputSplit, TaskFailure, TaskKind, TaskResult, TaskSettings, TaskSpec

    spec = TaskSpec(
        job_id="j",
        task_id="map-00001",
        kind=TaskKind.MAP,
        attempt=2,
        split=InputSplit("a.txt", 5, 10),
        settings=TaskSettings(memory_mb=1.5),
        call=b"\x00\x01",
        call_fn=b"fn",
        call_digest="d",
    )
    assert TaskSpec.decode(spec.encode()) == spec
    assert pickle.loads(pickle.dumps(spec)) == spec
    result = TaskResult(
        "map-00001", 2, ok=False, output=b"\xff", failure=TaskFailure("w", "E", "m", "tb", False)
    )
    assert TaskResult.decode(result.encode()) == result
    assert pickle.loads(pickle.dumps(result)) == result
    err = mrkit.JobFailed("boom", job_id="j", task_id="t", remote_traceback="tb")
    again = pickle.loads(pickle.dumps(err))
    assert (str(again), again.job_id, again.remote_traceback) == ("boom", "j", "tb")
    lost = pickle.loads(pickle.dumps(mrkit.WorkerLost("gone", task_id="t", attempt=3)))
    assert (lost.task_id, lost.attempt) == ("t", 3)
