"""The jobs of the executor contract suite (tests/test_executor_contract.py).

A module of its own, not the test file, so that worker processes can import it (and remote workers
receive it by value with the job). Every job here is deterministic: the same input gives the same
output bytes on every executor, which is what the suite asserts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator

import mrkit
from tests.jobs_for_tests import WORD, total, words

WORD_COUNT = mrkit.Job(mapper=words, combiner=total, reducer=total, name="contract-wordcount")


def postings(line: str) -> Iterator[tuple[str, str]]:
    """``doc-id TAB text`` lines: one (word, doc-id) pair per distinct word of the document."""
    doc, _, text = line.partition("\t")
    for w in sorted(set(WORD.findall(text.lower()))):
        yield w, doc


def sorted_documents(word: str, docs: Iterable[str]) -> list[str]:
    return sorted(set(docs))


INVERTED_INDEX = mrkit.Job(mapper=postings, reducer=sorted_documents, name="contract-index")


def amount_by_key(line: str) -> Iterator[tuple[str, float]]:
    """``key,amount`` CSV-like lines (read as text) to (key, float amount)."""
    key, _, amount = line.partition(",")
    if key:
        yield key, float(amount)


def float_sum(key: str, amounts: Iterable[float]) -> float:
    # Float addition is not associative: the same bytes on every executor need the same value order,
    # which the sorted shuffle gives only up to ties; sorting the values makes the sum exact-repeatable.
    return sum(sorted(amounts))


GROUP_SUM = mrkit.Job(mapper=amount_by_key, reducer=float_sum, name="contract-groupsum")


def letters(line: str) -> Iterator[tuple[str, int]]:
    for w in WORD.findall(line.lower()):
        yield w[0], len(w)


def length_histogram(letter: str, lengths: Iterable[int]) -> Iterator[tuple[str, int]]:
    """A generator reducer: several output pairs per key, under keys it makes itself."""
    counts: dict[int, int] = {}
    for n in lengths:
        counts[n] = counts.get(n, 0) + 1
    for n in sorted(counts):
        yield f"{letter}{n}", counts[n]


GENERATOR_REDUCER = mrkit.Job(mapper=letters, reducer=length_histogram, name="contract-genreducer")


def by_first_letter(key: str, n: int) -> int:
    """A custom partitioner: words a-h, i-p and q-z (and the rest) to their own partitions."""
    first = key[:1]
    if "a" <= first <= "h":
        return 0
    if "i" <= first <= "p":
        return 1 % n
    return 2 % n


PARTITIONED = mrkit.Job(mapper=words, reducer=total, partitioner=by_first_letter, name="contract-partition")


def by_input(line: str) -> Iterator[tuple[str, int]]:
    """Records per input file, and each split's byte offset: what ``mrkit.context().input`` says."""
    info = mrkit.context().input
    assert info is not None  # a map task always knows its input
    yield os.path.basename(info.path), 1
    yield f"{os.path.basename(info.path)}@{info.start}", len(line.encode()) + 1


BY_INPUT = mrkit.Job(mapper=by_input, combiner=total, reducer=total, name="contract-byinput")


def user_record(row: list[str]) -> Iterator[tuple[str, tuple[str, str]]]:
    """``uid,name`` rows of the users input (read as CSV: a row is a list)."""
    uid, name = row
    yield uid, ("user", name)


def order_record(row: list[str]) -> Iterator[tuple[str, tuple[str, str]]]:
    """``uid,amount`` rows of the orders input."""
    uid, amount = row
    yield uid, ("order", amount)


def join_orders(uid: str, tagged: Iterable[tuple[str, str]]) -> Iterator[tuple[str, list[object]]]:
    """A reduce-side join: each user's name with the number and total of their orders."""
    names, amounts = [], []
    for kind, value in tagged:
        (names if kind == "user" else amounts).append(value)
    for name in names:
        yield name, [len(amounts), round(sum(int(a) for a in amounts), 2)]


JOIN = mrkit.Job(reducer=join_orders, name="contract-join")  # its mappers come with its inputs


def typed_pairs(line: str) -> Iterator[tuple[object, object]]:
    """Keys of several types (tuple, int, str, bool, None) and values of several types."""
    ws = WORD.findall(line.lower())
    if not ws:
        yield None, 1
        return
    yield (ws[0], len(ws)), 1
    yield len(ws), ws[-1]
    yield ws[0], 1.5
    yield len(ws) % 2 == 0, 1


