"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

Watches a running local job and a running Redis job advance without reloading, follows a link into
a job, reads a failed task's sentence (markup in it stays text), cancels a running job from the
page and sees it end cancelled with nothing published, and measures the page of a 10,000-task job.

Screenshots go to ``$MRKIT_TEST_ARTIFACTS`` (default ``test-artifacts/`` at the repository root).
Without Chromium these tests are skipped, and say so; ``.ci/run`` installs it and sets
``MRKIT_REQUIRE_BROWSER=1``, which turns a missing browser into a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import mrkit
from mrkit.coordination.events import EventLog, TaskEvent
from mrkit.coordination.registry import record_end, save_start
from mrkit.dashboard.server import DashboardServer
from mrkit.dashboard.sources import open_sources
from tests.dashboard_fixtures import registry_running, submit_paced
from tests.redis_fixtures import RedisServer, start_worker, stop_worker, wait_for

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("MRKIT_TEST_ARTIFACTS") or ROOT / "test-artifacts")
CHROMIUM = os.environ.get("MRKIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# What a headless Chromium needs on a closed network, as root, in a container.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        message = f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
        if os.environ.get("MRKIT_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    tab = context.new_page()
    tab.errors = []
    tab.on("pageerror", lambda exc: tab.errors.append(str(exc)))
    try:
        yield tab
    finally:
        context.close()


def shot(tab: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / name), full_page=True)


def progress_of(tab: Any, phase: str = "map") -> int:
    script = "(phase) => { const p = document.querySelector(`progress[data-phase=${phase}]`); "
    script += "return p ? p.value : -1; }"
    return int(tab.evaluate(script, phase))


def watch_advance_then_cancel(tab: Any, out: Path, label: str) -> None:
    """On a running job's page: progress advances with no reload, then the Cancel button ends it
    cancelled and nothing is published."""
    tab.wait_for_selector("#state.running", timeout=20_000)
    first = wait_for(lambda: progress_of(tab) > 0 and progress_of(tab), 30, "a first map task done")
    wait_for(lambda: progress_of(tab) > first, 30, "the map progress to advance without a reload")
    shot(tab, f"{label}-running.png")
    tab.click("#cancel")
    tab.wait_for_selector("#state.cancelled", timeout=30_000)
    assert tab.inner_text("#live") == "ended"
    shot(tab, f"{label}-cancelled.png")
    published = [p.name for p in out.iterdir() if p.name != "_temporary"] if out.exists() else []
    assert published == [], published


def test_a_local_run_live_its_failure_and_cancel(page: Any, tmp_path: Path) -> None:
    failed = mrkit.submit(
        mrkit.Job(mapper=_poisoned, reducer=lambda k, v: sum(v), name="browser-failing"),
        mrkit.Records(["a b", "poison"]), executor="inline", quiet=True, n_map=2,
    )  # fmt: skip
    with pytest.raises(mrkit.JobFailed):
        failed.wait(30)
    board = DashboardServer().start()
    try:
        lines = [f"alpha beta gamma {i}" for i in range(60)]
        running = submit_paced(tmp_path, lines, each=0.15, output=str(tmp_path / "out"), split_size=1)
        wait_for(lambda: registry_running(running.id), what="the run to start")
        page.goto(board.url)
        page.click(f"a:text-is('{running.id}')")  # into the job from the list
        page.wait_for_url(f"**/jobs/local/{running.id}")
        watch_advance_then_cancel(page, tmp_path / "out", "local")
        with pytest.raises(mrkit.JobCancelled):
            running.wait(30)

        page.goto(board.url)
        page.click(f"a:text-is('{failed.id}')")
        page.wait_for_selector("#state.failed")
        sentence = page.inner_text("#failures details summary .sentence")
        assert "ValueError: cannot map <script>window.injected = 1</script>" in sentence
        assert page.evaluate("() => window.injected") is None  # shown as text, never run
        page.click("#failures details summary")
        assert "Traceback" in page.inner_text("#failures details pre")
        page.select_option("#task-filter", "failed")
        assert page.inner_text("#task-count") == "1 tasks"
        shot(page, "local-failed.png")
        assert page.errors == []
    finally:
        board.stop()


def _poisoned(line: str) -> Iterator[tuple[str, int]]:
    if "poison" in line:
        raise ValueError("cannot map <script>window.injected = 1</script>")
    yield from ((w, 1) for w in line.split())


def test_a_redis_job_live_and_cancelled_from_the_page(page: Any, tmp_path: Path) -> None:
    redis = RedisServer(str(tmp_path)).start()
    fleet = start_worker(redis.url, burst=False, concurrency=2, new_session=True)
    board = DashboardServer(open_sources([redis.url])).start()
    try:
        lines = [f"alpha beta gamma {i}" for i in range(80)]
        out = tmp_path / "out"
        handle = submit_paced(tmp_path, lines, each=0.15, executor=redis.url, output=str(out), split_size=1)
        page.goto(board.url)
        page.click(f"a:text-is('{handle.id}')")
        page.wait_for_url(f"**/jobs/e0/{handle.id}")
        watch_advance_then_cancel(page, out, "redis")
        with pytest.raises(mrkit.JobFailed):  # JobCancelled is a JobFailed
            handle.wait(30)
        assert handle.status().state == "cancelled"
        assert page.errors == []
    finally:
        board.stop()
        os.killpg(fleet.pid, signal.SIGTERM)
        stop_worker(fleet)
        redis.stop()


def test_the_page_of_a_10000_task_job_loads_fast_and_stays_responsive(page: Any, tmp_path: Path) -> None:
    job_id = f"browser-10k-{tmp_path.name[-12:]}".replace("_", "-")
    save_start(job_id, "tenk", "processes", {"map": 9000, "reduce": 1000})
    log = EventLog()
    t0 = time.time() - 600
    for i in range(10_000):
        phase, n = ("map", i) if i < 9000 else ("reduce", i - 9000)
        start = t0 + i * 0.05
        log.events.append(
            TaskEvent(phase, f"{phase}-{n:05d}", 1, start, start + 0.04 + (i % 7) * 0.01, "committed",
                      worker=f"host:{100 + i % 8}", records_in=100, records_out=10)
        )  # fmt: skip
    record_end(job_id, "tenk", "processes", log, time.monotonic() - 600, None, {"map.tasks": 9000})
    board = DashboardServer().start()
    try:
        url = board.job_url("local", job_id)
        page.goto(url)
        page.wait_for_function(
            "() => document.getElementById('task-count').textContent.startsWith('showing 500 of 10000')",
            timeout=30_000,
        )
        loaded = page.evaluate("() => performance.now()")  # ms since the navigation started
        page.wait_for_function("() => document.getElementById('timeline').complete", timeout=30_000)
        drawn = page.evaluate("() => performance.now()")
        # Responsive: a filter over the 10,000 rows answers at once.
        took = page.evaluate(
            "() => { const t = performance.now(); const box = document.getElementById('task-search');"
            " box.value = 'reduce-0099'; box.dispatchEvent(new Event('input'));"
            " return [performance.now() - t, document.getElementById('task-count').textContent]; }"
        )
        shot(page, "tenk.png")
        print(
            f"10,000-task page: table in {loaded:.0f} ms, timeline in {drawn:.0f} ms, filter {took[0]:.0f} ms"
        )
        assert took[1] == "10 tasks"
        # The figure is measured here and recorded in benchmarks/README.md (~0.4 s on an idle
        # machine; the bar is 1 s). In the suite, 3 pytest workers load this 2-core machine
        # (3.5 s seen in a full CI run), so the bound here only catches a page that hangs.
        assert loaded < 15_000 and took[0] < 1000
    finally:
        board.stop()
