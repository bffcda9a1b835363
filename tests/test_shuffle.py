"""The shuffle's pure core: sorted runs, the k-way merge and the in-memory grouping agree.

Also runs the doctests of every mrkit module that has some (STYLE 19), so that an example in a
docstring that stops being true fails the suite.
"""

from __future__ import annotations

import doctest
import importlib
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mrkit
from mrkit.data.map_side import MapOutput, _add_pairs
from mrkit.data.merging import group_in_memory, group_values, merge_sorted_runs
from mrkit.data.shuffle import read_frames, read_run, write_run
from mrkit.model.partition import key_bytes, stable_partition
from mrkit.model.reference import reference
from tests import jobs_for_tests as J


def _modules_with_examples() -> list[str]:
    """Every mrkit module whose docstrings hold ``>>>`` examples (found, not listed by hand)."""
    import pkgutil

    names = []
    for info in pkgutil.walk_packages(mrkit.__path__, "mrkit."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        if any(t.examples for t in doctest.DocTestFinder().find(module)):
            names.append(info.name)
    return names


DOCTESTED = _modules_with_examples()


def test_the_shuffle_modules_teach_with_examples():
    assert {"mrkit.data.merging", "mrkit.data.shuffle", "mrkit.model.partition"} <= set(DOCTESTED)


@pytest.mark.parametrize("name", DOCTESTED)
def test_docstring_examples_hold(name):
    module = importlib.import_module(name)
    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0


keys = st.one_of(st.text(max_size=4), st.integers(-5, 5), st.tuples(st.integers(0, 2)))
# Runs of str keys only (lone surrogates included) take the columnar fast path; mixed runs store bytes.
str_keys = st.text(alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=4)
run_contents = st.lists(
    st.one_of(
        st.lists(st.tuples(keys, st.integers()), max_size=30),
        st.lists(st.tuples(str_keys, st.integers()), max_size=30),
    ),
    max_size=6,
)


def _sorted_run(pairs):
    """One map task's run, written by the map side's own spill, cut small to make many frames."""
    out = MapOutput(
        n_reduce=1,
        partitioner=None,
        combiner=None,
        memory_bytes=1 << 30,
        open_part=lambda p: _Kept(),
        frame_entries=3,
        frame_values=4,
    )
    out.add(pairs)
    out.finish()
    return out._writers[0].getvalue() if out._writers else b""


class _Kept(io.BytesIO):
    """A partition object whose bytes stay readable after ``close()``."""

    def close(self):
        pass


@settings(max_examples=200, deadline=None)
@given(run_contents)
def test_in_memory_grouping_equals_the_streaming_merge(contents):
    blobs = [_sorted_run(pairs) for pairs in contents]
    streamed = [
        (k, list(vs)) for k, vs in group_values(merge_sorted_runs(read_run(io.BytesIO(b)) for b in blobs))
    ]
    in_memory = [(k, list(vs)) for k, vs in group_in_memory(read_frames(io.BytesIO(b)) for b in blobs)]
    assert in_memory == streamed
    assert [key_bytes(k) for k, _ in streamed] == sorted(key_bytes(k) for k, _ in streamed)
    expected: dict = {}
    for pairs in contents:
        for k, v in pairs:
            expected.setdefault(k, []).append(v)
    assert sorted(map(repr, streamed)) == sorted(repr((k, vs)) for k, vs in expected.items())


@pytest.mark.parametrize("memory_mb", [0.01, 64])
def test_both_reduce_paths_give_the_reference_output(memory_mb):
    records = [f"w{i % 300} w{i % 7} x{i % 11}" for i in range(6000)]
    res = mrkit.run(
        J.WordCount(), mrkit.Records(records), executor="inline", n_map=3, n_reduce=2, memory_mb=memory_mb
    )
    assert dict(res) == dict(reference(J.WORDCOUNT, records))
    in_memory_tasks = res.counters["reduce.grouped_in_memory"]
    assert in_memory_tasks == (0 if memory_mb < 1 else 2)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 20), max_size=15),
    st.integers(1, 5),
    st.integers(1, 6),
)
def test_frames_hold_every_entry_within_their_bounds(sizes, frame_entries, frame_values):
    sizes = [s for s in sizes if s]  # a key has at least one value
    keys = [f"k{i:03d}" for i in range(len(sizes))]
    values = [list(range(size)) for size in sizes]
    buf = io.BytesIO()
    written, n_values = write_run(buf, keys, values, frame_entries=frame_entries, frame_values=frame_values)
    assert (written, n_values) == (len(buf.getvalue()), sum(sizes))
    rejoined: list = []
    for frame_keys, frame_values_, kbs, single in read_frames(io.BytesIO(buf.getvalue())):
        assert kbs is None and not single
        assert 1 <= len(frame_keys) == len(frame_values_) <= frame_entries
        assert all(len(vs) <= frame_values for vs in frame_values_)  # hot keys are cut
        assert sum(map(len, frame_values_)) < 2 * frame_values
        for key, vs in zip(frame_keys, frame_values_, strict=True):
            if rejoined and rejoined[-1][0] == key:
                rejoined[-1][1].extend(vs)  # the pieces of a cut entry follow each other
            else:
                rejoined.append((key, list(vs)))
    assert rejoined == list(zip(keys, values, strict=True))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(), max_size=40), st.integers(1, 5), st.integers(1, 6))
