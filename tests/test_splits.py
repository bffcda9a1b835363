"""plan_splits: expanding inputs (paths, globs, folders, storage URLs) and cutting byte ranges."""

from __future__ import annotations

import bz2
import gzip
import itertools
import os
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrkit.data.splits import DEFAULT_SPLIT_CAP, pack_splits, plan_splits
from mrkit.errors import ConfigError, InputError
from mrkit.model.task import InputSplit
from mrkit.storage import MemoryStorage


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def uris(splits: list[InputSplit]) -> list[str]:
    return [s.uri for s in splits]


@pytest.fixture
def store():
    storage = MemoryStorage(f"test-splits-{uuid.uuid4().hex[:8]}")
    yield storage
    storage.drop()


# -- what a single small file becomes -------------------------------------------------------------


def test_small_file_is_one_split_with_its_metadata(tmp_path):
    f = write(tmp_path / "a.txt", "one\ntwo\n")
    [split] = plan_splits(str(f), 8)
    assert split == InputSplit(str(f), 0, 8, "text", "", 0, {"errors": "strict", "encoding": "utf-8"})
    assert split.describe() == f"{f} bytes 0-8"


def test_pathlike_and_relative_inputs_become_absolute_paths(tmp_path, monkeypatch):
    write(tmp_path / "a.txt", "x\n")
    monkeypatch.chdir(tmp_path)
    assert uris(plan_splits(Path("a.txt"), 1)) == [str(tmp_path / "a.txt")]
    assert uris(plan_splits("a.txt", 1)) == [str(tmp_path / "a.txt")]


@pytest.mark.parametrize(
    ("name", "fmt", "compression"),
    [
        ("a.txt", "text", ""),
        ("a.log", "text", ""),
        ("a.jsonl", "jsonl", ""),
        ("a.NDJSON", "jsonl", ""),
        ("a.csv", "csv", ""),
        ("a.jsonl.gz", "jsonl", "gz"),
        ("a.csv.bz2", "csv", "bz2"),
        ("a.txt.xz", "text", "xz"),
        ("a.zst", "text", "zst"),
    ],
)
def test_format_and_compression_come_from_the_extension(tmp_path, name, fmt, compression):
    f = write(tmp_path / name, b"not really compressed, planning does not read it\n" * 100)
    [split] = plan_splits(str(f), 4, min_split_bytes=1) if compression else plan_splits(str(f), 1)
    assert (split.format, split.compression) == (fmt, compression)
    if compression:  # never cut, whatever n_map asks for
        assert (split.start, split.length) == (0, -1)


def test_explicit_format_and_options_are_carried(tmp_path):
    f = write(tmp_path / "a.csv", "a,b\n")
    [split] = plan_splits(str(f), 1, format="text", errors="skip", encoding="latin-1")
    assert split.format == "text"
    assert split.options == {"errors": "skip", "encoding": "latin-1"}


# -- folders and globs ----------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    """A Hadoop-like output folder with hidden and bookkeeping files."""
    root = tmp_path / "data"
    for rel in [
        "b.txt",
        "a.txt",
        "sub/c.txt",
        "sub/deeper/d.jsonl",
        "x1.csv",
        "x2.csv",
        "_SUCCESS",
        ".hidden",
        "_logs/e.txt",
        ".git/f.txt",
        "sub/_tmp.txt",
    ]:
        write(root / rel, f"{rel}\n")
    write(root / "empty.txt", b"")
    return root


def test_folder_is_every_visible_file_recursively_sorted(tree):
    got = uris(plan_splits(str(tree), 1))
    expected = ["a.txt", "b.txt", "sub/c.txt", "sub/deeper/d.jsonl", "x1.csv", "x2.csv"]
    assert got == [str(tree / rel) for rel in expected]  # empty.txt dropped: no empty splits