def typed_reduce(key: object, values: Iterable[object]) -> object:
    vals = list(values)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
        return sum(vals)
    return sorted(str(v) for v in vals)


TYPED_KEYS = mrkit.Job(mapper=typed_pairs, reducer=typed_reduce, name="contract-typed")


def poisoned_words(line: str) -> Iterator[tuple[str, int]]:
    """Raises on the record that holds the word 'poison' (deterministically, every attempt)."""
    if "poison" in line:
        raise ValueError("cannot map a poisoned line")
    yield from words(line)


RAISING_MAPPER = mrkit.Job(mapper=poisoned_words, reducer=total, name="contract-raising")


def words_not_stopped(line: str) -> Iterator[tuple[str, int]]:
    """Word count without the words listed in the side file ``stopwords.txt``."""
    with open(mrkit.context().file("stopwords.txt"), encoding="utf-8") as f:
        stop = set(f.read().split())
    for word in WORD.findall(line.lower()):
        if word not in stop:
            yield word, 1


STOPWORDS = mrkit.Job(mapper=words_not_stopped, combiner=total, reducer=total, name="contract-stopwords")


def poisoned_until_cured(line: str) -> Iterator[tuple[str, int]]:
    """Word count that raises on the 'poison' record until the file ``params["cure"]`` exists (after
    a second, so that the other map tasks, running alongside, have committed by then)."""
    if "poison" in line and not os.path.exists(mrkit.context().params["cure"]):
        time.sleep(1.0)
        raise ValueError("cannot map a poisoned line yet")
    yield from words(line)


def curable(cure: str) -> mrkit.Job:
    return mrkit.Job(
        mapper=poisoned_until_cured, reducer=total, name="contract-curable", params={"cure": cure}
    )


def count_then_rank(pair: tuple[str, int]) -> Iterator[tuple[None, tuple[int, str]]]:
    """Step 2's mapper: every (word, count) under one key, count first, for the top-N reducer."""
    word, count = pair
    yield None, (count, word)


def top_three(_key: None, ranked: Iterable[tuple[int, str]]) -> Iterator[tuple[str, int]]:
    """Step 2's reducer: the three most frequent words, ties broken by the word."""
    for count, word in sorted(ranked, key=lambda cw: (-cw[0], cw[1]))[:3]:
        yield word, count


# Two steps: word count, then the top three words (typed (count, word) tuples cross the steps).
TOP_WORDS = mrkit.Job(
    steps=[
        mrkit.Step(mapper=words, combiner=total, reducer=total),
        mrkit.Step(mapper=count_then_rank, reducer=top_three, n_reduce=1, name="top"),
    ],
    name="contract-topwords",
)


class TopWordsWithPoison(mrkit.Job):
    """The class form of TOP_WORDS, whose second step raises on a word from ``params["poison"]``."""

    def steps(self) -> list[mrkit.Step]:
        return [
            mrkit.Step(mapper=words, combiner=total, reducer=total),
            mrkit.Step(mapper=self.rank, reducer=top_three, n_reduce=1, name="top"),
        ]

    def rank(self, pair: tuple[str, int]) -> Iterator[tuple[None, tuple[int, str]]]:
        if pair[0] == self.params.get("poison"):
            raise ValueError(f"cannot rank {pair[0]!r}")
        yield from count_then_rank(pair)


def lines_by_word(line: str) -> Iterator[tuple[str, str]]:
    """Every word of a line, with the line (for sort_values: a reducer that keeps values in order)."""
    for word, _ in words(line):
        yield word, line


def values_as_given(_word: str, lines: Iterable[str]) -> list[str]:
    return list(lines)


LINES_BY_WORD = mrkit.Job(mapper=lines_by_word, reducer=values_as_given, name="contract-linesbyword")


def long_words(line: str) -> Iterator[tuple[str, int]]:
    """A map-only job's mapper: each word of 5 letters or more, with its length, in line order."""
    for word, _ in words(line):
        if len(word) >= 5:
            yield word, len(word)


LONG_WORDS = mrkit.Job(mapper=long_words, name="contract-longwords")