def test_single_valued_frames_hold_one_value_per_key(vals, frame_entries, frame_values):
    keys = [f"k{i:03d}" for i in range(len(vals))]
    buf = io.BytesIO()
    written, n_values = write_run(
        buf, keys, vals, single=True, frame_entries=frame_entries, frame_values=frame_values
    )
    assert (written, n_values) == (len(buf.getvalue()), len(vals))
    frames = list(read_frames(io.BytesIO(buf.getvalue())))
    assert all(single and len(k) <= min(frame_entries, frame_values) for k, _v, _kb, single in frames)
    assert list(read_run(io.BytesIO(buf.getvalue()))) == [
        (key_bytes(k), k, [v]) for k, v in zip(keys, vals, strict=True)
    ]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.one_of(keys, str_keys), st.integers()), max_size=60), st.integers(1, 4))
def test_a_spill_partitions_like_stable_partition_and_sorts_by_encoded_key(pairs, n_reduce):
    out = MapOutput(
        n_reduce=n_reduce, partitioner=None, combiner=None, memory_bytes=1 << 30, open_part=lambda p: _Kept()
    )
    _add_pairs(pairs, out)
    out.finish()
    seen: dict = {}
    for p, writer in out._writers.items():
        entries = list(read_run(io.BytesIO(writer.getvalue())))
        assert [kb for kb, _k, _v in entries] == sorted(kb for kb, _k, _v in entries)
        for kb, key, values in entries:
            assert kb == key_bytes(key) and stable_partition(key, n_reduce) == p
            seen.setdefault(kb, []).extend(values)
    expected: dict = {}
    for k, v in pairs:
        expected.setdefault(key_bytes(k), []).append(v)
    assert seen == expected


def test_a_dict_returned_whole_is_spilled_single_valued_and_merged_in_order():
    # mapper_final's Counter items into an empty buffer: they become the buffer; later pairs come after.
    out = MapOutput(
        n_reduce=1, partitioner=None, combiner=None, memory_bytes=1 << 30, open_part=lambda p: _Kept()
    )
    _add_pairs({"b": 1, "a": 2}.items(), out)
    assert out.buf == {"b": 1, "a": 2} and not out.more
    _add_pairs([("a", 3), ("c", 4)], out)
    out.finish()
    assert list(read_run(io.BytesIO(out._writers[0].getvalue()))) == [
        (b"sa", "a", [2, 3]),
        (b"sb", "b", [1]),
        (b"sc", "c", [4]),
    ]


def test_a_combiner_keeps_the_map_buffer_near_its_distinct_keys_not_the_budget():
    # 1 GiB budget, 50 keys, 3M values: combined whenever the buffer passes COMBINE_FLOOR_BYTES,
    # so it never holds the values, and nothing is spilled before the end.
    from mrkit.data.map_side import COMBINE_FLOOR_BYTES, MapOutput

    out = MapOutput(
        n_reduce=2,
        partitioner=None,
        combiner=lambda key, values: sum(values),
        memory_bytes=1 << 30,
        open_part=lambda p: io.BytesIO(),
    )
    peak = 0
    for block in range(300):
        out.add((f"k{i % 50}", block + 1000) for i in range(10_000))  # not a cached small int
        out.check_memory()
        peak = max(peak, out.estimated_bytes())
    assert out.combines > 3 and out.spills == 0
    assert peak <= COMBINE_FLOOR_BYTES + 10_000 * 40
    assert sum(v for key in out.buf for v in out.values_of(key)) == sum(
        10_000 * (b + 1000) for b in range(300)
    )


class _Split:
    """A reader batch of records for ``map_split``."""

    def __init__(self, records):
        self.records = records

    def locate(self, i):
        return f"record {i}"


class _OnePairPerRecord:
    mapper_split = mapper_init = mapper_final = None

    @staticmethod
    def mapper(record):
        return ((record, 1),)


