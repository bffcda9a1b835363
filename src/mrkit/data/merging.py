"""k-way merge of sorted runs into ``(key, values)`` groups, streaming.

Every run is sorted by the encoded key (:func:`mrkit.model.partition.key_bytes`), so a heap merge
yields equal keys next to each other; each group's values are the concatenation of the value lists
of its entries, handed to the reducer as an iterator. Memory is one frame per run plus one entry's
value list, so a hot key with millions of values spread over many runs is never held whole.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from itertools import chain, groupby
from operator import itemgetter
from typing import Any

from mrkit.data.runs import Entry

_first = itemgetter(0)


def merge_sorted_runs(runs: Iterable[Iterable[Entry]]) -> Iterator[Entry]:
    """Merge runs sorted by ``key_bytes`` into one sorted stream of entries.

    >>> a = [(b"a", "a", [1]), (b"c", "c", [3])]
    >>> b = [(b"b", "b", [2]), (b"c", "c", [4])]
    >>> [e[1] for e in merge_sorted_runs([a, b])]
    ['a', 'b', 'c', 'c']
    """
    runs = list(runs)
    if len(runs) == 1:
        return iter(runs[0])
    return heapq.merge(*runs, key=_first)


def group_values(entries: Iterable[Entry]) -> Iterator[tuple[Any, Iterator[Any]]]:
    """Group a sorted entry stream into ``(key, values iterator)``, lazily.

    The values iterator of one group must be consumed (or abandoned) before the next group is
    requested, as with :func:`itertools.groupby`.

    >>> entries = [(b"a", "a", [1, 2]), (b"a", "a", [3]), (b"b", "b", [4])]
    >>> [(k, list(vs)) for k, vs in group_values(entries)]
    [('a', [1, 2, 3]), ('b', [4])]
    """
    for _kb, group in groupby(entries, key=_first):
        first = next(group)
        yield first[1], chain(first[2], chain.from_iterable(map(itemgetter(2), group)))  # noqa: B031 - group is read once, after next()


def group_in_memory(runs: Iterable[Iterable[Entry]]) -> Iterator[tuple[Any, Iterator[Any]]]:
    """Group the entries of sorted runs in a dict: the same groups, in the same order, with the
    same value order as ``group_values(merge_sorted_runs(runs))``, but holding every value at once.

    A heap merge pays a Python-level comparison per entry; a dict lookup per entry and one sort of
    the distinct keys (in C) is several times cheaper when there are many keys with few values
    each. The caller chooses this path only when the runs' bytes fit its memory budget.

    Values of equal keys are concatenated in run order, as the stable heap merge does.

    >>> a = [(b"a", "a", [1]), (b"c", "c", [3])]
    >>> b = [(b"b", "b", [2]), (b"c", "c", [4])]
    >>> [(k, list(vs)) for k, vs in group_in_memory([a, b])]
    [('a', [1]), ('b', [2]), ('c', [3, 4])]
    """
    groups: dict[bytes, tuple[Any, list[Any]]] = {}
    get = groups.get
    for run in runs:
        for kb, key, values in run:
            group = get(kb)
            if group is None:
                groups[kb] = (key, list(values))
            else:
                group[1].extend(values)
    for kb in sorted(groups):
        key, values = groups.pop(kb)  # popped so that memory shrinks as the reducer advances
        yield key, iter(values)
