"""What survives the output files: tuple keys round-trip as tuples through ``mrkit.read_output``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

import mrkit

LINES = ["the cat sat", "the cat ran", "a dog sat"]


def bigrams(line: str) -> Iterator[tuple[tuple[str, str], int]]:
    words = line.split()
    for pair in zip(words, words[1:], strict=False):
        yield pair, 1


def describe(key: tuple[str, str], counts: Iterable[int]) -> dict[str, object]:
    return {"n": sum(counts), "words": key, "set": {"b", "a"}, "bytes": b"x"}


@pytest.mark.parametrize("fmt", ["tsv", "jsonl"])
def test_tuple_keys_round_trip_through_the_output_files(fmt: str, tmp_path: Path) -> None:
    job = mrkit.Job(mapper=bigrams, reducer=describe)
    in_memory = dict(mrkit.run(job, mrkit.Records(LINES), executor="inline", quiet=True))
    out = tmp_path / "out"
    mrkit.run(job, mrkit.Records(LINES), executor="inline", output=str(out), format=fmt, quiet=True)
    read = dict(mrkit.read_output(str(out)))  # needs hashable (tuple) keys
    assert (
        set(read)
        == set(in_memory)
        == {("the", "cat"), ("cat", "sat"), ("cat", "ran"), ("a", "dog"), ("dog", "sat")}
    )
    # Values follow JSON's rules, as documented: tuples become lists, sets sorted lists, bytes text.
    assert read[("the", "cat")] == {"n": 2, "words": ["the", "cat"], "set": ["a", "b"], "bytes": "x"}


def test_nested_tuple_keys_come_back_hashable(tmp_path: Path) -> None:
    job = mrkit.Job(mapper=lambda line: [((line, (len(line), "n")), [1, 2])], reducer=lambda k, vs: list(vs))
    out = tmp_path / "out"
    mrkit.run(job, mrkit.Records(["ab"]), executor="inline", output=str(out), quiet=True)
    assert dict(mrkit.read_output(str(out))) == {("ab", (2, "n")): [[1, 2]]}
