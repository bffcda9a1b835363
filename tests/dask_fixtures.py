"""A real Dask cluster started as separate commands: ``dask scheduler`` and ``dask worker`` processes
on 127.0.0.1, each in its own session, stopped (SIGTERM, then SIGKILL) by PID.

Workers run without a nanny (``--no-nanny``), so the PID a test kills is the process that runs the
tasks, and nothing restarts it behind the test's back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DASK = str(Path(sys.executable).with_name("dask"))


@dataclass
class DaskCluster:
    """A scheduler and its workers, as processes of this test run."""

    folder: Path
    env: dict[str, str]
    scheduler: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    address: str = ""

    def start(self, n_workers: int = 2, timeout: float = 60.0) -> DaskCluster:
        scheduler_file = self.folder / "scheduler.json"
        self.scheduler = self._spawn(
            "scheduler",
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
            + ["--scheduler-file", str(scheduler_file)],
        )
        deadline = time.monotonic() + timeout
        while not scheduler_file.exists() or not scheduler_file.read_text():
            if self.scheduler.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dask scheduler did not start: {self.log('scheduler')}")
            time.sleep(0.1)
        self.address = json.loads(scheduler_file.read_text())["address"]
        for _ in range(n_workers):
            self.add_worker()
        self.wait_for_workers(n_workers, deadline - time.monotonic())
        return self

    def add_worker(self) -> subprocess.Popen[bytes]:
        index = len(self.workers)
        proc = self._spawn(
            f"worker-{index}",
            [DASK, "worker", self.address, "--host", "127.0.0.1", "--nthreads", "1"]
            + ["--no-nanny", "--no-dashboard", "--name", f"w{index}"],
        )
        self.workers.append(proc)
        return proc

    def wait_for_workers(self, n: int, timeout: float) -> None:
        from distributed import Client

        with Client(self.address, timeout=timeout) as client:
            client.wait_for_workers(n, timeout=timeout)

    def _spawn(self, label: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.folder / f"{label}.log", "wb")  # noqa: SIM115 - closed when the process is stopped
        try:
            return subprocess.Popen(argv, stdout=log, stderr=log, env=self.env, start_new_session=True)
        finally:
            log.close()  # the child holds its own copy

    def log(self, label: str) -> str:
        path = self.folder / f"{label}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM every process this cluster started (workers first), SIGKILL what remains."""
        procs = [*self.workers, *([self.scheduler] if self.scheduler else [])]
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                # Seen once under load (a worker ignoring SIGTERM for 15 s): leave a trace to read.
                print(f"dask_fixtures: SIGKILL after SIGTERM timed out: {proc.args}", file=sys.stderr)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def start_cluster(n_workers: int = 2, env: dict[str, str] | None = None) -> DaskCluster:
    """Start ``dask scheduler`` and ``n_workers`` ``dask worker`` processes on 127.0.0.1."""
    folder = Path(tempfile.mkdtemp(prefix="mrkit-dask-"))
    full_env = {**os.environ, **(env or {})}
    # The workers import the tests' job modules (tests.contract_jobs) by reference.
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent), full_env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    return DaskCluster(folder, full_env).start(n_workers)


def closing_submitted_clients(monkeypatch: Any) -> Iterator[None]:
    """For an autouse fixture: record every handle ``mrkit.submit`` returns during the test, then
    close the Dask client each one holds (a submit to ``dask://…`` opens its own). A client left to
    the garbage collector closes at a random later moment, inside another test, and one whose
    scheduler a test stopped retries its connection meanwhile."""
    import mrkit

    handles: list[Any] = []
    real = mrkit.submit

    def recording(*args: Any, **kwargs: Any) -> Any:
        handle = real(*args, **kwargs)
        handles.append(handle)
        return handle

    monkeypatch.setattr(mrkit, "submit", recording)
    yield
    for handle in handles:
        client = getattr(handle, "client", None)
        if type(client).__module__.startswith("distributed") and client.status not in ("closing", "closed"):
            client.close(timeout=10)
