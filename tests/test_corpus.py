"""Tests for mrkit.tools.corpus: determinism, sizes, formats and the shape of the distributions."""

from __future__ import annotations

import collections
import csv
import hashlib
import re
from pathlib import Path

import pytest

from mrkit.errors import ConfigError
from mrkit.tools.corpus import generate_text, generate_uservisits

WORD = re.compile(r"[a-z0-9']+")


def _digest(paths: list[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode())
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def test_text_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    a = generate_text(tmp_path / "a", size_mb=0.3, files=3, seed=5)
    b = generate_text(tmp_path / "b", size_mb=0.3, files=3, seed=5)
    c = generate_text(tmp_path / "c", size_mb=0.3, files=3, seed=6)
    assert [Path(p).name for p in a] == ["text-00000.txt", "text-00001.txt", "text-00002.txt"]
    assert _digest(a) == _digest(b)
    assert all(Path(x).read_bytes() != Path(y).read_bytes() for x, y in zip(a, c, strict=True))


def test_uservisits_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    a = generate_uservisits(tmp_path / "a", size_mb=0.3, files=2, seed=5)
    b = generate_uservisits(tmp_path / "b", size_mb=0.3, files=2, seed=5)
    c = generate_uservisits(tmp_path / "c", size_mb=0.3, files=2, seed=6)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_output_is_pinned(tmp_path: Path) -> None:
    # Same bytes on any machine and Python >= 3.10: these digests must only change on purpose (a
    # change to the generators), never because of the platform or interpreter version (checked on
    # CPython 3.10, 3.11, 3.12 and 3.13).
    text = generate_text(tmp_path / "t", size_mb=0.2, files=2, seed=7)
    visits = generate_uservisits(tmp_path / "v.csv", size_mb=0.2, seed=7)
    assert _digest(text) == TEXT_DIGEST
    assert _digest(visits) == VISITS_DIGEST


TEXT_DIGEST = "7094046fb87edea17c49cb8229a92b58af5d78a612df44969929825de4561adf"
VISITS_DIGEST = "1505c2572ad67239b3b4a490aa3e4b1172d7d776d47fdbd54c0d8d2b87a3ceb9"


@pytest.mark.parametrize("size_mb, files", [(1.0, 4), (0.5, 1), (2.0, 8)])
def test_text_sizes(tmp_path: Path, size_mb: float, files: int) -> None:
    paths = generate_text(tmp_path, size_mb=size_mb, files=files)
    sizes = [Path(p).stat().st_size for p in paths]
    assert len(paths) == files
    assert sum(sizes) == pytest.approx(size_mb * 1_000_000, rel=0.05)
    for size in sizes:
        assert size == pytest.approx(size_mb * 1_000_000 / files, rel=0.05)
    assert all(Path(p).read_bytes().endswith(b"\n") for p in paths)


@pytest.mark.parametrize("size_mb, files", [(1.0, 1), (1.0, 3)])
def test_uservisits_sizes(tmp_path: Path, size_mb: float, files: int) -> None:
    paths = generate_uservisits(tmp_path / "visits", size_mb=size_mb, files=files)
    sizes = [Path(p).stat().st_size for p in paths]
    assert [Path(p).name for p in paths][0] == "uservisits-00000.csv"
    assert sum(sizes) == pytest.approx(size_mb * 1_000_000, rel=0.05)


def test_text_shape(tmp_path: Path) -> None:
    paths = generate_text(tmp_path, size_mb=2.0, files=2, seed=1)
    counts: collections.Counter[str] = collections.Counter()
    lengths = []
    raw = b""
    for p in paths:
        data = Path(p).read_bytes()
        raw += data
        for line in data.decode("ascii").splitlines():
            lengths.append(len(line))
            counts.update(WORD.findall(line.lower()))
    total = sum(counts.values())
    top_word, top_count = counts.most_common(1)[0]
    # Zipf head: the most common word is a few percent of all words, like "the" in English.
    assert top_word == "the"
    assert 0.03 < top_count / total < 0.12
    # The next ones fall off roughly like 1/rank.
    ranked = [n for _, n in counts.most_common(10)]
    assert ranked[0] > 1.3 * ranked[1] and ranked[1] > ranked[9] * 2
    assert len(counts) > 15_000
    assert any("'" in w for w in counts) and any(w.isdigit() for w in counts)
    # Capitals, punctuation, empty lines and line lengths up to ~200 characters.
    assert re.search(rb"[A-Z]", raw) and re.search(rb"[,.;:!?]", raw)
    assert 0.02 < lengths.count(0) / len(lengths) < 0.12
    assert max(lengths) <= 210 and sum(lengths) / len(lengths) > 40


def test_uservisits_rows_parse(tmp_path: Path) -> None:
    [path] = generate_uservisits(tmp_path / "sub" / "visits.csv", size_mb=1.0, seed=3)
    assert path.endswith("visits.csv")
    urls: collections.Counter[str] = collections.Counter()
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    for ip, url, date, revenue, agent, country, language, search, duration in rows:
        assert len(ip.split(".")) == 4 and all(0 <= int(x) <= 255 for x in ip.split("."))
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", date) and "1970" <= date[:4] <= "2010"
        assert re.fullmatch(r"\d+\.\d{2,6}", revenue) and 0 <= float(revenue) < 1000
        assert agent and re.fullmatch(r"[A-Z]{3}", country) and 2 <= len(language) <= 6
        assert search.isalpha() and search.islower() and len(search) <= 32
        assert 1 <= int(duration) <= 100
        urls[url] += 1
    # ~2,600 distinct URLs per MB, with a popular head.
    assert 2400 <= len(urls) <= 2600
    assert urls.most_common(1)[0][1] / len(rows) > 0.02
    # No quoting needed: splitting on commas gives the same 9 fields.
    with open(path) as f:
        assert all(len(line.split(",")) == 9 for line in f)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="files"):
        generate_text(tmp_path, size_mb=1, files=0)
    with pytest.raises(ConfigError, match="size_mb"):
        generate_uservisits(tmp_path, size_mb=-1)
    with pytest.raises(ConfigError, match="folder"):
        generate_uservisits(tmp_path / "x.csv", size_mb=1, files=2)


def test_zero_size_writes_empty_files(tmp_path: Path) -> None:
    paths = generate_text(tmp_path, size_mb=0, files=2)
    assert [Path(p).stat().st_size for p in paths] == [0, 0]
