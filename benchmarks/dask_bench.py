"""Dask benchmark: mrkit on a Dask ``LocalCluster`` against ``processes`` and against Dask's own bag API.

    python benchmarks/dask_bench.py                # 100 MB word count and ad revenue, 2 workers, median of 3
    python benchmarks/dask_bench.py --size-mb 5 --repeat 1 --tasks 500   # smoke test
    python benchmarks/dask_bench.py --json dask.json       # also save every measurement

Every executor is warm (opened once, before any timing): what is timed is the job, not the start of
the cluster (reported once, apart). In the same run, alternating the order:

* **word count**, textbook (``workloads.WordCountPerRecord``; the bag does
  ``read_text().map(lower).map(findall).flatten().frequencies()``) and split-level
  (``workloads.WordCountSplit``; the bag's ``reduction`` counts each partition with a ``Counter``
  and sums them), ``n_reduce=2``,
  over ``--size-mb`` MB in 8 files. mrkit on ``dask`` against ``processes`` (target <= 1.25x) and
  against the bag on the same cluster (target <= 0.6x). Every program's counts must be equal.
* **ad revenue** (``workloads.AdRevenue``: sum of field 4 per field 2 of uservisits CSV lines, the
  ``--size-mb`` corpus of ``userpath.py``, 32 files), against ``processes`` and the bag's
  ``read_text().map(split).foldby(url, add)``, with the same targets; sums must agree to 1e-9.
* **fixed cost**: a 3-line job on the warm cluster (target <= 0.3 s).
* **tiny tasks**: ``--tasks`` calls of ``futures.submit`` (target >= 1,500/s), with Dask's own
  ``client.map`` + ``gather`` of the same function as the reference.

The machine may be shared: read ratios from one run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if (ROOT / "src" / "mrkit").is_dir():  # benchmark this tree, installed or not
    sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

import dask.bag as db  # noqa: E402
import run  # noqa: E402 - its _same: equal keys, floats to a relative 1e-9
import workloads  # noqa: E402
from http_bench import _data, tiny  # noqa: E402 - the same corpus cache and tiny task
from userpath import cached_inputs  # noqa: E402

import mrkit  # noqa: E402
from mrkit import futures  # noqa: E402
from mrkit.execution.base import Executor, open_executor  # noqa: E402

TARGETS = {"vs processes": 1.25, "vs bag": 0.6, "fixed cost s": 0.3, "tasks/s": 1500.0}


def count_partition(lines: Any) -> Counter[str]:
    return Counter(workloads.WORD.findall("\n".join(lines).lower()))


def merge_counts(counters: Any) -> Counter[str]:
    total: Counter[str] = Counter()
    for counter in counters:
        total.update(counter)
    return total


def bag_word_count(executor: Any, paths: list[str], split_level: bool) -> tuple[float, dict[str, int]]:
    started = time.perf_counter()
    bag = db.read_text(paths, blocksize="16MiB")
    if split_level:  # one Counter per partition, summed: the bag's fastest way to the same counts
        pairs = bag.reduction(count_partition, merge_counts)
    else:
        pairs = bag.map(str.lower).map(workloads.WORD.findall).flatten().frequencies()
    counts = dict(executor.client.compute(pairs).result())
    return time.perf_counter() - started, counts


def url_revenue(line: str) -> tuple[str, float]:
    fields = line.split(",")
    return fields[1], float(fields[3])


def add_revenue(total: float, pair: tuple[str, float]) -> float:
    return total + pair[1]


def first(pair: tuple[str, float]) -> str:
    return pair[0]


def bag_ad_revenue(executor: Any, paths: list[str]) -> tuple[float, dict[str, float]]:
    """The bag's way to the sums: one partition per file, ``foldby`` URL (a tree reduction)."""
    started = time.perf_counter()
    bag = db.read_text(paths).map(url_revenue)
    sums = bag.foldby(first, add_revenue, 0.0, lambda a, b: a + b, 0.0)
    result = dict(executor.client.compute(sums).result())
    return time.perf_counter() - started, result


