"""Deterministic user errors fail at once (one attempt), naming the task, the key and the cause."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

import mrkit
from mrkit.errors import ConfigError, JobFailed
from tests.jobs_for_tests import words

EXECUTORS = ["inline", "processes"]


class Opaque:
    """Not JSON-serialisable."""


def opaque_reducer(key: str, values: Iterable[int]) -> object:
    return Opaque() if key == "bad" else sum(values)


def non_pair_reducer(key: str, values: Iterable[int]) -> Iterator[object]:
    yield f"{key}={sum(values)}"


def _run(job: mrkit.Job, executor: str, output: Path, **options: object) -> None:
    mrkit.run(
        job,
        mrkit.Records(["good bad", "bad good"]),
        executor=executor,
        workers=2,
        n_map=2,
        n_reduce=1,
        output=str(output),
        policy=mrkit.RetryPolicy(max_attempts=3),
        quiet=True,
        **options,
    )


@pytest.mark.parametrize("executor", EXECUTORS)
def test_an_unencodable_output_value_fails_after_one_attempt_naming_the_key(
    executor: str, tmp_path: Path
) -> None:
    with pytest.raises(JobFailed) as info:
        _run(mrkit.Job(mapper=words, reducer=opaque_reducer), executor, tmp_path / "out")
    first = str(info.value).splitlines()[0]
    assert "reduce task reduce-00000" in first
    assert "failed after 1 attempt (not retried" in first
    assert "key 'bad'" in first and "Opaque" in first and "not JSON-serialisable" in first
    assert info.value.counters.get("reduce.failed", 1) == 1


@pytest.mark.parametrize("executor", EXECUTORS)
def test_an_unpicklable_in_memory_value_fails_after_one_attempt(executor: str) -> None:
    job = mrkit.Job(mapper=words, reducer=lambda key, values: (lambda: key) if key == "bad" else 1)
    with pytest.raises(JobFailed) as info:
        mrkit.run(job, mrkit.Records(["good bad"]), executor=executor, workers=2, n_reduce=1, quiet=True)
    first = str(info.value).splitlines()[0]
    assert "failed after 1 attempt (not retried" in first and "key 'bad'" in first
    assert "pickle" in first


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_reducer_yielding_a_non_pair_fails_after_one_attempt(executor: str, tmp_path: Path) -> None:
    with pytest.raises(JobFailed) as info:
        _run(mrkit.Job(mapper=words, reducer=non_pair_reducer), executor, tmp_path / "out")
    first = str(info.value).splitlines()[0]
    assert "failed after 1 attempt (not retried" in first
    assert "must yield (key, value) pairs, got str" in first


def test_a_reducer_taking_one_argument_is_refused_before_any_task_runs() -> None:
    with pytest.raises(
        ConfigError, match=r"job 'words' reducer must take \(key, values\), but <lambda>\(k\)"
    ):
        mrkit.Job(mapper=words, reducer=lambda k: 0)


def test_a_class_combiner_taking_three_arguments_is_refused_before_any_task_runs() -> None:
    class ThreeArgs(mrkit.Job):
        def mapper(self, line: str) -> Iterator[tuple[str, int]]:
            yield from words(line)

        def combiner(self, key: str, values: Iterable[int], extra: int) -> int:
            return sum(values)

    with pytest.raises(ConfigError, match=r"job 'ThreeArgs' combiner must take \(key, values\)"):
        ThreeArgs()


def test_signatures_that_fit_are_accepted() -> None:
    def star(*args: object) -> None:
        return None

    class Methods(mrkit.Job):
        def mapper(self, line: str, sep: str = " ") -> Iterator[tuple[str, int]]:
            yield from words(line)

        def reducer(self, key: str, values: Iterable[int]) -> int:
            return sum(values)

    Methods()
    mrkit.Job(mapper=star, reducer=star, combiner=max, partitioner=star, mapper_init=star)