@pytest.mark.parametrize("budget_mb", [4, 1024])
def test_a_buffer_of_many_keys_is_measured_o_records_times_and_stays_within_its_budget(budget_mb):
    # Measuring the buffer counts every key's values. It used to be measured every 4,096 records:
    # with 300k distinct keys, 74 measurements took half the mapping loop. Now the interval follows
    # the room left at the growth measured; a steadily growing buffer is still spilled before it
    # passes its budget.
    from mrkit.data.map_side import MapOutput, map_split

    out = MapOutput(
        n_reduce=2,
        partitioner=None,
        combiner=None,
        memory_bytes=budget_mb << 20,
        open_part=lambda p: _Kept(),
    )
    measured: list[int] = []
    at_spill: list[int] = []
    estimate, spill = out.estimated_bytes, out.spill
    out.estimated_bytes = lambda: measured.append(estimate()) or measured[-1]  # type: ignore[method-assign]
    out.spill = lambda final=False: at_spill.append(estimate()) or spill()  # type: ignore[method-assign]
    records = [f"id-{i:09d}" for i in range(300_000)]
    assert map_split(_OnePairPerRecord, [_Split(records)], out, lambda: "split") == 300_000
    if budget_mb == 1024:
        assert out.spills == 0 and len(measured) <= 20  # 74 before
    else:
        # About 32k keys (~130 estimated bytes each: a 61-byte str, its dict slot, one value) fit
        # in 4 MB: spilled time and again.
        assert out.spills >= 8
        # Past the budget by at most one slice of records (4,096 keys), as before.
        assert at_spill and max(at_spill) <= (4 << 20) + 4096 * 240
    out.finish()
    assert out.pairs_out == 300_000


def _reducer_sees_collector(key, values):
    import gc

    return (sum(values), gc.isenabled())


def test_user_code_runs_with_the_garbage_collector_as_the_user_left_it():
    # The in-memory grouping pauses the collector while it builds its dict; the reducer must not
    # inherit that, and the collector must be back on after the job.
    import gc

    records = [f"w{i % 40} w{i % 3}" for i in range(2000)]
    job = mrkit.Job(mapper=J.WordCount().mapper, reducer=_reducer_sees_collector)
    res = mrkit.run(job, mrkit.Records(records), executor="inline", n_map=2, n_reduce=2, quiet=True)
    assert res.counters["reduce.grouped_in_memory"] == 2
    assert all(enabled for _total, enabled in dict(res).values())
    assert gc.isenabled()


def test_a_run_in_the_old_entry_list_format_fails_with_a_clear_error():
    # A worker of an older mrkit wrote frames as pickled lists of (key bytes, key, values).
    import pickle
    import struct

    from mrkit.errors import StorageError

    data = pickle.dumps([(b"sa", "a", [1])], protocol=5)
    blob = struct.pack("<I", len(data)) + data
    with pytest.raises(StorageError, match="another mrkit version"):
        list(read_frames(io.BytesIO(blob)))


# Single-valued str-key runs (after a combiner or from a Counter): the sort-based grouping, the
# dict, and the streaming merge must agree exactly, also when a later run is not single-valued
# (the dict takes over half-way) and whatever share of keys the first two runs have in common.
single_runs = st.lists(
    st.one_of(
        st.dictionaries(
            st.text(alphabet="abcdé\U0001f600", max_size=3), st.floats(allow_nan=False), max_size=25
        ),
        st.lists(st.tuples(st.text(alphabet="abc", max_size=2), st.integers()), max_size=10),
    ),
    max_size=7,
)


def _run_of(contents):
    """A dict becomes one single-valued run (as a spill of ``Counter(...).items()``), a list of
    pairs an ordinary run."""
    if not isinstance(contents, dict):
        return _sorted_run(contents)
    keys = sorted(contents)
    buf = _Kept()
    write_run(buf, keys, [contents[k] for k in keys], single=True, frame_entries=4, frame_values=4)
    return buf.getvalue()


@settings(max_examples=300, deadline=None)
@given(single_runs)
def test_sort_grouping_of_single_valued_runs_equals_the_dict_and_the_merge(contents):
    from mrkit.data import merging

    blobs = [_run_of(c) for c in contents]

    def frames():
        return [read_frames(io.BytesIO(b)) for b in blobs]

    streamed = [
        (k, list(vs)) for k, vs in group_values(merge_sorted_runs(read_run(io.BytesIO(b)) for b in blobs))
    ]
    in_memory = [(k, list(vs)) for k, vs in group_in_memory(frames())]
    by_dict = [(k, list(vs)) for k, vs in merging._group_in_dict(f for run in frames() for f in run)]
    assert in_memory == streamed == by_dict
    if all(isinstance(c, dict) for c in contents):
        keys, values, other = merging._concat_singles(f for run in frames() for f in run)
        assert other is None
        assert [(k, list(vs)) for k, vs in merging._sorted_groups(keys, values)] == streamed


