"""The Dask executor's own behaviour (the shared contract is in tests/test_executor_contract.py):
how it is named and reached, what it leaves running, and that ``import mrkit`` stays free of Dask."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from distributed import Client, LocalCluster

import mrkit
from mrkit import futures
from mrkit.backends.dask import executor as dask_executor
from mrkit.backends.dask.executor import DaskExecutor
from mrkit.errors import ConfigError
from mrkit.execution.base import open_executor
from tests import contract_jobs as C
from tests.dask_fixtures import DaskCluster, start_cluster

ROOT = Path(__file__).resolve().parent.parent
TEXT = ["the quick brown fox", "the lazy dog", "a b a"] * 20


@pytest.fixture(scope="module")
def cli_cluster() -> Iterator[DaskCluster]:
    cluster = start_cluster(n_workers=2)
    try:
        yield cluster
    finally:
        cluster.stop()


def square(x: int) -> int:
    return x * x


def test_import_mrkit_and_a_processes_job_do_not_import_dask(tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("a b a\n", encoding="utf-8")
    program = textwrap.dedent(
        f"""
        import sys, mrkit
        from tests import contract_jobs as C
        if __name__ == "__main__":
            result = mrkit.run(C.WORD_COUNT, {str(source)!r}, executor="processes", workers=1, quiet=True)
            print(dict(result), sorted(m for m in sys.modules if m.split(".")[0] in ("dask", "distributed")))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "{'a': 2, 'b': 1} []", out.stderr


def _children() -> dict[int, psutil.Process]:
    # multiprocessing's resource tracker is one per parent process, started by the first spawned
    # child and kept until this process exits: not a worker of anybody's.
    return {
        p.pid: p
        for p in psutil.Process().children(recursive=True)
        if "resource_tracker" not in " ".join(p.cmdline())
    }


def _worker_settings() -> tuple[str | None, bool]:
    import dask

    return os.environ.get("MALLOC_TRIM_THRESHOLD_"), dask.config.get("distributed.worker.profile.enabled")


def test_the_dask_string_starts_a_loopback_cluster_for_the_run_and_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    before = _children()
    executor = open_executor("dask", workers=1)
    try:
        assert isinstance(executor, DaskExecutor) and executor.local and executor.workers == 1
        started = [p for pid, p in _children().items() if pid not in before]
        assert started, "the local cluster runs its worker in a process of its own"
        info = executor.client.scheduler_info()
        addresses = [executor.client.scheduler.address, *info["workers"]]
        assert all(a.startswith("tcp://127.0.0.1:") for a in addresses), addresses
        # The batch settings of LOCAL_CLUSTER_CONFIG reach the worker: no profiler, and no
        # MALLOC_TRIM_THRESHOLD_ from the nanny (glibc keeps its dynamic mmap threshold).
        settings = executor.client.run(_worker_settings)
        assert list(settings.values()) == [(None, False)], settings
        # Without bokeh the page says what to install, so the link is still worth showing.
        assert (executor.dashboard_link or "").startswith("http://127.0.0.1:"), executor.dashboard_link
        source = tmp_path / "in.txt"
        source.write_text("".join(t + "\n" for t in TEXT), encoding="utf-8")
        result = mrkit.run(C.WORD_COUNT, str(source), executor=executor, quiet=True)
        assert dict(result)["the"] == 40
    finally:
        executor.shutdown()
    _gone, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, f"worker processes outlived shutdown(): {alive}"
    # Dask's nannies set PYTHONHASHSEED and OMP_NUM_THREADS... in this process before each spawn;
    # the caller's environment is theirs again after the run.
    assert "PYTHONHASHSEED" not in os.environ and os.environ["OMP_NUM_THREADS"] == "7"


