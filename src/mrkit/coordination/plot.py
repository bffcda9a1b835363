"""``mrkit plot ID -o timeline.svg``: a run's timeline and task-duration histogram, as one SVG.

Drawn from the run's task events (:mod:`mrkit.coordination.events`), with no plotting library:

* **timeline** (Spark's event timeline, Lithops' plots): one row per worker, one bar per attempt
  from its start to its end; the fill is the phase (map, reduce, call), the outline the outcome
  (failed red, lost and cancelled grey and dashed, a discarded duplicate hollow);
* **histogram** of the committed attempts' durations, per phase, in 20 bins.

Every text in the file (worker names, task ids, error sentences in the tooltips) is XML-escaped.
"""

from __future__ import annotations

from collections.abc import Iterable
from xml.sax.saxutils import escape, quoteattr

from mrkit.coordination.events import TaskEvent

PHASE_COLOURS = {"map": "#4c78a8", "reduce": "#59a14f", "call": "#b07aa1"}
OUTCOME_STROKES = {
    "committed": ("none", ""),
    "discarded": ("#333333", ""),
    "failed": ("#d62728", ""),
    "lost": ("#7f7f7f", "4 2"),
    "cancelled": ("#7f7f7f", "2 2"),
}
WIDTH, ROW, LEFT, BINS = 900, 18, 170, 20


def render_svg(events: Iterable[TaskEvent], title: str) -> str:
    """The SVG document of ``events`` (see the module docstring)."""
    events = sorted(events, key=lambda e: (e.start, e.task, e.attempt))
    workers = sorted({e.worker or "?" for e in events})
    t0 = min((e.start for e in events), default=0.0)
    t1 = max((e.end for e in events), default=t0 + 1.0)
    span = max(t1 - t0, 1e-6)
    plot_w = WIDTH - LEFT - 20
    timeline_h = 40 + ROW * max(1, len(workers))
    hist_top = timeline_h + 40
    hist_h = 120
    height = hist_top + hist_h + 40
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">',
        f'<text x="10" y="18" font-size="14">{escape(title)}: {len(events)} attempts on '
        f"{len(workers)} workers, {span:.2f} s</text>",
    ]
    row_of = {w: i for i, w in enumerate(workers)}
    for w, i in row_of.items():
        out.append(f'<text x="10" y="{40 + i * ROW + 12}">{escape(w[:26])}</text>')
    for e in events:
        x = LEFT + (e.start - t0) / span * plot_w
        width = max(1.0, (e.end - e.start) / span * plot_w)
        y = 40 + row_of[e.worker or "?"] * ROW + 2
        fill = PHASE_COLOURS.get(e.phase, "#999999")
        stroke, dash = OUTCOME_STROKES.get(e.outcome, ("#000000", ""))
        if e.outcome == "discarded":
            fill = "none"
        tip = f"{e.task} attempt {e.attempt}: {e.outcome} in {e.end - e.start:.3f} s"
        if e.error:
            tip += f" ({e.error})"
        out.append(
            f'<rect class="attempt {escape(e.outcome)}" x="{x:.1f}" y="{y}" width="{width:.1f}" '
            f'height="{ROW - 4}" fill="{fill}" stroke="{stroke}"'
            + (f' stroke-dasharray="{dash}"' if dash else "")
            + f"><title>{escape(tip)}</title></rect>"
        )
    out.append(f'<text x="{LEFT}" y="{timeline_h + 8}">0 s</text>')
    out.append(f'<text x="{WIDTH - 60}" y="{timeline_h + 8}">{span:.2f} s</text>')
    out += _histogram([e for e in events if e.outcome == "committed"], hist_top, hist_h, plot_w)
    legend = " ".join(f"{phase}: {colour}" for phase, colour in PHASE_COLOURS.items())
    out.append(f"<desc>{quoteattr(legend)[1:-1]}</desc>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _histogram(events: list[TaskEvent], top: int, height: int, plot_w: int) -> list[str]:
    out = [f'<text x="10" y="{top - 8}" font-size="13">committed attempts by duration (s)</text>']
    if not events:
        return [*out, f'<text x="{LEFT}" y="{top + 20}">none</text>']
    durations = [e.end - e.start for e in events]
    hi = max(durations) or 1e-6
    counts: dict[str, list[int]] = {}
    for e, d in zip(events, durations, strict=True):
        bins = counts.setdefault(e.phase, [0] * BINS)
        bins[min(BINS - 1, int(d / hi * BINS))] += 1
    tallest = max(max(b) for b in counts.values())
    bar_w = plot_w / BINS / max(1, len(counts))
    for k, (phase, bins) in enumerate(sorted(counts.items())):
        for i, n in enumerate(bins):
            if not n:
                continue
            h = n / tallest * height
            x = LEFT + i * plot_w / BINS + k * bar_w
            low, high = i * hi / BINS, (i + 1) * hi / BINS
            out.append(
                f'<rect class="bin" x="{x:.1f}" y="{top + height - h:.1f}" width="{bar_w:.1f}" '
                f'height="{h:.1f}" fill="{PHASE_COLOURS.get(phase, "#999999")}">'
                f"<title>{escape(phase)}: {n} attempts, {low:.3f}-{high:.3f} s</title></rect>"
            )
    out.append(f'<text x="{LEFT}" y="{top + height + 14}">0</text>')
    out.append(f'<text x="{WIDTH - 60}" y="{top + height + 14}">{hi:.3f}</text>')
    return out
