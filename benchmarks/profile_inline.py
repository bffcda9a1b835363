"""Profile one benchmark workload's mrkit side in this process, to see where mrkit spends its time.

Usage::

    python benchmarks/profile_inline.py NAME [--size-mb 20] [--data-dir .bench] [--top 25] [-o out.prof]

The job runs with ``executor="inline"``: every map and reduce task runs in this process (specs are
still encoded and decoded as for worker processes), so cProfile sees the framework's whole per-task
cost, which ``python -m cProfile benchmarks/run.py`` cannot (the work happens in worker processes).
The matching baseline task is profiled the same way, on the same files, for comparison. Prints the
top entries by internal time of each.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import run  # benchmarks/run.py: sets sys.path up for mrkit and workloads
import workloads

import mrkit


def main(argv: list[str] | None = None) -> int:
    """Profile the workload named on the command line; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(run.RACES))
    parser.add_argument("--size-mb", type=float, default=20.0)
    parser.add_argument("--data-dir", type=Path, default=run.ROOT / ".bench")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("-o", "--output", type=Path, help="also save the mrkit profile (for snakeviz etc.)")
    args = parser.parse_args(argv)
    _target, kind, job, _merge, task = run.RACES[args.name]
    paths = run.cached_data(args.data_dir, kind, args.size_mb)

    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    result = dict(
        mrkit.run(
            job(), paths, executor="inline", n_reduce=2, input_format="text", quiet=True, progress=False
        )
    )
    profile.disable()
    seconds = time.perf_counter() - started
    print(f"== mrkit {args.name}, inline, {args.size_mb:g} MB: {seconds:.2f}s (profiled), {len(result)} keys")
    stats = pstats.Stats(profile, stream=sys.stdout)
    if args.output:
        stats.dump_stats(args.output)
    stats.sort_stats("tottime").print_stats(args.top)

    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    merged = workloads.merge_counters if kind == "text" else workloads.merge_sums
    base = merged(_SerialPool(), task, paths)
    profile.disable()
    seconds = time.perf_counter() - started
    print(
        f"== baseline {args.name}, serial, {args.size_mb:g} MB: {seconds:.2f}s (profiled), {len(base)} keys",
        flush=True,
    )
    pstats.Stats(profile, stream=sys.stdout).sort_stats("tottime").print_stats(min(args.top, 10))
    return 0


class _SerialPool:
    """Enough of ``multiprocessing.Pool`` for the merge helpers, running tasks in this process."""

    def imap_unordered(self, fn, items):  # type: ignore[no-untyped-def]
        return map(fn, items)


if __name__ == "__main__":
    sys.exit(main())
