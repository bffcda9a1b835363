"""Issue 11's benchmarks: a two-step job against two jobs, and ``sort_output`` against no sort.

    python benchmarks/pipeline_bench.py                          # 100 MB, 3 alternating rounds
    python benchmarks/pipeline_bench.py --size-mb 5 --rounds 1   # smoke test

Each side is a whole fresh process that runs, writes its output and is read back (as users run it),
on the ``processes`` executor with ``--workers`` workers; the two sides of a race alternate, and
each line prints the medians and their ratio.

* **two-step** (target <= 0.9x): word count then the top 100 words as one job of two
  ``mrkit.Step``s (``examples/top_words.py``'s ``TopWords``), against the same two steps run as
  two jobs: job 1 publishes its counts as TSV, job 2 reads that output back (``input_format="text"``,
  one ``json.loads`` per field) and keeps the top 100. Both must give the same 100 words.
* **join** (target <= 2.0x): ``examples/web_analytics_join.py`` (join on URL with a mapper per input,
  aggregate per source IP, top 10 by revenue; three steps) over ``--size-mb`` MB of uservisits and
  their rankings, against a hand-written ``multiprocessing`` program (the rankings read into a dict
  in the parent, a forked ``Pool`` aggregates each uservisits file, the parent merges and ranks).
  DuckDB running the same SQL is reported as a reference point when it is installed (``pip install
  duckdb``; not a dependency). The three must agree on the top 10.
* **sort-output** (target <= 1.5x): ``examples/terasort.py``'s ``TeraSort`` over ``--size-mb`` MB of
  100-byte records with ``sort_output=True`` (sampled range partitions, every part written sorted),
  against the same job with hash partitions. The sorted side's output is checked with the example's
  checker (globally sorted, every record there).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import userpath  # noqa: E402
from userpath import cached_inputs, timed_run  # noqa: E402

ROOT = HERE.parent
TARGETS = {"two-step": 0.9, "join": 2.0, "sort-output": 1.5}
WINDOW = ("1975-01-01", "1985-12-31")

JOIN_MRKIT = """
import sys
sys.path.insert(0, {examples!r})
from web_analytics_join import run

if __name__ == "__main__":
    rankings, uservisits, tsv = sys.argv[1:]
    result = run(rankings, uservisits, {lo!r}, {hi!r}, top=10, quiet=True, workers={workers})
    with open(tsv, "w") as f:
        for ip, (revenue, rank) in result:
            f.write(f"{{ip}}\\t{{revenue!r}}\\n")
"""

JOIN_POOL = """
import glob, heapq, os, sys
from multiprocessing import Pool

RANKS = {{}}


def visits(path):
    totals = {{}}
    get, ranks = totals.get, RANKS
    with open(path, encoding="ascii") as f:
        for line in f:
            ip, url, date, revenue = line.split(",", 4)[:4]
            if {lo!r} <= date <= {hi!r}:
                rank = ranks.get(url)
                if rank is not None:
                    t = get(ip)
                    if t is None:
                        totals[ip] = [float(revenue), rank, 1]
                    else:
                        t[0] += float(revenue)
                        t[1] += rank
                        t[2] += 1
    return totals


if __name__ == "__main__":
    rankings, uservisits, tsv = sys.argv[1:]
    for path in sorted(glob.glob(os.path.join(rankings, "*.csv"))):
        with open(path, encoding="ascii") as f:
            for line in f:
                url, rank, _ = line.split(",")
                RANKS[url] = int(rank)
    merged = {{}}
    with Pool({workers}) as pool:  # forked after RANKS is filled: the workers share it
        for part in pool.imap_unordered(visits, sorted(glob.glob(os.path.join(uservisits, "*.csv")))):
            for ip, (r, k, n) in part.items():
                t = merged.get(ip)
                if t is None:
                    merged[ip] = [r, k, n]
                else:
                    t[0] += r
                    t[1] += k
                    t[2] += n
    with open(tsv, "w") as f:
        for ip, t in heapq.nlargest(10, merged.items(), key=lambda item: item[1][0]):
            f.write(f"{{ip}}\\t{{t[0]!r}}\\n")
"""

JOIN_DUCKDB = """
import os, sys
import duckdb

VISITS = ("{{'ip': 'VARCHAR', 'url': 'VARCHAR', 'date': 'VARCHAR', 'revenue': 'DOUBLE', "
          "'agent': 'VARCHAR', 'country': 'VARCHAR', 'language': 'VARCHAR', 'word': 'VARCHAR', "
          "'duration': 'INTEGER'}}")
RANKINGS = "{{'url': 'VARCHAR', 'rank': 'INTEGER', 'duration': 'INTEGER'}}"

