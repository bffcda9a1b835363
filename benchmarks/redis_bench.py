"""Benchmarks of the Redis fleet (issue 3), each against a baseline measured in the same run.

    python benchmarks/redis_bench.py                    # both benchmarks, 100 MB corpus
    python benchmarks/redis_bench.py --size-mb 5 --repeat 1 --tasks 2000     # smoke test
    python benchmarks/redis_bench.py --only tiny

The script starts its own ``redis-server`` (free 127.0.0.1 port, temp dir, no persistence) and its
worker processes, and stops them at the end.

1. **tiny**: 10,000 tasks of ~0 work (``workloads.tiny``), each its own task, submitted through
   ``RedisExecutor.submit`` and run by 2 worker processes (``mrkit worker URL --concurrency 2``),
   end to end: from the first submit until every result has been decoded in the caller. The
   baseline is a bare redis-py program doing the transport alone with the same batching: the
   producer pipelines XADD, 2 consumer processes XREADGROUP (COUNT 64), XADD a reply and XACK in a
   pipeline, the producer XREADs the replies. Targets: >= 2,000 tasks/s and <= 3x the baseline.
   Also printed: ``futures.map(tiny, range(N), executor=redis)`` with its default chunking.
2. **wordcount**: ``workloads.WordCountPerRecord`` over the corpus of ``mrkit.corpus.generate_text``
   (8 files), ``mrkit.run(executor=redis://…)`` on 2 warm worker processes vs
   ``mrkit.run(executor="processes", workers=2)`` (whose pool start-up is included, as in
   benchmarks/run.py). Target: <= 1.3x. Results must be identical.

Both sides alternate ``--repeat`` times; medians are reported. The machine is shared: read ratios
from one run, not across runs.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import pickle
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
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
from mrkit.tools import corpus  # noqa: E402

WORKERS = 2


# -- infrastructure ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Fleet:
    """A redis-server and ``mrkit worker`` processes, for the duration of the benchmark."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("redis-server is not installed")
        self.dir = tempfile.mkdtemp(prefix="mrkit-redis-bench-")
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.redis = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                self.dir,
                "--save",
                "",
                "--appendonly",
                "no",
                "--logfile",
                os.path.join(self.dir, "redis.log"),
            ],
        )
        import redis

        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.workers: subprocess.Popen[bytes] | None = None

    def start_workers(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(HERE)])}
        code = "import sys; from mrkit.cli.main import main; main(sys.argv[1:])"
        self.workers = subprocess.Popen(
            [
                sys.executable,
                "-c",
                code,
                "worker",
                self.url,
                "--concurrency",
                str(WORKERS),
                "--name",
                "bench",
            ],
            env=env,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 20
        while client.zcard("mrkit:workers") < WORKERS:
            if time.monotonic() > deadline:
                raise RuntimeError("the workers did not start")
            time.sleep(0.05)

    def stop_workers(self) -> None:
        if self.workers is not None:
            self.workers.send_signal(signal.SIGTERM)
            try:
                self.workers.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.workers.kill()
            self.workers = None

    def close(self) -> None:
        self.stop_workers()
        self.redis.kill()
        self.redis.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def _alternate(
    repeat: int, a: Callable[[], Any], b: Callable[[], Any]
) -> tuple[list[float], list[float], Any, Any]:
    ta: list[float] = []
    tb: list[float] = []
    va = vb = None
    for i in range(repeat):
        for first in ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta)):
            seconds, value = _timed(first[0])
            first[1].append(seconds)
            if first[0] is a:
                va = value
            else:
                vb = value
    return ta, tb, va, vb


# -- 1. tiny tasks -------------------------------------------------------------------------------


def _bare_consumer(port: int, stream: str, reply: str, name: str, stop: Any) -> None:
    import redis

    client = redis.Redis(port=port)
    while not stop.is_set():
        got = client.xreadgroup("g", name, {stream: ">"}, count=64, block=100)
        for _, entries in got or ():
            pipe = client.pipeline(transaction=False)
            for entry_id, fields in entries:
                pipe.xadd(reply, {"r": fields[b"i"]})
                pipe.xack(stream, "g", entry_id)
            pipe.execute()


def bare_loop(port: int, n: int) -> Callable[[], int]:
    """The transport alone: XADD (pipelined) -> 2 consumers XREADGROUP/XADD/XACK -> XREAD replies."""
    import redis

    client = redis.Redis(port=port)
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    stream, reply = "bare:tasks", "bare:results"
    client.delete(stream, reply)
    client.xgroup_create(stream, "g", id="0", mkstream=True)
    consumers = [
        ctx.Process(target=_bare_consumer, args=(port, stream, reply, f"c{i}", stop)) for i in range(WORKERS)
    ]
    for c in consumers:
        c.start()
    bare_loop.consumers = (consumers, stop)  # type: ignore[attr-defined]

    def run() -> int:
        client.delete(reply)
        last = b"0-0"
        pipe = client.pipeline(transaction=False)
        for i in range(n):
            pipe.xadd(stream, {"i": i})
            if i % 500 == 499:
                pipe.execute()
        pipe.execute()
        seen = 0
        while seen < n:
            for _, entries in client.xread({reply: last}, count=2000, block=1000) or ():
                seen += len(entries)
                last = entries[-1][0]
        client.xtrim(stream, maxlen=0)
        return seen

    return run


