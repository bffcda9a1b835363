"""open_split: every line exactly once whatever the cuts, formats, decoding errors, compression, sources."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import pickle
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mrkit.storage
from mrkit.data.readers import open_split
from mrkit.data.splits import plan_splits
from mrkit.errors import ConfigError, InputError
from mrkit.model.task import InputSplit
from mrkit.storage import LocalStorage, MemoryStorage


def reference(data: bytes, encoding: str = "utf-8") -> list[str]:
    """The lines of ``data`` by definition: cut at b"\\n", drop the "\\r" of "\\r\\n", keep a last
    unterminated line, no line after a final "\\n"."""
    *terminated, tail = data.split(b"\n")
    lines = [line[:-1] if line.endswith(b"\r") else line for line in terminated]
    if tail:
        lines.append(tail)
    return [line.decode(encoding) for line in lines]


def split_at(uri: str, size: int, cuts: list[int], **fields) -> list[InputSplit]:
    """Splits of one file at the given cut points."""
    points = [0, *sorted(set(c for c in cuts if 0 < c < size)), size]
    return [
        InputSplit(uri, a, b - a, index=i, **fields)
        for i, (a, b) in enumerate(zip(points, points[1:], strict=False))
    ]


def read_splits(splits: list[InputSplit], block_size: int = 1 << 22) -> tuple[list, int]:
    records, total = [], 0
    for split in splits:
        reader = open_split(split, block_size=block_size)
        records += list(reader.records())
        total += reader.bytes_read
        assert reader.records_read == sum(1 for _ in open_split(split, block_size=block_size).records())
    return records, total


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.fixture
def store():
    storage = MemoryStorage(f"test-readers-{uuid.uuid4().hex[:8]}")
    yield storage
    storage.drop()


# -- text: which lines ---------------------------------------------------------------------------

EDGE_FILES = {
    "empty": b"",
    "one newline": b"\n",
    "no trailing newline": b"alpha\nbeta",
    "trailing newline": b"alpha\nbeta\n",
    "blank lines": b"\n\na\n\n\nb\n\n",
    "crlf": b"one\r\ntwo\r\n\r\nthree",
    "lone cr": b"a\rb\nc\r",
    "unicode separators": "a\x0bb\x1cc\u2028d\x85e\n\x0c\n".encode(),
    "multibyte": "héllo wörld\n日本語のテキスト\n🙂🙂\nend".encode(),
    "long line": b"x" * 5000 + b"\nshort\n" + b"y" * 3000,
}


@pytest.mark.parametrize("name", sorted(EDGE_FILES))
@pytest.mark.parametrize("block_size", [1, 3, 7, 4096])
def test_every_cut_point_reads_every_line_once(tmp_path, name, block_size):
    data = EDGE_FILES[name]
    path = write(tmp_path / "f.txt", data)
    expected = reference(data)
    # one split, every two-way cut, and 1-byte splits
    cut_sets = [[]] + [[c] for c in range(1, len(data))] if len(data) < 200 else [[], [1], [len(data) // 2]]
    cut_sets.append(list(range(len(data))))
    for cuts in cut_sets:
        records, total = read_splits(split_at(path, len(data), cuts), block_size)
        assert records == expected, cuts
        assert total == len(data)


def test_empty_file_and_zero_length_split(tmp_path):
    path = write(tmp_path / "e.txt", b"")
    assert list(open_split(InputSplit(path)).records()) == []
    path = write(tmp_path / "a.txt", b"abc\n")
    assert list(open_split(InputSplit(path, 2, 0)).records()) == []


def test_cut_exactly_after_a_newline(tmp_path):
    path = write(tmp_path / "a.txt", b"aaa\nbbb\nccc\n")
    assert list(open_split(InputSplit(path, 0, 4)).records()) == ["aaa"]  # "aaa\n" ends at the cut
    assert list(open_split(InputSplit(path, 4, 4)).records()) == ["bbb"]
    assert list(open_split(InputSplit(path, 3, 2)).records()) == ["bbb"]  # the "\n" at 3, then b at 4
    assert list(open_split(InputSplit(path, 5, 7)).records()) == ["ccc"]


def test_cut_inside_a_multibyte_character(tmp_path):
    data = "ab\né日本\n語x\n".encode()
    path = write(tmp_path / "a.txt", data)
    for cut in range(1, len(data)):
        first = list(open_split(InputSplit(path, 0, cut)).records())
        second = list(open_split(InputSplit(path, cut, len(data) - cut)).records())
        assert first + second == ["ab", "é日本", "語x"]


def test_lines_much_longer_than_the_block(tmp_path):
    lines = ["z" * 10_000, "", "q" * 3, "w" * 70_000]
    data = "\n".join(lines).encode()
    path = write(tmp_path / "a.txt", data)
    records, total = read_splits(split_at(path, len(data), [5, 9_999, 10_001, 10_003, 50_000]), block_size=16)
    assert records == lines
    assert total == len(data)


def test_plan_then_read_many_files(tmp_path):
    expected = []
    for i in range(5):
        data = b"".join(b"file%d line %d %s\n" % (i, j, b"." * (j % 13)) for j in range(400))
        write(tmp_path / f"f{i}.txt", data)
        expected += reference(data)
    splits = plan_splits(str(tmp_path), 17, min_split_bytes=100)
    assert len(splits) == 17
    assert read_splits(splits, block_size=64)[0] == expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.lists(
        st.sampled_from([b"a", b"bc", b"\n", b"\r", b"\r\n", "é".encode(), "日".encode(), b"\x0b"]),
        max_size=60,
    ).map(b"".join),
    cuts=st.lists(st.integers(0, 200), max_size=8),
    block_size=st.integers(1, 20),
)
def test_property_any_cuts_any_block_size(tmp_path, data, cuts, block_size):
    path = write(tmp_path / "p.txt", data)
    records, total = read_splits(split_at(path, len(data), cuts), block_size)
    assert records == reference(data)
    assert total == len(data)


def test_counters_and_batches(tmp_path):
    data = b"".join(b"line %d\n" % i for i in range(1000))
    path = write(tmp_path / "a.txt", data)
    reader = open_split(InputSplit(path, 0, len(data)), block_size=100)
    batches = list(reader.batches())
    assert len(batches) > 10
    assert [b.first for b in batches] == [sum(len(x) for x in batches[:i]) for i in range(len(batches))]
    assert (reader.records_read, reader.bytes_read, reader.skipped, reader.replaced) == (
        1000,
        len(data),
        0,
        0,
    )


# -- locate: positions for error messages --------------------------------------------------------


def test_locate_gives_split_record_and_byte(tmp_path):
    data = b"".join(b"rec %d\n" % i for i in range(100))
    path = write(tmp_path / "a.txt", data)
    split = InputSplit(path, 50, 400, index=1)
    for batch in open_split(split, block_size=32).batches():
        for i, record in enumerate(batch.records):
            byte = data.index(record.encode() + b"\n")
            assert batch.locate(i) == f"{path} bytes 50-450, record {batch.first + i} (byte {byte})"


def test_locate_in_compressed_input_says_uncompressed(tmp_path):
    data = b"a\nbb\nccc\n"
    path = write(tmp_path / "a.txt.gz", gzip.compress(data))
    [batch] = open_split(InputSplit(path, compression="gz")).batches()
    assert batch.locate(2) == f"{path}, record 2 (byte 5 of the uncompressed stream)"


# -- decoding errors ------------------------------------------------------------------------------

BAD = b"good\nfine\nbad \xff byte\nok\n\xc3\n"


def test_strict_decoding_names_file_byte_and_record(tmp_path):
    path = write(tmp_path / "a.txt", BAD)
    with pytest.raises(InputError) as info:
        list(open_split(InputSplit(path, index=3)).records())
    assert str(info.value) == (
        f"cannot decode {path} at byte 14 (record 2 of split 3): 'utf-8' codec can't decode byte 0xff: "
        "invalid start byte; pass errors='replace' or errors='skip'"
    )


def test_strict_is_the_default_and_offsets_are_absolute(tmp_path):
    path = write(tmp_path / "a.txt", b"x\n" * 50 + BAD)
    with pytest.raises(InputError, match=r"at byte 114 \(record 2 of split 0\)"):
        list(open_split(InputSplit(path, 99, 1000), block_size=8).records())


def test_replace_counts_records(tmp_path):
    path = write(tmp_path / "a.txt", BAD + b"tail\r\n")
    reader = open_split(InputSplit(path, options={"errors": "replace"}), block_size=7)
    assert list(reader.records()) == ["good", "fine", "bad \ufffd byte", "ok", "\ufffd", "tail"]
    assert (reader.replaced, reader.skipped) == (2, 0)


def test_skip_counts_records_and_locate_stays_exact(tmp_path):
    data = BAD + b"last\n"
    path = write(tmp_path / "a.txt", data)
    reader = open_split(InputSplit(path, options={"errors": "skip"}))
    [batch] = list(reader.batches())
    assert batch.records == ["good", "fine", "ok", "last"]
    assert (reader.skipped, reader.replaced, reader.records_read) == (2, 0, 4)
    assert batch.locate(2).endswith(f"record 2 (byte {data.index(b'ok')})")
    assert batch.locate(3).endswith(f"record 3 (byte {data.index(b'last')})")


def test_latin1_encoding(tmp_path):
    path = write(tmp_path / "a.txt", "café\nnaïve\n".encode("latin-1"))
    assert list(open_split(InputSplit(path, options={"encoding": "latin-1"})).records()) == ["café", "naïve"]


def test_utf8_sig_drops_the_bom_of_the_first_split_only(tmp_path):
    data = "\ufeffa\nb\n".encode()
    path = write(tmp_path / "a.txt", data)
    splits = split_at(path, len(data), [2], options={"encoding": "utf-8-sig"})
    assert read_splits(splits)[0] == ["a", "b"]


@pytest.mark.parametrize(
    ("name", "fmt", "expected"),
    [
        ("a.txt", "text", ["the cat", "b \ufeff"]),
        ("a.jsonl", "jsonl", [{"the": 1}, "b \ufeff"]),
        ("a.csv", "csv", [["the", "cat"], ["b \ufeff"]]),
    ],
)
@pytest.mark.parametrize("compression", ["", "gz"])
def test_a_utf8_bom_at_the_start_of_a_file_is_dropped_there_only(tmp_path, name, fmt, expected, compression):
    body = {"text": "the cat\nb \ufeff\n", "jsonl": '{"the": 1}\n"b \\ufeff"\n', "csv": "the,cat\nb \ufeff\n"}
    data = b"\xef\xbb\xbf" + body[fmt].encode()
    if compression:
        data, name = gzip.compress(data), name + ".gz"
    path = write(tmp_path / name, data)
    for block_size in (1, 4, 1 << 20):  # the BOM in a block of its own, split over blocks, or not
        whole = [InputSplit(path, 0, -1, format=fmt, compression=compression)]
        assert read_splits(whole, block_size)[0] == expected
    if not compression:
        for cut in range(1, len(data)):  # split ranges: only the one starting at 0 sees the BOM
            records, total = read_splits(split_at(path, len(data), [cut], format=fmt))
            assert (records, total) == (expected, len(data))


def test_a_bom_file_counts_words_from_the_first_one(tmp_path):
    import mrkit

    path = write(tmp_path / "bom.txt", b"\xef\xbb\xbfthe cat\nthe end\n")
    job = mrkit.Job(mapper=lambda line: ((w, 1) for w in line.split()), reducer=lambda k, v: sum(v))
    assert dict(mrkit.run(job, path, executor="inline", quiet=True)) == {"the": 2, "cat": 1, "end": 1}


# -- jsonl -----------------------------------------------------------------------------------------


def test_jsonl_records_skip_blank_lines(tmp_path):
    data = b'{"a": 1}\n\n  \r\n[1, 2]\n"s"\r\n3\n'
    path = write(tmp_path / "a.jsonl", data)
    reader = open_split(InputSplit(path, format="jsonl"))
    [batch] = list(reader.batches())
    assert batch.records == [{"a": 1}, [1, 2], "s", 3]
    assert batch.locate(1).endswith(f"record 1 (byte {data.index(b'[1')})")
    assert (reader.records_read, reader.skipped) == (4, 0)


def test_jsonl_bad_line_strict(tmp_path):
    data = b'{"a": 1}\n\n{"b": \n{"c": 3}\n'
    path = write(tmp_path / "a.jsonl", data)
    with pytest.raises(InputError) as info:
        list(open_split(InputSplit(path, format="jsonl", index=2)).records())
    message = str(info.value)
    assert message.startswith(f"invalid JSON in {path}, record 1 (byte 10): Expecting value")


def test_jsonl_bad_line_skipped(tmp_path):
    data = b'{"a": 1}\nnope\n\n{"c": 3}\n'
    path = write(tmp_path / "a.jsonl", data)
    reader = open_split(InputSplit(path, format="jsonl", options={"errors": "skip"}), block_size=5)
    batches = list(reader.batches())
    assert [r for b in batches for r in b.records] == [{"a": 1}, {"c": 3}]
    assert reader.skipped == 1
    last = next(b for b in batches if {"c": 3} in b.records)
    byte = data.index(b'{"c')
    assert last.locate(last.records.index({"c": 3})).endswith(f"record 1 (byte {byte})")


def test_jsonl_across_splits(tmp_path):
    rows = [{"i": i, "s": "é" * (i % 5)} for i in range(300)]
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    path = write(tmp_path / "a.jsonl", data)
    assert read_splits(plan_splits(path, 7, min_split_bytes=1), block_size=50)[0] == rows


# -- csv -------------------------------------------------------------------------------------------


def test_csv_rows(tmp_path):
    data = b'a,b,c\r\n1,"x, y",3\n\n"q""uote",,\n'
    path = write(tmp_path / "a.csv", data)
    assert list(open_split(InputSplit(path, format="csv")).records()) == [
        ["a", "b", "c"],
        ["1", "x, y", "3"],
        [],
        ['q"uote', "", ""],
    ]


@pytest.mark.parametrize("block_size", [4, 1 << 20])
def test_csv_quoted_line_break_is_refused_wherever_it_is(tmp_path, block_size):
    data = b'a,b\n1,"two\nlines"\n3,4\n'
    path = write(tmp_path / "a.csv", data)
    with pytest.raises(InputError, match=rf"bad CSV in {path}, record 1 \(byte 4\): a quoted field spans"):
        list(open_split(InputSplit(path, format="csv"), block_size=block_size).records())
    reader = open_split(InputSplit(path, format="csv", options={"errors": "skip"}), block_size=block_size)
    assert list(reader.records()) == [["a", "b"], ['lines"'], ["3", "4"]]  # only the opening line is bad
    assert reader.skipped == 1
    # at the very end of the input too: the outcome does not depend on where blocks end
    path = write(tmp_path / "b.csv", b'a,b\n1,"open')
    with pytest.raises(InputError, match="a quoted field spans a line break"):
        list(open_split(InputSplit(path, format="csv"), block_size=block_size).records())


# -- compression ---------------------------------------------------------------------------------

TEXT = "".join(f"line {i} é\n" for i in range(3000)).encode()


@pytest.mark.parametrize(
    ("suffix", "compress"),
    [
        ("gz", gzip.compress),
        ("bz2", bz2.compress),
        ("xz", lzma.compress),
        ("zst", lambda d: __import__("zstandard").ZstdCompressor().compress(d)),
    ],
)
def test_compressed_files(tmp_path, suffix, compress):
    if suffix == "zst":
        pytest.importorskip("zstandard")
    path = write(tmp_path / f"a.txt.{suffix}", compress(TEXT))
    [split] = plan_splits(path, 4, min_split_bytes=1)
    reader = open_split(split, block_size=1000)
    assert list(reader.records()) == reference(TEXT)
    assert reader.bytes_read == len(TEXT)


def test_concatenated_gzip_members(tmp_path):
    path = write(tmp_path / "a.txt.gz", gzip.compress(b"a\nb") + gzip.compress(b"\nc\n"))
    assert list(open_split(InputSplit(path, compression="gz")).records()) == ["a", "b", "c"]


def test_corrupt_compressed_file(tmp_path):
    path = write(tmp_path / "a.txt.gz", gzip.compress(TEXT)[:-30])
    with pytest.raises(InputError, match=rf"cannot read {path}: .*truncated or corrupt"):
        list(open_split(InputSplit(path, compression="gz")).records())
    path = write(tmp_path / "b.txt.xz", b"not xz at all")
    with pytest.raises(InputError, match=rf"{path}"):
        list(open_split(InputSplit(path, compression="xz")).records())


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"},
    )


def test_import_loads_no_optional_package():
    done = run_python(
        "import sys, mrkit.data.readers, mrkit.data.splits; "
        "print(sorted(m for m in ('zstandard', 'fsspec', 'redis', 'boto3') if m in sys.modules))"
    )
    assert done.stdout.strip() == "[]", done.stderr


def test_zst_without_zstandard_names_the_extra(tmp_path):
    path = write(tmp_path / "a.txt.zst", b"\x28\xb5\x2f\xfd whatever")
    done = run_python(
        "import sys; sys.modules['zstandard'] = None\n"  # makes `import zstandard` fail, as if absent
        "from mrkit.data.readers import open_split\nfrom mrkit.model.task import InputSplit\n"
        f"list(open_split(InputSplit({path!r}, compression='zst')).records())"
    )
    assert "MissingExtra: reading .zst input needs the package 'zstandard'" in done.stderr
    assert "pip install 'mrkit[zstd]'" in done.stderr


# -- storage URLs ----------------------------------------------------------------------------------


def test_memory_objects_read_like_files(store):
    data = b"".join(b"object line %d\n" % i for i in range(500)) + b"tail"
    store.put("in/a.txt", data)
    splits = plan_splits(f"{store.url}/in/*.txt", 9, min_split_bytes=1)
    assert len(splits) == 9
    records, total = read_splits(splits, block_size=64)
    assert records == reference(data)
    assert total == len(data)
    batch = next(open_split(splits[3]).batches())
    assert (
        batch.locate(0) == f"{splits[3].describe()}, record 0 (byte {data.index(batch.records[0].encode())})"
    )


def test_compressed_object(store):
    store.put("in/a.jsonl.gz", gzip.compress(b'{"k": 1}\n{"k": 2}\n'))
    [split] = plan_splits(f"{store.url}/in/", 3)
    assert list(open_split(split).records()) == [{"k": 1}, {"k": 2}]


def test_local_storage_url(tmp_path):
    storage = LocalStorage(tmp_path / "root")
    storage.put("d/a.txt", b"x\ny\nz\n")
    splits = [InputSplit(f"{storage.url}#d/a.txt", 0, 3), InputSplit(f"{storage.url}#d/a.txt", 3, 3)]
    assert read_splits(splits)[0] == ["x", "y", "z"]


def test_missing_inputs(tmp_path, store):
    with pytest.raises(InputError, match=rf"input {tmp_path}/gone.txt of split 4 does not exist"):
        list(open_split(InputSplit(str(tmp_path / "gone.txt"), index=4)).records())
    with pytest.raises(InputError, match=r"input memory://.*#nope of split 0 does not exist"):
        list(open_split(InputSplit(f"{store.url}#nope")).records())


class _DroppingFile(io.RawIOBase):
    """Delivers a few bytes, then fails like a dropped connection."""

    def __init__(self, data: bytes) -> None:
        self._data = data[: len(data) // 2]

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if not self._data:
            raise ConnectionResetError("connection reset by peer")
        n = min(len(b), len(self._data), 10)
        b[:n], self._data = self._data[:n], self._data[n:]
        return n


class FlakyStorage(MemoryStorage):
    """A storage backend whose reads break off midway (a real backend, plugged in by URL)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.url = f"flaky://{name}"

    @classmethod
    def from_url(cls, url: str) -> FlakyStorage:
        return cls(url.split("://", 1)[1])

    def open_read(self, key: str, start: int = 0, length: int = -1):
        with super().open_read(key, start, length) as f:
            return io.BufferedReader(_DroppingFile(f.read()), 4)


