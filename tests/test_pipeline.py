"""Seed 001's fluent pipelines (mrkit.Pipeline): chains become multi-step jobs, merges feed several
pipelines' pairs into one."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

import mrkit
from tests.jobs_for_tests import total, words


def to_ranking(pair: tuple[str, int]) -> Iterator[tuple[None, tuple[int, str]]]:
    yield None, (pair[1], pair[0])


def top2(_key: None, ranked: Iterable[tuple[int, str]]) -> Iterator[tuple[str, int]]:
    for count, word in sorted(ranked, key=lambda cw: (-cw[0], cw[1]))[:2]:
        yield word, count


def first_letter(key: str, n_reduce: int) -> int:
    return ord(key[0]) % n_reduce


@pytest.mark.parametrize("executor", ["inline", "processes"])
def test_a_chain_of_stages_runs_as_one_multi_step_job(executor: str, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("a b a\nc a b\nd\n", encoding="utf-8")
    counts = (
        mrkit.Pipeline(str(source), name="wc")
        .map(words)
        .combine(total)
        .shuffle(first_letter)
        .reduce(total, n_reduce=3)
    )
    top = counts.map(to_ranking).reduce(top2, n_reduce=1)
    result = top.run(executor=executor, output=str(tmp_path / "out"), quiet=True)
    assert list(mrkit.read_output(str(tmp_path / "out"))) == [("a", 3), ("b", 2)]
    assert result.counters["step1.reduce.tasks"] == 3 and result.counters["step2.reduce.tasks"] == 1
    assert sorted(counts.run(executor=executor, quiet=True)) == [
        ("a", 3),
        ("b", 2),
        ("c", 1),
        ("d", 1),
    ]  # immutable


def test_merged_pipelines_feed_their_pairs_into_one(tmp_path: Path) -> None:
    """A reduce-side join of two pipelines' outputs, merged by their finish() ids."""
    users = tmp_path / "users.txt"
    users.write_text("u1 ann\nu2 bob\n", encoding="utf-8")
    orders = tmp_path / "orders.txt"
    orders.write_text("u1 5\nu2 7\nu1 1\n", encoding="utf-8")

    def user(line: str) -> Iterator[tuple[str, tuple[str, str]]]:
        uid, name = line.split()
        yield uid, ("name", name)

    def order(line: str) -> Iterator[tuple[str, tuple[str, int]]]:
        uid, amount = line.split()
        yield uid, ("spent", int(amount))

    def add(_uid: str, tagged: Iterable[tuple[str, int]]) -> tuple[str, int]:
        return "spent", sum(v for _, v in tagged)

    def join(_uid: str, tagged: Iterable[tuple[str, object]]) -> Iterator[tuple[object, object]]:
        fields = dict(tagged)
        yield fields["name"], fields["spent"]

    names = mrkit.Pipeline(str(users), name="users").map(user).finish()
    spent = mrkit.Pipeline(str(orders), name="orders").map(order).reduce(add).finish()
    joined = mrkit.Pipeline.merge([names, spent]).reduce(join, n_reduce=2)
    assert sorted(joined.run(executor="processes", workers=2, quiet=True)) == [("ann", 6), ("bob", 7)]


def test_bad_pipelines_are_one_sentence() -> None:
    with pytest.raises(mrkit.ConfigError, match="no finished pipeline 'nope'"):
        mrkit.Pipeline.merge(["nope"])
    with pytest.raises(mrkit.ConfigError, match="already has a combiner"):
        mrkit.Pipeline("x").map(words).combine(total).combine(total)
    with pytest.raises(mrkit.ConfigError, match="has no stage"):
        mrkit.Pipeline("x").run()
    with pytest.raises(mrkit.ConfigError, match="has no inputs"):
        mrkit.Pipeline().map(words).run()
