"""Issue 14: mrkit as users run it, against a hand-written ``multiprocessing`` program, each a fresh process.

Usage::

    python benchmarks/userpath.py [--size-mb 100] [--pairs 5] [--only NAME[,NAME]] [--workers 2]
                                  [--big] [--json results.json] [--data-dir .bench]

What is measured (the contract):

* **Every run is a fresh interpreter**, timed wall-clock from this process with ``subprocess.run``:
  interpreter start, imports, pool/worker start-up, the work, and writing the result as a TSV
  (``key TAB value`` per line) all count.

  - mrkit side: ``python JOBSCRIPT inputs... OUTDIR TSV``. The job script (generated into a temp
    folder) defines its ``mrkit.Job`` at module level, as a user's file does, calls
    ``mrkit.run(job, files, output=OUTDIR, overwrite=True, quiet=True, workers=W)`` and writes
    ``mrkit.read_output(OUTDIR)`` to ``TSV``.
  - reference side: ``python REFSCRIPT inputs... TSV``, a ``multiprocessing.Pool(W)`` program with
    one task per input file, merging the per-file results in the parent and writing the TSV. It
    does not import mrkit.

* **Inputs**: 32 files totalling ``--size-mb`` MB from :mod:`mrkit.tools.corpus` (text for the word
  counts, uservisits CSV for ad revenue), generated once into ``<data-dir>/userpath-<size>mb/``.
* **Pairs**: each workload runs ``--pairs`` pairs (mrkit, reference), alternating which side goes
  first. After each pair the two TSVs are compared as dicts (floats to a relative 1e-9, the order
  of additions differs); a difference prints a FAIL line and makes the exit status 1.
* **Report**, per workload: median mrkit seconds, median reference seconds, the median of the
  per-pair ratios mrkit/reference, their min-max, the issue's target and PASS/MISS. A MISS does not
  change the exit status (so ``--size-mb 2 --pairs 1`` is a smoke test, where ratios mean nothing).

Workloads (``--only`` names; targets from issue 14):

* ``wc-split`` (ratio <= 1.1), ``wc-inmapper`` (<= 1.5), ``wc-record`` (<= 2.3): word count with a
  split-level mapper returning a Counter's items, with in-mapper combining, and with a per-record
  ``yield (word, 1)`` mapper plus combiner. All three race the same reference, which tokenizes each
  whole file at once: ``f.read().translate(TABLE).lower().split()`` into a ``Counter``, ``TABLE``
  mapping ASCII punctuation except the apostrophe to spaces. The jobs use the same tokenizer, so
  both sides count the same words.
* ``adrevenue`` (<= 1.6): sum of ``float`` column 4 per column 2 of the uservisits rows; the job is
  ``benchmarks/workloads.py``'s ``AdRevenue`` (per-record mapper + combiner, ``input_format="text"``:
  the rows are split with ``line.split(",")`` on both sides), the reference its ``revenue_file``
  task and ``merge_sums`` driver. Their source is copied into the generated scripts.
* ``fixed`` (mrkit <= 0.3 s absolute): a 2-task job on two tiny files as a whole process, the CLI
  ``mrkit run JOBFILE:WordCount a b -o DIR --overwrite -q`` (the TSV is its part files; read back
  for the comparison outside the timing), against the word-count reference on the same files.
* ``big`` (only with ``--big``): ``wc-split``'s mrkit job over 10x the data (``--size-mb`` x 10, 32
  files) against ``--size-mb``, alternating; target time ratio <= 10.5 and peak RSS per worker
  <= 256 MiB. Memory is the largest ``VmHWM`` (the kernel's peak resident set of a process) over
  the descendants of the job-script process (the workers, plus mrkit's forkserver), polled from
  ``/proc/<pid>/status`` every 50 ms; a worker's last reading is its peak up to 50 ms before it exits.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run  # noqa: E402  (also puts <repo>/src first on sys.path, as for run.py)
import workloads  # noqa: E402

N_FILES = 32
TARGETS = {"wc-split": 1.1, "wc-inmapper": 1.5, "wc-record": 2.3, "adrevenue": 1.6}
FIXED_TARGET_S = 0.3
BIG_TIME_TARGET = 10.5
BIG_RSS_TARGET_MIB = 256
NAMES = (*TARGETS, "fixed", "big")

# -- the generated scripts -----------------------------------------------------------------------

# Apostrophes stay inside words, as in run.py's regex ``[a-z0-9']+``.
PUNCTUATION = string.punctuation.replace("'", "")
TOKENIZER = f"TABLE = str.maketrans({PUNCTUATION!r}, {' ' * len(PUNCTUATION)!r})\n"

HEADER = """\
from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
"""

WC_JOBS = {
    "wc-split": '''
class WordCount(mrkit.Job):
    """One call per split: the whole split's text through one translate, split and Counter."""

    def mapper_split(self, records):
        return Counter("\\n".join(records).translate(TABLE).lower().split()).items()

    def reducer(self, word, counts):
        return sum(counts)
