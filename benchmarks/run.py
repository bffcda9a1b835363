"""Race mrkit against hand-written ``multiprocessing`` programs doing the same work, and report ratios.

Usage::

    python benchmarks/run.py [--size-mb 100] [--only NAME[,NAME]] [--repeat 3] [--data-dir .bench]
                             [--workers 2] [--big] [--json results.json] [--strict]

The contract:

* Input data is generated once by :mod:`mrkit.tools.corpus` (deterministic: the same bytes everywhere)
  into ``--data-dir`` (default ``<repo>/.bench/``, git-ignored) and reused while the generator's
  source is unchanged: 8 text files for the word counts, 8 uservisits CSV files for ad revenue.
* For each workload, mrkit and its baseline (``benchmarks/workloads.py``) run alternately
  ``--repeat`` times in this one process (the first side alternates too), each timed cold: mrkit's
  time is one ``mrkit.run(...)`` call plus ``dict(result)``, which starts and stops its workers;
  the baseline's time includes creating and closing its ``multiprocessing.Pool``.
* One line per workload: the median wall time and MB/s of each side, the ratio mrkit/baseline, the
  target and PASS/FAIL. A workload whose two results differ is a FAIL whatever its times (float
  sums are compared with a relative tolerance of 1e-9: the order of additions differs).
* Exit status: 1 when a result differs or a run raises; with ``--strict`` also when a ratio misses
  its target; 0 otherwise (so ``--size-mb 2 --repeat 1`` works as a CI smoke test, where fixed
  start-up costs dominate and ratios are not meaningful).

Workloads (``--only`` names): ``wc-split``, ``wc-inmapper``, ``wc-record``, ``adrevenue``,
``adrevenue-inmapper`` (no target: the same sums with in-mapper combining, for scale), ``futures``;
``big`` runs only with ``--big`` (or ``--only big``). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import math
import multiprocessing
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if (ROOT / "src" / "mrkit").is_dir():  # benchmark this tree, installed or not
    sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

import workloads  # noqa: E402

import mrkit  # noqa: E402
from mrkit.tools import corpus  # noqa: E402

N_FILES = 8
TINY_TASKS = 10_000
MAPS_PER_SAMPLE = 5


# -- data ----------------------------------------------------------------------------------------


def _generator_digest() -> str:
    return hashlib.sha256(Path(corpus.__file__).read_bytes()).hexdigest()[:16]


def cached_data(data_dir: Path, kind: str, size_mb: float) -> list[str]:
    """Generate (once) and return the input files of ``kind`` (``text`` or ``uservisits``).

    Args:
        data_dir: the cache root; each data set lives in ``<kind>-<size>mb/``.
        kind: ``text`` or ``uservisits``.
        size_mb: total size in MB (1,000,000 bytes).

    Returns:
        The paths of the ``N_FILES`` files. A ``.complete`` marker records the generator's source
        digest; a missing or different marker means the data set is generated again.
    """
    return cached_corpus(data_dir / f"{kind}-{size_mb:g}mb", kind, size_mb, N_FILES)


def cached_corpus(folder: Path, kind: str, size_mb: float, files: int) -> list[str]:
    """Generate (once) ``files`` files of ``kind`` totalling ``size_mb`` MB in ``folder``, and return
    their paths; the ``.complete`` marker's stamp (arguments and generator digest) decides."""
    marker = folder / ".complete"
    stamp = json.dumps(
        {
            "kind": kind,
            "size_mb": float(size_mb),
            "files": files,
            "seed": 0,
            "generator": _generator_digest(),
        }
    )
    if marker.exists() and marker.read_text() == stamp:
        return sorted(str(p) for p in folder.iterdir() if not p.name.startswith("."))
    if folder.exists():
        for p in folder.iterdir():
            p.unlink()
    started = time.perf_counter()
    make = corpus.generate_text if kind == "text" else corpus.generate_uservisits
    paths = make(folder, size_mb=size_mb, files=files, seed=0)
    seconds = time.perf_counter() - started
    print(
        f"  generated {kind} {size_mb:g} MB in {folder} in {seconds:.1f}s ({size_mb / seconds:.0f} MB/s)",
        file=sys.stderr,
    )
    marker.write_text(stamp)
    return paths