def test_indexes_are_sequential(tree):
    splits = plan_splits(str(tree), 100, min_split_bytes=1)
    assert [s.index for s in splits] == list(range(len(splits)))


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("*.txt", ["a.txt", "b.txt"]),
        ("?.txt", ["a.txt", "b.txt"]),
        ("x[12].csv", ["x1.csv", "x2.csv"]),
        ("x[!1].csv", ["x2.csv"]),
        ("**/*.txt", ["a.txt", "b.txt", "sub/c.txt"]),
        ("**/*.jsonl", ["sub/deeper/d.jsonl"]),
        ("s*", ["sub/c.txt", "sub/deeper/d.jsonl"]),  # a matched folder is read whole
        ("*", ["a.txt", "b.txt", "sub/c.txt", "sub/deeper/d.jsonl", "x1.csv", "x2.csv"]),
        ("_*", ["_SUCCESS", "_logs/e.txt"]),  # named by the pattern, so not skipped
        ("sub/_*.txt", ["sub/_tmp.txt"]),
    ],
)
def test_globs(tree, pattern, expected):
    assert uris(plan_splits(f"{tree}/{pattern}", 1)) == [str(tree / rel) for rel in expected]


def test_explicit_hidden_file_is_read(tree):
    assert uris(plan_splits(str(tree / "_SUCCESS"), 1)) == [str(tree / "_SUCCESS")]


def test_inputs_keep_their_order_and_duplicates_are_dropped(tree):
    got = uris(
        plan_splits([str(tree / "x2.csv"), f"{tree}/*.txt", str(tree / "a.txt"), str(tree / "x1.csv")], 1)
    )
    assert got == [str(tree / rel) for rel in ["x2.csv", "a.txt", "b.txt", "x1.csv"]]


def test_file_url_is_a_local_path(tree):
    assert uris(plan_splits(f"file://{tree}/a.txt", 1)) == [str(tree / "a.txt")]


def test_all_empty_files_give_no_split(tmp_path):
    write(tmp_path / "e.txt", b"")
    assert plan_splits(str(tmp_path / "e.txt"), 4) == []


# -- errors ---------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"input file '.*nope\.txt' does not exist"):
        plan_splits(str(tmp_path / "nope.txt"), 1)


def test_glob_matching_nothing(tmp_path):
    with pytest.raises(InputError, match=r"input glob '.*\*\.txt' matches no file"):
        plan_splits(str(tmp_path / "*.txt"), 1)


def test_empty_folder(tmp_path):
    write(tmp_path / "d" / "_SUCCESS", "")
    with pytest.raises(InputError, match=r"input folder '.*d' holds no file"):
        plan_splits(str(tmp_path / "d"), 1)


def test_broken_link(tmp_path):
    os.symlink(tmp_path / "gone", tmp_path / "link.txt")
    with pytest.raises(InputError, match=r"'.*link\.txt' is neither a regular file nor a folder"):
        plan_splits(str(tmp_path / "link.txt"), 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "parquet"}, "format must be one of auto, text, jsonl, csv, not 'parquet'"),
        ({"errors": "ignore"}, "errors must be one of strict, replace, skip, not 'ignore'"),
        ({"encoding": "no-such-codec"}, "unknown encoding 'no-such-codec'"),
        ({"encoding": "utf-16"}, "encoding 'utf-16' is not ASCII-compatible"),
        ({"n_map": 0}, "n_map must be a positive integer or None, not 0"),
        ({"min_split_bytes": 0}, "min_split_bytes must be a positive integer"),
    ],
)
def test_bad_options_name_the_choices(tmp_path, kwargs, message):
    f = write(tmp_path / "a.txt", "x\n")
    kwargs = {"n_map": 1, **kwargs}
    with pytest.raises(ConfigError, match=message):
        plan_splits(str(f), **kwargs)


# -- cutting ---------------------------------------------------------------------------------------


def assert_tiles(splits: list[InputSplit], sizes: dict[str, int]) -> None:
    """Each file's splits are non-empty, contiguous and cover it exactly."""
    by_file: dict[str, list[InputSplit]] = {}
    for s in splits:
        by_file.setdefault(s.uri, []).append(s)
    assert set(by_file) == set(sizes)
    for uri, parts in by_file.items():
        if parts[0].compression:
            assert [(p.start, p.length) for p in parts] == [(0, -1)]
            continue
        assert parts[0].start == 0
        assert all(p.length > 0 for p in parts)
        assert all(a.start + a.length == b.start for a, b in itertools.pairwise(parts))
        assert parts[-1].start + parts[-1].length == sizes[uri]


