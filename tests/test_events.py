"""Task events of blocking runs (mrkit.coordination.events) and ``mrkit plot`` (the SVG timeline).

Every backend records the same events for the same job: the contract suite checks it
(tests/test_executor_contract.py); this file checks the rest on inline and processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import mrkit
from mrkit.coordination.events import OUTCOMES
from mrkit.coordination.registry import load_events, registry_dir
from tests import contract_jobs as C


def text(tmp_path: Path, lines: list[str]) -> str:
    path = tmp_path / "in.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_a_run_keeps_one_event_per_attempt_with_its_outcome_and_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MRKIT_HOME", str(tmp_path / "home"))
    source = text(tmp_path, ["a b a", "c d"] * 50)
    result = mrkit.run(
        C.WORD_COUNT,
        source,
        executor="processes",
        workers=2,
        n_reduce=2,
        split_size=200,
        quiet=True,
        job_id="ev1",
    )
    events = load_events("ev1")
    committed = [e for e in events if e.outcome == "committed"]
    assert {(e.phase, e.task) for e in committed} == {
        *(("map", f"map-{i:05d}") for i in range(result.counters["map.tasks"])),
        ("reduce", "reduce-00000"),
        ("reduce", "reduce-00001"),
    }
    assert all(e.outcome in OUTCOMES and e.start <= e.end and e.worker for e in events)
    assert sum(e.records_in for e in committed if e.phase == "map") == 100
    assert (
        sum(e.records_out for e in committed if e.phase == "reduce") == result.counters["reduce.records_out"]
    )
    status = json.loads((registry_dir("ev1") / "status.json").read_text())
    assert status["state"] == "done" and status["counters"]["map.records_in"] == 100


def test_a_failed_run_keeps_its_failed_attempts_and_their_sentences(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MRKIT_HOME", str(tmp_path / "home"))
    source = text(tmp_path, ["fine", "this line is poison"])
    with pytest.raises(mrkit.JobFailed):
        mrkit.run(
            C.RAISING_MAPPER,
            source,
            executor="inline",
            job_id="ev2",
            policy=mrkit.RetryPolicy(max_attempts=2),
            quiet=True,
        )
    failed = [e for e in load_events("ev2") if e.outcome == "failed"]
    assert len(failed) == 2 and all("ValueError: cannot map" in e.error for e in failed)
    assert json.loads((registry_dir("ev2") / "status.json").read_text())["state"] == "failed"


def test_mrkit_plot_writes_an_escaped_svg_timeline_and_refuses_unknown_ids(tmp_path: Path) -> None:
    """The SVG has one bar per attempt and a histogram; text user code produced is escaped."""
    env_home = tmp_path / "home"
    module = tmp_path / "scripty.py"
    module.write_text(
        "import mrkit\n"
        "def bad(line):\n"
        "    if 'x' in line:\n"
        "        raise ValueError('<script>alert(1)</script>')\n"
        "    yield line, 1\n"
        "job = mrkit.Job(mapper=bad)\n",
        encoding="utf-8",
    )
    source = text(tmp_path, ["a", "b", "x"])
    env = {"MRKIT_HOME": str(env_home), "PATH": "/usr/bin:/bin"}

    def mrkit_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mrkit", *args], capture_output=True, text=True, timeout=120, env=env
        )

    failed = mrkit_cli("run", f"{module}:job", source, "--job-id", "bad1", "-o", str(tmp_path / "out"))
    assert failed.returncode == 1
    done = mrkit_cli("plot", "bad1", "-o", str(tmp_path / "bad1.svg"))
    assert done.returncode == 0, done.stderr
    svg = (tmp_path / "bad1.svg").read_text()
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert svg.count('<rect class="attempt') == len(load_events_from(env_home, "bad1"))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    unknown = mrkit_cli("plot", "nope", "-o", str(tmp_path / "n.svg"))
    assert unknown.returncode == 2 and "no run nope in the job registry" in unknown.stderr.splitlines()[0]
    png = mrkit_cli("plot", "bad1", "-o", str(tmp_path / "bad1.png"))
    assert png.returncode == 0, png.stderr
    from PIL import Image

    with Image.open(tmp_path / "bad1.png") as image:
        assert image.format == "PNG" and image.size[0] == 1800  # twice the SVG's 900 px
        colours = {colour for _, colour in image.getcolors(1 << 20) or []}
        assert (0x4C, 0x78, 0xA8) in colours  # map bars are drawn in the map colour
    wrong = mrkit_cli("plot", "bad1", "-o", str(tmp_path / "bad1.pdf"))
    assert wrong.returncode == 2 and "SVG or PNG" in wrong.stderr.splitlines()[0]


def load_events_from(home: Path, job_id: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in (home / "jobs" / job_id / "events.jsonl").read_text().splitlines()]


def test_mrkit_status_without_executor_follows_a_local_run_during_and_after_it(tmp_path: Path) -> None:
    """``mrkit status ID`` finds a ``mrkit run`` of this machine in the registry: running (tasks done
    so far, from the events written as attempts end), then done; an unknown id is one sentence."""
    import time

    home = tmp_path / "home"
    module = tmp_path / "slow.py"
    module.write_text(
        "import time, mrkit\n"
        "def slow(line):\n"
        "    time.sleep(0.4)\n"
        "    yield line, 1\n"
        "job = mrkit.Job(mapper=slow, reducer=lambda k, vs: sum(vs))\n",
        encoding="utf-8",
    )
    source = text(tmp_path, [f"line {i}" for i in range(8)])
    env = {"MRKIT_HOME": str(home), "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-m", "mrkit"]
    argv = [
        *command,
        "run",
        f"{module}:job",
        source,
        "--job-id",
        "live1",
        "--split-size",
        "1",
        "--workers",
        "2",
    ]
    run = subprocess.Popen([*argv, "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        seen_running = None
        deadline = time.monotonic() + 60
        while run.poll() is None and time.monotonic() < deadline:
            done = subprocess.run(
                [*command, "status", "live1", "--json"], capture_output=True, text=True, env=env
            )
            if done.returncode == 0 and json.loads(done.stdout)["state"] == "running":
                seen_running = json.loads(done.stdout)
                if seen_running["tasks"]["map"]["done"] >= 1:
                    break
            time.sleep(0.2)
        assert seen_running is not None and seen_running["tasks"]["map"]["total"] == 8, seen_running
        assert run.wait(60) == 0
    finally:
        if run.poll() is None:
            run.kill()
    final = subprocess.run([*command, "status", "live1", "--json"], capture_output=True, text=True, env=env)
    st = json.loads(final.stdout)
    assert (
        final.returncode == 0 and st["state"] == "done" and st["tasks"]["map"] == {"done": 8, "total": 8}
    ), st
    assert st["counters"]["map.records_in"] == 8
    committed = [e for e in st["events"] if e["outcome"] == "committed"]
    assert sorted(e["task"] for e in committed if e["phase"] == "map") == [f"map-{i:05d}" for i in range(8)]
    slowest = st["slowest"]
    assert (
        len(slowest) == 3
        and slowest[0]["seconds"] >= slowest[-1]["seconds"]
        and slowest[0]["task"].startswith("map-")
    )
    text_status = subprocess.run(
        [*command, "status", "live1"], capture_output=True, text=True, env=env
    ).stdout
    assert "slowest   map-" in text_status, text_status
    unknown = subprocess.run([*command, "status", "nope"], capture_output=True, text=True, env=env)
    assert unknown.returncode == 2 and "no run nope in the job registry" in unknown.stderr.splitlines()[0]


def test_a_listing_reads_an_ended_runs_counts_from_its_end_record(tmp_path: Path, monkeypatch) -> None:
    """``mrkit jobs`` and the dashboard list many runs: an ended run's counts come from what its end
    recorded, not from re-reading its events (here deleted to prove it)."""
    from mrkit.coordination.registry import list_runs, registry_dir

    monkeypatch.setenv("MRKIT_HOME", str(tmp_path / "home"))
    job = mrkit.Job(mapper=lambda line: [(w, 1) for w in line.split()], reducer=lambda k, v: sum(v))
    result = mrkit.run(job, mrkit.Records(["a b", "b c", "c d"]), executor="inline", n_map=3, quiet=True)
    (registry_dir(result.job_id) / "events.jsonl").unlink()
    (listed,) = list_runs()
    assert listed.id == result.job_id and listed.state == "done"
    assert (listed.map.done, listed.map.total, listed.map.attempts) == (3, 3, 3)
    assert listed.reduce.done == listed.reduce.total >= 1