# -- measuring -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one workload measured."""

    name: str
    target: float | None  # None: reported for scale, no target
    mrkit_s: list[float] = field(default_factory=list)
    base_s: list[float] = field(default_factory=list)
    mb: float = 0.0
    same: bool = True
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return statistics.median(self.mrkit_s) / statistics.median(self.base_s)

    @property
    def passed(self) -> bool:
        return self.same and (self.target is None or self.ratio <= self.target)

    def line(self) -> str:
        m, b = statistics.median(self.mrkit_s), statistics.median(self.base_s)
        if self.mb:
            rates = f"mrkit {m:7.2f}s {self.mb / m:6.1f} MB/s | baseline {b:7.2f}s {self.mb / b:6.1f} MB/s"
        else:
            rates = f"mrkit {m:7.3f}s              | baseline {b:7.3f}s            "
        verdict = ("PASS" if self.passed else "FAIL") if self.target is not None or not self.same else "ok"
        why = "" if self.same else " (results differ)"
        note = f"  [{self.note}]" if self.note else ""
        bound = "no target" if self.target is None else f"target <= {self.target:g}"
        ratio = f"ratio {self.ratio:5.2f} ({bound})"
        return f"{self.name:<18} {rates} | {ratio} {verdict}{why}{note}"

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target": self.target,
            "mrkit_s": self.mrkit_s,
            "baseline_s": self.base_s,
            "mb": self.mb,
            "ratio": self.ratio,
            "same": self.same,
            "passed": self.passed,
            "note": self.note,
            **self.extra,
        }


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def _same(a: dict[Any, Any], b: dict[Any, Any]) -> tuple[bool, str]:
    """Equal keys, and equal values (floats within a relative 1e-9)."""
    if a.keys() != b.keys():
        return False, f"{len(a.keys() ^ b.keys())} keys differ ({len(a)} vs {len(b)} keys)"
    bad = [
        k
        for k, v in a.items()
        if v != b[k] and not (isinstance(v, float) and math.isclose(v, b[k], rel_tol=1e-9, abs_tol=1e-9))
    ]
    if bad:
        return False, f"{len(bad)} values differ, e.g. {bad[0]!r}: {a[bad[0]]!r} vs {b[bad[0]]!r}"
    return True, ""


def race(
    name: str,
    target: float | None,
    mb: float,
    repeat: int,
    run_mrkit: Callable[[], dict[Any, Any]],
    run_base: Callable[[], dict[Any, Any]],
) -> Outcome:
    """Alternate the two sides ``repeat`` times and compare every pair of results."""
    out = Outcome(name, target, mb=mb)
    for i in range(repeat):
        sides = [("mrkit", run_mrkit), ("base", run_base)]
        if i % 2:
            sides.reverse()
        results = {}
        for side, fn in sides:
            seconds, results[side] = _timed(fn)
            (out.mrkit_s if side == "mrkit" else out.base_s).append(seconds)
        same, why = _same(results["mrkit"], results["base"])
        if not same:
            out.same, out.note = False, why
    return out


def mrkit_runner(job: mrkit.Job, paths: list[str], workers: int) -> Callable[[], dict[Any, Any]]:
    def run() -> dict[Any, Any]:
        # input_format="text": every workload reads lines (the baseline splits CSV lines itself too).
        result = mrkit.run(
            job,
            paths,
            executor="processes",
            workers=workers,
            n_reduce=workers,
            input_format="text",
            quiet=True,
            progress=False,
        )
        return dict(result)

    return run


def pool_runner(
    merge: Callable[..., dict[Any, Any]], task: Callable[[str], Any], paths: list[str], workers: int
) -> Callable[[], dict[Any, Any]]:
    def run() -> dict[Any, Any]:
        with multiprocessing.Pool(workers) as pool:
            return merge(pool, task, paths)

    return run


# -- tiny tasks ----------------------------------------------------------------------------------

_COLD_SCRIPT = """
import sys, time
sys.path[:0] = {paths!r}
import workloads
if {use_mrkit!r}:
    from mrkit import futures
    started = time.perf_counter()
    futures.set_executor("processes", workers={workers})
    out = list(futures.map(workloads.tiny, range({n})))
    futures.shutdown()
else:
    import multiprocessing
    started = time.perf_counter()
    with multiprocessing.Pool({workers}) as pool:
        out = pool.map(workloads.tiny, range({n}))
seconds = time.perf_counter() - started
assert out == [workloads.tiny(x) for x in range({n})]
print(seconds)
"""


def _cold(use_mrkit: bool, workers: int) -> float:
    """Seconds for the first ``map`` of a fresh process, pool start-up and shutdown included."""
    paths = [str(HERE)] + ([str(ROOT / "src")] if (ROOT / "src" / "mrkit").is_dir() else [])
    code = _COLD_SCRIPT.format(paths=paths, use_mrkit=use_mrkit, n=TINY_TASKS, workers=workers)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"cold tiny-task run failed:\n{done.stderr}")
    return float(done.stdout.split()[-1])


def _per_map(map_fn: Callable[[Callable[[int], int], range], Any]) -> Callable[[], dict[Any, Any]]:
    """A timed sample: ``MAPS_PER_SAMPLE`` maps of ``TINY_TASKS`` tasks (one map is a few ms)."""

    def sample() -> dict[Any, Any]:
        for _ in range(MAPS_PER_SAMPLE - 1):
            list(map_fn(workloads.tiny, range(TINY_TASKS)))
        return dict(enumerate(map_fn(workloads.tiny, range(TINY_TASKS))))

    return sample


