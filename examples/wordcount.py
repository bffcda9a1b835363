"""Word count, the "hello world" of MapReduce, in every job form mrkit accepts.

A word is a lower-cased run of letters, digits and apostrophes (``[a-z0-9']+``). The output is one
``(word, count)`` pair per distinct word. Four equivalent jobs, all with the same result:

* ``WordCount`` -- the class form: ``mapper`` / ``combiner`` / ``reducer`` methods.
* ``job`` -- the function form: ``mrkit.Job(mapper=mapper, reducer=reducer, combiner=reducer)``.
* ``WordCountSplit`` -- ``mapper_split``: one call per input split counts the whole split at C speed
  with :class:`collections.Counter` (no per-record framework call at all).
* ``WordCountInMapper`` -- in-mapper combining: ``mapper_init`` creates a Counter, ``mapper`` adds to
  it and emits nothing (returns None), ``mapper_final`` emits each word once per map task.

Run it::

    python examples/wordcount.py INPUT... -o OUT [--job WordCountSplit] [--executor inline]
    mrkit run examples/wordcount.py:WordCount INPUT... -o OUT
    mrkit run examples/wordcount.py:job INPUT...            # no -o: prints word TAB count
    python examples/wordcount.py INPUT... --top 10          # no -o: the 10 most common words

INPUT is a text file, a glob or a folder (``.gz``/``.bz2``/``.xz`` read transparently).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterable, Iterator

import mrkit

WORD = re.compile(r"[a-z0-9']+")


# -- (a) the class form ----------------------------------------------------------------------------


class WordCount(mrkit.Job):
    """Count words in lines of text: one ``(word, 1)`` per occurrence, summed by a combiner and reducer."""

    def mapper(self, line: str) -> Iterator[tuple[str, int]]:
        for word in WORD.findall(line.lower()):
            yield word, 1

    def combiner(self, word: str, counts: Iterable[int]) -> int:
        return sum(counts)

    def reducer(self, word: str, counts: Iterable[int]) -> int:
        return sum(counts)


# -- (b) the function form -------------------------------------------------------------------------


def mapper(line: str) -> Iterator[tuple[str, int]]:
    """One ``(word, 1)`` pair per word of ``line``."""
    for word in WORD.findall(line.lower()):
        yield word, 1


def reducer(word: str, counts: Iterable[int]) -> int:
    """The total count of ``word`` (also used as the combiner: a sum of partial sums is the sum)."""
    return sum(counts)


job = mrkit.Job(mapper=mapper, reducer=reducer, combiner=reducer, name="wordcount")


# -- (c) whole-split mapping -----------------------------------------------------------------------


class WordCountSplit(WordCount):
    """Word count with ``mapper_split``: each map task counts its whole split in one Counter.

    ``mapper_split`` replaces ``mapper`` when defined, so the inherited ``mapper`` is never called;
    the combiner and reducer are inherited.
    """

    def mapper_split(self, records: Iterable[str]) -> Iterable[tuple[str, int]]:
        return Counter(WORD.findall("\n".join(records).lower())).items()


# -- (d) in-mapper combining -----------------------------------------------------------------------


class WordCountInMapper(WordCount):
    """Word count with in-mapper combining (``mapper_init`` / ``mapper`` / ``mapper_final``).

    The map task keeps one Counter for all its records and emits each distinct word once, at the
    end, so the map output is already combined (the combiner still merges across spills).
    """

    counts: Counter[str]

    def mapper_init(self) -> None:
        self.counts = Counter()

    def mapper(self, line: str) -> None:  # type: ignore[override]
        self.counts.update(WORD.findall(line.lower()))

    def mapper_final(self) -> Iterable[tuple[str, int]]:
        return self.counts.items()


JOBS: dict[str, mrkit.Job] = {
    "WordCount": WordCount(),
    "job": job,
    "WordCountSplit": WordCountSplit(),
    "WordCountInMapper": WordCountInMapper(),
}


def main(argv: list[str] | None = None) -> None:
    """``python examples/wordcount.py INPUT... [-o OUT]``: count the words of INPUT with ``mrkit.run``."""
    parser = argparse.ArgumentParser(description="Count the words of text files with mrkit.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="text files, globs or folders")
    parser.add_argument("-o", "--output", help="output folder (default: print word TAB count)")
    parser.add_argument("--job", choices=sorted(JOBS), default="WordCount", help="which variant to run")
    parser.add_argument("--executor", default="processes", help="inline, processes (default), redis://…")
    parser.add_argument("-N", "--n-map", type=int, default=None, help="number of map tasks")
    parser.add_argument("-M", "--n-reduce", type=int, default=None, help="number of reduce partitions")
    parser.add_argument("--top", type=int, default=None, help="without -o: print only the N most common")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing result in OUT")
    args = parser.parse_args(argv)
    result = mrkit.run(
        JOBS[args.job],
        args.inputs,
        output=args.output,
        executor=args.executor,
        n_map=args.n_map,
        n_reduce=args.n_reduce,
        overwrite=args.overwrite,
    )
    if args.output is None:
        for word, count in sorted(result, key=lambda kv: (-kv[1], kv[0]))[: args.top]:
            print(f"{word}\t{count}")


if __name__ == "__main__":
    main()
