"""Jobs used by the core tests; a module (not the tests) so that worker processes can import it."""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from collections.abc import Iterable, Iterator

import mrkit

WORD = re.compile(r"[a-z0-9']+")


def words(line: str) -> Iterator[tuple[str, int]]:
    for w in WORD.findall(line.lower()):
        yield w, 1


def total(key: object, values: Iterable[int]) -> int:
    return sum(values)


WORDCOUNT = mrkit.Job(mapper=words, reducer=total, combiner=total)


class WordCount(mrkit.Job):
    def mapper(self, line: str) -> Iterator[tuple[str, int]]:
        for w in WORD.findall(line.lower()):
            if len(w) >= self.params.get("min_length", 1):
                yield w, 1

    def combiner(self, word: str, counts: Iterable[int]) -> int:
        return sum(counts)

    def reducer(self, word: str, counts: Iterable[int]) -> int:
        return sum(counts)


class InMapperWordCount(mrkit.Job):
    def mapper_init(self) -> None:
        self.counts: Counter[str] = Counter()

    def mapper(self, line: str) -> None:
        self.counts.update(WORD.findall(line.lower()))

    def mapper_final(self) -> Iterable[tuple[str, int]]:
        return self.counts.items()

    def reducer(self, word: str, counts: Iterable[int]) -> int:
        return sum(counts)


class SplitWordCount(mrkit.Job):
    def mapper_split(self, records: Iterable[str]) -> Iterable[tuple[str, int]]:
        return Counter(WORD.findall("\n".join(records).lower())).items()

    def reducer(self, word: str, counts: Iterable[int]) -> int:
        return sum(counts)


def failing_mapper(line: str) -> Iterator[tuple[str, int]]:
    if "poison" in line:
        raise ValueError(f"cannot map {line!r}")
    yield from words(line)


def failing_reducer(key: str, values: Iterable[int]) -> int:
    if key == "bad":
        raise KeyError("reducer refuses 'bad'")
    return sum(values)


def kill_once_mapper(line: str) -> Iterator[tuple[str, int]]:
    """SIGKILLs its own worker the first time it sees 'killme' (a marker file remembers)."""
    marker = mrkit.context().params["marker"]
    if "killme" in line and not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    yield from words(line)


def straggler_mapper(line: str) -> Iterator[tuple[str, int]]:
    """The first attempt of map-00001 is very slow; any other attempt is fast (``params["each"]``
    seconds per record, 0 by default)."""
    ctx = mrkit.context()
    time.sleep(ctx.params.get("each", 0.0))
    if ctx.task_id == "map-00001" and ctx.attempt == 1 and line.startswith("slow"):
        time.sleep(ctx.params.get("sleep", 4.0))
    yield from words(line)


def hot_key_mapper(record: int) -> Iterator[tuple[str, int]]:
    yield "hot", record


def streaming_count(key: str, values: Iterable[int]) -> tuple[int, int]:
    """Counts values without materialising them; fails if handed a list instead of an iterator.

    Under tracemalloc it writes to ``params["peak_file"]`` how much memory the iteration needed beyond
    what was held before (a file, because the job runs from a pickled copy of this module).
    """
    import tracemalloc

    if isinstance(values, list):
        raise TypeError("reducer was handed a list, not an iterator")
    tracing = tracemalloc.is_tracing()
    if tracing:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
    n = 0
    s = 0
    for v in values:
        n += 1
        s += v
    if tracing:
        with open(mrkit.context().params["peak_file"], "w") as f:
            f.write(str(tracemalloc.get_traced_memory()[1] - base))
    return n, s


def paced_words(line: str) -> Iterator[tuple[str, int]]:
    """Word count at ``params["each"]`` seconds per record (a job that runs long enough to watch);
    a line holding 'poison' raises with markup in its message (pages must show it as text)."""
    time.sleep(mrkit.context().params.get("each", 0.0))
    if "poison" in line:
        raise ValueError("cannot map <script>window.injected = 1</script> poison")
    yield from words(line)


PACED = mrkit.Job(mapper=paced_words, reducer=total, name="paced")
