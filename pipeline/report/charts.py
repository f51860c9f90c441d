"""Small inline SVG charts (no script, no library, no network): pure functions to strings.

Two shapes cover the report: vertical bars over ordered buckets (tiles per row,
throughput per time bucket) and horizontal bars for named counts (errors by kind).
"""

from __future__ import annotations

import math
from html import escape

from pipeline.progress import format_duration, format_rate

WIDTH, HEIGHT = 540, 220
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 48, 12, 14, 38
BAR_COLOUR = "#4f7cff"
LINE_COLOUR = "#f08c2e"


def _nice_max(value: float) -> float:
    """A round axis maximum at or above `value` (1, 2, 2.5 or 5 x 10^n)."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    return next(step * magnitude for step in (1, 2, 2.5, 5, 10) if step * magnitude >= value)


def _axis_label(value: float) -> str:
    return f"{value:g}" if value < 10_000 else f"{value / 1000:g}k"


def column_chart(
    values: list[float],
    labels: list[str],
    *,
    title: str,
    y_label: str,
    line: list[float] | None = None,
    line_label: str = "",
    css_class: str = "chart",
) -> str:
    """Vertical bars (one per value) with every n-th label under the axis; an optional line
    (same x positions, own scale, e.g. a cumulative count) drawn over the bars."""
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    top = _nice_max(max(values, default=0))
    n = max(len(values), 1)
    slot = plot_w / n
    parts = [
        f'<svg class="{css_class}" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    for tick in range(5):
        value = top * tick / 4
        y = PAD_TOP + plot_h - plot_h * tick / 4
        parts.append(f'<line x1="{PAD_LEFT}" y1="{y:.1f}" x2="{WIDTH - PAD_RIGHT}" y2="{y:.1f}" class="grid"/>')
        parts.append(
            f'<text x="{PAD_LEFT - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{_axis_label(value)}</text>'
        )
    every = max(1, round(n / 10))
    for index, (value, label) in enumerate(zip(values, labels, strict=True)):
        height = plot_h * value / top if top else 0
        x = PAD_LEFT + index * slot
        parts.append(
            f'<rect x="{x + slot * 0.1:.1f}" y="{PAD_TOP + plot_h - height:.1f}" width="{max(slot * 0.8, 1):.1f}" '
            f'height="{height:.1f}" fill="{BAR_COLOUR}">'
            f"<title>{escape(label)}: {escape(format_rate(value))}</title></rect>"
        )
        if index % every == 0:
            parts.append(
                f'<text x="{x + slot / 2:.1f}" y="{HEIGHT - PAD_BOTTOM + 16}" class="tick" text-anchor="middle">'
                f"{escape(label)}</text>"
            )
    if line:
        line_top = max(line) or 1
        points = " ".join(
            f"{PAD_LEFT + (i + 0.5) * slot:.1f},{PAD_TOP + plot_h - plot_h * v / line_top:.1f}"
            for i, v in enumerate(line)
        )
        parts.append(f'<polyline points="{points}" fill="none" stroke="{LINE_COLOUR}" stroke-width="2"/>')
        parts.append(
            f'<text x="{WIDTH - PAD_RIGHT}" y="{PAD_TOP + 10}" class="legend" text-anchor="end" fill="{LINE_COLOUR}">'
            f"{escape(line_label)}</text>"
        )
    middle = PAD_TOP + plot_h / 2
    parts.append(
        f'<text x="12" y="{middle:.1f}" class="axis" transform="rotate(-90 12 {middle:.1f})" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def bar_list(counts: list[tuple[str, int]], *, title: str, css_class: str = "chart") -> str:
    """Horizontal bars for named counts, largest first (e.g. errors by kind)."""
    row_h, label_w = 24, 160
    height = PAD_TOP + row_h * max(len(counts), 1) + 8
    top = max((c for _, c in counts), default=0) or 1
    plot_w = WIDTH - label_w - 60
    parts = [
        f'<svg class="{css_class}" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>'
    ]
    for index, (name, count) in enumerate(counts):
        y = PAD_TOP + index * row_h
        width = max(plot_w * count / top, 1)
        parts.append(f'<text x="{label_w - 8}" y="{y + 15}" class="tick" text-anchor="end">{escape(name)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{width:.1f}" height="{row_h - 8}" fill="#e5484d"/>')
        parts.append(f'<text x="{label_w + width + 6:.1f}" y="{y + 15}" class="tick">{count}</text>')
    parts.append("</svg>")
    return "".join(parts)


def throughput_series(
    seconds: dict[int, int], start: float | None, buckets: int = 40
) -> tuple[list[float], list[str], list[float]]:
    """Rows/s per time bucket, bucket labels (time since start) and the cumulative rows, from
    'unix second -> rows written then' (the rows' `completed_at`), starting at `start` when
    given (the run's start, so the time before the first write shows as a gap)."""
    if not seconds:
        return [], [], []
    first = min(seconds)
    begin = min(start, first) if start is not None else first
    end = max(seconds) + 1
    span = max(end - begin, 1)
    buckets = max(1, min(buckets, int(span)))
    width = span / buckets
    counts = [0] * buckets
    for second, rows in seconds.items():
        counts[min(int((second - begin) / width), buckets - 1)] += rows
    rates = [count / width for count in counts]
    labels = [format_duration((i + 1) * width) for i in range(buckets)]
    cumulative, total = [], 0
    for count in counts:
        total += count
        cumulative.append(float(total))
    return rates, labels, cumulative
