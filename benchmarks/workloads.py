"""The benchmark workloads: each mrkit job beside the hand-written ``multiprocessing`` program it races.

Every pair does the same work per record (DESIGN.md §4): the same regex ``[a-z0-9']+`` over
``line.lower()``, the same ``Counter``/dict accumulation, the same ``line.split(",")`` and
``float()``. What differs is only what mrkit adds: splitting, task dispatch, the shuffle (serialise,
partition, sort/merge), the reduce phase and collecting the result. The baselines use one task per
input file (the inputs are 8 equal files, and mrkit's default plans 8 splits for them on 2 cores) on
a ``multiprocessing.Pool(2)``, return a ``Counter``/dict per task and merge them in the parent.

This module is importable by worker processes (``benchmarks/`` is on ``sys.path`` when ``run.py``
runs), so jobs and task functions are module-level names, pickled by reference.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from multiprocessing.pool import Pool
from typing import Any

import mrkit

WORD = re.compile(r"[a-z0-9']+")


def _sum(key: Any, values: Iterable[Any]) -> Any:
    return sum(values)


# -- 1. word count, split-level mapper --------------------------------------------------------


class WordCountSplit(mrkit.Job):
    """One ``mapper_split`` call per split: a whole-split regex and ``Counter``."""

    def mapper_split(self, records: Iterator[str]) -> Iterable[tuple[str, int]]:
        return Counter(WORD.findall("\n".join(records).lower())).items()

    def reducer(self, word: str, counts: Iterable[int]) -> int:
        return sum(counts)


def count_file_whole(path: str) -> Counter[str]:
    """Baseline task for workload 1: the whole file's text through one regex and one Counter."""
    with open(path, encoding="utf-8") as f:
        return Counter(WORD.findall(f.read().lower()))


# -- 2. word count, in-mapper combining per line ----------------------------------------------


class WordCountInMapper(mrkit.Job):
    """``mapper_init`` makes a Counter, ``mapper`` updates it per line, ``mapper_final`` emits it."""

    def mapper_init(self) -> None:
        self.counts: Counter[str] = Counter()

    def mapper(self, line: str) -> None:
        self.counts.update(WORD.findall(line.lower()))

    def mapper_final(self) -> Iterable[tuple[str, int]]:
        return self.counts.items()

    def reducer(self, word: str, counts: Iterable[int]) -> int:
        return sum(counts)


def count_file_lines(path: str) -> Counter[str]:
    """Baseline task for workloads 2 and 3: per line, the regex and ``Counter.update``."""
    counts: Counter[str] = Counter()
    update = counts.update
    findall = WORD.findall
    with open(path, encoding="utf-8") as f:
        for line in f:
            update(findall(line.lower()))
    return counts


# -- 3. word count, per-record generator mapper + combiner ------------------------------------


class WordCountPerRecord(mrkit.Job):
    """The textbook job: ``mapper`` yields ``(word, 1)`` per word; combiner and reducer sum."""

    def mapper(self, line: str) -> Iterator[tuple[str, int]]:
        for word in WORD.findall(line.lower()):
            yield word, 1

    def combiner(self, word: str, counts: Iterable[int]) -> int:
        return sum(counts)

    def reducer(self, word: str, counts: Iterable[int]) -> int:
        return sum(counts)


# -- 4. ad revenue per destURL ----------------------------------------------------------------


class AdRevenue(mrkit.Job):
    """Sum of ``adRevenue`` (field 4) per ``destURL`` (field 2) of uservisits CSV lines."""

    def mapper(self, line: str) -> Iterator[tuple[str, float]]:
        fields = line.split(",")
        yield fields[1], float(fields[3])

    def combiner(self, url: str, revenues: Iterable[float]) -> float:
        return sum(revenues)

    def reducer(self, url: str, revenues: Iterable[float]) -> float:
        return sum(revenues)


class AdRevenueInMapper(mrkit.Job):
    """The same sums with in-mapper combining: a dict per split, emitted by ``mapper_final``."""

    def mapper_init(self) -> None:
        self.totals: dict[str, float] = {}

    def mapper(self, line: str) -> None:
        fields = line.split(",")
        url = fields[1]
        self.totals[url] = self.totals.get(url, 0.0) + float(fields[3])

    def mapper_final(self) -> Iterable[tuple[str, float]]:
        return self.totals.items()

    def reducer(self, url: str, revenues: Iterable[float]) -> float:
        return sum(revenues)


def revenue_file(path: str) -> dict[str, float]:
    """Baseline task for workload 4: per line, split, float and a dict accumulation."""
    totals: dict[str, float] = {}
    get = totals.get
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.split(",")
            url = fields[1]
            totals[url] = get(url, 0.0) + float(fields[3])
    return totals


# -- the baseline driver ----------------------------------------------------------------------


def merge_counters(pool: Pool, task: Callable[[str], Counter[str]], paths: Sequence[str]) -> dict[str, int]:
    """Run ``task`` on every path in ``pool`` and add the Counters up in the parent."""
    total: Counter[str] = Counter()
    for part in pool.imap_unordered(task, paths):
        total.update(part)
    return dict(total)


def merge_sums(pool: Pool, task: Callable[[str], dict[str, float]], paths: Sequence[str]) -> dict[str, float]:
    """Run ``task`` on every path in ``pool`` and add the per-key float sums up in the parent."""
    total: dict[str, float] = {}
    get = total.get
    for part in pool.imap_unordered(task, paths):
        for key, value in part.items():
            total[key] = get(key, 0.0) + value
    return total


# -- 5. tiny tasks ----------------------------------------------------------------------------


def tiny(x: int) -> int:
    """A task that costs almost nothing, so only the per-task overhead is measured."""
    return x * x + 1
