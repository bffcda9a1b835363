"""mrkit on a running Dask cluster, measured as users run it: each side is a whole fresh process that
connects, runs the job, writes its output, and the output is read back.

    python benchmarks/dask_userpath.py                       # 100 MB, 2 workers, 3 alternating rounds
    python benchmarks/dask_userpath.py --size-mb 5 --rounds 1   # smoke test
    python benchmarks/dask_userpath.py --tuned                # workers with docs/dask.md's batch settings

The cluster is what a Dask user has running: ``dask scheduler`` and ``--workers`` ``dask worker``
processes (one thread each) on 127.0.0.1, started once before any timing. Per workload, in
alternating order each round:

* **mrkit on Dask**: the job file of ``userpath.py`` run as ``python job.py INPUTS OUT TSV`` with
  ``executor="dask://…"`` (the job writes ``OUT``, then the TSV of ``mrkit.read_output(OUT)``);
* **mrkit on processes**: the same job file with the default executor (target: Dask <= 1.25x);
* **Dask bag**: a plain bag program on the same cluster, one partition per file, writing the TSV
  (target: mrkit on Dask <= 0.6x the bag's wall time). The word count is the bag textbook
  (``map(tokenize).flatten().frequencies()``), the ad revenue ``map(split).foldby(url, add)``.

Workloads: ``wc-record`` (the textbook ``(word, 1)`` job with a combiner), ``wc-split`` (the
split-level ``Counter`` job, against the same bag word count), ``adrevenue``. Every side's output
must be the same (float sums to 1e-9 relative). Times are medians. The Dask/processes figure judged
against its target is the median of the per-round ratios, as in ``userpath.py``: the two sides of a
round run back to back, so their ratio survives a machine whose speed drifts between rounds, which a
ratio of medians does not. The Dask/bag figure is a ratio of medians (the bag is 5-10x slower, so
drift does not decide it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run  # noqa: E402 - its _same: equal keys, floats to a relative 1e-9
import userpath  # noqa: E402
from userpath import HEADER, TOKENIZER, cached_inputs, job_script, read_tsv, timed_run  # noqa: E402

TARGETS = {"vs processes": 1.25, "vs bag": 0.6}
WORKLOADS = ("wc-record", "wc-split", "adrevenue")

BAG_WORDCOUNT = """
def tokenize(line):
    return line.translate(TABLE).lower().split()


def main():
    address, *paths, tsv = sys.argv[1:]
    import dask.bag as db
    from distributed import Client

    with Client(address) as client:
        counts = db.read_text(paths).map(tokenize).flatten().frequencies().compute()
    with open(tsv, "w", encoding="utf-8") as out:
        for word, n in counts:
            out.write(f"{word}\\t{n}\\n")
"""

BAG_ADREVENUE = """
def url_revenue(line):
    fields = line.split(",")
    return fields[1], float(fields[3])


def add(total, pair):
    return total + pair[1]


def main():
    address, *paths, tsv = sys.argv[1:]
    import dask.bag as db
    from distributed import Client

    with Client(address) as client:
        sums = (
            db.read_text(paths)
            .map(url_revenue)
            .foldby(lambda pair: pair[0], add, 0.0, lambda a, b: a + b, 0.0)
            .compute()
        )
    with open(tsv, "w", encoding="utf-8") as out:
        for url, revenue in sums:
            out.write(f"{url}\\t{revenue}\\n")
"""


def bag_script(name: str) -> str:
    body = BAG_ADREVENUE if name == "adrevenue" else BAG_WORDCOUNT
    return HEADER + "\n" + TOKENIZER + body + userpath.RUN_MAIN


def with_executor(source: str, call_end: str, executor: str) -> str:
    """The job file ``source`` with ``executor=`` added to its ``mrkit.run`` call (which ends with
    ``call_end``)."""
    assert source.count(call_end) == 1, call_end
    return source.replace(call_end, call_end[:-1] + f", executor={executor!r})")


#: ``--tuned``: the workers' settings docs/dask.md recommends for a cluster that runs batch jobs (the
#: local cluster ``dask`` starts with them: mrkit.backends.dask.executor.LOCAL_CLUSTER_CONFIG), as
#: the YAML file the docs show. A file, not environment variables: Dask lower-cases the names of
#: DASK_* variables, so none can reach the nanny's ``MALLOC_TRIM_THRESHOLD_``.
TUNED_YAML = """\
distributed:
  worker:
    profile:
      enabled: false
  admin:
    tick:
      interval: 1s
    system-monitor:
      interval: 2s
  nanny:
    pre-spawn-environ:
      MALLOC_TRIM_THRESHOLD_: null
"""


def tuned_env(folder: Path) -> dict[str, str]:
    """The workers' environment for ``--tuned``: ``DASK_CONFIG`` names a folder holding TUNED_YAML."""
    config = folder / "dask-config"
    config.mkdir(exist_ok=True)
    (config / "batch.yaml").write_text(TUNED_YAML, encoding="utf-8")
    return {"DASK_CONFIG": str(config)}


