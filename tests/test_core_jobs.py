"""End-to-end behaviour of mrkit.run on the inline and processes executors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mrkit
from mrkit.execution.base import open_executor
from mrkit.model.reference import reference
from tests import jobs_for_tests as J

TEXT = ["the cat sat on the mat", "The dog sat", "", "a b c a b a", "it's 42 o'clock"] * 20


@pytest.fixture(scope="module")
def processes():
    ex = open_executor("processes", workers=2)
    yield ex
    ex.shutdown()


def run(job, inputs, **kw):
    kw.setdefault("quiet", True)
    return mrkit.run(job, inputs, **kw)


LINES = st.lists(st.text(alphabet="ab c\n'9Z", max_size=12), max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=LINES, n_map=st.integers(1, 5), n_reduce=st.integers(1, 4))
def test_property_inline_equals_reference(records, n_map, n_reduce):
    got = run(J.WORDCOUNT, mrkit.Records(records), executor="inline", n_map=n_map, n_reduce=n_reduce)
    assert sorted(got) == reference(J.WORDCOUNT, records)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(records=LINES, n_map=st.integers(1, 5), n_reduce=st.integers(1, 4))
def test_property_processes_equals_reference(processes, records, n_map, n_reduce):
    got = run(J.WORDCOUNT, mrkit.Records(records), executor=processes, n_map=n_map, n_reduce=n_reduce)
    assert sorted(got) == reference(J.WORDCOUNT, records)


@settings(max_examples=25, deadline=None)
@given(text=st.text(alphabet="xy \n", max_size=300), n_map=st.integers(1, 7))
def test_property_files_every_line_once(tmp_path_factory, text, n_map):
    folder = tmp_path_factory.mktemp("in")
    (folder / "a.txt").write_text(text)
    got = run(J.WORDCOUNT, str(folder / "a.txt"), executor="inline", n_map=n_map, n_reduce=2)
    assert sorted(got) == reference(J.WORDCOUNT, text.split("\n"))


@pytest.mark.parametrize("job", [J.WordCount(), J.InMapperWordCount(), J.SplitWordCount()], ids=type)
@pytest.mark.parametrize("executor", ["inline", "processes"])
def test_job_forms_agree(job, executor, tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("\n".join(TEXT))
    got = dict(run(job, str(path), executor=executor, workers=2, n_map=3, n_reduce=2))
    assert got == dict(reference(J.WORDCOUNT, TEXT))


def test_params_reach_class_and_function_forms():
    got = dict(run(J.WordCount(params={"min_length": 3}), mrkit.Records(TEXT), executor="inline"))
    assert "a" not in got and got["the"] == 60

    def mapper(line):
        yield line, mrkit.context().params["weight"]

    job = mrkit.Job(mapper=mapper, reducer=J.total, params={"weight": 5})
    assert dict(run(job, mrkit.Records(["x", "x"]), executor="inline")) == {"x": 10}
    assert dict(run(job, mrkit.Records(["x"]), executor="inline", params={"weight": 7})) == {"x": 7}


def test_generator_reducer_and_identity_reducer():
    def pairs(key, values):
        for v in sorted(values):
            yield f"{key}-{v}", v

    job = mrkit.Job(mapper=lambda r: [(r % 3, r)], reducer=pairs)
    got = dict(run(job, range(9), executor="inline", n_reduce=2))
    assert got == {f"{r % 3}-{r}": r for r in range(9)}
    ident = mrkit.Job(mapper=lambda r: [("k", r)])
    assert sorted(v for _, v in run(ident, range(5), executor="inline")) == [0, 1, 2, 3, 4]


def test_custom_partitioner_and_bad_partitioner(tmp_path):
    job = mrkit.Job(mapper=lambda r: [(r, 1)], reducer=J.total, partitioner=lambda k, n: k % n)
    res = run(job, range(10), executor="inline", n_reduce=3, output=str(tmp_path / "out"))
    parts = {
        p: [k for k, _ in mrkit.read_output(str(tmp_path / "out")) if k % 3 == int(p[-1])]
        for p in ("part-00000", "part-00001", "part-00002")
    }
    assert sorted(k for ks in parts.values() for k in ks) == list(range(10))
    assert res.counters["reduce.records_out"] == 10
    bad = mrkit.Job(mapper=lambda r: [(r, 1)], reducer=J.total, partitioner=lambda k, n: 99)
    with pytest.raises(mrkit.JobFailed, match="partitioner returned 99"):
        run(bad, range(3), executor="inline", n_reduce=2)


def test_output_folder_round_trip_and_types(tmp_path):
    job = mrkit.Job(mapper=lambda r: [((r, "t"), {"v": r})], reducer=lambda k, vs: list(vs))
    out = tmp_path / "out"
    res = run(job, range(4), executor="inline", output=str(out), n_reduce=2)
    assert sorted(os.listdir(out)) == ["_SUCCESS", "part-00000", "part-00001"]
    got = sorted(mrkit.read_output(str(out)))
    assert got == [((r, "t"), [{"v": r}]) for r in range(4)]  # tuple keys come back as tuples
    assert sorted(res) == got
    info = json.loads((out / "_SUCCESS").read_text())
    assert info["format"] == "tsv" and info["parts"] == 2


def test_existing_output_is_not_overwritten_unless_asked(tmp_path):
    out = str(tmp_path / "out")
    run(J.WORDCOUNT, mrkit.Records(["a"]), executor="inline", output=out)
    with pytest.raises(mrkit.OutputExistsError, match="overwrite"):
        run(J.WORDCOUNT, mrkit.Records(["b"]), executor="inline", output=out)
    run(J.WORDCOUNT, mrkit.Records(["b"]), executor="inline", output=out, overwrite=True)
    assert dict(mrkit.read_output(out)) == {"b": 1}


def test_raising_mapper_fails_with_one_sentence_and_publishes_nothing(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("fine line\nanother\npoison here\nmore\n")
    out = tmp_path / "out"
    job = mrkit.Job(mapper=J.failing_mapper, reducer=J.total)
    with pytest.raises(mrkit.JobFailed) as info:
        run(job, str(path), executor="inline", output=str(out), n_reduce=2)
    msg = str(info.value)
    assert "map task map-00000" in msg
    assert "after 4 attempts" in msg
    assert str(path) in msg and "record 2" in msg
    assert "ValueError: cannot map 'poison here'" in msg
    assert "\n" not in msg
    assert "Traceback" in info.value.remote_traceback and "failing_mapper" in info.value.remote_traceback
    assert not out.exists()


def test_raising_reducer_names_the_key_and_publishes_nothing(tmp_path, processes):
    out = tmp_path / "out"
    out.mkdir()
    job = mrkit.Job(mapper=J.words, reducer=J.failing_reducer)
    with pytest.raises(mrkit.JobFailed) as info:
        run(
            job,
            mrkit.Records(["good bad", "bad"]),
            executor=processes,
            output=str(out),
            policy=mrkit.RetryPolicy(max_attempts=2),
        )
    msg = str(info.value)
    assert "reduce task reduce-" in msg and "after 2 attempts" in msg
    assert "reducer on key 'bad'" in msg and "KeyError" in msg
    assert os.listdir(out) == []


def test_spill_and_merge_under_a_tiny_memory_budget():
    records = [f"w{i % 500} w{i % 7} x" for i in range(20000)]
    res = run(J.WordCount(), mrkit.Records(records), executor="inline", n_map=2, n_reduce=3, memory_mb=0.05)
    assert res.counters["map.spills"] > 2
    assert dict(res) == dict(reference(J.WORDCOUNT, records))


def test_hot_key_is_streamed_to_the_reducer_under_a_memory_cap(tmp_path):
    import tracemalloc

    n = 400_000
    peak_file = tmp_path / "peak"
    job = mrkit.Job(mapper=J.hot_key_mapper, reducer=J.streaming_count, params={"peak_file": str(peak_file)})
    tracemalloc.start()
    try:
        res = run(job, range(n), executor="inline", n_map=4, n_reduce=1, memory_mb=2)
    finally:
        tracemalloc.stop()
    assert dict(res) == {"hot": (n, n * (n - 1) // 2)}
    assert res.counters["map.spills"] > 0 and res.counters["reduce.runs_in"] > 4
    # Holding every value would take > 14 MB (400k int objects + list slots); the merge holds about
    # one frame (8192 values) per run while the reducer iterates.
    assert int(peak_file.read_text()) < 4 * (1 << 20), peak_file.read_text()


def test_sigkilled_worker_is_replaced_and_output_is_exact(tmp_path, processes):
    marker = tmp_path / "killed"
    records = [f"line {i}" for i in range(200)] + ["killme now"]
    job = mrkit.Job(
        mapper=J.kill_once_mapper, reducer=J.total, combiner=J.total, params={"marker": str(marker)}
    )
    res = run(job, mrkit.Records(records), executor=processes, n_map=4, n_reduce=2)
    assert marker.exists()
    assert res.counters["map.attempts_lost"] == 1
    assert res.counters["map.attempts_failed"] == 0
    assert dict(res) == dict(reference(J.WORDCOUNT, records))


def test_straggler_gets_a_speculative_attempt_that_wins(processes):
    records = ["fast a"] * 5 + ["slow b"] + ["fast c"] * 14  # map-00001 holds records 5-9
    job = mrkit.Job(mapper=J.straggler_mapper, reducer=J.total, params={"sleep": 6.0})
    policy = mrkit.RetryPolicy(speculative_min_seconds=0.3, speculative_after=2.0)
    res = run(job, mrkit.Records(records), executor=processes, n_map=4, n_reduce=1, policy=policy)
    assert res.counters["map.attempts_speculative"] >= 1
    assert res.seconds < 6.0
    assert dict(res) == dict(reference(J.WORDCOUNT, records))


def test_partitioning_does_not_depend_on_the_hash_seed(tmp_path):
    (tmp_path / "in.txt").write_text("\n".join(TEXT * 5))
    outputs = []
    for seed in ("1", "2"):
        out = tmp_path / f"out{seed}"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run(
            [
                sys.executable,
                "-m",
                "mrkit",
                "run",
                "tests/jobs_for_tests.py:WordCount",
                str(tmp_path / "in.txt"),
                "-M",
                "4",
                "-N",
                "3",
                "-o",
                str(out),
                "--workers",
                "2",
            ],
            check=True,
            env=env,
            cwd=os.path.dirname(os.path.dirname(__file__)),
            capture_output=True,
        )
        outputs.append([(out / f"part-0000{p}").read_bytes() for p in range(4)])
    assert outputs[0] == outputs[1]
    assert all(outputs[0])


UNGUARDED = """
import mrkit
job = mrkit.Job(mapper=lambda line: [(w, 1) for w in line.split()], reducer=lambda k, vs: sum(vs))
print(sorted(mrkit.run(job, mrkit.Records(["a b", "b"]), workers=2, quiet=True)))
"""


def test_scripts_without_main_guard_and_from_stdin_work_on_processes(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED)
    expected = "[('a', 1), ('b', 2)]"
    by_path = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert by_path.stdout.strip() == expected, by_path.stderr
    by_stdin = subprocess.run(
        [sys.executable, "-"], input=UNGUARDED, capture_output=True, text=True, timeout=60
    )
    assert by_stdin.stdout.strip() == expected, by_stdin.stderr


def test_task_timeout_clock_starts_when_an_attempt_runs_not_when_it_is_queued():
    # One worker; map-00001's first attempt sleeps 5 s, past task_timeout=1 s. The processes
    # executor enforces task_timeout in the worker: its watchdog ends the stuck attempt (a failed
    # attempt, TaskTimeout, not a lost one) and the worker is replaced. The tasks queued behind it
    # must not time out too (their clock has not started): the job succeeds.
    records = ["fast a"] * 5 + ["slow b"] + ["fast c"] * 14
    job = mrkit.Job(mapper=J.straggler_mapper, reducer=J.total, params={"sleep": 5.0})
    policy = mrkit.RetryPolicy(task_timeout=1.0, speculative=False, max_lost=2)
    res = run(
        job, mrkit.Records(records), executor="processes", workers=1, n_map=4, n_reduce=1, policy=policy
    )
    assert dict(res) == dict(reference(J.WORDCOUNT, records))
    assert res.counters["map.attempts_failed"] == 1 and res.counters["map.attempts_lost"] == 0


def test_a_duplicate_delivery_of_a_committed_task_is_skipped_without_running(tmp_path):
    from mrkit.coordination.plan import RetryPolicy, build_plan
    from mrkit.data.splits import plan_splits
    from mrkit.execution.runtime import run_task
    from mrkit.model.task import TaskSettings
    from mrkit.storage import LocalStorage

    path = tmp_path / "in.txt"
    path.write_text("a b\nb c\n")
    storage = LocalStorage(str(tmp_path / "inter"))
    plan = build_plan(
        J.WORDCOUNT,
        plan_splits([str(path)], 1),
        job_id="dup",
        storage=storage,
        output_url=str(tmp_path / "out"),
        n_reduce=1,
        settings=TaskSettings(),
        policy=RetryPolicy(),
    )
    spec = plan.map_specs[0]
    first = run_task(spec)
    assert first.ok and first.committed and "duplicates_skipped" not in first.counters
    again = run_task(spec.__class__(**{**spec.__dict__, "attempt": 2}))
    assert (again.ok, again.committed, again.counters) == (True, False, {"duplicates_skipped": 1})
    assert "records_in" not in again.counters  # it did not read its split again
