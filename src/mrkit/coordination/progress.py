"""What a person sees while a job runs: a progress line per phase and a one-line summary.

The progress line is drawn on stderr only when stderr is a terminal (never in logs or CI output);
the summary is always printed at the end unless ``quiet``. Both are plain text: no dependency.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def human_bytes(n: float) -> str:
    """``human_bytes(1536) == '1.5 KB'``."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


class Progress:
    """Draws ``map [#######.....] 5/8 tasks 1.2M records 31.0 MB/s`` on a terminal.

    Args:
        stream: where to draw (default stderr).
        enabled: draw at all; default: when ``stream`` is a terminal.
    """

    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._last = 0.0
        self._phase_start = time.monotonic()

    def start_phase(self, phase: str, total: int) -> None:
        """Start timing ``phase`` of ``total`` tasks and draw its empty bar."""
        self._phase_start = time.monotonic()
        self.update(phase, 0, total, 0, 0, force=True)

    def update(
        self, phase: str, done: int, total: int, records: int, nbytes: int, *, force: bool = False
    ) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.2 and done < total:
            return
        self._last = now
        width = 24
        filled = int(width * done / total) if total else 0
        rate = nbytes / max(1e-6, now - self._phase_start) / (1 << 20)
        line = (
            f"\r{phase:<6} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} tasks "
            f"{records:,} records {rate:.1f} MB/s"
        )
        self.stream.write(line)
        if done >= total and total:
            self.stream.write("\n")
        self.stream.flush()


def summary_line(job_id: str, seconds: float, counters: dict[str, int], ok: bool = True) -> str:
    """One line: time, records in/out, bytes, MB/s."""
    nbytes = counters.get("map.bytes_in", 0)
    rate = nbytes / max(seconds, 1e-9) / (1 << 20)
    state = "done" if ok else "FAILED"
    return (
        f"mrkit: job {job_id} {state} in {seconds:.2f} s: "
        f"{counters.get('map.records_in', 0):,} records in ({human_bytes(nbytes)}, {rate:.1f} MB/s), "
        f"{counters.get('reduce.records_out', 0):,} records out "
        f"({human_bytes(counters.get('reduce.bytes_out', 0))}), "
        f"{counters.get('map.tasks', 0)} map + {counters.get('reduce.tasks', 0)} reduce tasks"
    )
