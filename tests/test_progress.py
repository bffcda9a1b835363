"""What a person sees: the progress bar per phase and the one-line summary."""

from __future__ import annotations

import contextlib
import io
import re

import mrkit
from mrkit.coordination.progress import Progress, human_bytes, summary_line
from tests import jobs_for_tests as J


def test_bar_starts_empty_with_its_total_and_ends_full_with_a_newline():
    out = io.StringIO()
    bar = Progress(stream=out, enabled=True)
    bar.start_phase("map", 4)
    bar.update("map", 4, 4, 1000, 3 << 20)
    frames = out.getvalue().split("\r")[1:]
    assert frames[1].startswith("map   :   0%|") and "0/4 tasks, 0 records, 0 B" in frames[1]
    assert frames[-1].startswith("map   : 100%|##########| 4/4")
    assert "4/4 tasks, 1,000 records, 3.0 MB" in frames[-1]
    assert frames[-1].endswith("\n")


def test_bar_is_not_drawn_when_stderr_is_not_a_terminal():
    out = io.StringIO()  # isatty() is False
    bar = Progress(stream=out)
    bar.start_phase("map", 2)
    bar.update("map", 2, 2, 10, 10)
    assert out.getvalue() == ""


def test_a_run_draws_both_phases_and_ends_with_the_summary():
    records = [f"a b c{i % 5}" for i in range(200)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        res = mrkit.run(
            J.WordCount(), mrkit.Records(records), executor="inline", n_map=2, n_reduce=2, progress=True
        )
    text = err.getvalue()
    assert "2/2 tasks, 200 records" in text and "map   : 100%" in text
    assert "reduce: 100%|##########| 2/2" in text
    summary = text.strip().splitlines()[-1]
    assert re.fullmatch(
        r"mrkit: job \S+ done in [\d.]+ s: 200 records in \([\d.]+ KB, [\d.]+ MB/s\), "
        r"7 records out \([\d.]+ (B|KB)\), 2 map \+ 2 reduce tasks",
        summary,
    ), summary
    assert dict(res)["a"] == 200


def test_summary_line_and_sizes():
    line = summary_line("j1", 2.0, {"map.records_in": 1500, "map.bytes_in": 4 << 20, "map.tasks": 3})
    assert line.startswith("mrkit: job j1 done in 2.00 s: 1,500 records in (4.0 MB, 2.0 MB/s)")
    assert "FAILED" in summary_line("j1", 1.0, {}, ok=False)
    assert [human_bytes(n) for n in (5, 1536, 3 << 30)] == ["5 B", "1.5 KB", "3.0 GB"]
