"""The report page: one self-contained HTML document (inline CSS and SVG, images as data
URIs; no script, no font, nothing fetched), so it can be mailed, attached to a ticket or
opened on a machine with no network.

Every value from the output is escaped; answers from a model may hold anything.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from html import escape
from typing import Any

from pipeline.errors import ERROR_KINDS
from pipeline.progress import format_duration, format_rate
from pipeline.report.charts import bar_list, column_chart, throughput_series
from pipeline.report.media import Thumbnail
from pipeline.report.output import (
    CATEGORIES,
    COMPLETED_AT,
    ERROR,
    ERROR_KIND,
    FINISH_REASON,
    FLAGGED,
    FRAME_INDICES,
    ID,
    MEDIA_TYPE,
    MODEL,
    NUM_TILES,
    OUTPUT_TOKENS,
    PROMPT_TOKENS,
    REASON,
    TASK,
    TEXT,
    URI,
    OutputCounts,
)

# Columns shown in a row's own places; any other column (pass-through, new ones) is listed as is.
SHOWN = {
    ID,
    URI,
    MEDIA_TYPE,
    TASK,
    MODEL,
    TEXT,
    NUM_TILES,
    FRAME_INDICES,
    FINISH_REASON,
    PROMPT_TOKENS,
    OUTPUT_TOKENS,
    ERROR_KIND,
    ERROR,
    COMPLETED_AT,
    FLAGGED,
    CATEGORIES,
    REASON,
    "tiles_per_image",
    "preprocess_s",
    "generate_s",
    "prompt",
}
MAX_TEXT = 20_000

CSS = """
:root { --fg:#1c2024; --muted:#60646c; --line:#e0e1e6; --bg:#f9f9fb; --card:#fff; --accent:#4f7cff;
        --bad:#e5484d; --good:#30a46c; }
* { box-sizing: border-box; }
body { margin:0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:var(--fg);
       background:var(--bg); }
header, main, footer { max-width: 1200px; margin: 0 auto; padding: 0 20px; }
header { padding-top: 24px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 28px 0 12px; }
.meta { color: var(--muted); margin: 0; word-break: break-all; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px; margin-top: 18px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
.card .value { font-size: 22px; font-weight: 600; }
.card .label { color: var(--muted); font-size: 12px; }
.card.bad .value { color: var(--bad); }
details.settings { margin-top: 12px; }
.charts { display: flex; flex-wrap: wrap; gap: 14px; }
.charts svg { max-width: 100%; height: auto; }
figure { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px; }
figcaption { color: var(--muted); font-size: 12px; margin-bottom: 4px; }
svg .grid { stroke: var(--line); }
svg .tick { font-size: 11px; fill: var(--muted); }
svg .axis, svg .legend { font-size: 11px; fill: var(--muted); }
table { border-collapse: collapse; width: 100%; background: var(--card); }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-weight: 600; color: var(--muted); font-size: 12px; }
td.mono, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px;
                 word-break: break-all; }
details.kind { background: var(--card); border: 1px solid var(--line); border-radius: 8px; margin-bottom: 10px; }
details.kind > summary { cursor: pointer; padding: 8px 12px; }
details.kind > summary b { color: var(--bad); }
.rows { display: grid; grid-template-columns: repeat(auto-fill, minmax(540px, 1fr)); gap: 12px; }
.sample-row { display: grid; grid-template-columns: 230px 1fr; gap: 14px; background: var(--card);
              border: 1px solid var(--line); border-radius: 8px; padding: 12px; }
.sample-row.failed { border-left: 4px solid var(--bad); }
.media img { max-width: 100%; border-radius: 4px; display: block; }
.media .none { color: var(--muted); font-size: 12px; padding: 30px 8px; text-align: center;
               background: var(--bg); border-radius: 4px; word-break: break-word; }
.media .caption { color: var(--muted); font-size: 12px; margin-top: 4px; }
.row-id { font-weight: 600; font-size: 15px; margin: 0 0 4px; word-break: break-all; }
.facts { color: var(--muted); font-size: 12px; margin: 0 0 8px; }
.facts span + span::before { content: " · "; }
.answer { white-space: pre-wrap; margin: 0; max-height: 320px; overflow: auto; }
pre.answer { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px;
             background: var(--bg); padding: 8px; border-radius: 4px; }
