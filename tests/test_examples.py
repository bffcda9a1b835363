"""The examples in examples/, end to end: each run through ``mrkit.run`` on small generated data, on the
``inline`` and ``processes`` executors, must equal :func:`mrkit.model.reference.reference`; and the
commands examples/README.md shows (``mrkit run ...``, ``python examples/...``) must work.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import mrkit
from mrkit.model.reference import reference
from mrkit.tools.corpus import generate_text, generate_uservisits

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

# (executor, workers): the in-process executor and a two-process pool.
EXECUTORS = [pytest.param("inline", None, id="inline"), pytest.param("processes", 2, id="processes")]


def load_example(name: str) -> ModuleType:
    """Import examples/<name>.py (examples/ is not a package) under a name of its own."""
    module_name = f"mrkit_example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # so that mrkit ships the job's classes by value
    spec.loader.exec_module(module)
    return module


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def text_records(paths: list[str]) -> list[str]:
    """The records mrkit reads from text files: lines split at "\\n", without it."""
    records: list[str] = []
    for path in paths:
        with open(path, encoding="utf-8", newline="") as f:
            data = f.read()
        records.extend(data.split("\n")[:-1] if data.endswith("\n") else data.split("\n"))
    return records


def assert_published(out: Path, n_reduce: int) -> None:
    names = sorted(os.listdir(out))
    assert names == ["_SUCCESS", *(f"part-{i:05d}" for i in range(n_reduce))], names


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """About 0.5 MB of English-like text in 4 files."""
    return generate_text(tmp_path_factory.mktemp("texts"), size_mb=0.5, files=4, seed=3)


@pytest.fixture(scope="module")
def wordcount_expected(texts: list[str]) -> dict[str, int]:
    expected = dict(reference(load_example("wordcount").WordCount(), text_records(texts)))
    assert len(expected) > 5000 and expected["the"] > 1000  # the data is what the test means it to be
    return expected


# -- wordcount -------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["WordCount", "job", "WordCountSplit", "WordCountInMapper"])
@pytest.mark.parametrize(("executor", "workers"), EXECUTORS)
def test_wordcount_variants_match_reference(
    texts: list[str],
    wordcount_expected: dict[str, int],
    variant: str,
    executor: str,
    workers: int | None,
    tmp_path: Path,
) -> None:
    wordcount = load_example("wordcount")
    job = wordcount.JOBS[variant]
    # Every variant equals the reference run of itself, and all equal the class form's reference.
    assert dict(reference(job, text_records(texts))) == wordcount_expected
    out = tmp_path / "out"
    result = mrkit.run(
        job, texts, output=out, n_map=6, n_reduce=3, executor=executor, workers=workers, quiet=True
    )
    assert_published(out, 3)
    pairs = list(mrkit.read_output(out))
    assert len(pairs) == len(wordcount_expected)  # each word exactly once
    assert dict(pairs) == wordcount_expected
    assert result.counters["map.records_in"] == len(text_records(texts))


def test_wordcount_function_form_in_memory(texts: list[str], wordcount_expected: dict[str, int]) -> None:
    job = load_example("wordcount").job
    assert dict(mrkit.run(job, texts, executor="inline", quiet=True)) == wordcount_expected


def test_wordcount_cli_and_script(
    texts: list[str], wordcount_expected: dict[str, int], tmp_path: Path
) -> None:
    out = tmp_path / "cli-out"
    proc = run_cli(
        "-m",
        "mrkit",
        "run",
        "examples/wordcount.py:WordCount",
        *texts,
        "-M",
        "2",
        "-o",
        str(out),
        "--executor",
        "processes",
        "--workers",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    assert_published(out, 2)
    assert dict(mrkit.read_output(out)) == wordcount_expected

    script_out = tmp_path / "script-out"
    proc = run_cli(
        "examples/wordcount.py",
        *texts,
        "-o",
        str(script_out),
        "--job",
        "WordCountSplit",
        "--executor",
        "inline",
    )
    assert proc.returncode == 0, proc.stderr
    assert (script_out / "_SUCCESS").exists()
    assert dict(mrkit.read_output(script_out)) == wordcount_expected


# -- inverted index --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def documents(texts: list[str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same ~1,500 documents (lines of two text files) as {doc, text} JSON lines and as ID<TAB>text."""
    folder = tmp_path_factory.mktemp("docs")
    jsonl, tsv = folder / "docs.jsonl", folder / "docs.txt"
    lines = text_records(texts[:2])
    with open(jsonl, "w", encoding="utf-8") as f:
        for i, line in enumerate(lines):
            f.write(json.dumps({"doc": f"d{i:05d}", "text": line}) + "\n")
    with open(tsv, "w", encoding="utf-8") as f:
        for i, line in enumerate(lines):
            f.write(f"d{i:05d}\t{line}\n")
    return jsonl, tsv