''',
    "wc-inmapper": '''
class WordCount(mrkit.Job):
    """In-mapper combining: a Counter per task, updated per line, emitted by mapper_final."""

    def mapper_init(self):
        self.counts = Counter()

    def mapper(self, line):
        self.counts.update(line.translate(TABLE).lower().split())

    def mapper_final(self):
        return self.counts.items()

    def reducer(self, word, counts):
        return sum(counts)
''',
    "wc-record": '''
class WordCount(mrkit.Job):
    """The textbook job: (word, 1) per word, summed by the combiner and the reducer."""

    def mapper(self, line):
        for word in line.translate(TABLE).lower().split():
            yield word, 1

    def combiner(self, word, counts):
        return sum(counts)

    def reducer(self, word, counts):
        return sum(counts)
''',
}

JOB_MAIN = """
if __name__ == "__main__":
    *paths, out_dir, tsv = sys.argv[1:]
    mrkit.run({cls}(), paths, output=out_dir, overwrite=True, quiet=True, workers={workers}{extra})
    with open(tsv, "w", encoding="utf-8") as out:
        for key, value in mrkit.read_output(out_dir):
            out.write(f"{{key}}\\t{{value}}\\n")
"""

WC_REFERENCE = '''
def count_file(path):
    """One task per file: the whole file through one translate, split and Counter."""
    with open(path, encoding="utf-8") as f:
        return Counter(f.read().translate(TABLE).lower().split())


def main():
    *paths, tsv = sys.argv[1:]
    total = Counter()
    with Pool({workers}) as pool:
        for part in pool.imap_unordered(count_file, paths):
            total.update(part)
    with open(tsv, "w", encoding="utf-8") as out:
        for word, n in total.items():
            out.write(f"{{word}}\\t{{n}}\\n")
