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
from mrkit.data.merging import group_in_memory, group_values, merge_sorted_runs
from mrkit.data.runs import read_frames, read_run, write_run
from mrkit.model.partition import key_bytes
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
    assert {"mrkit.data.merging", "mrkit.data.runs", "mrkit.model.partition"} <= set(DOCTESTED)


@pytest.mark.parametrize("name", DOCTESTED)
def test_docstring_examples_hold(name):
    module = importlib.import_module(name)
    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0


keys = st.one_of(st.text(max_size=4), st.integers(-5, 5), st.tuples(st.integers(0, 2)))
run_contents = st.lists(st.lists(st.tuples(keys, st.integers()), max_size=30), max_size=6)


def _sorted_run(pairs):
    """One map task's run: pairs grouped per key, sorted by encoded key, cut small to make frames."""
    grouped: dict = {}
    for k, v in pairs:
        grouped.setdefault(k, []).append(v)
    entries = sorted(((key_bytes(k), k, vs) for k, vs in grouped.items()), key=lambda e: e[0])
    buf = io.BytesIO()
    write_run(buf, entries, frame_entries=3, frame_values=4)
    return buf.getvalue()


@settings(max_examples=200, deadline=None)
@given(run_contents)
def test_in_memory_grouping_equals_the_streaming_merge(contents):
    blobs = [_sorted_run(pairs) for pairs in contents]
    streamed = [
        (k, list(vs)) for k, vs in group_values(merge_sorted_runs(read_run(io.BytesIO(b)) for b in blobs))
    ]
    in_memory = [(k, list(vs)) for k, vs in group_in_memory(read_run(io.BytesIO(b)) for b in blobs)]
    assert in_memory == streamed
    expected: dict = {}
    for pairs in contents:
        for k, v in pairs:
            expected.setdefault(k, []).append(v)
    assert sorted(map(repr, streamed)) == sorted(repr((k, vs)) for k, vs in expected.items())


@pytest.mark.parametrize("memory_mb", [0.05, 64])
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
    entries = [(b"s%03d" % i, f"k{i}", list(range(size))) for i, size in enumerate(sizes)]
    buf = io.BytesIO()
    written, n_values = write_run(buf, entries, frame_entries, frame_values)
    assert (written, n_values) == (len(buf.getvalue()), sum(sizes))
    rejoined: list = []
    for frame in read_frames(io.BytesIO(buf.getvalue())):
        assert 1 <= len(frame) <= frame_entries
        assert all(len(values) <= frame_values for _kb, _key, values in frame)  # hot keys are cut
        assert sum(len(values) for _kb, _key, values in frame) < 2 * frame_values
        for kb, key, values in frame:
            if rejoined and rejoined[-1][0] == kb:
                rejoined[-1][2].extend(values)  # the pieces of a cut entry follow each other
            else:
                rejoined.append((kb, key, list(values)))
    assert rejoined == entries


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
        for i in range(10_000):
            out.buf.setdefault(f"k{i % 50}", []).append(block + 1000)  # not a cached small int
        out.check_memory()
        peak = max(peak, out.estimated_bytes())
    assert out.combines > 3 and out.spills == 0
    assert peak <= COMBINE_FLOOR_BYTES + 10_000 * 40
    assert sum(v for values in out.buf.values() for v in values) == sum(
        10_000 * (b + 1000) for b in range(300)
    )
