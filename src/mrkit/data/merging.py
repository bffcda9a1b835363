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

from mrkit.data.gc_pause import gc_paused
from mrkit.data.shuffle import Entry, Frame
from mrkit.model.partition import key_bytes

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


def group_in_memory(runs: Iterable[Iterable[Frame]]) -> Iterator[tuple[Any, Iterator[Any]]]:
    """Group the frames of sorted runs in a dict: the same groups, in the same order, with the
    same value order as ``group_values(merge_sorted_runs(...))`` over the same runs' entries, but
    holding every value at once.

    A heap merge pays a Python-level comparison per entry; a dict lookup per key and one sort of
    the distinct keys (in C) is several times cheaper when there are many keys with few values
    each. The caller chooses this path only when the runs' bytes fit its memory budget.

    A str key is grouped as itself (its encoding compares as it does), any other key by its
    encoded bytes; the two never collide (a str's encoding starts with ``b"s"``, a bytes object is
    never equal to a str). Values of equal keys are concatenated in run order, as the stable heap
    merge does.

    >>> a = [(["a", "c"], [1, 3], None, True)]
    >>> b = [(["b", "c"], [[2], [4, 5]], None, False)]
    >>> [(k, list(vs)) for k, vs in group_in_memory([a, b])]
    [('a', [1]), ('b', [2]), ('c', [3, 4, 5])]
    """
    groups, other_keys = _collect_groups(runs)
    order = sorted(groups, key=_group_sort_key) if other_keys else sorted(groups)
    for gk in order:
        values = groups.pop(gk)  # popped so that memory shrinks as the reducer advances
        yield (gk if type(gk) is str else other_keys[gk]), iter(values)


def _group_sort_key(gk: Any) -> bytes:
    return key_bytes(gk) if type(gk) is str else gk  # a non-str group key is already its bytes


def _collect_groups(runs: Iterable[Iterable[Frame]]) -> tuple[dict[Any, list[Any]], dict[bytes, Any]]:
    """``group key -> values`` of every frame of ``runs``, and ``key bytes -> key`` of non-str keys."""
    groups: dict[Any, list[Any]] = {}
    other_keys: dict[bytes, Any] = {}
    get = groups.get
    with gc_paused():  # a fresh list per key: see mrkit.data.gc_pause
        for run in runs:
            for keys, values, kbs, single in run:
                if kbs is None:
                    gks = keys
                else:
                    gks = [k if type(k) is str else kb for k, kb in zip(keys, kbs, strict=True)]
                    other_keys.update((kb, k) for k, kb in zip(keys, kbs, strict=True) if type(k) is not str)
                if single:
                    for gk, v in zip(gks, values, strict=True):
                        lst = get(gk)
                        if lst is None:
                            groups[gk] = [v]
                        else:
                            lst.append(v)
                else:
                    for gk, vs in zip(gks, values, strict=True):
                        lst = get(gk)
                        if lst is None:
                            groups[gk] = vs  # the frame was unpickled for us alone: its lists are ours
                        else:
                            lst.extend(vs)
    return groups, other_keys