@pytest.mark.parametrize(("executor", "workers"), EXECUTORS)
def test_inverted_index_matches_reference(
    documents: tuple[Path, Path], executor: str, workers: int | None, tmp_path: Path
) -> None:
    example = load_example("inverted_index")
    jsonl, tsv = documents
    with open(jsonl, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    expected = dict(reference(example.InvertedIndex(), records))
    assert len(expected) > 3000
    assert all(docs == sorted(set(docs)) for docs in expected.values())
    assert len(expected["the"]) > len(records) // 2
    out = tmp_path / "out"
    mrkit.run(
        example.InvertedIndex(),
        str(jsonl),
        output=out,
        n_map=3,
        n_reduce=2,
        executor=executor,
        workers=workers,
        quiet=True,
    )
    assert_published(out, 2)
    assert dict(mrkit.read_output(out)) == expected
    # The ID<TAB>text form of the same documents gives the same index.
    assert (
        dict(
            mrkit.run(
                example.InvertedIndex(), str(tsv), n_map=2, executor=executor, workers=workers, quiet=True
            )
        )
        == expected
    )


# -- Monte Carlo pi --------------------------------------------------------------------------------

PI_RECORDS = [[i, 20_000] for i in range(8)]


@pytest.mark.parametrize(("executor", "workers"), EXECUTORS)
def test_montecarlo_pi_matches_reference_for_any_split(executor: str, workers: int | None) -> None:
    example = load_example("montecarlo_pi")
    job = example.MonteCarloPi(params={"seed": 1})
    expected = dict(reference(job, PI_RECORDS))
    assert set(expected) == {"inside", "pi", "points"} and expected["points"] == 160_000
    assert expected["pi"] == 4 * expected["inside"] / 160_000 and abs(expected["pi"] - math.pi) < 0.05
    for n_map in (1, 3, 8):  # the same points however the batches are dealt out to map tasks
        got = dict(
            mrkit.run(
                job,
                mrkit.Records(PI_RECORDS),
                n_map=n_map,
                n_reduce=1,
                executor=executor,
                workers=workers,
                quiet=True,
            )
        )
        assert got == expected
        assert all(type(v) is int for k, v in got.items() if k != "pi") and type(got["pi"]) is float
    other_seed = dict(reference(example.MonteCarloPi(params={"seed": 2}), PI_RECORDS))
    assert other_seed["inside"] != expected["inside"]


def test_montecarlo_pi_refuses_bare_numbers() -> None:
    job = load_example("montecarlo_pi").MonteCarloPi()
    with pytest.raises(ValueError, match=r"\[index, points\]"):
        list(job.mapper(100_000))


def test_montecarlo_pi_job_file(tmp_path: Path) -> None:
    # A copy, so the job file's relative output (../out/montecarlo_pi) lands in tmp_path, not the repo.
    folder = tmp_path / "examples"
    folder.mkdir()
    for name in ("montecarlo_pi.json", "montecarlo_pi.py"):
        shutil.copy(EXAMPLES / name, folder / name)
    spec = json.loads((EXAMPLES / "montecarlo_pi.json").read_text())
    assert spec["job"] == "montecarlo_pi.py:MonteCarloPi" and spec["n_reduce"] == 1
    proc = run_cli("-m", "mrkit", "run", str(folder / "montecarlo_pi.json"), "--workers", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out" / "montecarlo_pi"
    assert_published(out, 1)
    got = dict(mrkit.read_output(out))
    job = load_example("montecarlo_pi").MonteCarloPi(params=spec["params"])
    assert got == dict(reference(job, spec["inputs"]))
    assert got["points"] == sum(n for _, n in spec["inputs"])
    assert isinstance(got["pi"], float) and abs(got["pi"] - math.pi) < 0.01


# -- ad revenue ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uservisits(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """About 4,000 uservisits rows in 2 CSV files."""
    return generate_uservisits(tmp_path_factory.mktemp("uservisits"), size_mb=0.6, files=2, seed=5)


def csv_rows(paths: list[str]) -> list[list[str]]:
    rows: list[list[str]] = []
    for path in paths:
        with open(path, encoding="utf-8", newline="") as f:
            rows.extend(csv.reader(f))
    return rows


def assert_close(got: dict[str, float], expected: dict[str, float]) -> None:
    assert got.keys() == expected.keys()
    bad = {
        k: (got[k], v) for k, v in expected.items() if not math.isclose(got[k], v, rel_tol=1e-9, abs_tol=1e-6)
    }
    assert not bad, list(bad.items())[:5]


@pytest.mark.parametrize(("executor", "workers"), EXECUTORS)
def test_adrevenue_matches_reference(
    uservisits: list[str], executor: str, workers: int | None, tmp_path: Path
) -> None:
    example = load_example("adrevenue")
    rows = csv_rows(uservisits)
    assert len(rows) > 3000
    expected = dict(reference(example.AdRevenue(), rows))
    assert len(expected) > 1000 and all(isinstance(v, float) for v in expected.values())
    out = tmp_path / "out"
    result = mrkit.run(
        example.AdRevenue(),
        uservisits,
        output=out,
        n_map=4,
        n_reduce=4,
        executor=executor,
        workers=workers,
        quiet=True,
    )
    assert_published(out, 4)
    assert_close(dict(mrkit.read_output(out)), expected)
    assert result.counters["map.records_in"] == len(rows)
    # The partitioner put every URL in the part its host hashes to, so each host is in one part.
    for i in range(4):
        with open(out / f"part-{i:05d}", encoding="utf-8") as f:
            urls = [json.loads(line.split("\t", 1)[0]) for line in f]
        assert urls and all(example.partition_by_host(url, 4) == i for url in urls)
    # The same rows read as text lines (the mapper splits them itself) give the same totals.
    lines = text_records(uservisits)
    got = dict(
        mrkit.run(
            example.AdRevenue(), mrkit.Records(lines), n_map=3, executor=executor, workers=workers, quiet=True
        )
    )
    assert_close(got, expected)


def test_adrevenue_partitioner_is_stable_and_in_range() -> None:
    example = load_example("adrevenue")
    urls = ["www.a.com/x.html", "www.a.com/y/z.html", "b.org/", "c.net/blog/q-1.html"]
    for n in (1, 2, 7):
        bins = [example.partition_by_host(u, n) for u in urls]
        assert all(0 <= b < n for b in bins)
        assert bins[0] == bins[1]  # same host, same bin
    assert example.partition_by_host("www.a.com/x.html", 1000) == 92  # crc32, not the salted hash()


@pytest.mark.parametrize(("executor", "workers"), EXECUTORS)
def test_pagerank_iterates_in_memory_and_matches_plain_python(executor: str, workers: int | None) -> None:
    """Ten iterations, each one mrkit run fed the previous in-memory result (typed pairs, never text),
    agree with the same iterations in plain Python; a loose tolerance stops the loop early."""
    pagerank = load_example("pagerank")
    graph = pagerank.generate_graph(300)
    ranks, ran = pagerank.pagerank(graph, iterations=10, tolerance=0.0, executor=executor, workers=workers)
    assert ran == 10
    expected = pagerank.reference(graph, 10)
    assert ranks.keys() == expected.keys()
    assert all(math.isclose(ranks[n], expected[n], rel_tol=1e-12, abs_tol=1e-15) for n in graph)
    assert math.isclose(sum(ranks.values()), 1.0, rel_tol=1e-9)
    _ranks, early = pagerank.pagerank(
        graph, iterations=10, tolerance=0.05, executor=executor, workers=workers
    )
    assert early < 10


def join_oracle(
    rankings: list[str], uservisits: list[str], date_from: str, date_to: str
) -> dict[str, tuple[float, float]]:
    """The web-analytics join query in plain Python: per source IP, revenue and average page rank."""
    ranks = {}
    for path in rankings:
        with open(path, encoding="ascii") as f:
            for line in f:
                url, rank, _ = line.rstrip("\n").split(",")
                ranks[url] = int(rank)
    totals: dict[str, list[float]] = {}
    for path in uservisits:
        with open(path, encoding="ascii") as f:
            for line in f:
                ip, url, date, revenue = line.split(",", 4)[:4]
                if date_from <= date <= date_to and url in ranks:
                    t = totals.setdefault(ip, [0.0, 0.0, 0])
                    t[0] += float(revenue)
                    t[1] += ranks[url]
                    t[2] += 1
    return {ip: (t[0], t[1] / t[2]) for ip, t in totals.items()}


@pytest.mark.parametrize(("executor", "workers"), EXECUTORS)
def test_the_web_analytics_join_matches_plain_python(
    executor: str, workers: int | None, tmp_path: Path
) -> None:
    """Three steps, two inputs each with its own mapper: the top IPs by revenue in a date range, with
    their average page rank, as a plain-Python join computes them."""
    from mrkit.tools.corpus import generate_rankings

    example = load_example("web_analytics_join")
    uservisits = generate_uservisits(tmp_path / "uv", size_mb=1, files=2)
    rankings = generate_rankings(tmp_path / "rk", uservisits_mb=1, files=2)
    window = ("1975-01-01", "1985-12-31")
    result = example.run(
        str(tmp_path / "rk"),
        str(tmp_path / "uv"),
        *window,
        top=5,
        executor=executor,
        workers=workers,
        quiet=True,
    )
    oracle = join_oracle(rankings, uservisits, *window)
    expected = sorted(oracle.items(), key=lambda item: -item[1][0])[:5]
    got = list(result)
    assert [ip for ip, _ in got] == [ip for ip, _ in expected]
    for (_, (revenue, rank)), (_, (want_revenue, want_rank)) in zip(got, expected, strict=True):
        assert math.isclose(revenue, want_revenue, rel_tol=1e-9) and math.isclose(
            rank, want_rank, rel_tol=1e-9
        )
    assert result.counters["step1.map.tasks"] >= 2 and result.counters["step3.reduce.tasks"] == 1