def start_cluster(
    workers: int, folder: Path, worker_env: dict[str, str] | None = None
) -> tuple[str, list[subprocess.Popen[bytes]]]:
    dask = str(Path(sys.executable).with_name("dask"))
    scheduler_file = folder / "scheduler.json"
    log = open(folder / "cluster.log", "wb")  # noqa: SIM115 - the processes hold it
    procs = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
            + ["--scheduler-file", str(scheduler_file)],
            stdout=log,
            stderr=log,
            env=userpath._env(),
        )
    ]
    deadline = time.monotonic() + 60
    while not scheduler_file.exists() or not scheduler_file.read_text():
        if time.monotonic() > deadline:
            raise RuntimeError("dask scheduler did not start")
        time.sleep(0.1)
    address = json.loads(scheduler_file.read_text())["address"]
    for i in range(workers):
        procs.append(
            subprocess.Popen(
                [dask, "worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--no-dashboard"]
                + ["--name", f"bench-{i}"],
                stdout=log,
                stderr=log,
                env={**userpath._env(), **(worker_env or {})},
            )
        )
    from distributed import Client

    with Client(address, timeout=60) as client:
        client.wait_for_workers(workers, timeout=60)
    return address, procs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=100.0)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians printed)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", nargs="*", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--data-dir", type=Path, default=userpath.run.ROOT / ".bench")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--no-bag",
        action="store_true",
        help="skip the Dask bag side (slow at large sizes): only dask/processes",
    )
    parser.add_argument(
        "--tuned",
        action="store_true",
        help="start the workers with docs/dask.md's batch settings (profiler off, slower tick and "
        "monitor, no MALLOC_TRIM_THRESHOLD_)",
    )
    args = parser.parse_args(argv)
    sides = ["dask", "processes"] + ([] if args.no_bag else ["bag"])
    tmp = Path(tempfile.mkdtemp(prefix="mrkit-dask-userpath-"))
    address, procs = start_cluster(args.workers, tmp, tuned_env(tmp) if args.tuned else None)
    executor = address.replace("tcp://", "dask://")
    report: dict[str, Any] = {"size_mb": args.size_mb, "workers": args.workers, "rounds": args.rounds}
    ok = True
    print(
        f"mrkit on a running Dask cluster ({args.workers} workers"
        + (", tuned" if args.tuned else ", Dask's default settings")
        + f"), {args.size_mb:g} MB, fresh processes"
    )
    try:
        for name in args.only:
            kind = "uservisits" if name == "adrevenue" else "text"
            paths = cached_inputs(args.data_dir, kind, args.size_mb)
            extra = ', input_format="text"' if name == "adrevenue" else ""
            scripts = {}
            for side, source in (
                (
                    "dask",
                    with_executor(
                        job_script(name, args.workers), f"workers={args.workers}{extra})", executor
                    ),
                ),  # noqa: E501
                ("processes", job_script(name, args.workers)),
                ("bag", bag_script(name)),
            ):
                scripts[side] = tmp / f"{name}-{side}.py"
                scripts[side].write_text(source)
            assert "executor=" in scripts["dask"].read_text(), "the Dask job file names no executor"
            times: dict[str, list[float]] = {side: [] for side in sides}
            outputs: dict[str, dict[str, Any]] = {}
            for r in range(args.rounds):
                for side in sides if r % 2 == 0 else sides[::-1]:
                    tsv = tmp / f"{name}-{side}.tsv"
                    if side == "bag":
                        argv = [sys.executable, str(scripts[side]), address, *paths, str(tsv)]
                    else:
                        out_dir = tmp / f"{name}-{side}-out"
                        argv = [sys.executable, str(scripts[side]), *paths, str(out_dir), str(tsv)]
                    times[side].append(timed_run(argv))
                    outputs[side] = read_tsv(tsv)
            agree = all(run._same(outputs["dask"], outputs[side])[0] for side in sides)
            med = {side: statistics.median(ts) for side, ts in times.items()}
            # Per round, the two sides ran back to back: their ratio survives the machine's speed
            # drifting between rounds, which a ratio of medians does not.
            pairs = [d / p for d, p in zip(times["dask"], times["processes"], strict=True)]
            vs_proc = statistics.median(pairs)
            vs_bag = med["dask"] / med["bag"] if "bag" in med else float("nan")
            passed = (
                agree and vs_proc <= TARGETS["vs processes"] and (args.no_bag or vs_bag <= TARGETS["vs bag"])
            )
            ok &= passed
            report[name] = {
                "seconds": times,
                "same": agree,
                "vs processes": vs_proc,
                "vs processes per round": pairs,
                "vs bag": vs_bag,
            }
            print(
                f"  {name:<10} dask {med['dask']:6.2f}s  processes {med['processes']:6.2f}s"
                + (f"  bag {med['bag']:6.2f}s" if "bag" in med else "")
                + f"  dask/processes {vs_proc:4.2f} (median of rounds, <= 1.25; per round "
                + ", ".join(f"{r:.2f}" for r in pairs)
                + ")"
                + (f"  dask/bag {vs_bag:4.2f} (<= 0.6)" if "bag" in med else "")
                + f"  {'same output' if agree else 'DIFFERENT OUTPUT'}  {'PASS' if passed else 'MISS'}"
            )
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