def tiny_tasks(repeat: int, workers: int) -> Outcome:
    """10,000 tiny tasks through ``mrkit.futures.map`` and ``Pool.map``, both pools warm."""
    try:
        from mrkit import futures
    except ImportError:
        out = Outcome("futures", 1.5)
        out.note = "mrkit.futures is not available yet"
        return out
    with multiprocessing.Pool(workers) as pool, futures.using("processes", workers=workers):
        pool.map(workloads.tiny, range(100))  # warm: workers started, function imported
        list(futures.map(workloads.tiny, range(100)))
        out = race("futures", 1.5, 0.0, repeat, _per_map(futures.map), _per_map(pool.map))
    out.mrkit_s = [s / MAPS_PER_SAMPLE for s in out.mrkit_s]
    out.base_s = [s / MAPS_PER_SAMPLE for s in out.base_s]
    expected = {i: workloads.tiny(i) for i in range(TINY_TASKS)}
    if out.same and _per_map(map)() != expected:
        out.same, out.note = False, "wrong values"
    cold_m, cold_b = _cold(True, workers), _cold(False, workers)
    out.extra = {"cold_mrkit_s": cold_m, "cold_baseline_s": cold_b}
    out.note = f"cold: mrkit {cold_m:.3f}s, baseline {cold_b:.3f}s, ratio {cold_m / cold_b:.2f}"
    return out


# -- 1 GB vs 100 MB ------------------------------------------------------------------------------


class TreeMemory:
    """Peak resident memory of this process and all its descendants, sampled from /proc.

    A daemon thread sums ``rss`` (``/proc/<pid>/stat`` field 24) over the process tree every
    ``interval`` seconds; :attr:`peak` is the largest sum seen. RSS counts pages shared between
    forked processes once per process, as ``ps`` does; that is the same for both runs compared.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="tree-memory", daemon=True)
        self._page = os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        root = os.getpid()
        while not self._stop.is_set():
            self.peak = max(self.peak, self.tree_rss(root))
            self._stop.wait(self.interval)

    def tree_rss(self, root: int) -> int:
        children: dict[int, list[int]] = collections.defaultdict(list)
        rss: dict[int, int] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:  # the process exited while we looked
                continue
            pid = int(entry.name)
            children[int(fields[1])].append(pid)
            rss[pid] = int(fields[21]) * self._page
        total, todo = 0, [root]
        while todo:
            pid = todo.pop()
            total += rss.get(pid, 0)
            todo.extend(children.get(pid, ()))
        return total


def big(data_dir: Path, repeat: int, workers: int, small_mb: float, large_mb: float) -> Outcome:
    """Word count (per-record mapper + combiner) over ``large_mb`` vs ``small_mb``: time and memory.

    The two sizes alternate ``repeat`` times. In the returned :class:`Outcome` the "mrkit" times are
    the large run's and the "baseline" times the small run's, so ``ratio`` is the time ratio;
    ``extra`` holds the peak RSS of the process tree for each size and their ratio.
    """
    small, large = cached_data(data_dir, "text", small_mb), cached_data(data_dir, "text", large_mb)
    job = workloads.WordCountPerRecord()
    out = Outcome("big", 11.0, mb=large_mb)
    peaks: dict[str, list[int]] = {"small": [], "large": []}
    for _ in range(repeat):
        for size, paths in (("small", small), ("large", large)):
            with TreeMemory() as mem:
                seconds, _ = _timed(mrkit_runner(job, paths, workers))
            (out.base_s if size == "small" else out.mrkit_s).append(seconds)
            peaks[size].append(mem.peak)
    peak_small, peak_large = max(peaks["small"]), max(peaks["large"])
    memory_ratio = peak_large / peak_small
    out.extra = {
        "small_mb": small_mb,
        "large_mb": large_mb,
        "peak_small_bytes": peak_small,
        "peak_large_bytes": peak_large,
        "memory_ratio": memory_ratio,
    }
    return out


def big_line(out: Outcome) -> tuple[str, bool]:
    """The report line of :func:`big`'s outcome, and whether both of its targets were met."""
    small_mb, large_mb = out.extra["small_mb"], out.extra["large_mb"]
    large_s, small_s = statistics.median(out.mrkit_s), statistics.median(out.base_s)
    memory_ratio = out.extra["memory_ratio"]
    time_ok, memory_ok = out.ratio <= 11, memory_ratio <= 1.3
    line = (
        f"{out.name:<12} {large_mb:g} MB {large_s:7.2f}s {large_mb / large_s:6.1f} MB/s | "
        f"{small_mb:g} MB {small_s:7.2f}s {small_mb / small_s:6.1f} MB/s | "
        f"time ratio {out.ratio:5.2f} (target <= 11) {'PASS' if time_ok else 'FAIL'} | "
        f"peak RSS of the process tree {out.extra['peak_large_bytes'] / 2**20:.0f} MiB vs "
        f"{out.extra['peak_small_bytes'] / 2**20:.0f} MiB, ratio {memory_ratio:.2f} (target <= 1.3) "
        f"{'PASS' if memory_ok else 'FAIL'}"
    )
    return line, time_ok and memory_ok


