"""The executor contract: the same jobs give the same bytes, counters and failures on every executor.

Every case runs on ``inline`` (the reference), ``processes``, a Redis Streams fleet (a real
``redis-server`` on 127.0.0.1 and a real ``mrkit worker`` process), driver-started ``http`` workers,
``lambda-local`` (functions in fresh processes, shuffle through a real S3-protocol server on
loopback), ``dask`` (a ``LocalCluster`` of two worker processes) and ``dask-cli`` (``dask scheduler``
and two ``dask worker`` processes started as commands, reached as ``dask://127.0.0.1:PORT``).
Each case runs the job on one backend and on ``inline`` and compares:

* the output files, byte for byte (``part-*``; ``_SUCCESS`` holds timings and is only checked to
  exist), read back through :func:`mrkit.read_output` as well;
* the counters that describe the data (records and bytes in and out, tasks), which must not depend on
  where the tasks ran;
* for a failing job, the shape of the one-sentence error (the job id and attempt count masked) and
  that nothing was published.

A new backend joins the contract by adding one entry to :data:`BACKENDS` and a branch to
:func:`backend`; its own test modules keep only what is specific to it.
"""

from __future__ import annotations

import collections
import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import mrkit
from mrkit.coordination.plan import RetryPolicy
from mrkit.execution.base import Executor, open_executor
from mrkit.model.task import TaskResult, TaskSpec
from mrkit.storage import open_storage
from tests import contract_jobs as C
from tests.jobs_for_tests import words
from tests.redis_fixtures import RedisServer, start_worker, stop_worker
from tests.s3_fixtures import moto_server  # noqa: F401 - fixture used by the lambda-local backend

BACKENDS = ["inline", "processes", "redis", "http", "lambda-local", "dask", "dask-cli"]

# Counters that describe the data, not where or how often tasks ran (attempts, timings and
# duplicates may differ between executors; these may not).
DATA_COUNTERS = (
    "map.tasks",
    "map.records_in",
    "map.records_out",
    "map.bytes_in",
    "reduce.tasks",
    "reduce.records_in",
    "reduce.records_out",
)

TEXT = [
    "the quick brown fox jumps over the lazy dog",
    "The Dog sat on the mat",
    "",
    "a b c a b a it's 42 o'clock",
    "zebra yak xylophone walrus",
    "naïve café: résumé",
] * 30


@dataclass
class Backend:
    """One executor under contract: how ``mrkit.run`` reaches it, and where its output may go."""

    name: str
    executor: Any
    run_options: dict[str, Any] = field(default_factory=dict)
    remote_output: str | None = None  # an object-store prefix when the workers cannot see local folders

    def output(self, tmp_path: Path, label: str) -> str:
        if self.remote_output:
            return f"{self.remote_output}/{tmp_path.name}-{label}"
        return str(tmp_path / label)