def test_one_file_cut_into_n_map_equal_ranges(tmp_path):
    f = write(tmp_path / "a.txt", b"x" * 1000)
    splits = plan_splits(str(f), 4, min_split_bytes=1)
    assert [(s.start, s.length) for s in splits] == [(0, 250), (250, 250), (500, 250), (750, 250)]


def test_min_split_bytes_bounds_the_count(tmp_path):
    f = write(tmp_path / "a.txt", b"x" * 1000)
    assert len(plan_splits(str(f), 8, min_split_bytes=300)) == 3
    assert len(plan_splits(str(f), 8)) == 1  # 1 MiB default: a small file is one split


def test_never_fewer_splits_than_files(tree):
    assert len(plan_splits(str(tree), 1)) == 6


def test_largest_files_get_the_cuts(tmp_path):
    big = write(tmp_path / "big.txt", b"x" * 3000)
    small = write(tmp_path / "small.txt", b"x" * 1000)
    gz = write(tmp_path / "z.txt.gz", gzip.compress(b"x" * 5000))
    splits = plan_splits([str(big), str(small), str(gz)], 6, min_split_bytes=1)
    assert [(s.uri, s.length) for s in splits] == [(str(big), 750)] * 4 + [(str(small), 1000), (str(gz), -1)]


def test_default_n_map_uses_the_cores(tmp_path):
    f = write(tmp_path / "a.txt", b"x" * 10_000)
    assert len(plan_splits(str(f), None, min_split_bytes=1)) == max(1, 2 * (os.cpu_count() or 1))
    assert len(plan_splits(str(f), None, min_split_bytes=4000)) == 2


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 5000), min_size=1, max_size=6),
    compressed=st.lists(st.booleans(), min_size=6, max_size=6),
    n_map=st.integers(1, 40),
    min_bytes=st.integers(1, 3000),
)
def test_splits_tile_every_file(sizes, compressed, n_map, min_bytes):
    storage = MemoryStorage(f"test-splits-prop-{uuid.uuid4().hex[:8]}")
    try:
        expected = {}
        for i, size in enumerate(sizes):
            key = f"in/f{i}.txt" + (".bz2" if compressed[i] else "")
            storage.put(key, b"y" * size)
            if size:
                expected[f"{storage.url}#{key}"] = size
        splits = plan_splits(f"{storage.url}/in/", n_map, min_split_bytes=min_bytes)
        assert_tiles(splits, expected)
        assert len(splits) >= len(expected)
        pieces = {uri: sum(1 for s in splits if s.uri == uri) for uri in expected}
        assert len(splits) == len(expected) or len(splits) <= n_map
        for uri, k in pieces.items():
            if k > 1:  # never cut into pieces below min_bytes
                assert expected[uri] // k >= min_bytes
            if len(splits) < n_map and not uri.endswith(".bz2"):  # stopped early: nothing could be cut
                assert expected[uri] // (k + 1) < min_bytes
    finally:
        storage.drop()


# -- storage URLs ----------------------------------------------------------------------------------


@pytest.fixture
def objects(store):
    for key in [
        "dir/a.txt",
        "dir/b.txt",
        "dir/sub/c.txt",
        "dir/_SUCCESS",
        "dir/.tmp/x.txt",
        "dir/d.jsonl.gz",
        "other/e.txt",
    ]:
        store.put(key, f"{key}\n".encode())
    return store


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("dir/*.txt", ["dir/a.txt", "dir/b.txt"]),
        ("dir/?.txt", ["dir/a.txt", "dir/b.txt"]),
        ("dir/**/*.txt", ["dir/a.txt", "dir/b.txt", "dir/sub/c.txt"]),
        ("*/a.txt", ["dir/a.txt"]),
        ("dir/*", ["dir/a.txt", "dir/b.txt", "dir/d.jsonl.gz", "dir/sub/c.txt"]),
        ("dir/_*", ["dir/_SUCCESS"]),
        ("dir/", ["dir/a.txt", "dir/b.txt", "dir/d.jsonl.gz", "dir/sub/c.txt"]),
        ("dir", ["dir/a.txt", "dir/b.txt", "dir/d.jsonl.gz", "dir/sub/c.txt"]),
        ("dir/b.txt", ["dir/b.txt"]),
        ("", ["dir/a.txt", "dir/b.txt", "dir/d.jsonl.gz", "dir/sub/c.txt", "other/e.txt"]),
    ],
)
def test_url_inputs_are_listed_and_matched(objects, path, expected):
    splits = plan_splits(f"{objects.url}/{path}", 1)
    assert uris(splits) == [f"{objects.url}#{key}" for key in expected]
    assert all(s.length == objects.size(s.uri.split("#")[1]) or s.compression for s in splits)