# -- main ----------------------------------------------------------------------------------------

W = workloads
# name: (target ratio, data kind, mrkit job class, baseline merge, baseline task)
Race = tuple[float | None, str, type[mrkit.Job], Callable[..., dict[Any, Any]], Callable[[str], Any]]
RACES: dict[str, Race] = {
    "wc-split": (1.1, "text", W.WordCountSplit, W.merge_counters, W.count_file_whole),
    "wc-inmapper": (1.5, "text", W.WordCountInMapper, W.merge_counters, W.count_file_lines),
    "wc-record": (2.6, "text", W.WordCountPerRecord, W.merge_counters, W.count_file_lines),
    "adrevenue": (1.3, "uservisits", W.AdRevenue, W.merge_sums, W.revenue_file),
    "adrevenue-inmapper": (None, "uservisits", W.AdRevenueInMapper, W.merge_sums, W.revenue_file),
}
NAMES = (*RACES, "futures", "big")


def _load() -> str:
    """The 1-minute load average (how busy the machine was), or "?" where there is none."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the selected workloads and print one line each.

    Returns:
        The exit status (module docstring).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=100.0, help="input size per workload (default 100)")
    parser.add_argument("--only", default="", help=f"comma-separated workloads out of: {', '.join(NAMES)}")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side per workload (default 3)")
    parser.add_argument(
        "--data-dir", type=Path, default=ROOT / ".bench", help="data cache (default <repo>/.bench)"
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes on each side (default 2)")
    parser.add_argument("--big", action="store_true", help="also run the 1 GB vs 100 MB workload")
    parser.add_argument("--big-mb", type=float, default=1000.0, help="big: the large size (default 1000)")
    parser.add_argument("--big-small-mb", type=float, default=100.0, help="big: the small size (default 100)")
    parser.add_argument("--json", type=Path, help="also write the measurements to this file")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a ratio misses its target")
    args = parser.parse_args(argv)
    only = [n for n in args.only.split(",") if n]
    unknown = [n for n in only if n not in NAMES]
    if unknown:
        parser.error(f"unknown workload {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    selected = only or [n for n in NAMES if n != "big" or args.big]
    if args.repeat < 1 or args.size_mb <= 0:
        parser.error("--repeat must be >= 1 and --size-mb > 0")

    size, repeat, workers = args.size_mb, args.repeat, args.workers
    print(
        f"mrkit benchmarks: {size:g} MB per workload, {workers} workers, median of {repeat}, "
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, load average {_load()}",
        flush=True,
    )
    kinds = {RACES[n][1] for n in selected if n in RACES}
    data = {kind: cached_data(args.data_dir, kind, size) for kind in sorted(kinds)}
    outcomes: list[Outcome] = []
    failed = False
    for name in selected:
        try:
            if name in RACES:
                target, kind, job, merge, task = RACES[name]
                paths = data[kind]
                out = race(
                    name,
                    target,
                    size,
                    repeat,
                    mrkit_runner(job(), paths, workers),
                    pool_runner(merge, task, paths, workers),
                )
            elif name == "futures":
                out = tiny_tasks(repeat, workers)
                if not out.mrkit_s:
                    print(f"{name:<12} SKIP ({out.note})", flush=True)
                    continue
            else:
                out = big(args.data_dir, repeat, workers, args.big_small_mb, args.big_mb)
        except Exception as exc:  # report and go on with the other workloads
            print(f"{name:<12} ERROR {type(exc).__name__}: {exc}", flush=True)
            failed = True
            continue
        outcomes.append(out)
        if name == "big":
            line, out_passed = big_line(out)
            print(line, flush=True)
        else:
            print(out.line(), flush=True)
            out_passed = out.passed
        failed = failed or not out.same or (args.strict and not out_passed)
    # Others' work on a shared machine shows up here; compare ratios within one line, not across runs.
    print(f"done; load average {_load()}", flush=True)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "size_mb": size,
                    "workers": workers,
                    "repeat": repeat,
                    "cores": os.cpu_count(),
                    "python": sys.version.split()[0],
                    "load_after": _load(),
                    "results": [o.as_json() for o in outcomes],
                },
                indent=2,
            )
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