def stop_bare() -> None:
    consumers, stop = bare_loop.consumers  # type: ignore[attr-defined]
    stop.set()
    for c in consumers:
        c.join(timeout=5)


def mrkit_tiny(ex: Any, n: int) -> Callable[[], list[Any]]:
    from mrkit.model.task import TaskKind, TaskSpec

    fn = cloudpickle.dumps(workloads.tiny, protocol=5)
    digest = hashlib.sha256(fn).hexdigest()
    job = "bench-tiny"

    def run() -> list[Any]:
        futures = [
            ex.submit(
                TaskSpec(
                    job,
                    f"call-{i:06d}",
                    TaskKind.CALL,
                    call_fn=fn,
                    call_digest=digest,
                    call=pickle.dumps([(i,)], protocol=5),
                )
            )
            for i in range(n)
        ]
        return [pickle.loads(f.result().output)[0] for f in futures]

    return run


def bench_tiny(fleet: Fleet, n: int, repeat: int) -> bool:
    from mrkit import futures
    from mrkit.execution.base import open_executor

    ex = open_executor(fleet.url)
    ex.open_session()
    mrkit_tiny(ex, 200)()  # warm: the workers unpickle the function once
    bare = bare_loop(fleet.port, n)
    bare()
    t_mrkit, t_bare, values, seen = _alternate(repeat, mrkit_tiny(ex, n), bare)
    stop_bare()
    ok = values == [workloads.tiny(i) for i in range(n)] and seen == n
    m, b = statistics.median(t_mrkit), statistics.median(t_bare)
    rate = n / m
    print(
        f"tiny tasks: {n} tasks through {WORKERS} Redis workers, end to end (submit .. every result decoded)"
    )
    print(f"  mrkit RedisExecutor.submit  {m:7.3f}s  {rate:8,.0f} tasks/s   (target >= 2,000 tasks/s)")
    print(f"  bare redis-py loop          {b:7.3f}s  {n / b:8,.0f} tasks/s")
    print(f"  ratio mrkit / bare          {m / b:7.2f}x                    (target <= 3x)")
    seconds, out = _timed(lambda: list(futures.map(workloads.tiny, range(n), executor=ex)))
    ok = ok and out == [workloads.tiny(i) for i in range(n)]
    print(f"  futures.map (chunked)       {seconds:7.3f}s  {n / seconds:8,.0f} items/s")
    ex.shutdown()
    verdict = ok and rate >= 2000 and m / b <= 3
    print(f"  {'PASS' if verdict else 'MISS'}{'' if ok else ' (WRONG RESULTS)'}")
    return ok


# -- 2. word count -------------------------------------------------------------------------------


def corpus_files(data_dir: Path, size_mb: float) -> list[str]:
    folder = data_dir / f"redis-text-{size_mb:g}mb"
    marker = folder / ".complete"
    if not marker.exists():
        shutil.rmtree(folder, ignore_errors=True)
        corpus.generate_text(folder, size_mb=size_mb, files=8, seed=0)
        marker.write_text("ok")
    return sorted(str(p) for p in folder.iterdir() if not p.name.startswith("."))


def bench_wordcount(fleet: Fleet, data_dir: Path, size_mb: float, repeat: int) -> bool:
    paths = corpus_files(data_dir, size_mb)
    job = workloads.WordCountPerRecord()

    def on(executor: str) -> Callable[[], dict[Any, Any]]:
        return lambda: dict(
            mrkit.run(
                job,
                paths,
                executor=executor,
                workers=WORKERS,
                n_reduce=WORKERS,
                input_format="text",
                quiet=True,
                progress=False,
            )
        )

    t_redis, t_proc, a, b = _alternate(repeat, on(fleet.url), on("processes"))
    r, p = statistics.median(t_redis), statistics.median(t_proc)
    print(f"word count: {size_mb:g} MB, 8 files, {WORKERS} workers, WordCountPerRecord")
    print(f"  redis://  (warm workers)    {r:7.2f}s  {size_mb / r:6.1f} MB/s")
    print(f"  processes (pool start incl) {p:7.2f}s  {size_mb / p:6.1f} MB/s")
    print(f"  ratio redis / processes     {r / p:7.2f}x   (target <= 1.3x)")
    ok = a == b
    print(f"  {'PASS' if ok and r / p <= 1.3 else 'MISS'}{'' if ok else ' (RESULTS DIFFER)'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["tiny", "wordcount"], default=None)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--size-mb", type=float, default=100.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".bench")
    args = parser.parse_args(argv)
    os.environ.pop("MRKIT_SECRET", None)  # loopback: no secret needed; the signing cost is paid anyway
    fleet = Fleet()
    ok = True
    try:
        fleet.start_workers()
        if args.only in (None, "tiny"):
            ok &= bench_tiny(fleet, args.tasks, args.repeat)
        if args.only in (None, "wordcount"):
            ok &= bench_wordcount(fleet, args.data_dir, args.size_mb, args.repeat)
    finally:
        fleet.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