.error-text { color: var(--bad); white-space: pre-wrap; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; margin: 0 4px 6px 0;
         background: var(--bg); border: 1px solid var(--line); }
.badge.flagged { background: var(--bad); color: #fff; border-color: var(--bad); }
.badge.clear { background: var(--good); color: #fff; border-color: var(--good); }
.extra { font-size: 12px; color: var(--muted); margin-top: 8px; }
.empty { color: var(--muted); }
footer { color: var(--muted); font-size: 12px; padding: 30px 20px; }
@media (max-width: 760px) { .rows { grid-template-columns: 1fr; } .sample-row { grid-template-columns: 1fr; } }
"""


@dataclass
class SampleRow:
    """A row of the output with its thumbnail."""

    row: dict[str, Any]
    thumbnail: Thumbnail


@dataclass
class ReportData:
    """Everything the page shows."""

    output: str
    generated_at: str
    counts: OutputCounts
    samples: list[SampleRow]
    summary: dict[str, Any] | None = None
    job: dict[str, Any] | None = None
    files: int = 0


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_IMAGE_RUN = re.compile(r"(?:<IMG_CONTEXT>){2,}")


def readable(text: str, limit: int = MAX_TEXT) -> str:
    """Model text made safe to look at: control characters shown as U+FFFD, long texts cut."""
    text = _CONTROL.sub("\ufffd", text)
    text = "".join(c if unicodedata.category(c) != "Cs" else "\ufffd" for c in text)
    return text if len(text) <= limit else text[:limit] + f"\u2026 ({len(text) - limit} more characters)"


def short_prompt(prompt: str) -> str:
    """A prompt with each run of image tokens folded to '<IMG_CONTEXT> x N'."""
    return _IMAGE_RUN.sub(lambda m: f"<IMG_CONTEXT> x {len(m.group(0)) // len('<IMG_CONTEXT>')}", prompt)


def compact(number: float) -> str:
    """'7', '9,999', '12.8k', '3.4M', '1.2B': big counts that fit a card."""
    for at_least, unit, suffix in ((1e9, 1e9, "B"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if abs(number) >= at_least:
            return f"{number / unit:.1f}{suffix}"
    return f"{number:,.0f}"


def _card(label: str, value: Any, bad: bool = False) -> str:
    return (
        f'<div class="card{" bad" if bad else ""}"><div class="value">{escape(str(value))}</div>'
        f'<div class="label">{escape(label)}</div></div>'
    )


def _cards(data: ReportData) -> str:
    counts, summary = data.counts, data.summary or {}
    cards = [
        _card("rows in the output", compact(counts.rows)),
        _card("rows ok", compact(counts.rows - counts.errors)),
        _card("rows with errors", compact(counts.errors), bad=counts.errors > 0),
    ]
    if counts.flagged is not None:
        cards.append(_card("flagged", compact(counts.flagged), bad=counts.flagged > 0))
    if counts.mean_tiles is not None:
        cards.append(_card("mean tiles per row", f"{counts.mean_tiles:.2f}"))
    if summary:
        cards += [
            _card("rows/s (last run)", format_rate(summary.get("rows_per_s"))),
            _card("tokens/s (last run)", format_rate(summary.get("tokens_per_s"))),
            _card("wall time (last run)", format_duration(summary.get("wall_s") or 0)),
        ]
        skipped = summary.get("rows_skipped_by_resume")
        if skipped:
            cards.append(_card("skipped by resume (last run)", compact(skipped)))
        peaks = summary.get("gpu_peak_memory_bytes")
        if peaks:
            from pipeline.progress import format_bytes

            cards.append(_card("peak GPU memory per replica", format_bytes(max(peaks.values()))))
    cards.append(_card("prompt tokens", compact(counts.prompt_tokens)))
    cards.append(_card("output tokens", compact(counts.output_tokens)))
    return '<section class="cards">' + "".join(cards) + "</section>"


def _charts(data: ReportData) -> str:
    counts = data.counts
    figures = []
    start = None
    if data.summary:
        from pipeline.report.output import timestamp

        start = timestamp(data.summary.get("started_at"))
    rates, labels, cumulative = throughput_series(dict(counts.completed_seconds), start)
    if rates:
        figures.append(
            "<figure><figcaption>Throughput: rows written per second over time (bars), rows written so far "
            "(line)</figcaption>"
            + column_chart(
                rates,
                labels,
                title="Throughput over time",
                y_label="rows/s",
                line=cumulative,
                line_label=f"{int(cumulative[-1]):,} rows",
                css_class="chart throughput",
            )
            + "</figure>"
        )
    if counts.tiles:
        top = max(counts.tiles)
        values = [float(counts.tiles.get(t, 0)) for t in range(1, top + 1)]
        figures.append(
            "<figure><figcaption>Tiles per row (448 px tiles given to the model, thumbnail included)</figcaption>"
            + column_chart(
                values,
                [str(t) for t in range(1, top + 1)],
                title="Tiles per row",
                y_label="rows",
                css_class="chart tiles",
            )
            + "</figure>"
        )
    if counts.error_kinds:
        figures.append(
            "<figure><figcaption>Rows with errors, by kind</figcaption>"
            + bar_list(counts.error_kinds.most_common(), title="Errors by kind", css_class="chart errors")
            + "</figure>"
        )
    if counts.categories:
        figures.append(
            "<figure><figcaption>Moderation: rows per category</figcaption>"
            + bar_list(counts.categories.most_common(), title="Flagged categories", css_class="chart categories")
            + "</figure>"
        )
    if not figures:
        return ""
    return '<h2>Charts</h2><section class="charts">' + "".join(figures) + "</section>"


def _errors(data: ReportData) -> str:
    counts = data.counts
    if not counts.error_kinds:
        return '<h2>Errors</h2><p class="empty">No row has an error.</p>'
    parts = [f'<h2 id="errors">Errors by kind ({counts.errors:,} rows)</h2>']
    for kind, number in counts.error_kinds.most_common():
        meaning = ERROR_KINDS.get(kind, "")
        examples = counts.error_examples.get(kind, [])
        rows = "".join(
            f'<tr><td class="mono">{escape(str(e.get(ID)))}</td><td class="mono">{escape(str(e.get(URI) or ""))}</td>'
            f'<td class="error-text">{escape(readable(str(e.get(ERROR) or ""), 2000))}</td></tr>'
            for e in examples
        )
        parts.append(
            f'<details class="kind" open data-kind="{escape(kind)}"><summary><b>{escape(kind)}</b> - '
            f"{number:,} row(s){' - ' + escape(meaning) if meaning else ''}</summary>"
            f"<table><thead><tr><th>id</th><th>uri</th><th>error</th></tr></thead><tbody>{rows}</tbody></table>"
            "</details>"
        )
    return "".join(parts)


def _labels(row: dict[str, Any]) -> str:
    if FLAGGED not in row and CATEGORIES not in row:
        return ""
    parts = []
    flagged = row.get(FLAGGED)
    if flagged is True:
        parts.append('<span class="badge flagged">flagged</span>')
    elif flagged is False:
        parts.append('<span class="badge clear">not flagged</span>')
    for category in row.get(CATEGORIES) or []:
        parts.append(f'<span class="badge">{escape(str(category))}</span>')
    reason = row.get(REASON)
    if reason:
        parts.append(f'<p class="answer reason">{escape(readable(str(reason)))}</p>')
    return '<div class="labels">' + "".join(parts) + "</div>"


def _sample_row(sample: SampleRow) -> str:
    row, thumb = sample.row, sample.thumbnail
    failed = bool(row.get(ERROR_KIND))
    if thumb.data_uri:
        media = f'<img src="{thumb.data_uri}" alt="{escape(str(row.get(ID)))}">'
    else:
        media = f'<div class="none">{escape(readable(thumb.caption, 400))}</div>'
    caption = f'<div class="caption">{escape(thumb.caption)}</div>' if thumb.data_uri and thumb.caption else ""
    facts = [row.get(MEDIA_TYPE) or "unknown type"]
    if row.get(NUM_TILES) and not failed:
        facts.append(f"{row[NUM_TILES]} tile(s)")
    if row.get(FRAME_INDICES):
        facts.append(f"{len(row[FRAME_INDICES])} frame(s)")
    if row.get(PROMPT_TOKENS) is not None:
        facts.append(f"{row[PROMPT_TOKENS]} -> {row.get(OUTPUT_TOKENS)} tokens")
    if row.get(FINISH_REASON):
        facts.append(f"finish: {row[FINISH_REASON]}")
    facts_html = "".join(f"<span>{escape(str(f))}</span>" for f in facts)
    if failed:
        body = f'<p class="error-text">{escape(readable(str(row.get(ERROR) or row.get(ERROR_KIND))))}</p>'
    elif row.get(TEXT) is None:
        body = '<p class="empty">(no answer)</p>'
    elif row.get(TASK) == "ocr":
        body = f'<pre class="answer">{escape(readable(row[TEXT]))}</pre>'
    else:
        body = f'<p class="answer">{escape(readable(row[TEXT]))}</p>'
    extra = [(k, v) for k, v in row.items() if k not in SHOWN and v is not None]
    extra_html = ""
    if extra:
        extra_html = (
            '<div class="extra">'
            + " · ".join(f"<b>{escape(k)}</b>: {escape(readable(str(v), 300))}" for k, v in extra)
            + "</div>"
        )
    prompt = row.get("prompt")
    prompt_html = (
        f'<details class="extra"><summary>prompt</summary><pre class="answer">{escape(readable(short_prompt(prompt)))}'
        "</pre></details>"
        if prompt
        else ""
    )
    uri = row.get(URI) or ""
    return (
        f'<article class="sample-row{" failed" if failed else ""}" data-id="{escape(str(row.get(ID)))}">'
        f'<div class="media">{media}{caption}</div>'
        f'<div class="body"><p class="row-id">{escape(str(row.get(ID)))}</p>'
        f'<p class="facts mono">{escape(uri)}</p><p class="facts">{facts_html}</p>'
        f"{_labels(row)}{body}{extra_html}{prompt_html}</div></article>"
    )


def _settings(data: ReportData) -> str:
    """The settings that decided the answers (the output's `_job.json`), for whoever reads the
    report without the job file."""
    job = data.job or {}
    fingerprint = job.get("fingerprint") or {}
    if not fingerprint:
        return ""
    rows = "".join(
        f'<tr><td class="mono">{escape(key)}</td><td class="mono">{escape(str(value))}</td></tr>'
        for key, value in fingerprint.items()
        if value is not None
    )
    manifests = ", ".join(job.get("manifest_files") or {})
    return (
        '<details class="kind settings"><summary>Settings that decided the answers '
        f'(<span class="mono">_job.json</span>; manifest {escape(manifests)})</summary>'
        f"<table><tbody>{rows}</tbody></table></details>"
    )


def render_report(data: ReportData) -> str:
    """The whole page."""
    counts, summary = data.counts, data.summary or {}
    job = summary.get("job") or "job output"
    models = ", ".join(str(m) for m in counts.models if m) or summary.get("model") or "?"
    tasks = ", ".join(str(t) for t in counts.tasks if t) or "?"
    sample_title = (
        f"Sample: {len(data.samples)} of {counts.rows:,} rows"
        if len(data.samples) < counts.rows
        else f"All {counts.rows:,} rows"
    )
    rows_html = "".join(_sample_row(s) for s in data.samples) or '<p class="empty">No rows.</p>'
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # Belt and braces: even a stray URL in the data could not make the page fetch anything.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'\">"
        f"<title>{escape(job)} - InternVL pipeline report</title><style>{CSS}</style></head><body>"
        f"<header><h1>{escape(job)}</h1>"
        f'<p class="meta">model {escape(models)} · task {escape(tasks)} · {data.files:,} file(s) in '
        f'<span class="mono">{escape(data.output)}</span></p>'
        f'<p class="meta">report generated {escape(data.generated_at)}'
        + (f" · last run finished {escape(str(summary.get('finished_at')))}" if summary.get("finished_at") else "")
        + "</p></header><main>"
        + _cards(data)
        + _settings(data)
        + _charts(data)
        + _errors(data)
        + f'<h2 id="sample">{escape(sample_title)}</h2><section class="rows">{rows_html}</section>'
        + '</main><footer>Made by <span class="mono">python -m pipeline report</span>. Self-contained: '
        "images are embedded, nothing is loaded from the network. Look at single rows with "
        f'<span class="mono">python -m pipeline inspect {escape(data.output)} --id ID</span>.</footer>'
        "</body></html>\n"
    )
