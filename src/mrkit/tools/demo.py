"""The demo job: word count over text, in the class form (used by ``mrkit demo``)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from mrkit.model.job import Job

WORD = re.compile(r"[a-z0-9']+")


class WordCount(Job):
    """Count words (lower-cased runs of letters, digits and apostrophes) in lines of text."""

    def mapper(self, line: str) -> Iterator[tuple[str, int]]:
        for word in WORD.findall(line.lower()):
            yield word, 1

    def combiner(self, word: str, counts: Iterable[int]) -> int:
        return sum(counts)

    def reducer(self, word: str, counts: Iterable[int]) -> int:
        return sum(counts)