'''

ADREVENUE_REFERENCE_MAIN = """
def main():
    *paths, tsv = sys.argv[1:]
    with Pool({workers}) as pool:
        totals = merge_sums(pool, revenue_file, paths)
    with open(tsv, "w", encoding="utf-8") as out:
        for url, revenue in totals.items():
            out.write(f"{{url}}\\t{{revenue}}\\n")
"""

RUN_MAIN = """
if __name__ == "__main__":
    main()
"""


def job_script(name: str, workers: int) -> str:
    """The source of the mrkit job file of workload ``name`` (a ``wc-*`` name or ``adrevenue``)."""
    head = HEADER + "\nimport mrkit\n\n" + TOKENIZER
    if name == "adrevenue":
        # The uservisits files end in .csv; mrkit would parse them as CSV, the job splits lines itself.
        body = "\n" + inspect.getsource(workloads.AdRevenue)
        return head + body + JOB_MAIN.format(cls="AdRevenue", workers=workers, extra=', input_format="text"')
    return head + WC_JOBS[name] + JOB_MAIN.format(cls="WordCount", workers=workers, extra="")


def reference_script(name: str, workers: int) -> str:
    """The source of the hand-written ``Pool`` program that workload ``name`` races."""
    head = HEADER + "from multiprocessing import Pool\n\n" + TOKENIZER
    if name == "adrevenue":
        tasks = [inspect.getsource(f) for f in (workloads.revenue_file, workloads.merge_sums)]
        body = "\n\n" + "\n\n".join(tasks) + ADREVENUE_REFERENCE_MAIN.format(workers=workers)
    else:
        body = "\n" + WC_REFERENCE.format(workers=workers)
    return head + body + RUN_MAIN


# -- data ----------------------------------------------------------------------------------------


def cached_inputs(data_dir: Path, kind: str, size_mb: float, files: int = N_FILES) -> list[str]:
    """Generate (once) and return ``files`` input files of ``kind`` (``text`` or ``uservisits``).

    They live in ``<data_dir>/userpath-<size>mb/<kind>/`` (``<kind>-<files>files/`` for another
    count than 32); a ``.complete`` marker records the arguments and the generator's source digest,
    and a missing or different one regenerates them.
    """
    folder = data_dir / f"userpath-{size_mb:g}mb" / (kind if files == N_FILES else f"{kind}-{files}files")
    return run.cached_corpus(folder, kind, size_mb, files)


# -- running and comparing -----------------------------------------------------------------------


_COMPILED: list[bool] = []


def _env() -> dict[str, str]:
    """The children's environment: this tree's ``src`` first, as run.py does, installed or not.

    The first call also compiles that tree's modules to bytecode, as ``pip install`` does for an
    installed package: otherwise, with ``PYTHONDONTWRITEBYTECODE`` set (or a tree changed since its
    last run), every fresh mrkit process compiles its modules from source first, 70-100 ms per run
    that no user pays, while the reference imports only compiled standard-library modules.
    """
    if not _COMPILED:
        import compileall

        package = run.ROOT / "src" / "mrkit"
        if package.is_dir():
            compileall.compile_dir(str(package), quiet=1)
        _COMPILED.append(True)
    env = dict(os.environ)
    src = str(run.ROOT / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def timed_run(argv: list[str]) -> float:
    """Run ``argv`` as a fresh process; return its wall seconds. Raises on a non-zero exit."""
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=_env(), check=False)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv[:3])} ... exited {done.returncode}:\n{done.stderr[-3000:]}")
    return seconds


def _value(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        return float(text)


def read_tsv(path: Path) -> dict[str, Any]:
    """A ``key TAB value`` file as a dict, values parsed as int or float."""
    with open(path, encoding="utf-8") as f:
        return {k: _value(v) for k, v in (line.rstrip("\n").split("\t") for line in f)}


def read_mrkit_output(out_dir: Path) -> dict[str, Any]:
    """A published mrkit output folder as a dict (for the CLI run, outside its timing)."""
    import mrkit

    return dict(mrkit.read_output(out_dir))


def mrkit_cli() -> list[str]:
    """The ``mrkit`` console script beside this interpreter, else ``python -m mrkit``."""
    script = Path(sys.executable).parent / "mrkit"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mrkit"]


@dataclass
class Outcome:
    """One workload's measurements: per-pair seconds of each side, and whether results agreed."""

    name: str
    mrkit_s: list[float] = field(default_factory=list)
    reference_s: list[float] = field(default_factory=list)
    same: bool = True
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratios(self) -> list[float]:
        return [m / r for m, r in zip(self.mrkit_s, self.reference_s, strict=True)]

    def summary(self) -> dict[str, Any]:
        return {
            "mrkit_median_s": statistics.median(self.mrkit_s),
            "reference_median_s": statistics.median(self.reference_s),
            "ratio_median": statistics.median(self.ratios),
            "ratio_min": min(self.ratios),
            "ratio_max": max(self.ratios),
        }


def race(name: str, pairs: int, run_mrkit: Any, run_reference: Any) -> Outcome:
    """Run ``pairs`` pairs, alternating the first side; compare each pair's two results.

    ``run_mrkit``/``run_reference`` take the pair's index and return ``(seconds, result dict)``.
    """
    out = Outcome(name)
    for i in range(pairs):
        sides = [("mrkit", run_mrkit), ("reference", run_reference)]
        if i % 2:  # whichever goes first may find a cooler or a busier machine
            sides.reverse()
        results = {}
        for side, fn in sides:
            seconds, results[side] = fn(i)
            (out.mrkit_s if side == "mrkit" else out.reference_s).append(seconds)
        same, why = run._same(results["mrkit"], results["reference"])
        if same and name != "big" and not results["mrkit"]:  # two empty files would agree
            same, why = False, "both results are empty"
        if not same:
            out.same, out.note = False, why
            print(f"{name:<12} FAIL pair {i + 1}: results differ: {why}", flush=True)
    return out


def script_runner(script: Path, paths: list[str], tmp: Path, with_out_dir: bool) -> Any:
    """A ``race`` side running ``python script paths... [OUTDIR] TSV``."""

    def side(i: int) -> tuple[float, dict[str, Any]]:
        tsv = tmp / f"{script.stem}-{i}.tsv"
        out_dir = [str(tmp / f"{script.stem}-out")] if with_out_dir else []
        seconds = timed_run([sys.executable, str(script), *paths, *out_dir, str(tsv)])
        return seconds, read_tsv(tsv)

    return side


def cli_runner(job_file: Path, paths: list[str], tmp: Path, workers: int) -> Any:
    """A ``race`` side running ``mrkit run JOBFILE:WordCount paths... -o DIR`` (fresh, CLI)."""

    def side(i: int) -> tuple[float, dict[str, Any]]:
        out_dir = tmp / "cli-out"
        argv = [*mrkit_cli(), "run", f"{job_file}:WordCount", *paths, "-o", str(out_dir)]
        seconds = timed_run([*argv, "--overwrite", "-q", "--workers", str(workers)])
        return seconds, read_mrkit_output(out_dir)

    return side


def write_scripts(tmp: Path, name: str, workers: int) -> tuple[Path, Path]:
    """Write workload ``name``'s job script and reference script into ``tmp``."""
    job, ref = tmp / f"job_{name.replace('-', '_')}.py", tmp / f"ref_{name.replace('-', '_')}.py"
    job.write_text(job_script(name, workers))
    ref.write_text(reference_script(name, workers))
    return job, ref


# -- peak RSS per worker (big) -------------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # the process exited while we looked
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _vm_hwm(pid: int) -> int:
    """The peak resident set of ``pid`` in bytes (``VmHWM``), or 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_with_worker_rss(argv: list[str], interval: float = 0.05) -> tuple[float, int, int]:
    """Run ``argv``; return (wall seconds, its own peak RSS, the largest peak RSS of a descendant)."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    peaks: dict[int, int] = {}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            children, todo = _children_map(), [proc.pid]
            while todo:
                pid = todo.pop()
                peaks[pid] = max(peaks.get(pid, 0), _vm_hwm(pid))
                todo.extend(children.get(pid, ()))
            stop.wait(interval)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    _, stderr = proc.communicate()
    seconds = time.perf_counter() - started
    stop.set()
    poller.join()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv[:2])} ... exited {proc.returncode}:\n{stderr.decode()[-3000:]}")
    own = peaks.pop(proc.pid, 0)
    return seconds, own, max(peaks.values(), default=0)


def big(data_dir: Path, size_mb: float, pairs: int, workers: int, tmp: Path) -> Outcome:
    """``wc-split``'s job over ``10 * size_mb`` ("mrkit" times) vs ``size_mb`` ("reference" times)."""
    small = cached_inputs(data_dir, "text", size_mb)
    large = cached_inputs(data_dir, "text", size_mb * 10)
    job = tmp / "job_big.py"
    job.write_text(job_script("wc-split", workers))
    rss: dict[str, list[int]] = {"large": [], "small": [], "driver_large": [], "driver_small": []}

    def side(size: str, paths: list[str]) -> Any:
        def measure(i: int) -> tuple[float, dict[str, Any]]:
            tsv = tmp / f"big-{size}-{i}.tsv"
            argv = [sys.executable, str(job), *paths, str(tmp / f"big-{size}-out"), str(tsv)]
            seconds, own, worker = run_with_worker_rss(argv)
            rss[size].append(worker)
            rss[f"driver_{size}"].append(own)
            return seconds, {}  # the two sizes' results differ by design: nothing to compare

        return measure

    out = race("big", pairs, side("large", large), side("small", small))
    out.extra = {"large_mb": size_mb * 10, "small_mb": size_mb, "rss_bytes": rss}
    return out


# -- reporting -----------------------------------------------------------------------------------


def report(out: Outcome) -> tuple[str, bool]:
    """The report line of ``out`` and whether it met its target (and its results agreed)."""
    s = out.summary()
    m, r, ratio = s["mrkit_median_s"], s["reference_median_s"], s["ratio_median"]
    spread = f"({s['ratio_min']:.2f}-{s['ratio_max']:.2f})"
    if out.name == "fixed":
        met = m <= FIXED_TARGET_S
        figures = f"mrkit {m:6.3f}s | reference {r:6.3f}s | ratio {ratio:5.2f} {spread}"
        target = f"target mrkit <= {FIXED_TARGET_S} s"
    elif out.name == "big":
        worker_mib = max(out.extra["rss_bytes"]["large"]) / 2**20
        small_mib = max(out.extra["rss_bytes"]["small"]) / 2**20
        met = ratio <= BIG_TIME_TARGET and worker_mib <= BIG_RSS_TARGET_MIB
        large_mb, small_mb = out.extra["large_mb"], out.extra["small_mb"]
        figures = (
            f"{large_mb:g} MB {m:7.2f}s | {small_mb:g} MB {r:6.2f}s | time ratio {ratio:5.2f} {spread} | "
            f"peak RSS per worker {worker_mib:.0f} MiB ({small_mib:.0f} MiB at {small_mb:g} MB)"
        )
        target = f"target time <= {BIG_TIME_TARGET}x, RSS <= {BIG_RSS_TARGET_MIB} MiB"
    else:
        met = ratio <= TARGETS[out.name]
        figures = f"mrkit {m:6.2f}s | reference {r:6.2f}s | ratio {ratio:5.2f} {spread}"
        target = f"target <= {TARGETS[out.name]:g}"
    verdict = "PASS" if met else "MISS"
    if not out.same:
        verdict = "FAIL (results differ)"
    return f"{out.name:<12} {figures} | {target} {verdict}", met and out.same


def measure(name: str, args: argparse.Namespace, tmp: Path) -> Outcome:
    """Run workload ``name`` as the command line asks."""
    size, pairs, workers = args.size_mb, args.pairs, args.workers
    if name == "big":
        return big(args.data_dir, size, pairs, workers, tmp)
    if name == "fixed":
        paths = cached_inputs(args.data_dir, "text", 0.002, files=2)  # 1 KB each
        job, ref = write_scripts(tmp, "wc-split", workers)
        return race(name, pairs, cli_runner(job, paths, tmp, workers), script_runner(ref, paths, tmp, False))
    paths = cached_inputs(args.data_dir, "uservisits" if name == "adrevenue" else "text", size)
    job, ref = write_scripts(tmp, name, workers)
    return race(name, pairs, script_runner(job, paths, tmp, True), script_runner(ref, paths, tmp, False))


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the selected workloads, print one line each.

    Returns:
        1 when a run fails or a pair's results differ, else 0 (a MISS does not count).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=100.0, help="input size (default 100)")
    parser.add_argument("--pairs", type=int, default=5, help="mrkit/reference pairs (default 5)")
    parser.add_argument("--only", default="", help=f"comma-separated, out of: {', '.join(NAMES)}")
    parser.add_argument("--workers", type=int, default=2, help="processes on each side (default 2)")
    parser.add_argument("--big", action="store_true", help="also run 10x the data (time and RSS)")
    parser.add_argument("--json", type=Path, help="also write every measurement to this file")
    parser.add_argument("--data-dir", type=Path, default=run.ROOT / ".bench", help="default <repo>/.bench")
    args = parser.parse_args(argv)
    only = [n for n in args.only.split(",") if n]
    if unknown := [n for n in only if n not in NAMES]:
        parser.error(f"unknown workload {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    if args.pairs < 1 or args.size_mb <= 0:
        parser.error("--pairs must be >= 1 and --size-mb > 0")
    selected = only or [n for n in NAMES if n != "big" or args.big]
    args.data_dir = args.data_dir.resolve()
    print(
        f"mrkit as users run it: {args.size_mb:g} MB in {N_FILES} files, {args.workers} workers, "
        f"{args.pairs} pairs, {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"load average {run._load()}",
        flush=True,
    )
    outcomes, failed = [], False
    with tempfile.TemporaryDirectory(prefix="mrkit-userpath-") as tmp:
        for name in selected:
            try:
                out = measure(name, args, Path(tmp))
            except Exception as exc:  # report it and go on with the other workloads
                print(f"{name:<12} ERROR {type(exc).__name__}: {exc}", flush=True)
                failed = True
                continue
            line, _ = report(out)
            print(line, flush=True)
            outcomes.append(out)
            failed = failed or not out.same
    print(f"done; load average {run._load()}", flush=True)
    if args.json:
        results = [{**asdict(o), **o.summary(), "ratios": o.ratios} for o in outcomes]
        args.json.write_text(
            json.dumps(
                {"args": vars(args) | {"data_dir": str(args.data_dir)}, "results": results},
                indent=2,
                default=str,
            )
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
