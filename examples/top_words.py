"""The N most frequent words: a two-step job (word count, then top N), mrjob's ``steps()`` style.

Step 1 counts words (mapper, combiner, reducer). Step 2 reads step 1's ``(word, count)`` pairs --
Python tuples, straight from step 1's reduce output, never printed and re-parsed -- sends them all to
one reducer under one key, and keeps the ``top`` largest (ties broken by the word). Only step 2
publishes. Counters come per step (``step1.map.records_in``, ``step2.reduce.records_out``).

Run it::

    mrkit run examples/top_words.py:TopWords INPUT... -o OUT --param top=10
    mrkit run examples/top_words.py:TopWords INPUT...            # no -o: prints word TAB count
    python examples/top_words.py INPUT... --top 10

INPUT is a text file, a glob or a folder.
"""

from __future__ import annotations

import argparse
import heapq
import re
from collections.abc import Iterable, Iterator

import mrkit

WORD = re.compile(r"[a-z0-9']+")


class TopWords(mrkit.Job):
    """Word count, then the ``params["top"]`` (default 10) most frequent words, most frequent first."""

    def steps(self) -> list[mrkit.Step]:
        return [
            mrkit.Step(mapper=self.words, combiner=self.total, reducer=self.total, name="count"),
            mrkit.Step(mapper=self.to_ranking, reducer=self.top, n_reduce=1, name="top"),
        ]

    def words(self, line: str) -> Iterator[tuple[str, int]]:
        for word in WORD.findall(line.lower()):
            yield word, 1

    def total(self, word: str, counts: Iterable[int]) -> int:
        return sum(counts)

    def to_ranking(self, pair: tuple[str, int]) -> Iterator[tuple[None, tuple[int, str]]]:
        word, count = pair
        yield None, (count, word)  # one key: every word reaches the one reducer of step 2

    def top(self, _key: None, ranked: Iterable[tuple[int, str]]) -> Iterator[tuple[str, int]]:
        n = int(self.params.get("top", 10))
        # heapq keeps n entries, not the whole vocabulary; (-count, word) breaks ties by the word.
        for neg, word in heapq.nsmallest(n, ((-count, word) for count, word in ranked)):
            yield word, -neg


def main() -> None:
    parser = argparse.ArgumentParser(description="The most frequent words of INPUT (two mrkit steps).")
    parser.add_argument("inputs", nargs="+", metavar="INPUT")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("-o", "--output", default=None)
    parser.add_argument("--executor", default="processes")
    args = parser.parse_args()
    result = mrkit.run(
        TopWords(params={"top": args.top}), args.inputs, output=args.output, executor=args.executor
    )
    if args.output is None:
        for word, count in result:
            print(f"{word}\t{count}")


if __name__ == "__main__":
    main()
