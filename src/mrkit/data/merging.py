"""k-way merge of sorted runs into ``(key, values)`` groups, streaming.

Every run is sorted by the encoded key (:func:`mrkit.model.partition.key_bytes`), so a heap merge
yields equal keys next to each other; each group's values are the concatenation of the value lists
of its entries, handed to the reducer as an iterator. Memory is one frame per run plus one entry's
value list, so a hot key with millions of values spread over many runs is never held whole.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from itertools import chain, compress, groupby, islice
from operator import itemgetter, ne
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
    """Group the frames of sorted runs in memory: the same groups, in the same order, with the
    same value order as ``group_values(merge_sorted_runs(...))`` over the same runs' entries, but
    holding every value at once.

    A heap merge pays a Python-level comparison per entry; grouping in memory does the per-entry
    work in C. The caller chooses this path only when the runs' bytes fit its memory budget.

    When the frames hold str keys with one value each (after a combiner, or from a ``Counter``:
    the common case) and few entries per key (``SORT_MAX_SHARED``), all entries are
    concatenated and sorted by key in one stable sort (:func:`_sorted_groups`); otherwise they
    are grouped in a dict (:func:`_collect_groups`).
    A str key is grouped as itself (its encoding compares as it does), any other key by its
    encoded bytes; the two never collide (a str's encoding starts with ``b"s"``, a bytes object is
    never equal to a str). Values of equal keys are concatenated in run order, as the stable heap
    merge does.

    >>> a = [(["a", "c"], [1, 3], None, True)]
    >>> b = [(["b", "c"], [[2], [4, 5]], None, False)]
    >>> [(k, list(vs)) for k, vs in group_in_memory([a, b])]
    [('a', [1]), ('b', [2]), ('c', [3, 4, 5])]
    >>> c = [(["c"], [4], None, True)]
    >>> [(k, list(vs)) for k, vs in group_in_memory([[(["a", "c"], [1, 3], None, True)], c])]
    [('a', [1]), ('c', [3, 4])]
    """
    runs = list(runs)
    with gc_paused():  # unpickling builds many lists: see mrkit.data.gc_pause
        head = [list(run) for run in runs[:2]]
    frames = chain(chain.from_iterable(head), chain.from_iterable(runs[2:]))
    if _shared_fraction(head) <= SORT_MAX_SHARED:
        with gc_paused():
            all_keys, all_values, other = _concat_singles(frames)
        if other is None:
            del head
            yield from _sorted_groups(all_keys, all_values)
            return
        # The dict takes over from where the concatenation stopped: the same order of values.
        frames = chain([(all_keys, all_values, None, True), other], frames)
        del all_keys, all_values
    del head
    yield from _group_in_dict(frames)


# One sort of all entries beats the dict when most keys have few entries; that is judged from
# the first two runs: the fraction of the second's keys also in the first. CPU time of one reduce
# partition with each group summed: adrevenue (32 runs, 1.7 entries per key, first two runs
# share 23%) 141 -> 100 ms by the sort (min of 15); word count (16 runs, 11.6 entries per key,
# 80% shared) 99 -> 124 ms by the sort, so it keeps the dict (most entries only append to a list).
SORT_MAX_SHARED = 0.5


def _shared_fraction(head: list[list[Frame]]) -> float:
    """The fraction of the keys of the second run (``head[1]``) that the first also holds; 0.0
    with fewer than two runs. A run's keys are distinct (one spill of one buffer)."""
    if len(head) < 2:
        return 0.0
    second = [f[0] for f in head[1]]
    n_second = sum(map(len, second))
    if not n_second:
        return 0.0
    seen = set(chain.from_iterable(f[0] for f in head[0]))
    return sum(map(seen.__contains__, chain.from_iterable(second))) / n_second


def _concat_singles(frames: Iterator[Frame]) -> tuple[list[str], list[Any], Frame | None]:
    """Concatenate the keys and values of the leading frames that hold str keys with one value
    each; stop at the first frame that does not, and return it as well (else None)."""
    all_keys: list[str] = []
    all_values: list[Any] = []
    for frame in frames:
        keys, values, kbs, single = frame
        if kbs is not None or not single:
            return all_keys, all_values, frame
        all_keys += keys
        all_values += values
    return all_keys, all_values, None


def _sorted_groups(all_keys: list[str], all_values: list[Any]) -> Iterator[tuple[str, Iterator[Any]]]:
    """Group concatenated single-valued str-key entries by one stable sort of their positions.

    The dict of :func:`_group_in_dict` pays a Python loop iteration per entry and a fresh list per
    key; here sorting (timsort merges the already sorted runs), reordering and finding where each
    key's entries start all run in C, and Python runs once per key, to hand out a slice.
    """
    n = len(all_keys)
    # A stable sort of the positions by key: entries of equal keys stay in run order.
    order = sorted(range(n), key=all_keys.__getitem__)
    values = list(map(all_values.__getitem__, order))
    keys = list(map(all_keys.__getitem__, order))
    del order
    all_keys.clear()  # the caller's references: free them before handing out groups
    all_values.clear()
    # ends[i]: one past the last entry of the i-th key (where the next key differs, or n).
    ends = [*compress(range(1, n), map(ne, islice(keys, 1, None), keys)), n] if n else []
    lo = 0
    for hi in ends:
        yield keys[lo], iter(values[lo:hi])
        lo = hi


def _group_in_dict(frames: Iterable[Frame]) -> Iterator[tuple[Any, Iterator[Any]]]:
    """Group any frames in a dict ``group key -> values``, then hand the groups out in key order."""
    groups, other_keys = _collect_groups([frames])
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
