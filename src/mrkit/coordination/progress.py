"""What a person sees while a job runs: a progress bar per phase and a one-line summary.

The bar is drawn with tqdm (``tqdm.auto``: a widget in notebooks) on stderr, only when stderr is a
terminal (never in logs or CI output) and not with ``-q``. It shows the phase's input bytes read
so far out of its total (map; tasks for reduce), the elapsed time, the ETA and the rate, then the
tasks done, records and bytes. It moves *during* long tasks: a refresh thread adds what running
attempts have read so far (``executor.live_progress()``, see
:func:`mrkit.execution.runtime.live_progress`) to the committed tasks' counts. The summary line is
always printed at the end unless ``quiet``.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO


def human_bytes(n: float) -> str:
    """``human_bytes(1536) == '1.5 KB'``."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


class Progress:
    """A tqdm bar per phase: ``map  45%|####  | 450M/1.00G [00:09<00:11, 48.7MB/s, 3/8 tasks, …]``.

    Args:
        stream: where to draw (default stderr).
        enabled: draw at all; default: when ``stream`` is a terminal.
        refresh: seconds between two redraws from running attempts' progress.
    """

    def __init__(
        self, stream: TextIO | None = None, enabled: bool | None = None, refresh: float = 0.5
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.refresh = refresh
        self._lock = threading.Lock()
        self._bar: Any = None
        self._live: Callable[[], tuple[int, int]] | None = None
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None  # the running phase's refresh thread
        self._phase = ""
        self._total = 0
        self._total_bytes = 0
        self._done = self._records = self._bytes = 0

    def start_phase(
        self,
        phase: str,
        total: int,
        *,
        total_bytes: int = 0,
        live: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        """Start the bar of ``phase``: ``total`` tasks reading ``total_bytes`` (0: unknown).

        Args:
            live: returns ``(records, bytes)`` read so far by running attempts; polled every
                ``refresh`` seconds, so the bar moves while a long task runs.
        """
        self.end_phase()
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        # No tqdm monitor thread (a process-wide thread tqdm starts with its first bar and keeps):
        # this class refreshes its bar itself, and a run must give its caller back single-threaded.
        quiet_tqdm = type("_Bar", (tqdm,), {"monitor_interval": 0})
        with self._lock:
            self._phase, self._total, self._total_bytes, self._live = phase, total, total_bytes, live
            self._done = self._records = self._bytes = 0
            by_bytes = total_bytes > 0
            self._bar = quiet_tqdm(
                total=total_bytes if by_bytes else total,
                desc=f"{phase:<6}",
                unit="B" if by_bytes else " tasks",
                unit_scale=by_bytes,
                unit_divisor=1024,
                file=self.stream,
                leave=True,
                dynamic_ncols=True,
            )
            self._draw_locked()
        if live is not None:
            self._stop = stop = threading.Event()
            self._refresher = threading.Thread(
                target=self._refresh_until, args=(stop,), name="mrkit-progress", daemon=True
            )
            self._refresher.start()

    def update(
        self, phase: str, done: int, total: int, records: int, nbytes: int, *, force: bool = False
    ) -> None:
        """Record the committed tasks' counts (``done`` of ``total``) and redraw."""
        if not self.enabled:
            return
        with self._lock:
            if self._bar is None or phase != self._phase:
                return
            self._done, self._records, self._bytes = done, records, nbytes
            self._draw_locked()
        if total and done >= total:
            self.end_phase()

    def end_phase(self) -> None:
        """Stop refreshing and close the current bar (the driver calls it however the phase ended)."""
        self._stop.set()
        # Joined (outside the lock it takes to draw): once the run ends, its caller is single-threaded.
        refresher, self._refresher = self._refresher, None
        if refresher is not None and refresher is not threading.current_thread():
            refresher.join()
        with self._lock:
            bar, self._bar = self._bar, None
            if bar is not None:
                bar.close()

    def _refresh_until(self, stop: threading.Event) -> None:
        while not stop.wait(self.refresh):
            with self._lock:
                if self._bar is None:
                    return
                self._draw_locked()

    def _draw_locked(self) -> None:
        live_records = live_bytes = 0
        if self._live is not None and self._done < self._total:
            try:
                live_records, live_bytes = self._live()
            except Exception:  # a progress source must never break the job
                self._live = None
        records, nbytes = self._records + live_records, self._bytes + live_bytes
        bar = self._bar
        bar.n = min(nbytes, self._total_bytes) if self._total_bytes else self._done
        bar.set_postfix_str(
            f"{self._done}/{self._total} tasks, {records:,} records, {human_bytes(nbytes)}", refresh=False
        )
        bar.refresh()


def summary_line(job_id: str, seconds: float, counters: dict[str, int], ok: bool = True) -> str:
    """One line: time, records in/out, bytes, MB/s."""
    nbytes = counters.get("map.bytes_in", 0)
    rate = nbytes / max(seconds, 1e-9) / (1 << 20)
    state = "done" if ok else "FAILED"
    # A map-only job (no reduce task) writes its output from the map tasks.
    out = "reduce" if counters.get("reduce.tasks", 0) or "reduce.records_out" in counters else "map"
    return (
        f"mrkit: job {job_id} {state} in {seconds:.2f} s: "
        f"{counters.get('map.records_in', 0):,} records in ({human_bytes(nbytes)}, {rate:.1f} MB/s), "
        f"{counters.get(f'{out}.records_out', 0):,} records out "
        f"({human_bytes(counters.get(f'{out}.bytes_out', 0))}), "
        f"{counters.get('map.tasks', 0)} map + {counters.get('reduce.tasks', 0)} reduce tasks"
    )