if __name__ == "__main__":
    rankings, uservisits, tsv = sys.argv[1:]
    uv, rk = os.path.join(uservisits, "*.csv"), os.path.join(rankings, "*.csv")
    query = (
        "SELECT v.ip, SUM(v.revenue) AS total, AVG(r.rank) "
        f"FROM read_csv('{{uv}}', header=false, columns={{VISITS}}) v "
        f"JOIN read_csv('{{rk}}', header=false, columns={{RANKINGS}}) r ON r.url = v.url "
        "WHERE v.date BETWEEN {lo!r} AND {hi!r} GROUP BY v.ip ORDER BY total DESC LIMIT 10"
    )
    with open(tsv, "w") as f:
        for ip, total, _rank in duckdb.sql(query).fetchall():
            f.write(f"{{ip}}\\t{{total!r}}\\n")
"""

TWO_STEP = """
import sys
sys.path.insert(0, {examples!r})
import mrkit
from top_words import TopWords

if __name__ == "__main__":
    *paths, out, tsv = sys.argv[1:]
    job = TopWords(params={{"top": 100}})
    mrkit.run(job, paths, output=out, overwrite=True, quiet=True, workers={workers}, input_format="text")
    with open(tsv, "w") as f:
        for word, count in mrkit.read_output(out):
            f.write(f"{{word}}\\t{{count}}\\n")
"""

TWO_JOBS = """
import json, sys
sys.path.insert(0, {examples!r})
import mrkit
from top_words import TopWords

steps = TopWords(params={{"top": 100}}).steps()  # the top reducer reads its own params
count = mrkit.Job(mapper=steps[0].mapper, combiner=steps[0].combiner, reducer=steps[0].reducer, name="count")


def parsed(line):
    word, n = line.split("\\t")
    yield from steps[1].mapper((json.loads(word), json.loads(n)))


top = mrkit.Job(mapper=parsed, reducer=steps[1].reducer, name="top")

if __name__ == "__main__":
    *paths, out, tsv = sys.argv[1:]
    mrkit.run(count, paths, output=out + "-counts", overwrite=True, quiet=True, workers={workers},
              input_format="text")
    mrkit.run(top, [out + "-counts"], output=out, overwrite=True, quiet=True, workers={workers}, n_reduce=1,
              input_format="text")
    with open(tsv, "w") as f:
        for word, count in mrkit.read_output(out):
            f.write(f"{{word}}\\t{{count}}\\n")
"""

TERASORT = """
import sys
sys.path.insert(0, {examples!r})
import mrkit
from terasort import TeraSort

if __name__ == "__main__":
    *paths, out, sort = sys.argv[1:]
    options = dict(overwrite=True, quiet=True, workers={workers}, n_reduce={workers}, input_format="text")
    mrkit.run(TeraSort(), paths, output=out, sort_output=sort == "sorted", **options)