def test_url_splits_are_cut_and_typed(objects):
    objects.put("big/data.jsonl", b"{}\n" * 1000)
    splits = plan_splits(f"{objects.url}/big/*.jsonl", 3, min_split_bytes=1)
    assert [(s.start, s.length, s.format) for s in splits] == [
        (0, 1000, "jsonl"),
        (1000, 1000, "jsonl"),
        (2000, 1000, "jsonl"),
    ]
    [gz] = plan_splits(f"{objects.url}/dir/*.gz", 3, min_split_bytes=1)
    assert (gz.format, gz.compression, gz.length) == ("jsonl", "gz", -1)


def test_url_errors(objects):
    with pytest.raises(InputError, match=r"input glob 'memory://.*/dir/\*\.csv' matches no object"):
        plan_splits(f"{objects.url}/dir/*.csv", 1)
    with pytest.raises(InputError, match=r"input 'memory://.*/nope\.txt' is neither an object nor a folder"):
        plan_splits(f"{objects.url}/nope.txt", 1)


def test_unknown_url_scheme(tmp_path):
    with pytest.raises(ConfigError, match="unknown storage URL scheme 'nosuch'"):
        plan_splits("nosuch://bucket/x.txt", 1)


def test_compressed_files_are_planned_without_reading(tmp_path):
    f = write(tmp_path / "a.txt.bz2", bz2.compress(b"a\n" * 10))
    [split] = plan_splits(str(f), 5, min_split_bytes=1)
    assert (split.length, split.compression) == (-1, "bz2")


def test_doctests():
    import doctest

    import mrkit.data.readers
    import mrkit.data.splits

    for module in (mrkit.data.splits, mrkit.data.readers):
        assert doctest.testmod(module).failed == 0


def test_split_size_one_gives_one_map_task_per_line(tmp_path):
    import mrkit
    from mrkit.model.reference import reference
    from tests import jobs_for_tests as J

    lines = ["the cat", "sat on", "the mat", "", "a much longer line than the others"]
    path = tmp_path / "five.txt"
    path.write_text("\n".join(lines) + "\n")
    splits = plan_splits([str(path)], None, split_size=1)
    assert len(splits) == 5
    assert sum(s.length for s in splits) == path.stat().st_size
    result = mrkit.run(J.WORDCOUNT, str(path), executor="inline", split_size=1, quiet=True)
    assert result.counters["map.tasks"] == 5
    assert dict(result) == dict(reference(J.WORDCOUNT, lines))
    big = plan_splits([str(path)], None, split_size=20)  # pieces of >= 20 bytes, cut at line ends
    assert [s.start for s in big] == [0, 23] and len(big) == 2


