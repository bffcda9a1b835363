"""CPU time of mrkit's data path on fixed inputs, in this process: one map task, one reduce grouping.

Usage::

    python benchmarks/datapath_cpu.py [--src DIR] [--size-mb 100] [--data-dir .bench] [--repeat 15]

For a shared, noisy machine (issue 14): ``time.process_time`` of the same work, repeated, reported
as min and median, so that two versions of ``src`` can be compared run against run
(``--src /tmp/old/src``; default: this tree's ``src``). Inputs are ``userpath.py``'s files
(``<data-dir>/userpath-<size>mb/``; run ``userpath.py`` once to generate them).

* ``map``: one map task over the first file (``MapOutput`` + ``map_split`` + ``finish``, 2 reduce
  partitions, in-memory partition objects), split into the mapper phase and the spill, for
  ``adrevenue`` (per-record mapper + combiner) and ``wc-split`` (``Counter(...).items()``).
* ``group``: ``group_in_memory`` over partition 0 of every file's map output, each key's values
  summed (what the benchmark's reducer does), for the same two jobs.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


class _Kept(io.BytesIO):
    def close(self) -> None:  # keep the bytes readable after the map side closes its object
        pass


class _Batch:
    def __init__(self, records: list[str]) -> None:
        self.records = records

    def locate(self, i: int) -> str:
        return f"record {i}"


def main(argv: list[str] | None = None) -> int:
    """Print the min and median CPU milliseconds of each measurement."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=HERE.parent / "src")
    parser.add_argument("--size-mb", type=float, default=100.0)
    parser.add_argument("--data-dir", type=Path, default=HERE.parent / ".bench")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.src))
    sys.path.insert(1, str(HERE))
    import userpath
    import workloads

    from mrkit.data.map_side import MapOutput, map_split
    from mrkit.data.merging import group_in_memory
    from mrkit.data.shuffle import read_frames

    table = str.maketrans(userpath.PUNCTUATION, " " * len(userpath.PUNCTUATION))

    class WordCount:  # wc-split's job, without mrkit.Job's checks
        mapper = mapper_init = mapper_final = combiner = partitioner = None

        def mapper_split(self, records: Any) -> Any:
            return Counter("\n".join(records).translate(table).lower().split()).items()

    def map_task(job: Any, records: list[str]) -> tuple[float, float, dict[int, bytes]]:
        parts: dict[int, _Kept] = {}

        def open_part(p: int) -> _Kept:
            parts[p] = _Kept()
            return parts[p]

        out = MapOutput(
            n_reduce=2, partitioner=None, combiner=job.combiner, memory_bytes=256 << 20, open_part=open_part
        )
        started = time.process_time()
        map_split(job, [_Batch(records)], out, lambda: "split")
        mapped = time.process_time()
        out.finish()
        return mapped - started, time.process_time() - mapped, {p: b.getvalue() for p, b in parts.items()}

    def report(label: str, ms: list[float]) -> None:
        print(f"{label:<28} min {min(ms):7.1f} ms | median {statistics.median(ms):7.1f} ms", flush=True)

    adrevenue = workloads.AdRevenue()
    for name, kind, job in (("adrevenue", "uservisits", adrevenue), ("wc-split", "text", WordCount())):
        files = sorted((args.data_dir / f"userpath-{args.size_mb:g}mb" / kind).iterdir())
        files = [f for f in files if not f.name.startswith(".")]
        records = files[0].read_text(encoding="utf-8").splitlines()
        runs = [map_task(job, records) for _ in range(args.repeat)]
        report(f"{name} map: mapper", [1000 * r[0] for r in runs])
        report(f"{name} map: spill", [1000 * r[1] for r in runs])
        blobs = [map_task(job, f.read_text(encoding="utf-8").splitlines())[2][0] for f in files]
        times = []
        for _ in range(args.repeat):
            started = time.process_time()
            for _key, values in group_in_memory([read_frames(io.BytesIO(b)) for b in blobs]):
                sum(values)
            times.append(1000 * (time.process_time() - started))
        report(f"{name} group ({len(blobs)} runs)", times)
    return 0


if __name__ == "__main__":
    sys.exit(main())