"""


def race(label: str, rounds: int, sides: dict[str, list[str]]) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(rounds):
        for name in list(sides) if r % 2 == 0 else list(sides)[::-1]:
            times[name].append(timed_run(sides[name]))
    return times


def two_step_race(args: argparse.Namespace, tmp: Path, examples: str, report: dict[str, Any]) -> bool:
    """A two-step job against the same steps as two jobs (publish and re-read between)."""
    paths = cached_inputs(args.data_dir, "text", args.size_mb)
    scripts = {}
    for name, source in (("two-step", TWO_STEP), ("two-jobs", TWO_JOBS)):
        scripts[name] = tmp / f"{name.replace('-', '_')}.py"
        scripts[name].write_text(source.format(examples=examples, workers=args.workers))
    sides = {
        name: [sys.executable, str(script), *paths, str(tmp / f"{name}-out"), str(tmp / f"{name}.tsv")]
        for name, script in scripts.items()
    }
    times = race("two-step", args.rounds, sides)
    same = userpath.read_tsv(tmp / "two-step.tsv") == userpath.read_tsv(tmp / "two-jobs.tsv")
    med = {name: statistics.median(ts) for name, ts in times.items()}
    ratio = med["two-step"] / med["two-jobs"]
    passed = same and ratio <= TARGETS["two-step"]
    report["two-step"] = {"seconds": times, "ratio": ratio, "same": same}
    print(
        f"  two-step top 100   one job {med['two-step']:6.2f}s  two jobs {med['two-jobs']:6.2f}s  "
        f"ratio {ratio:4.2f} (<= 0.9)  {'same output' if same else 'DIFFERENT OUTPUT'}  "
        f"{'PASS' if passed else 'MISS'}"
    )
    return passed


def join_race(args: argparse.Namespace, tmp: Path, examples: str, report: dict[str, Any]) -> bool:
    """The join query against a multiprocessing program (and DuckDB when installed)."""
    from mrkit.tools.corpus import generate_rankings, generate_uservisits

    folder = args.data_dir / f"join-{args.size_mb:g}mb"
    if not (folder / ".complete").exists():
        generate_uservisits(folder / "uservisits", size_mb=args.size_mb, files=8)
        generate_rankings(folder / "rankings", uservisits_mb=args.size_mb, files=2)
        (folder / ".complete").write_text("1")
    sides = {}
    for name, source in (("mrkit", JOIN_MRKIT), ("pool", JOIN_POOL), ("duckdb", JOIN_DUCKDB)):
        if name == "duckdb" and importlib.util.find_spec("duckdb") is None:
            continue
        script = tmp / f"join_{name}.py"
        script.write_text(source.format(examples=examples, workers=args.workers, lo=WINDOW[0], hi=WINDOW[1]))
        tsv = tmp / f"join-{name}.tsv"
        sides[name] = [
            sys.executable,
            str(script),
            str(folder / "rankings"),
            str(folder / "uservisits"),
            str(tsv),
        ]
    times = race("join", args.rounds, sides)
    tops = {name: userpath.read_tsv(tmp / f"join-{name}.tsv") for name in sides}
    agree = all(
        list(top) == list(tops["mrkit"]) and all(abs(top[k] - tops["mrkit"][k]) <= 1e-6 * top[k] for k in top)
        for top in tops.values()
    )
    med = {name: statistics.median(ts) for name, ts in times.items()}
    ratio = med["mrkit"] / med["pool"]
    passed = agree and ratio <= TARGETS["join"]
    report["join"] = {"seconds": times, "ratio": ratio, "same": agree}
    duck = f"  DuckDB {med['duckdb']:6.2f}s" if "duckdb" in med else "  DuckDB not installed"
    print(
        f"  join query         mrkit {med['mrkit']:6.2f}s  multiprocessing {med['pool']:6.2f}s  "
        f"ratio {ratio:4.2f} (<= 2.0){duck}  {'same top 10' if agree else 'DIFFERENT RESULTS'}  "
        f"{'PASS' if passed else 'MISS'}"
    )
    return passed


def sort_output_race(args: argparse.Namespace, tmp: Path, examples: str, report: dict[str, Any]) -> bool:
    """``sort_output=True`` against hash partitions, the output checked sorted."""
    sys.path.insert(0, examples)
    import terasort

    records = int(args.size_mb * 1_000_000) // terasort.RECORD
    folder = args.data_dir / f"terasort-{args.size_mb:g}mb"
    marker = folder / ".complete"
    if not marker.exists() or marker.read_text() != str(records):
        terasort.generate(str(folder), records, files=8)
        marker.write_text(str(records))
    inputs = sorted(str(p) for p in folder.glob("part-*.txt"))
    script = tmp / "terasort_run.py"
    script.write_text(TERASORT.format(examples=examples, workers=args.workers))
    sides = {
        sort: [sys.executable, str(script), *inputs, str(tmp / f"terasort-{sort}"), sort]
        for sort in ("sorted", "hashed")
    }
    times = race("sort-output", args.rounds, sides)
    problems = terasort.check(str(tmp / "terasort-sorted"), records)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    ratio = med["sorted"] / med["hashed"]
    passed = not problems and ratio <= TARGETS["sort-output"]
    report["sort-output"] = {"seconds": times, "ratio": ratio, "problems": problems[:3]}
    print(
        f"  sort_output        sorted {med['sorted']:6.2f}s  hash partitions {med['hashed']:6.2f}s  "
        f"ratio {ratio:4.2f} (<= 1.5)  {'checked: sorted' if not problems else problems[0]}  "
        f"{'PASS' if passed else 'MISS'}"
    )
    return passed


RACES = ("two-step", "join", "sort-output")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=100.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".bench")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--only", default=",".join(RACES), help="races to run, comma-separated: " + ", ".join(RACES)
    )
    args = parser.parse_args(argv)
    only = args.only.split(",")
    unknown = sorted(set(only) - set(RACES))
    if unknown:
        parser.error(f"unknown race {unknown[0]!r}: choose from {', '.join(RACES)}")
    tmp = Path(tempfile.mkdtemp(prefix="mrkit-pipeline-bench-"))
    examples = str(ROOT / "examples")
    report: dict[str, Any] = {"size_mb": args.size_mb, "workers": args.workers}
    print(f"issue 11 benchmarks: {args.size_mb:g} MB, {args.workers} workers, fresh processes, medians")
    runs = {"two-step": two_step_race, "join": join_race, "sort-output": sort_output_race}
    ok = True
    for name in RACES:
        if name in only:
            ok &= runs[name](args, tmp, examples, report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