@pytest.fixture(autouse=True)
def _close_clients(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from tests.dask_fixtures import closing_submitted_clients

    yield from closing_submitted_clients(monkeypatch)


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    name = request.param
    if name in ("inline", "processes"):
        executor = open_executor(name, workers=2)
        try:
            yield Backend(name, executor)
        finally:
            executor.shutdown()
    elif name == "redis":
        server = RedisServer(str(tmp_path_factory.mktemp("redis"))).start()
        fleet = start_worker(server.url, burst=False, concurrency=2, new_session=True)
        try:
            yield Backend(name, server.url)
        finally:
            stop_worker(fleet)
            server.stop()
    elif name == "http":
        from mrkit.backends.http.executor import HttpExecutor

        executor = HttpExecutor(workers=2)
        try:
            yield Backend(name, executor)
        finally:
            executor.shutdown()
    elif name == "lambda-local":
        from mrkit.backends.aws_lambda.detached import stop_detached
        from mrkit.backends.aws_lambda.executor import LocalLambdaExecutor

        server = request.getfixturevalue("moto_server")
        bucket = server.create_bucket()
        state_dir = str(tmp_path_factory.mktemp("fn"))
        executor = LocalLambdaExecutor.from_name(
            "lambda-local", state_dir=state_dir, storage=f"s3://{bucket}/mrkit", timeout=30, max_concurrency=4
        )
        try:
            yield Backend(name, executor, remote_output=f"s3://{bucket}/out")
        finally:
            executor.shutdown()
            # The submitted jobs' detached deliveries outlive the executor by design; left alone,
            # they retried against the stopped S3 server for minutes after the suite (44 processes).
            stop_detached(state_dir)
    elif name == "dask":
        executor = open_executor("dask", workers=2)
        try:
            yield Backend(name, executor)
        finally:
            executor.shutdown()
    elif name == "dask-cli":
        from tests.dask_fixtures import start_cluster

        cluster = start_cluster(n_workers=2)
        try:
            yield Backend(name, cluster.address.replace("tcp://", "dask://"))
        finally:
            cluster.stop()
    else:  # pragma: no cover - a name added to BACKENDS without its fixture
        raise AssertionError(f"no fixture for backend {name}")


def run(job: mrkit.Job, inputs: Any, executor: Any, **options: Any) -> mrkit.Result:
    options.setdefault("quiet", True)
    options.setdefault("n_map", 3)
    options.setdefault("n_reduce", 3)
    return mrkit.run(job, inputs, executor=executor, **options)


def output_bytes(url: str) -> dict[str, bytes]:
    """``{part name: bytes}`` of a published output folder (local or object store)."""
    storage = open_storage(url)
    names = sorted(n for n in storage.list("") if n.rsplit("/", 1)[-1].startswith("part-"))
    assert "_SUCCESS" in [n.rsplit("/", 1)[-1] for n in storage.list("")], f"no _SUCCESS in {url}"
    return {n.rsplit("/", 1)[-1]: storage.get(n) for n in names}


def data_counters(result: mrkit.Result) -> dict[str, int]:
    return {k: result.counters.get(k, 0) for k in DATA_COUNTERS}


def write_lines(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def agree_with_inline(
    backend: Backend, job: mrkit.Job, tmp_path: Path, lines: list[str], **options: Any
) -> mrkit.Result:
    """Run ``job`` over ``lines`` (one file) on ``backend`` and on inline; assert the same bytes and
    data counters; return the backend's result."""
    source = write_lines(tmp_path / "input.txt", lines)
    expected_out = str(tmp_path / "expected")
    expected = run(job, source, "inline", output=expected_out, **options)
    got_out = backend.output(tmp_path, "got")
    got = run(job, source, backend.executor, output=got_out, **backend.run_options, **options)
    assert output_bytes(got_out) == output_bytes(expected_out)
    assert sorted(mrkit.read_output(got_out), key=repr) == sorted(mrkit.read_output(expected_out), key=repr)
    assert data_counters(got) == data_counters(expected)
    return got


def test_word_count(backend: Backend, tmp_path: Path) -> None:
    got = agree_with_inline(backend, C.WORD_COUNT, tmp_path, TEXT)
    assert got.counters["map.records_in"] == len(TEXT)
    assert dict(mrkit.read_output(backend.output(tmp_path, "got")))["the"] == 120


def test_inverted_index(backend: Backend, tmp_path: Path) -> None:
    docs = [f"doc{i:03d}\t{line}" for i, line in enumerate(TEXT)]
    agree_with_inline(backend, C.INVERTED_INDEX, tmp_path, docs)
    index = dict(mrkit.read_output(backend.output(tmp_path, "got")))
    assert index["zebra"] == [f"doc{i:03d}" for i in range(4, len(TEXT), 6)]


def test_group_by_sum_of_floats(backend: Backend, tmp_path: Path) -> None:
    rows = [f"k{i % 7},{(i * 0.1) - 3.3:.3f}" for i in range(500)]
    agree_with_inline(backend, C.GROUP_SUM, tmp_path, rows, n_map=4, split_size=1000)
    sums = dict(mrkit.read_output(backend.output(tmp_path, "got")))
    assert sorted(sums) == [f"k{i}" for i in range(7)] and all(isinstance(v, float) for v in sums.values())


def test_generator_reducer(backend: Backend, tmp_path: Path) -> None:
    got = agree_with_inline(backend, C.GENERATOR_REDUCER, tmp_path, TEXT)
    assert got.counters["reduce.records_out"] > got.counters["reduce.tasks"]


def test_custom_partitioner(backend: Backend, tmp_path: Path) -> None:
    agree_with_inline(backend, C.PARTITIONED, tmp_path, TEXT)
    out = backend.output(tmp_path, "got")
    parts = output_bytes(out)
    for index, name in enumerate(sorted(parts)):
        keys = [json.loads(line.split(b"\t", 1)[0]) for line in parts[name].splitlines()]
        assert keys and all(C.by_first_letter(k, 3) == index for k in keys), (name, keys)


def test_typed_keys(backend: Backend, tmp_path: Path) -> None:
    agree_with_inline(backend, C.TYPED_KEYS, tmp_path, TEXT)
    keys = {type(k) for k, _ in mrkit.read_output(backend.output(tmp_path, "got"))}
    assert keys == {tuple, int, str, bool, type(None)}


def test_a_mapper_knows_its_input_file_and_split(backend: Backend, tmp_path: Path) -> None:
    """``mrkit.context().input``: the file and byte offset of the split, the same on every executor."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_lines(folder / "left.txt", TEXT[:100])
    write_lines(folder / "right.txt", TEXT[100:130])
    options: dict[str, Any] = {"split_size": 1500, "n_reduce": 2}
    expected_out, got_out = str(tmp_path / "expected"), backend.output(tmp_path, "got")
    run(C.BY_INPUT, str(folder), "inline", output=expected_out, **options)
    run(C.BY_INPUT, str(folder), backend.executor, output=got_out, **backend.run_options, **options)
    assert output_bytes(got_out) == output_bytes(expected_out)
    got = dict(mrkit.read_output(got_out))
    assert got["left.txt"] == 100 and got["right.txt"] == 30
    # Each split reports its own start, and the bytes of the lines it owns add up to the file's size.
    for name in ("left.txt", "right.txt"):
        starts = sorted(int(k.split("@")[1]) for k in got if k.startswith(f"{name}@"))
        assert starts[0] == 0 and (len(starts) > 1 or name == "right.txt"), starts  # right: one split
        assert sum(got[f"{name}@{s}"] for s in starts) == (folder / name).stat().st_size


def test_small_files_packed_into_fewer_map_tasks_change_no_byte(backend: Backend, tmp_path: Path) -> None:
    """The default plan packs small files into map tasks (``pack_splits``): the same bytes as one
    task per file, and ``mrkit.context().input`` still names the file each record came from."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(24):
        write_lines(folder / f"f{i:02d}.txt", [f"{line} file{i}" for line in TEXT[i : i + 20 + i % 5]])
    expected_out, got_out = str(tmp_path / "expected"), backend.output(tmp_path, "got")
    # One task per file (an explicit n_map is never packed) against the default, packed, plan.
    expected = run(C.BY_INPUT, str(folder), "inline", output=expected_out, n_map=24, n_reduce=2)
    got = run(
        C.BY_INPUT,
        str(folder),
        backend.executor,
        output=got_out,
        n_map=None,
        n_reduce=2,
        **backend.run_options,
    )
    assert expected.counters["map.tasks"] == 24 and got.counters["map.tasks"] < 24
    assert output_bytes(got_out) == output_bytes(expected_out)
    counts = dict(mrkit.read_output(got_out))
    assert [counts[f"f{i:02d}.txt"] for i in range(24)] == [20 + i % 5 for i in range(24)]
    assert all(counts[f"f{i:02d}.txt@0"] == (folder / f"f{i:02d}.txt").stat().st_size for i in range(24))
    assert got.counters["map.bytes_in"] == sum(f.stat().st_size for f in folder.iterdir())


def test_a_join_reads_each_input_with_its_own_mapper(backend: Backend, tmp_path: Path) -> None:
    """``inputs={path: mapper}`` (Hadoop's MultipleInputs) for a reduce-side join, on every executor."""
    users = write_lines(tmp_path / "users.csv", [f"u{i},name{i}" for i in range(40)])
    orders = tmp_path / "orders"
    orders.mkdir()
    for part in range(3):
        write_lines(orders / f"part{part}.csv", [f"u{(i * 7 + part) % 50},{i}" for i in range(60)])
    inputs = {users: C.user_record, str(orders): C.order_record}
    expected_out, got_out = str(tmp_path / "expected"), backend.output(tmp_path, "got")
    run(C.JOIN, inputs, "inline", output=expected_out, split_size=400)
    # Submitted: asynchronous on Redis and serverless (the services' preamble), a background run elsewhere.
    handle = mrkit.submit(
        C.JOIN, inputs, executor=backend.executor, output=got_out, split_size=400, n_reduce=3, quiet=True
    )
    got = handle.wait(120)
    assert output_bytes(got_out) == output_bytes(expected_out)
    joined = dict(mrkit.read_output(got_out))
    orders_of = {f"u{i}": [] for i in range(50)}  # the oracle, in plain Python
    for part in range(3):
        for i in range(60):
            orders_of[f"u{(i * 7 + part) % 50}"].append(i)
    assert joined == {f"name{i}": [len(orders_of[f"u{i}"]), sum(orders_of[f"u{i}"])] for i in range(40)}
    assert got.counters["map.records_in"] == 40 + 180 and got.counters["map.tasks"] > 2


def test_empty_input(backend: Backend, tmp_path: Path) -> None:
    got = agree_with_inline(backend, C.WORD_COUNT, tmp_path, [])
    assert list(mrkit.read_output(backend.output(tmp_path, "got"))) == []
    assert got.counters.get("map.records_in", 0) == 0


def failure_shape(message: str) -> str:
    """The error's first sentence with what may differ between runs masked: the job id."""
    first = message.splitlines()[0]
    return re.sub(r"of job \S+", "of job JOB", first)


def test_raising_mapper_fails_the_same_way_and_publishes_nothing(backend: Backend, tmp_path: Path) -> None:
    lines = [*TEXT[:10], "this line is poison", *TEXT[:10]]
    source = write_lines(tmp_path / "input.txt", lines)
    policy = RetryPolicy(max_attempts=2)
    errors = []
    for executor, options, out in (
        ("inline", {}, str(tmp_path / "expected")),
        (backend.executor, backend.run_options, backend.output(tmp_path, "got")),
    ):
        with pytest.raises(mrkit.JobFailed) as info:
            run(C.RAISING_MAPPER, source, executor, output=out, n_map=1, policy=policy, **options)
        errors.append(info.value)
        storage = open_storage(out)
        assert not [n for n in storage.list("") if "part-" in n or "_SUCCESS" in n], out
    expected, got = (failure_shape(str(e)) for e in errors)
    assert got == expected
    assert "failed after 2 attempts" in got and "record 10" in got and "ValueError: cannot map" in got
    assert errors[1].counters.get("map.attempts_failed") == 2


class DuplicatingExecutor(Executor):
    """Delivers every task twice to the executor it wraps (as a redelivered message would) and
    answers with whichever delivery finishes first."""

    def __init__(self, inner: Executor) -> None:
        self.inner = inner
        self.name = inner.name
        self.workers = inner.workers
        self.local = inner.local
        self.asynchronous = False
        self.reports_running = inner.reports_running
        self.enforces_timeouts = inner.enforces_timeouts
        self.delivered = 0

    def submit(self, spec: TaskSpec) -> Future[TaskResult]:
        first = self.inner.submit(spec)
        self.inner.submit(spec)  # the duplicate: its result is ignored, its effect must be too
        self.delivered += 2
        return first

    def storage_url(self, job_id: str) -> str | None:
        return self.inner.storage_url(job_id)

    def shutdown(self, wait: bool = True) -> None:
        """The wrapped executor belongs to the fixture, which shuts it down."""


def test_a_duplicate_delivery_changes_nothing(backend: Backend, tmp_path: Path) -> None:
    inner = open_executor(backend.executor, workers=2)
    duplicating = DuplicatingExecutor(inner)
    try:
        source = write_lines(tmp_path / "input.txt", TEXT)
        expected_out = str(tmp_path / "expected")
        expected = run(C.WORD_COUNT, source, "inline", output=expected_out)
        got_out = backend.output(tmp_path, "got")
        got = run(C.WORD_COUNT, source, duplicating, output=got_out, **backend.run_options)
    finally:
        if inner is not backend.executor:
            inner.shutdown()
    assert duplicating.delivered == 2 * (got.counters["map.tasks"] + got.counters["reduce.tasks"])
    assert output_bytes(got_out) == output_bytes(expected_out)
    assert data_counters(got) == data_counters(expected)


def test_submit_with_side_files_and_small_splits_gives_the_same_output(
    backend: Backend, tmp_path: Path
) -> None:
    """``mrkit.submit(...).wait()`` (asynchronous on Redis and serverless, a background run on the
    others) takes the same options as ``mrkit.run``: side files and ``split_size`` included."""
    source = write_lines(tmp_path / "input.txt", TEXT)
    stop = tmp_path / "stopwords.txt"
    stop.write_text("the a on\n", encoding="utf-8")
    options: dict[str, Any] = {"n_reduce": 3, "split_size": 500, "files": [str(stop)], "quiet": True}
    expected_out = str(tmp_path / "expected")
    expected = mrkit.run(C.STOPWORDS, source, executor="inline", output=expected_out, **options)
    got_out = backend.output(tmp_path, "got")
    handle = mrkit.submit(C.STOPWORDS, source, executor=backend.executor, output=got_out, **options)
    got = handle.wait(120)
    if isinstance(backend.executor, Executor):  # an executor the caller passed in is still theirs
        assert run(C.WORD_COUNT, source, backend.executor).counters["map.tasks"] > 0
    # Every backend's handle reports the one JobStatus schema.
    st = handle.status()
    assert isinstance(st, mrkit.JobStatus) and st.id == handle.id and st.state == "done", st
    assert st.map.total == got.counters["map.tasks"] and st.reduce.total == 3, st
    assert st.to_dict()["tasks"]["map"]["total"] == st.map.total and st["state"] == "done"
    assert output_bytes(got_out) == output_bytes(expected_out)
    assert "the" not in dict(mrkit.read_output(got_out))
    assert expected.counters["map.tasks"] > 3  # split_size made several splits of one small file
    assert data_counters(got) == data_counters(expected)


def test_a_failed_named_job_resumes_reusing_its_committed_tasks(backend: Backend, tmp_path: Path) -> None:
    """``mrkit.run(..., job_id=ID)`` fails on one split; once the cause is gone, ``resume=True`` runs
    only the tasks that had not committed and publishes what an undisturbed run publishes."""
    lines = [*TEXT[:120], "poison here"]  # two splits: the poison is in the second
    source = write_lines(tmp_path / "input.txt", lines)
    cure = tmp_path / "cured"
    expected_out = str(tmp_path / "expected")
    expected = run(C.WORD_COUNT, source, "inline", output=expected_out, n_map=3, split_size=2000)
    got_out = backend.output(tmp_path, "got")
    job_id = f"resume-{tmp_path.name[-20:]}".replace("_", "-")
    options: dict[str, Any] = {"output": got_out, "n_map": 3, "split_size": 2000, "job_id": job_id}
    options.update(backend.run_options)
    with pytest.raises(mrkit.JobFailed, match="cannot map a poisoned line yet"):
        run(C.curable(str(cure)), source, backend.executor, policy=RetryPolicy(max_attempts=1), **options)
    cure.touch()
    got = run(C.curable(str(cure)), source, backend.executor, resume=True, **options)
    assert output_bytes(got_out) == output_bytes(expected_out)
    assert got.counters["map.tasks_resumed"] >= 1  # the splits before the poison were not mapped again
    assert got.counters["map.records_in"] == expected.counters["map.records_in"]


def test_a_two_step_job_feeds_typed_pairs_to_its_second_step(backend: Backend, tmp_path: Path) -> None:
    """Word count then top three: step 2 reads step 1's pairs with their types, only the last step
    publishes, counters come per step, and the output is the same bytes as inline's."""
    got = agree_with_inline(backend, C.TOP_WORDS, tmp_path, TEXT)
    counts = collections.Counter(word for line in TEXT for word, _ in words(line))
    oracle = sorted(counts.items(), key=lambda wc: (-wc[1], wc[0]))[:3]
    assert list(mrkit.read_output(backend.output(tmp_path, "got"))) == oracle
    assert got.counters["step1.map.records_in"] == len(TEXT) == got.counters["map.records_in"]
    assert got.counters["step2.map.records_in"] == got.counters["step1.reduce.records_out"]
    assert got.counters["step2.reduce.records_out"] == 3 == got.counters["reduce.records_out"]
    assert got.counters["step2.reduce.tasks"] == 1
    # Nothing of step 1 is published beside the output.
    names = open_storage(backend.output(tmp_path, "got")).list("")
    assert sorted(n for n in names if not n.startswith("_")) == ["part-00000"], names


def test_a_failing_step_is_named_and_nothing_is_published(backend: Backend, tmp_path: Path) -> None:
    source = write_lines(tmp_path / "input.txt", TEXT)
    out = backend.output(tmp_path, "got")
    job = C.TopWordsWithPoison(params={"poison": "zebra"})
    with pytest.raises(mrkit.JobFailed) as failed:
        run(
            job,
            source,
            backend.executor,
            output=out,
            policy=RetryPolicy(max_attempts=1),
            **backend.run_options,
        )
    message = str(failed.value)
    assert message.startswith("step 2 of 2 (top) of job "), message
    assert "ValueError: cannot rank 'zebra'" in message
    assert not [n for n in open_storage(out).list("") if "part-" in n or "_SUCCESS" in n]


def test_a_submitted_two_step_job_advances_step_by_step_and_reports_per_step(
    backend: Backend, tmp_path: Path
) -> None:
    """``mrkit.submit`` of a two-step job: on Redis, serverless and Dask a chain of one-step jobs the
    backend advances itself, elsewhere a background run; the same bytes as a blocking inline run,
    counters per step, and (on the job services) a status per step."""
    source = write_lines(tmp_path / "input.txt", TEXT)
    expected_out = str(tmp_path / "expected")
    expected = run(C.TOP_WORDS, source, "inline", output=expected_out)
    got_out = backend.output(tmp_path, "got")
    options: dict[str, Any] = {"n_map": 3, "n_reduce": 3, "quiet": True, **backend.run_options}
    handle = mrkit.submit(C.TOP_WORDS, source, executor=backend.executor, output=got_out, **options)
    got = handle.wait(120)
    assert output_bytes(got_out) == output_bytes(expected_out)
    assert got.counters["step1.map.records_in"] == len(TEXT) == got.counters["map.records_in"]
    assert got.counters["step2.map.records_in"] == got.counters["step1.reduce.records_out"]
    assert got.counters["step2.reduce.records_out"] == 3 == got.counters["reduce.records_out"]
    assert data_counters(got) == data_counters(expected)
    st = handle.status()
    assert st.state == "done" and st.id == handle.id, st
    if st.steps is not None:  # a chain on a job service
        assert (st.step, st.steps) == (2, 2) and st.phase.startswith("step2"), st
        assert st.counters is not None and st.counters["step1.map.records_in"] == len(TEXT), st
    names = open_storage(got_out).list("")
    assert sorted(n for n in names if not n.startswith("_")) == ["part-00000"], names


def test_sorted_values_and_totally_ordered_output(backend: Backend, tmp_path: Path) -> None:
    """``sort_values``: each reducer sees its values sorted; ``sort_output``: the parts read in order
    are sorted by key (range partitions sampled from the map output), on every backend."""
    source = write_lines(tmp_path / "input.txt", TEXT)
    out = backend.output(tmp_path, "got")
    run(
        C.LINES_BY_WORD,
        source,
        backend.executor,
        output=out,
        n_reduce=3,
        sort_values=True,
        sort_output=True,
        **backend.run_options,
    )  # noqa: E501
    got = list(mrkit.read_output(out))
    keys = [k for k, _ in got]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert all(values == sorted(values) for _, values in got)
    oracle: dict[str, list[str]] = {}
    for line in TEXT:
        for word, _ in words(line):
            oracle.setdefault(word, []).append(line)
    assert dict(got) == {word: sorted(lines) for word, lines in oracle.items()}
    sizes = [open_storage(out).size(f"part-{p:05d}") for p in range(3)]
    assert sum(1 for size in sizes if size) >= 2, sizes  # the sampled cut points spread the keys


def test_a_map_only_job_publishes_one_part_per_map_task_in_mapper_order(
    backend: Backend, tmp_path: Path
) -> None:
    """``n_reduce=0``: no shuffle; map task ``i`` writes ``part-i`` with its pairs in the order its
    mapper emitted them; synchronous and submitted runs publish the same bytes as inline."""
    got = agree_with_inline(backend, C.LONG_WORDS, tmp_path, TEXT, n_reduce=0, split_size=500)
    out = backend.output(tmp_path, "got")
    parts = sorted(n for n in open_storage(out).list("") if n.startswith("part-"))
    assert len(parts) == got.counters["map.tasks"] > 1 and got.counters.get("reduce.tasks", 0) == 0
    expected = [pair for line in TEXT for pair in C.long_words(line)]
    assert list(mrkit.read_output(out)) == expected  # parts in order, each in mapper order
    assert got.counters["map.records_out"] == len(expected)
    submitted_out = backend.output(tmp_path, "submitted")
    handle = mrkit.submit(
        C.LONG_WORDS, str(tmp_path / "input.txt"), executor=backend.executor, output=submitted_out,
        n_reduce=0, split_size=500, quiet=True, **backend.run_options,
    )  # fmt: skip
    handle.wait(120)
    assert output_bytes(submitted_out) == output_bytes(out)


def test_every_backend_records_one_committed_event_per_task(backend: Backend, tmp_path: Path) -> None:
    """The run's task events (``mrkit plot``'s input) are the same kinds on every backend: each task
    one committed attempt with its worker and counts, every outcome one of the known ones."""
    from mrkit.coordination.events import OUTCOMES
    from mrkit.coordination.registry import load_events

    source = write_lines(tmp_path / "input.txt", TEXT)
    job_id = f"events-{tmp_path.name[-24:]}".replace("_", "-")
    got = run(
        C.WORD_COUNT,
        source,
        backend.executor,
        output=backend.output(tmp_path, "got"),
        job_id=job_id,
        n_reduce=2,
        **backend.run_options,
    )  # noqa: E501
    events = load_events(job_id)
    committed = [e for e in events if e.outcome == "committed"]
    tasks = got.counters["map.tasks"] + got.counters["reduce.tasks"]
    assert len(committed) == len({e.task for e in committed}) == tasks
    assert all(e.outcome in OUTCOMES and e.end >= e.start and e.worker for e in events)
    assert sum(e.records_in for e in committed if e.phase == "map") == len(TEXT)


def test_a_submitted_job_keeps_the_same_events_for_any_process_to_read(
    backend: Backend, tmp_path: Path
) -> None:
    """``handle.events()`` of a submitted job, and of a fresh handle on it by id (the way another
    process or the dashboard follows it): one committed event per task with its worker, records
    and bytes; a raising mapper's attempts are ``failed`` with their one-sentence error."""
    from mrkit.coordination.events import OUTCOMES
    from mrkit.coordination.registry import RegistryJobHandle
    from mrkit.coordination.service import job_service

    source = write_lines(tmp_path / "input.txt", TEXT)
    handle = mrkit.submit(
        C.WORD_COUNT, source, executor=backend.executor, output=backend.output(tmp_path, "got"),
        n_reduce=2, split_size=2000, quiet=True, **backend.run_options,
    )  # fmt: skip
    got = handle.wait(120)
    ex = open_executor(backend.executor) if isinstance(backend.executor, str) else backend.executor
    service = job_service(ex)
    again = service.handle(handle.id) if service is not None else RegistryJobHandle(handle.id)
    deadline = time.monotonic() + 10  # a backend may write an attempt's event just after its commit
    tasks = got.counters["map.tasks"] + got.counters["reduce.tasks"]
    while True:
        events = again.events()
        committed = [e for e in events if e.outcome == "committed"]
        if len(committed) >= tasks or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(committed) == len({(e.phase, e.task) for e in committed}) == tasks
    assert all(e.outcome in OUTCOMES and e.end >= e.start > 0 and e.worker for e in events)
    assert sum(e.records_in for e in committed if e.phase == "map") == len(TEXT)
    assert sum(e.records_out for e in committed if e.phase == "reduce") == got.counters["reduce.records_out"]
    assert sum(e.bytes_in for e in committed if e.phase == "map") == got.counters["map.bytes_in"]
    assert [e.start for e in events] == sorted(e.start for e in events)
    assert {e.to_dict()["task"] for e in handle.events()} == {e.task for e in events}

    lines = [*TEXT[:10], "this line is poison", *TEXT[:10]]
    failing = mrkit.submit(
        C.RAISING_MAPPER, write_lines(tmp_path / "poison.txt", lines), executor=backend.executor,
        output=backend.output(tmp_path, "failed"), n_map=1, policy=RetryPolicy(max_attempts=2),
        quiet=True, **backend.run_options,
    )  # fmt: skip
    with pytest.raises(mrkit.JobFailed):
        failing.wait(120)
    deadline = time.monotonic() + 10
    while True:
        failed = [e for e in failing.events() if e.outcome == "failed"]
        if len(failed) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert [e.attempt for e in failed] == [1, 2]
    assert all("poison" in e.error and "\n" not in e.error for e in failed), failed
    if ex is not backend.executor:
        ex.shutdown()  # the executor opened to find the job service (a Dask client) is closed


def test_a_submitted_job_cancelled_midway_ends_cancelled_and_publishes_nothing(
    backend: Backend, tmp_path: Path
) -> None:
    """``handle.cancel()`` of a running job, on every backend (a local run through the job
    registry's cancel request, a fleet's or the functions' through their job state)."""
    from tests.jobs_for_tests import PACED

    source = write_lines(tmp_path / "input.txt", [f"alpha beta {i}" for i in range(60)])
    out = backend.output(tmp_path, "cancelled")
    handle = mrkit.submit(
        PACED, source, executor=backend.executor, output=out, params={"each": 0.1}, split_size=1,
        n_reduce=2, quiet=True, **backend.run_options,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while handle.status().map.done < 1:  # running, and past its first task
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.1)
    assert handle.cancel() is True
    with pytest.raises(mrkit.JobFailed):  # JobCancelled is a JobFailed
        handle.wait(60)
    assert handle.status().state == "cancelled"
    # Published means part-* or _SUCCESS at the top: a named job keeps its state in _temporary/
    # for a resume.
    published = [n for n in open_storage(out).list("") if n.startswith(("part-", "_SUCCESS"))]
    assert published == [], out


def test_a_run_by_executor_name_leaves_its_caller_single_threaded(backend: Backend, tmp_path: Path) -> None:
    """A program that runs a job by naming its executor gets its process back single-threaded (no
    thread the executor or the run started outlives the run: a one-step job, then a two-step one
    with a progress bar), so ``read_output`` may read ahead in a forked
    child. Checked in a fresh interpreter: this test process runs the fixtures' threads.

    One exception, Dask's and not mrkit's: a ``LocalCluster`` started in this process (``dask``)
    leaves ``distributed``'s module-wide offload thread, which lives as long as the process (mrkit
    does not replace Dask's private executor); ``read_output`` then reads serially (docs/dask.md)."""
    import subprocess
    import sys
    import textwrap

    name = backend.executor if isinstance(backend.executor, str) else backend.name
    source = write_lines(tmp_path / "input.txt", TEXT)
    program = textwrap.dedent(
        f"""
        import threading, mrkit
        from mrkit.data.prefetch import single_threaded
        from tests import contract_jobs as C
        if __name__ == "__main__":  # executor="dask" spawns its workers, which re-import this
            result = mrkit.run(C.WORD_COUNT, {source!r}, executor={name!r}, workers=2, quiet=True)
            # Two steps, with a progress bar: their threads (cancel forwarding, bar refresh) end too.
            mrkit.run(C.TOP_WORDS, {source!r}, executor={name!r}, workers=2, quiet=True, progress=True)
            print(single_threaded(), [t.name for t in threading.enumerate()], dict(result)["the"])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", program],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    expected = dict(run(C.WORD_COUNT, source, "inline"))["the"]
    threads = "False ['MainThread', 'Dask-Offload_0']" if backend.name == "dask" else "True ['MainThread']"
    assert out.stdout.splitlines()[-1] == f"{threads} {expected}", out.stderr