def test_split_size_on_the_command_line(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "three.txt"
    path.write_text("a b\nb c\nc d\n")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "src"), str(root)]))
    cmd = [sys.executable, "-m", "mrkit", "run", "tests.jobs_for_tests:WORDCOUNT", str(path)]
    cmd += ["--split-size", "1", "--executor", "inline", "--format", "jsonl", "-o", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    import mrkit

    assert dict(mrkit.read_output(str(tmp_path / "out"))) == {"a": 1, "b": 2, "c": 2, "d": 1}


def test_a_default_plan_cuts_no_split_over_the_cap(tmp_path):
    """Big files are cut so that no split exceeds DEFAULT_SPLIT_CAP (a task's memory follows its
    split); small files are left whole as before. Planning only stats the files (sparse here)."""
    from mrkit.data.splits import DEFAULT_SPLIT_CAP

    for i, size in enumerate([40 << 20, 31 << 20, 31 << 20, 1000]):
        with open(tmp_path / f"f{i}.txt", "wb") as f:
            f.truncate(size)
    splits = plan_splits(str(tmp_path), None)
    assert max(s.length for s in splits) <= DEFAULT_SPLIT_CAP
    assert [s.length for s in splits if s.uri.endswith("f3.txt")] == [1000]
    assert len(splits) == 3 + 2 + 2 + 1


# -- packing small splits into map tasks ------------------------------------------------------------

MB = 1 << 20
pieces = st.lists(
    st.tuples(
        st.integers(1, 20 * MB),  # length
        st.sampled_from(["", "", "", "gz"]),  # compression
        st.sampled_from(["text", "text", "csv", "pickle"]),  # format (pickle: stored records)
        st.integers(-1, 1),  # input mapper
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(pieces, st.integers(1, 8))
def test_packing_keeps_every_split_once_in_order_within_the_cap(specs, parallelism):
    splits = [
        InputSplit(f"f{i}", 0, -1 if comp else length, fmt, comp, i, {}, mapper)
        for i, (length, comp, fmt, mapper) in enumerate(specs)
    ]
    groups = pack_splits(splits, parallelism)
    assert [s for g in groups for s in g] == splits  # all of them, once, in order
    for group in groups:
        if len(group) > 1:
            assert all(s.length >= 0 and not s.compression and s.format != "pickle" for s in group)
            assert len({s.mapper for s in group}) == 1  # a task has one mapper
            assert sum(s.length for s in group) <= DEFAULT_SPLIT_CAP


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 200), st.integers(1, 40 * MB), st.integers(1, 8))
def test_equal_splits_leave_every_worker_two_tasks_at_least(n, length, parallelism):
    splits = [InputSplit(f"f{i}", 0, length, "text", index=i) for i in range(n)]
    groups = pack_splits(splits, parallelism)
    assert len(groups) >= min(n, 2 * parallelism)
    sizes = [len(g) for g in groups]
    assert max(sizes) - min(sizes) <= 1 or len(groups) == n  # equal shares


def test_many_small_files_make_equal_tasks_a_multiple_of_the_workers():
    splits = [InputSplit(f"f{i:02d}", 0, 3 * MB + i * 1000, "text", index=i) for i in range(32)]
    groups = pack_splits(splits, 2)
    assert [len(g) for g in groups] == [4] * 8  # 100 MB: 8 tasks of 12.5 MB, 4 per worker
    tiny = [InputSplit(f"t{i}", 0, 1000, "text", index=i) for i in range(1000)]
    assert sorted(len(g) for g in pack_splits(tiny, 3)) == [166, 166, 167, 167, 167, 167]
    big = [InputSplit(f"b{i}", 0, DEFAULT_SPLIT_CAP, "text", index=i) for i in range(5)]
    assert pack_splits(big, 2) == [(s,) for s in big]  # nothing to gain: one task per split


def test_each_input_is_packed_on_its_own():
    # The join benchmark's shape: a small input (4 pieces of 3 MB) beside a big one (8 of 12.5 MB).
    # Packed together, the small input became one task and the job 9 tasks for 2 workers.
    rankings = [InputSplit(f"r{i}", 0, 3 * MB, "text", index=i, mapper=0) for i in range(4)]
    visits = [InputSplit(f"v{i}", 0, 12 * MB + MB // 2, "text", index=4 + i, mapper=1) for i in range(8)]
    assert pack_splits(rankings + visits, 2) == [(s,) for s in rankings + visits]
    small = [InputSplit(f"s{i}", 0, MB, "text", index=i, mapper=i // 8) for i in range(16)]
    assert [len(g) for g in pack_splits(small, 2)] == [2, 2, 2, 2, 2, 2, 2, 2]  # 4 tasks per input