def mrkit_job(executor: Executor, job: mrkit.Job, paths: list[str]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    result = mrkit.run(
        job, paths, executor=executor, n_reduce=2, input_format="text", quiet=True, progress=False
    )
    return time.perf_counter() - started, dict(result)


def fixed_cost(executor: Executor, repeat: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tiny.txt"
        path.write_text("a b c\nb c\nc\n", encoding="utf-8")
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            mrkit.run(
                workloads.WordCountPerRecord(), str(path), executor=executor, n_map=2, n_reduce=2, quiet=True
            )
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def tiny_tasks(executor: Any, n: int) -> tuple[float, float]:
    """``(futures.submit tasks/s, client.map tasks/s)`` on the warm cluster."""
    with futures.using(executor):
        for f in [futures.submit(tiny, i) for i in range(20)]:
            f.result()
        started = time.perf_counter()
        results = [f.result() for f in [futures.submit(tiny, i) for i in range(n)]]
        ours = n / (time.perf_counter() - started)
    assert results == [tiny(i) for i in range(n)]
    started = time.perf_counter()
    theirs_results = executor.client.gather(executor.client.map(tiny, range(n), pure=False))
    theirs = n / (time.perf_counter() - started)
    assert theirs_results == results
    return ours, theirs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=100.0, help="word-count corpus size (default 100)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; medians are printed")
    parser.add_argument("--workers", type=int, default=2, help="workers of every executor (default 2)")
    parser.add_argument("--tasks", type=int, default=10_000, help="tiny tasks per measurement")
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".bench", help="data cache (default .bench/)")
    parser.add_argument("--json", type=Path, default=None, help="also write every measurement here")
    args = parser.parse_args(argv)
    paths = _data(args.data_dir, args.size_mb)
    report: dict[str, Any] = {"workers": args.workers, "size_mb": args.size_mb, "repeat": args.repeat}
    started = time.perf_counter()
    dask_ex = open_executor("dask", workers=args.workers)
    report["cluster start s"] = time.perf_counter() - started
    processes = open_executor("processes", workers=args.workers)
    ok = True
    try:
        print(f"mrkit on Dask: {args.workers} workers, {args.size_mb:g} MB, median of {args.repeat}")
        print(f"  LocalCluster start {report['cluster start s']:.2f}s (not in the figures below)")
        visits = cached_inputs(args.data_dir, "uservisits", args.size_mb)
        for label, job, bag_kind in (
            ("word count textbook", workloads.WordCountPerRecord(), "textbook"),
            ("word count split-level", workloads.WordCountSplit(), "split-level"),
            ("ad revenue", workloads.AdRevenue(), "revenue"),
        ):
            inputs = visits if bag_kind == "revenue" else paths
            runs: dict[str, list[tuple[float, dict[str, Any]]]] = {"dask": [], "processes": [], "bag": []}
            for i in range(args.repeat):
                order = ["dask", "processes", "bag"]
                for name in order if i % 2 == 0 else order[::-1]:
                    if name == "bag" and bag_kind == "revenue":
                        runs[name].append(bag_ad_revenue(dask_ex, inputs))
                    elif name == "bag":
                        runs[name].append(bag_word_count(dask_ex, inputs, bag_kind == "split-level"))
                    else:
                        runs[name].append(mrkit_job(dask_ex if name == "dask" else processes, job, inputs))
            same = all(run._same(r[1], runs["dask"][0][1])[0] for rs in runs.values() for r in rs)
            secs = {name: statistics.median(t for t, _ in rs) for name, rs in runs.items()}
            vs_proc, vs_bag = secs["dask"] / secs["processes"], secs["dask"] / secs["bag"]
            passed = same and vs_proc <= TARGETS["vs processes"] and vs_bag <= TARGETS["vs bag"]
            ok &= passed
            report[label] = {name: [t for t, _ in rs] for name, rs in runs.items()} | {"same": same}
            print(
                f"  {label:<23} dask {secs['dask']:6.2f}s  processes {secs['processes']:6.2f}s  "
                f"bag {secs['bag']:6.2f}s  dask/processes {vs_proc:4.2f} (<= 1.25)  dask/bag {vs_bag:4.2f} "
                f"(<= 0.6)  {'same output' if same else 'DIFFERENT OUTPUT'}  {'PASS' if passed else 'MISS'}"
            )
        cost = report["fixed cost s"] = fixed_cost(dask_ex, max(5, args.repeat))
        ok &= cost <= TARGETS["fixed cost s"]
        print(f"  fixed cost (tiny job, warm cluster) {cost:.3f}s (<= 0.3)")
        ours, theirs = tiny_tasks(dask_ex, args.tasks)
        report["futures.submit tasks/s"], report["client.map tasks/s"] = ours, theirs
        ok &= ours >= TARGETS["tasks/s"]
        print(f"  futures.submit {ours:,.0f} tasks/s (>= 1,500)   Dask client.map {theirs:,.0f} tasks/s")
    finally:
        processes.shutdown()
        dask_ex.shutdown()
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
