"""The ``tsv``/``jsonl`` reader parses blocks of lines in one ``json.loads`` call; it must read back
exactly what the writer wrote, whatever the block boundaries, and still name a bad line."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrkit.data import output
from mrkit.data.output import read_pairs, write_pairs
from mrkit.errors import InputError

# Text with the characters that matter here: tab and newline (escaped by the writer), U+2028/U+0085
# (line breaks to str.splitlines, plain text to JSON), quotes and backslashes.
TEXT = st.text(alphabet=st.sampled_from(list('ab\t\n\u2028\u0085"\\é ')), max_size=6)
SCALAR = st.one_of(
    TEXT, st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none()
)
KEY = st.one_of(TEXT, st.integers(), st.tuples(TEXT, st.integers()))
VALUE = st.one_of(SCALAR, st.lists(SCALAR, max_size=3), st.dictionaries(TEXT, SCALAR, max_size=2))


def round_trip(pairs, fmt: str, block: int) -> list:
    buf = io.BytesIO()
    assert write_pairs(buf, pairs, fmt) == len(pairs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(output, "_READ_BLOCK", block)
        return list(read_pairs(io.BytesIO(buf.getvalue()), fmt, "part-00000"))


@settings(max_examples=150, deadline=None)
@given(pairs=st.lists(st.tuples(KEY, VALUE), max_size=30), block=st.sampled_from([1, 5, 64, 1 << 22]))
@pytest.mark.parametrize("fmt", ["tsv", "jsonl"])
def test_what_is_written_is_read_back_whatever_the_block_size(pairs, block, fmt):
    got = round_trip(pairs, fmt, block)
    assert len(got) == len(pairs)
    for (k1, v1), (k2, v2) in zip(got, pairs, strict=True):
        assert k1 == k2 and type(k1) is type(k2)
        assert v1 == v2 and type(v1) is type(v2)


@pytest.mark.parametrize("fmt", ["tsv", "jsonl"])
@pytest.mark.parametrize("block", [3, 1 << 22])
def test_a_bad_line_is_named_by_its_number(fmt, block, monkeypatch):
    good = io.BytesIO()
    write_pairs(good, [("a", 1), ("b", 2)], fmt)
    data = good.getvalue() + b'"x"\tnot json\n' + good.getvalue()
    monkeypatch.setattr(output, "_READ_BLOCK", block)
    with pytest.raises(InputError, match=rf"part-00000 line 3 is not valid {fmt} output"):
        list(read_pairs(io.BytesIO(data), fmt, "part-00000"))


@pytest.mark.parametrize(
    "line",
    [
        b'"a",1',  # no tab
        b'"a"\t1\t2',  # two tabs
        b'["a",1]',
        b'"a"\t1,2',  # one tab, but a third field after a comma outside any string
        b'"a",0\t1',
        b'"a"\t',  # an empty field
        b"\t1",
    ],
)
def test_a_tsv_line_without_exactly_one_key_and_one_value_is_refused(line, monkeypatch):
    data = b'"ok"\t0\n' + line + b"\n"
    for block in (4, 1 << 22):
        monkeypatch.setattr(output, "_READ_BLOCK", block)
        with pytest.raises(InputError, match="part-00000 line 2 is not valid tsv output"):
            list(read_pairs(io.BytesIO(data), "tsv", "part-00000"))


def test_blank_lines_are_skipped_and_bad_bytes_named():
    assert list(read_pairs(io.BytesIO(b'"a"\t1\n\n"b"\t2\n'), "tsv")) == [("a", 1), ("b", 2)]
    bad = b'"a"\t1\n"b\xff"\t2\n'
    message = r"part-00001 line 2 is not valid tsv output \(not UTF-8: byte\(s\) 0xff"
    with pytest.raises(InputError, match=message):
        list(read_pairs(io.BytesIO(bad), "tsv", "part-00001"))


ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True)
PLAIN = st.one_of(st.text(max_size=8), st.integers(), ANY_FLOAT, st.booleans(), st.none())
PLAIN_KEY = st.one_of(st.text(max_size=8), st.integers(), st.booleans())


@settings(max_examples=300, deadline=None)
@given(
    pairs=st.lists(
        st.tuples(st.one_of(st.text(max_size=8), st.integers(), st.booleans()), PLAIN), max_size=20
    )
)
@pytest.mark.parametrize("fmt", ["tsv", "jsonl"])
def test_the_fast_path_writes_the_bytes_the_json_encoder_writes(pairs, fmt):
    """Common pairs skip the encoder's machinery; their bytes must be exactly the encoder's."""
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    if fmt == "tsv":
        expected = "".join(f"{encode(k)}\t{encode(v)}\n" for k, v in pairs)
    else:
        expected = "".join(encode([k, v]) + "\n" for k, v in pairs)
    buf = io.BytesIO()
    write_pairs(buf, pairs, fmt)
    assert buf.getvalue() == expected.encode()
