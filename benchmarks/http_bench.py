"""HTTP executor benchmark: tiny-task throughput and word count, against ``processes`` in the same run.

    python benchmarks/http_bench.py                       # 50 MB word count, 2 workers, median of 3
    python benchmarks/http_bench.py --size-mb 5 --repeat 1 --tasks 1000   # smoke test (< 60 s)
    python benchmarks/http_bench.py --json http.json      # also save every measurement

What is measured (each figure for ``http`` and for ``processes``, alternating which goes first):

* **tiny tasks**: on a warm executor (workers started, function shipped once),
  - ``futures.submit``: ``--tasks`` calls of ``tiny(i)``, each its own task, all submitted, then all
    results collected: tasks per second through the futures API (target for http: >= 1,000/s);
  - ``Executor.submit``: the same number of pre-built CALL specs straight to the executor, to show
    the transport's own cost without the futures API's per-call pickling;
  - ``futures.map``: ``list(futures.map(tiny, range(10_000)))`` (chunked by the futures API).
* **word count**: ``mrkit.run`` of the textbook job (``workloads.WordCountPerRecord``: mapper yields
  ``(word, 1)``, combiner and reducer sum) and of ``workloads.WordCountSplit`` over ``--size-mb`` MB of
  ``mrkit.corpus.generate_text`` in 8 files, ``workers=2, n_reduce=2``. Cold: starting and stopping
  the executor's workers is inside the time, as in ``benchmarks/run.py``. The ratio printed is
  ``processes seconds / http seconds`` (1.0 = as fast; target >= 0.85). Both outputs must be equal.

The machine may be shared: read ratios from one run, not across runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if (ROOT / "src" / "mrkit").is_dir():  # benchmark this tree, installed or not
    sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

import cloudpickle  # noqa: E402
import workloads  # noqa: E402

import mrkit  # noqa: E402
from mrkit import futures  # noqa: E402
from mrkit.execution.base import Executor, open_executor  # noqa: E402
from mrkit.model.task import TaskKind, TaskSpec  # noqa: E402
from mrkit.tools import corpus  # noqa: E402

EXECUTORS = ("http", "processes")
TINY_TARGET = 1000.0
WORDCOUNT_TARGET = 0.85


def tiny(x: int) -> int:
    """A task that costs almost nothing, so only the per-task overhead is measured."""
    return x * x + 1


def _data(data_dir: Path, size_mb: float) -> list[str]:
    folder = data_dir / f"http-text-{size_mb:g}mb"
    stamp = json.dumps(
        {
            "size_mb": size_mb,
            "files": 8,
            "seed": 0,
            "generator": hashlib.sha256(Path(corpus.__file__).read_bytes()).hexdigest()[:16],
        }
    )
    marker = folder / ".complete"
    if not (marker.exists() and marker.read_text() == stamp):
        started = time.perf_counter()
        corpus.generate_text(folder, size_mb=size_mb, files=8, seed=0)
        marker.write_text(stamp)
        print(
            f"  generated {size_mb:g} MB of text in {folder} in {time.perf_counter() - started:.1f}s",
            file=sys.stderr,
        )
    return sorted(str(p) for p in folder.glob("text-*.txt"))


def _call_specs(n: int) -> list[TaskSpec]:
    fn = cloudpickle.dumps(lambda x: tiny(x))
    digest = hashlib.sha256(fn).hexdigest()
    return [
        TaskSpec(
            job_id="bench",
            task_id=f"call-{i:06d}",
            kind=TaskKind.CALL,
            call_fn=fn,
            call_digest=digest,
            call=pickle.dumps([(i,)]),
        )
        for i in range(n)
    ]


def tiny_tasks(name: str, workers: int, n: int) -> dict[str, float]:
    """Tasks per second on a warm executor ``name``: futures.submit, Executor.submit, futures.map."""
    executor: Executor = open_executor(name, workers=workers)
    out: dict[str, float] = {}
    try:
        with futures.using(executor):
            assert list(futures.map(tiny, range(200))) == [tiny(i) for i in range(200)]  # warm: workers up
            for f in [futures.submit(tiny, i) for i in range(workers * 4)]:
                f.result()
            started = time.perf_counter()
            submitted = [futures.submit(tiny, i) for i in range(n)]
            results = [f.result() for f in submitted]
            out["futures.submit tasks/s"] = n / (time.perf_counter() - started)
            assert results == [tiny(i) for i in range(n)]

            specs = _call_specs(n)
            list(executor.map(specs[: workers * 4]))
            started = time.perf_counter()
            raw = [executor.submit(spec) for spec in specs]
            assert all(f.result().ok for f in raw)
            out["Executor.submit tasks/s"] = n / (time.perf_counter() - started)

            started = time.perf_counter()
            assert list(futures.map(tiny, range(10_000))) == [tiny(i) for i in range(10_000)]
            out["futures.map 10k items s"] = time.perf_counter() - started
    finally:
        executor.shutdown()
    return out


def word_count(name: str, job: mrkit.Job, paths: list[str], workers: int) -> tuple[float, dict[Any, Any]]:
    started = time.perf_counter()
    result = mrkit.run(
        job,
        paths,
        executor=name,
        workers=workers,
        n_reduce=workers,
        input_format="text",
        quiet=True,
        progress=False,
    )
    pairs = dict(result)
    return time.perf_counter() - started, pairs


def _alternate(repeat: int, measure: Callable[[str], Any]) -> dict[str, list[Any]]:
    got: dict[str, list[Any]] = {name: [] for name in EXECUTORS}
    for i in range(repeat):
        for name in EXECUTORS if i % 2 == 0 else tuple(reversed(EXECUTORS)):
            got[name].append(measure(name))
    return got


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=50.0, help="word-count corpus size (default 50)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per figure; medians are printed (default 3)"
    )
    parser.add_argument("--workers", type=int, default=2, help="workers of both executors (default 2)")
    parser.add_argument("--tasks", type=int, default=3000, help="tiny tasks per measurement (default 3000)")
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".bench", help="data cache (default .bench/)")
    parser.add_argument("--json", type=Path, default=None, help="also write every measurement here")
    args = parser.parse_args(argv)

    report: dict[str, Any] = {"workers": args.workers, "size_mb": args.size_mb, "repeat": args.repeat}
    ok = True
    print(f"mrkit HTTP benchmark: {args.workers} workers, median of {args.repeat}")

    tiny_runs = _alternate(args.repeat, lambda name: tiny_tasks(name, args.workers, args.tasks))
    report["tiny"] = tiny_runs
    print(f"\ntiny tasks ({args.tasks} per run, warm executors):")
    for metric in tiny_runs["http"][0]:
        medians = {name: statistics.median(run[metric] for run in tiny_runs[name]) for name in EXECUTORS}
        ratio = medians["http"] / medians["processes"]
        digits = 3 if metric.endswith(" s") else 0
        print(
            f"  {metric:<26} http {medians['http']:>9,.{digits}f}   "
            f"processes {medians['processes']:>9,.{digits}f}   http/processes {ratio:5.2f}"
        )
        if metric == "futures.submit tasks/s":
            passed = medians["http"] >= TINY_TARGET
            ok &= passed
            print(f"  {'':<26} target: http >= {TINY_TARGET:,.0f} tasks/s: {'PASS' if passed else 'MISS'}")

    paths = _data(args.data_dir, args.size_mb)
    report["wordcount"] = {}
    print(
        f"\nword count ({args.size_mb:g} MB in {len(paths)} files, cold: starting the workers is timed too):"
    )
    for label, job in (
        ("textbook (mapper yields (w, 1))", workloads.WordCountPerRecord()),
        ("split-level (mapper_split)", workloads.WordCountSplit()),
    ):
        runs = _alternate(args.repeat, lambda name, job=job: word_count(name, job, paths, args.workers))
        same = runs["http"][0][1] == runs["processes"][0][1]
        seconds = {name: statistics.median(t for t, _ in runs[name]) for name in EXECUTORS}
        ratio = seconds["processes"] / seconds["http"]
        passed = same and ratio >= WORDCOUNT_TARGET
        ok &= passed
        report["wordcount"][label] = {name: [t for t, _ in runs[name]] for name in EXECUTORS} | {"same": same}
        print(
            f"  {label:<32} http {seconds['http']:6.2f}s   processes {seconds['processes']:6.2f}s   "
            f"speed vs processes {ratio:4.2f} (target >= {WORDCOUNT_TARGET})   "
            f"{'same output' if same else 'DIFFERENT OUTPUT'}   {'PASS' if passed else 'MISS'}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