@pytest.mark.parametrize("name", ["a.txt", "a.txt.gz"])
def test_storage_failures_stay_retryable(monkeypatch, name):
    """A dropped connection is not a bad input: it surfaces as itself (retried), not as InputError."""
    monkeypatch.setitem(mrkit.storage.BACKENDS, "flaky", f"{__name__}:FlakyStorage")
    storage = FlakyStorage(f"flaky-{uuid.uuid4().hex[:8]}")
    try:
        data = b"some line\n" * 100
        storage.put(name, gzip.compress(data) if name.endswith(".gz") else data)
        [split] = plan_splits(f"flaky://{storage.name}/{name}", 1)
        with pytest.raises(ConnectionResetError):
            list(open_split(split).records())
    finally:
        storage.drop()


# -- pickle ----------------------------------------------------------------------------------------


def test_pickled_records(store):
    records = [("k", i) for i in range(70_000)] + [None, {"x": b"\x00"}]
    blob = pickle.dumps(records, protocol=5)
    store.put("job/input-0", blob)
    split = InputSplit(
        f"{store.url}#job/input-0", format="pickle", options={"sha256": hashlib.sha256(blob).hexdigest()}
    )
    reader = open_split(split)
    batches = list(reader.batches())
    assert [r for b in batches for r in b.records] == records
    assert [b.first for b in batches] == [0, 65536]
    assert batches[1].locate(3) == f"{store.url}#job/input-0, record 65539"
    assert (reader.records_read, reader.bytes_read) == (len(records), len(blob))