def test_a_dict_only_its_items_view_holds_is_taken_without_a_copy_any_other_is_copied():
    from collections import Counter

    from mrkit.data.map_side import _sole_owner

    def fresh():
        return Counter("abca").items()

    taken = _sole_owner(fresh())
    assert taken == Counter("abca")
    held = Counter("ab")
    assert _sole_owner(held.items()) is None  # the user still holds it: copied
    out = MapOutput(
        n_reduce=1, partitioner=None, combiner=None, memory_bytes=1 << 30, open_part=lambda p: _Kept()
    )
    _add_pairs(held.items(), out)
    held["a"] += 5  # changing theirs afterwards does not change what was emitted
    assert out.buf == {"a": 1, "b": 1}

    class Mine(dict):
        pass

    assert _sole_owner(Mine(a=1).items()) is None  # only dict and Counter are taken


def test_relaxed_collection_restores_the_thresholds_after_overlapping_threads() -> None:
    """Two map tasks of one process (threads of an HTTP worker) overlap: the first in sets the
    relaxed threshold, the last out restores the user's; a threshold of 0 (collector off) stays."""
    import gc
    import threading

    from mrkit.data.gc_pause import RELAXED_THRESHOLD, gc_relaxed

    before = gc.get_threshold()
    inside, release = threading.Event(), threading.Event()
    seen: list[int] = []

    def task() -> None:
        with gc_relaxed():
            inside.set()
            release.wait(5)
            seen.append(gc.get_threshold()[0])

    other = threading.Thread(target=task)
    other.start()
    inside.wait(5)
    with gc_relaxed():
        release.set()
        other.join(5)
        assert gc.get_threshold()[0] == RELAXED_THRESHOLD  # the other left first: still relaxed
    assert seen == [RELAXED_THRESHOLD]
    assert gc.get_threshold() == before
    gc.set_threshold(0)
    try:
        with gc_relaxed():
            assert gc.get_threshold()[0] == 0
    finally:
        gc.set_threshold(*before)


def test_paused_collection_leaves_nothing_for_the_youngest_generation_to_traverse() -> None:
    """What a paused block builds is moved to the oldest generation on the way out (no collection
    of it all at the next allocation), still collectable; a user's own gc.freeze() is left alone."""
    import gc

    from mrkit.data.gc_pause import gc_paused

    assert gc.isenabled()
    with gc_paused():
        built = [[i] for i in range(50_000)]
        assert gc.get_count()[0] >= 50_000
    assert gc.isenabled()
    young = {id(o) for generation in (0, 1) for o in gc.get_objects(generation=generation)}
    assert id(built) not in young and id(built[-1]) not in young  # promoted: in the oldest generation
    assert gc.get_freeze_count() == 0  # unfrozen again: a full collection still sees them
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle, built
    assert gc.collect() >= 1  # garbage made before or after stays collectable

    gc.freeze()  # the user's (a pre-fork server's): not undone by a paused block
    try:
        frozen = gc.get_freeze_count()
        with gc_paused():
            more = [[i] for i in range(1_000)]
        # Neither unfrozen nor frozen further (a frozen object freed meanwhile, by another thread of
        # the test process, lowers the count: CI saw 10 fewer), and the block's objects stay young.
        assert 0 < gc.get_freeze_count() <= frozen
        assert id(more) in {id(o) for generation in (0, 1, 2) for o in gc.get_objects(generation=generation)}
        del more
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("yields_pairs", [False, True])
def test_the_combiner_sees_only_keys_with_several_values_in_the_order_they_came(yields_pairs):
    """The buffer keeps each key's first value apart from its later ones: the combiner is called for
    the keys that have later values, with every value in arrival order, and both forms of
    combiner (a value, or (key, value) pairs) leave one value per key."""
    calls: list[tuple[str, list[int]]] = []

    def add_up(key, values):
        values = list(values)
        calls.append((key, values))
        return sum(values)

    def add_up_pairs(key, values):
        yield key, add_up(key, values)

    out = MapOutput(
        n_reduce=1,
        partitioner=None,
        combiner=add_up_pairs if yields_pairs else add_up,
        memory_bytes=1 << 30,
        open_part=lambda p: _Kept(),
    )
    _add_pairs([("a", 1), ("b", 2), ("a", 3), ("c", 4), ("a", 5), ("c", 6)], out)
    assert out.values_of("a") == [1, 3, 5] and out.values_of("b") == [2] and out.values_of("z") == []
    out.combine()
    assert calls == [("a", [1, 3, 5]), ("c", [4, 6])]
    assert out.buf == {"a": 9, "b": 2, "c": 10} and not out.more
    _add_pairs([("b", 7)], out)
    out.finish()  # combines "b" once more, then spills single-valued frames
    assert calls[2:] == [("b", [2, 7])]
    assert list(read_run(io.BytesIO(out._writers[0].getvalue()))) == [
        (b"sa", "a", [9]),
        (b"sb", "b", [9]),
        (b"sc", "c", [10]),
    ]
