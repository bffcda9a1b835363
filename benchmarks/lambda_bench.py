"""Word count on the local function runtime (``lambda-local``) against ``processes``, in one run.

Usage::

    python benchmarks/lambda_bench.py [--size-mb 20] [--workers 2] [--repeat 3] [--s3] [--pings 10]
                                      [--data-dir .bench] [--json results.json]

What it measures, on the same input files (``mrkit.tools.corpus`` text, 8 files, generated once into
``--data-dir``), alternating the sides ``--repeat`` times and reporting medians:

* ``processes``: ``mrkit.run(WordCountSplit, files, executor="processes", workers=W, n_reduce=2)``;
* ``lambda-local``: the same call on ``LocalLambdaExecutor`` (``max_concurrency=W``, intermediate
  data in a local folder): every task is a fresh process (a cold start) running the Lambda handler;
* ``lambda-local+s3`` (with ``--s3``): the same, with inputs, intermediate data and results in moto's
  S3 server on 127.0.0.1 (started here), so each invocation also imports boto3 and makes a client;
* ``multiprocessing``: the hand-written baseline of ``benchmarks/run.py`` (one Pool task per file).

Then the per-invocation overhead, two ways:

* **cold start** of a no-op invocation (``--pings`` synchronous invocations of an event with no
  task: process start, interpreter, ``import mrkit.backends.aws_lambda.handler``); with ``--s3`` also of an
  invocation that opens S3 and reads one object (a duplicate whose result is already stored);
* **in the job**: (lambda-local time - processes time) / invocations.

Exit status 1 when any side's result differs from the others. The machine is shared: compare the
numbers of one run, not across runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from multiprocessing import Pool
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if (ROOT / "src" / "mrkit").is_dir():  # benchmark this tree, installed or not
    sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))  # tests.s3_fixtures (the moto server) for --s3

import workloads  # noqa: E402

import mrkit  # noqa: E402
from mrkit.backends.aws_lambda.emulator import FunctionConfig, LocalFunction  # noqa: E402
from mrkit.backends.aws_lambda.executor import LocalLambdaExecutor, build_event, result_key  # noqa: E402
from mrkit.execution.base import open_executor  # noqa: E402
from mrkit.model.task import TaskKind, TaskResult, TaskSpec  # noqa: E402
from mrkit.storage import open_storage  # noqa: E402
from mrkit.tools import corpus  # noqa: E402

N_FILES = 8
N_REDUCE = 2


def data(data_dir: Path, size_mb: float) -> list[str]:
    folder = data_dir / f"lambda-text-{size_mb:g}mb"
    marker = folder / ".complete"
    if not marker.exists():
        shutil.rmtree(folder, ignore_errors=True)
        corpus.generate_text(folder, size_mb=size_mb, files=N_FILES, seed=0)
        marker.write_text("ok")
    return sorted(str(p) for p in folder.iterdir() if not p.name.startswith("."))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


TASKS: dict[str, int] = {}  # tasks per run, from the counters (one invocation each on lambda-local)


def run_job(executor: Any, inputs: Any) -> dict[str, int]:
    result = mrkit.run(
        workloads.WordCountSplit(),
        inputs,
        executor=executor,
        n_reduce=N_REDUCE,
        quiet=True,
        input_format="text",
    )
    TASKS["last"] = result.counters["map.tasks"] + result.counters["reduce.tasks"]
    return dict(result)


def baseline(paths: list[str], workers: int) -> dict[str, int]:
    with Pool(workers) as pool:
        return workloads.merge_counters(pool, workloads.count_file_whole, paths)


def ping_ms(function: LocalFunction, event: dict[str, Any], n: int) -> list[float]:
    """Wall milliseconds of ``n`` synchronous invocations of ``event`` (each one a fresh process)."""
    times = []
    for _ in range(n):
        seconds, _ = timed(lambda: function.invoke(event, sync=True))
        times.append(seconds * 1000)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-mb", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pings", type=int, default=10)
    parser.add_argument(
        "--s3", action="store_true", help="also run with inputs and storage in moto's S3 server"
    )
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".bench")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    paths = data(args.data_dir, args.size_mb)
    mb = sum(os.path.getsize(p) for p in paths) / 1e6
    scratch = Path(tempfile.mkdtemp(prefix="mrkit-lambda-bench-"))
    server = None
    try:
        local = LocalLambdaExecutor.from_name(
            "lambda-local://bench",
            max_concurrency=args.workers,
            state_dir=str(scratch / "fn"),
            storage=f"file://{scratch / 'store'}",
        )
        sides: dict[str, Callable[[], dict[str, int]]] = {
            "processes": lambda: run_job(open_executor("processes", workers=args.workers), paths),
            "lambda-local": lambda: run_job(local, paths),
            "multiprocessing": lambda: baseline(paths, args.workers),
        }
        s3_inputs = ""
        if args.s3:
            from tests.s3_fixtures import MotoServer

            server = MotoServer().start()
            env = {**server.env(), "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
            os.environ.update(env)  # the deliveries inherit it
            bucket = server.create_bucket()
            inputs = open_storage(f"s3://{bucket}/in")
            for p in paths:
                with open(p, "rb") as f:
                    inputs.put(os.path.basename(p), f.read())
            s3_inputs = f"s3://{bucket}/in/*.txt"
            on_s3 = LocalLambdaExecutor.from_name(
                "lambda-local://bench-s3",
                max_concurrency=args.workers,
                state_dir=str(scratch / "fn-s3"),
                storage=f"s3://{bucket}/mrkit",
            )
            sides["lambda-local+s3"] = lambda: run_job(on_s3, s3_inputs)

        times: dict[str, list[float]] = {name: [] for name in sides}
        results: dict[str, dict[str, int]] = {}
        for r in range(args.repeat):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for name in order:
                seconds, value = timed(sides[name])
                times[name].append(seconds)
                results[name] = value
        reference = results["processes"]
        differ = [name for name, value in results.items() if value != reference]
        invocations = TASKS["last"]
        n_map = invocations - N_REDUCE
        print(
            f"word count, {mb:.1f} MB in {N_FILES} files, {invocations} tasks ({n_map} map + {N_REDUCE} "
            f"reduce), {args.workers} workers, median of {args.repeat}"
        )
        base = statistics.median(times["processes"])
        report: dict[str, Any] = {"size_mb": mb, "workers": args.workers, "repeat": args.repeat, "sides": {}}
        for name, values in times.items():
            med = statistics.median(values)
            line = f"  {name:<16} {med:7.2f} s  {mb / med:7.1f} MB/s  ratio to processes {med / base:5.2f}"
            if name.startswith("lambda-local"):
                per = (med - base) / invocations * 1000
                line += f"  (+{per:.0f} ms per invocation)"
            print(line + ("  RESULT DIFFERS" if name in differ else ""))
            report["sides"][name] = {"seconds": values, "median": med}

        fn = LocalFunction(FunctionConfig(name="ping", state_dir=str(scratch / "ping")))
        noop = ping_ms(fn, {"mrkit": 1, "specs": [], "results": ""}, args.pings)
        print(
            f"cold start, no-op invocation (fresh process + import of the handler): median "
            f"{statistics.median(noop):.0f} ms (min {min(noop):.0f}, max {max(noop):.0f}) "
            f"over {args.pings}"
        )
        report["cold_start_noop_ms"] = noop
        if args.s3:
            store = open_storage(f"s3://{bucket}/mrkit")
            spec = TaskSpec(job_id=f"ping-{uuid.uuid4().hex[:6]}", task_id="map-00000", kind=TaskKind.MAP)
            store.put(result_key(spec.job_id, spec.task_id, 1), TaskResult(spec.task_id, 1).encode())
            event = build_event([dataclasses.replace(spec, storage_url=store.url)], store.url)
            s3 = ping_ms(fn, event, args.pings)
            print(
                f"cold start with S3 (+ import boto3, create a client, one GET): median "
                f"{statistics.median(s3):.0f} ms (min {min(s3):.0f}, max {max(s3):.0f}) over {args.pings}"
            )
            report["cold_start_s3_ms"] = s3
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))
        if differ:
            print(f"FAIL: results differ: {', '.join(differ)}", file=sys.stderr)
            return 1
        return 0
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