def test_a_client_of_yours_runs_the_job_and_stays_open(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.txt"
    source.write_text("".join(t + "\n" for t in TEXT), encoding="utf-8")
    with LocalCluster(
        n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0"
    ) as cl:
        with Client(cl) as client:
            result = mrkit.run(C.WORD_COUNT, str(source), executor=client, output=str(tmp_path / "o"))
            # The run's summary line ends with the dashboard of the cluster, which outlives the run.
            summary = capsys.readouterr().err.strip().splitlines()[-1]
            assert re.search(r"records in .*; dashboard http://127\.0\.0\.1:\d+/status$", summary), summary
            assert dict(mrkit.read_output(str(tmp_path / "o")))["a"] == 40
            assert result.counters["map.tasks"] >= 1
            assert client.submit(sum, [1, 2]).result(timeout=30) == 3  # still open: mrkit did not close it
            wrapped = open_executor(client)
            try:
                assert wrapped.name == cl.scheduler_address.replace("tcp://", "dask://")
            finally:
                wrapped.shutdown()
            try:
                assert list(futures.map(square, range(5), executor=client)) == [0, 1, 4, 9, 16]
            finally:
                futures.shutdown()  # shuts the executor futures opened over the client, not the client
            assert client.status == "running"


def test_dask_and_tls_strings_reach_a_scheduler_and_bad_ones_say_what_to_write(
    cli_cluster: DaskCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = cli_cluster.address.rsplit(":", 1)[1]
    executor = open_executor(f"dask://127.0.0.1:{port}")
    try:
        assert executor.name == f"dask://127.0.0.1:{port}" and executor.workers == 2 and executor.local
    finally:
        executor.shutdown()
    assert cli_cluster.scheduler is not None and cli_cluster.scheduler.poll() is None  # not ours to stop
    with pytest.raises(ConfigError, match="selected by 'dask', 'dask://host:port' or 'tls://host:port'"):
        DaskExecutor.from_name("dask://")
    with pytest.raises(ConfigError, match="workers must be a positive integer"):
        open_executor("dask", workers=0)
    monkeypatch.setattr(dask_executor, "CONNECT_TIMEOUT", 1.0)
    with pytest.raises(ConfigError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        open_executor("dask://127.0.0.1:9")  # the discard port: nothing listens


def test_futures_map_and_map_reduce_run_on_a_dask_scheduler(cli_cluster: DaskCluster) -> None:
    name = cli_cluster.address.replace("tcp://", "dask://")
    try:
        assert list(futures.map(square, range(50), executor=name)) == [x * x for x in range(50)]
        assert futures.map_reduce(square, lambda a, b: a + b, range(100), executor=name) == sum(
            x * x for x in range(100)
        )
    finally:
        futures.shutdown()  # closes the client futures opened for the name, before the cluster stops


def test_the_futures_launcher_takes_a_dask_executor(cli_cluster: DaskCluster, tmp_path: Path) -> None:
    script = tmp_path / "squares.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, sys
            from mrkit import futures

            if __name__ == "__main__":
                print(json.dumps([futures.get_executor().name, sum(futures.map(lambda x: x * x, range(30)))]))
            """
        ),
        encoding="utf-8",
    )
    name = cli_cluster.address.replace("tcp://", "dask://")
    out = subprocess.run(
        [sys.executable, "-m", "mrkit", "--executor", name, str(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [name, sum(x * x for x in range(30))]


def test_the_mrkit_command_exits_zero_on_success_and_one_on_failure(
    cli_cluster: DaskCluster, tmp_path: Path
) -> None:
    source = tmp_path / "in.txt"
    source.write_text("ok fine\npoison\nok\n", encoding="utf-8")
    job_file = tmp_path / "job.py"
    job_file.write_text(
        "import mrkit\nfrom tests.jobs_for_tests import failing_mapper, total, words\n"
        "good = mrkit.Job(mapper=words, reducer=total)\n"
        "bad = mrkit.Job(mapper=failing_mapper, reducer=total)\n",
        encoding="utf-8",
    )
    name = cli_cluster.address.replace("tcp://", "dask://")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}

    def mrkit_run(job: str, executor: str, out: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "mrkit", "run", f"{job_file}:{job}", str(source), "-o", out]
        return subprocess.run(
            [*argv, "--executor", executor], capture_output=True, text=True, cwd=ROOT, timeout=180, env=env
        )

    for i, executor in enumerate((name, "dask")):  # a running scheduler; a local cluster for the command
        out = tmp_path / f"good-{i}"
        good = mrkit_run("good", executor, str(out))
        assert good.returncode == 0, good.stderr
        assert dict(mrkit.read_output(str(out))) == {"ok": 2, "fine": 1, "poison": 1}
    first_lines = []
    for i, executor in enumerate((name, "processes")):
        out = tmp_path / f"bad-{i}"
        bad = mrkit_run("bad", executor, str(out))
        assert bad.returncode == 1, bad.stderr
        assert not out.exists()  # nothing published, not even an empty folder
        first_lines.append(re.sub(r"of job \S+", "of job JOB", bad.stderr.splitlines()[0]))
    assert first_lines[0] == first_lines[1]
    assert first_lines[0].startswith("mrkit: error: map task map-00000") and "ValueError" in first_lines[0]


def test_a_script_without_a_main_guard_is_told_to_add_one(tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("a b\n", encoding="utf-8")
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import mrkit\nfrom tests import contract_jobs as C\n"
        f"mrkit.run(C.WORD_COUNT, {str(source)!r}, executor='dask', workers=1, quiet=True)\n",
        encoding="utf-8",
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 1
    # The children's own tracebacks (their re-import of the script failing) may print after ours.
    said = [line for line in out.stderr.splitlines() if line.startswith("mrkit.errors.ConfigError:")]
    assert said and 'put the code that runs the job under `if __name__ == "__main__":`' in said[0]


def test_a_tls_scheduler_is_reached_with_its_security(tmp_path: Path) -> None:
    from distributed.security import Security

    security = Security.temporary()  # a throwaway CA and certificate, as for a real TLS cluster
    source = tmp_path / "in.txt"
    source.write_text("".join(t + "\n" for t in TEXT), encoding="utf-8")
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        host="127.0.0.1",
        protocol="tls",
        security=security,
        dashboard_address="127.0.0.1:0",
    ) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1:")
        executor = open_executor(address, security=security)
        try:
            assert executor.name == address and executor.local
            result = mrkit.run(C.WORD_COUNT, str(source), executor=executor, quiet=True)
            assert dict(result)["the"] == 40
        finally:
            executor.shutdown()


def test_workers_on_other_hosts_need_storage_they_all_reach(
    cli_cluster: DaskCluster, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The test cluster listens on 127.0.0.1 only; pretend its workers' addresses are not loopback
    # (the only thing that tells mrkit whether a worker shares this machine's folders).
    monkeypatch.setattr(dask_executor, "is_loopback", lambda host: False)
    name = cli_cluster.address.replace("tcp://", "dask://")
    with pytest.raises(
        ConfigError, match=r"storage='/tmp/x' is a folder on this machine.*give storage= a URL"
    ):
        open_executor(name, storage="/tmp/x")
    source = tmp_path / "in.txt"
    source.write_text("a b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="runs tasks on other machines: give storage= a URL they all reach"):
        mrkit.run(C.WORD_COUNT, str(source), executor=name, output=str(tmp_path / "out"), quiet=True)
    assert not (tmp_path / "out").exists()


def test_the_launcher_starts_a_local_cluster_for_a_script_without_a_guard(tmp_path: Path) -> None:
    # Under `python -m mrkit` the main module is mrkit's own (guarded), so spawned workers never
    # re-import the script: it needs no `if __name__ == "__main__":` even with executor 'dask'.
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from mrkit import futures\n"
        "print(futures.get_executor().name, sum(futures.map(lambda x: x * x, range(30))))\n",
        encoding="utf-8",
    )
    out = subprocess.run(
        [sys.executable, "-m", "mrkit", "--executor", "dask", "-n", "1", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["dask", str(sum(x * x for x in range(30)))]


def fails_on_seven(x: int) -> int:
    if x == 7:
        raise ValueError(f"seven is not allowed (got {x})")
    return x + 1


def test_tiny_calls_share_dask_tasks_and_each_keeps_its_own_result_or_error(cli_cluster: DaskCluster) -> None:
    """Hundreds of ``futures.submit`` calls in a loop go several to a Dask task (Dask spends ~2 ms
    on each task): every future still gets its own value, and the one call that raises raises its
    own exception, with its type, while the calls sharing its Dask task succeed."""
    from mrkit.backends.dask.executor import DaskExecutor

    name = cli_cluster.address.replace("tcp://", "dask://")
    executor = DaskExecutor.from_name(name)
    sent: list[int] = []
    real_send = executor._send
    executor._send = lambda group: (sent.append(len(group)), real_send(group))[1]  # type: ignore[method-assign]
    try:
        with futures.using(executor):
            submitted = [futures.submit(fails_on_seven, i) for i in range(300)]
            for i, f in enumerate(submitted):
                if i == 7:
                    with pytest.raises(ValueError, match="seven is not allowed"):
                        f.result(timeout=60)
                else:
                    assert f.result(timeout=60) == i + 1
    finally:
        executor.shutdown()
    assert sum(sent) >= 300 and max(sent) > 1, sent  # batched (retries of nothing: 300 calls)
    assert len(sent) < 300