def test_pickle_digest_mismatch_is_refused_before_unpickling(store):
    store.put("evil", pickle.dumps([1, 2]))
    split = InputSplit(f"{store.url}#evil", format="pickle", options={"sha256": "0" * 64})
    with pytest.raises(
        InputError, match=rf"refusing to unpickle {store.url}#evil: its SHA-256 is [0-9a-f]{{64}}"
    ):
        list(open_split(split).records())


def test_pickle_must_hold_a_list(store):
    store.put("d", pickle.dumps({"a": 1}))
    with pytest.raises(InputError, match="holds a dict, not a list of records"):
        list(open_split(InputSplit(f"{store.url}#d", format="pickle")).records())
    store.put("junk", b"\x80\x05junk")
    with pytest.raises(InputError, match="cannot unpickle the records of"):
        list(open_split(InputSplit(f"{store.url}#junk", format="pickle")).records())


# -- configuration and lifetime -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"format": "parquet"}, "split format must be one of text, jsonl, csv, pickle, not 'parquet'"),
        ({"compression": "lz4"}, "split compression must be one of '', 'gz', 'bz2', 'xz', 'zst', not 'lz4'"),
        ({"options": {"errors": "ignore"}}, "errors must be one of strict, replace, skip, not 'ignore'"),
        ({"options": {"encoding": "utf-16"}}, "encoding 'utf-16' is not ASCII-compatible"),
        ({"options": {"encoding": "klingon"}}, "unknown encoding 'klingon'"),
        ({"uri": "memory://x"}, "names a storage URL but no '#key'"),
    ],
)
def test_bad_split_fields(fields, message):
    with pytest.raises(ConfigError, match=message):
        open_split(InputSplit(**{"uri": "/x.txt", **fields}))


def test_partial_iteration_and_close_release_the_file(tmp_path):
    path = write(tmp_path / "a.txt", b"a\n" * 10_000)
    with open_split(InputSplit(path), block_size=64) as reader:
        it = reader.records()
        assert next(it) == "a"
    # filterwarnings=error turns an unclosed file's ResourceWarning into a failure
    reader = open_split(InputSplit(path), block_size=64)
    assert next(reader.records()) == "a"
