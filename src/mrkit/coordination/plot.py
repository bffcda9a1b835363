"""``mrkit plot ID -o timeline.svg|png``: a job's timeline and task-duration histogram, one picture.

Drawn from the job's task events (:mod:`mrkit.coordination.events`), with no plotting library: one
scene of rectangles and texts (:func:`scene`), written as SVG (:func:`render_svg`, no dependency)
or PNG (:func:`render_png`, with Pillow from the ``dashboard`` extra):

* **timeline** (Spark's event timeline, Lithops' plots): one row per worker, one bar per attempt
  from its start to its end; the fill is the phase (map, reduce, call), the outline the outcome
  (failed red, lost and cancelled grey and dashed, a discarded duplicate hollow); touching attempts
  too narrow to tell apart (a job of thousands of short tasks) are drawn as one bar saying how many;
* **histogram** of the committed attempts' durations, per phase, in 20 bins.

Every text in the SVG (worker names, task ids, error sentences in the tooltips) is XML-escaped.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
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
MERGE_PX = 3.0  # touching attempts narrower than this, of one worker, phase and outcome, are one bar


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    w: float
    h: float
    fill: str
    stroke: str = "none"
    dash: str = ""
    cls: str = ""
    tip: str = ""


@dataclass(frozen=True)
class Text:
    x: float
    y: float
    text: str
    size: int = 11


def scene(events: Iterable[TaskEvent], title: str, note: str = "") -> tuple[int, int, list[Rect | Text]]:
    """(width, height, shapes) of the picture of ``events`` (see the module docstring); ``note``,
    when given, is a line at the bottom (a serverless job's cost: ``mrkit.coordination.cost``)."""
    events = sorted(events, key=lambda e: (e.start, e.task, e.attempt))
    workers = sorted({e.worker or "?" for e in events})
    t0 = min((e.start for e in events), default=0.0)
    t1 = max((e.end for e in events), default=t0 + 1.0)
    span = max(t1 - t0, 1e-6)
    plot_w = WIDTH - LEFT - 20
    timeline_h = 40 + ROW * max(1, len(workers))
    hist_top = timeline_h + 40
    hist_h = 120
    height = hist_top + hist_h + 40 + (18 if note else 0)
    shapes: list[Rect | Text] = [
        Text(10, 18, f"{title}: {len(events)} attempts on {len(workers)} workers, {span:.2f} s", 14)
    ]
    row_of = {w: i for i, w in enumerate(workers)}
    for w, i in row_of.items():
        shapes.append(Text(10, 40 + i * ROW + 12, w[:26]))
    for e, x, width, merged in _bars(events, t0, span, plot_w):
        fill = "none" if e.outcome == "discarded" else PHASE_COLOURS.get(e.phase, "#999999")
        stroke, dash = OUTCOME_STROKES.get(e.outcome, ("#000000", ""))
        if merged > 1:
            tip = f"{merged} {e.phase} attempts, {e.outcome}, from {e.task}"
        else:
            tip = f"{e.task} attempt {e.attempt}: {e.outcome} in {e.end - e.start:.3f} s"
        if e.error:
            tip += f" ({e.error})"
        cls = f"{'attempts' if merged > 1 else 'attempt'} {e.outcome}"
        y = 40 + row_of[e.worker or "?"] * ROW + 2
        shapes.append(Rect(x, y, width, ROW - 4, fill, stroke, dash, cls, tip))
    shapes.append(Text(LEFT, timeline_h + 8, "0 s"))
    shapes.append(Text(WIDTH - 60, timeline_h + 8, f"{span:.2f} s"))
    shapes += _histogram([e for e in events if e.outcome == "committed"], hist_top, hist_h, plot_w)
    if note:
        shapes.append(Text(10, height - 12, note))
    return WIDTH, height, shapes


def render_svg(events: Iterable[TaskEvent], title: str, note: str = "") -> str:
    """The SVG document of ``events`` (``note``: see :func:`scene`)."""
    width, height, shapes = scene(events, title, note)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">'
    ]
    for s in shapes:
        if isinstance(s, Text):
            size = f' font-size="{s.size}"' if s.size != 11 else ""
            out.append(f'<text x="{s.x:g}" y="{s.y:g}"{size}>{escape(s.text)}</text>')
            continue
        out.append(
            f'<rect class="{escape(s.cls)}" x="{s.x:.1f}" y="{s.y:.1f}" width="{s.w:.1f}" '
            f'height="{s.h:.1f}" fill="{s.fill}" stroke="{s.stroke}"'
            + (f' stroke-dasharray="{s.dash}"' if s.dash else "")
            + f"><title>{escape(s.tip)}</title></rect>"
        )
    legend = " ".join(f"{phase}: {colour}" for phase, colour in PHASE_COLOURS.items())
    out.append(f"<desc>{quoteattr(legend)[1:-1]}</desc>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def render_png(events: Iterable[TaskEvent], title: str, note: str = "") -> bytes:
    """The PNG image of ``events`` (Pillow; twice the SVG's size, for sharp text in a report).

    Raises:
        MissingExtra: Pillow is not installed (``pip install 'mrkit[dashboard]'``).
    """
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        from mrkit.errors import MissingExtra

        raise MissingExtra("mrkit plot -o FILE.png", "dashboard", "pillow") from None
    width, height, shapes = scene(events, title, note)
    k = 2
    image = Image.new("RGB", (width * k, height * k), "white")
    draw = ImageDraw.Draw(image)
    fonts: dict[int, Any] = {}
    for s in shapes:
        if isinstance(s, Text):
            font = fonts.get(s.size) or fonts.setdefault(s.size, ImageFont.load_default(size=s.size * k))
            draw.text((s.x * k, s.y * k), s.text, fill="black", font=font, anchor="ls")
            continue
        box = (s.x * k, s.y * k, (s.x + s.w) * k, (s.y + s.h) * k)
        fill = None if s.fill == "none" else s.fill
        outline = None if s.stroke == "none" else s.stroke
        draw.rectangle(box, fill=fill, outline=outline, width=k if outline else 0)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _bars(
    events: list[TaskEvent], t0: float, span: float, plot_w: float
) -> list[tuple[TaskEvent, float, float, int]]:
    """(first event, x, width, attempts) per bar. Attempts of one worker, phase and outcome that
    are each under :data:`MERGE_PX` wide and touch (less than a pixel apart) are one bar: at that
    size they could not be told apart, and a browser spends seconds drawing 10,000 of them."""
    bars: list[list[Any]] = []
    open_bar: dict[str, list[Any]] = {}  # worker -> its last bar
    for e in events:
        x = LEFT + (e.start - t0) / span * plot_w
        width = max(1.0, (e.end - e.start) / span * plot_w)
        last = open_bar.get(e.worker)
        if (
            last is not None
            and last[4]  # the bar so far is of narrow attempts
            and width < MERGE_PX
            and (last[0].phase, last[0].outcome) == (e.phase, e.outcome)
            and x - (last[1] + last[2]) < 1.0
        ):
            last[2] = max(last[2], x + width - last[1])
            last[3] += 1
            continue
        bar = [e, x, width, 1, width < MERGE_PX]
        bars.append(bar)
        open_bar[e.worker] = bar
    return [(b[0], b[1], b[2], b[3]) for b in bars]


def _histogram(events: list[TaskEvent], top: int, height: int, plot_w: int) -> list[Rect | Text]:
    out: list[Rect | Text] = [Text(10, top - 8, "committed attempts by duration (s)", 13)]
    if not events:
        return [*out, Text(LEFT, top + 20, "none")]
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
            tip = f"{phase}: {n} attempts, {low:.3f}-{high:.3f} s"
            out.append(
                Rect(x, top + height - h, bar_w, h, PHASE_COLOURS.get(phase, "#999999"), cls="bin", tip=tip)
            )
    out.append(Text(LEFT, top + height + 14, "0"))
    out.append(Text(WIDTH - 60, top + height + 14, f"{hi:.3f}"))
    return out
