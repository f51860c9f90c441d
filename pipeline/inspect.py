"""`python -m pipeline inspect OUTPUT`: an output's counts, schema and rows, readable in a terminal.

For the questions people ask of a run without writing pandas: how many rows, how many
failed and why, what columns are there, what did the model say for this id. Rows print
one field per line, with long answers wrapped and model noise (control characters, runs
of image tokens in prompts) made readable. `--json` prints rows as JSON lines instead,
for piping into jq.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from datetime import datetime
from typing import Any

from pipeline.errors import ERROR_KINDS, JobError
from pipeline.progress import format_duration, format_rate
from pipeline.report.html import readable, short_prompt
from pipeline.report.output import (
    ERROR_KIND,
    ID,
    JobOutput,
    OutputCounts,
    count_output,
    find_rows,
    first_rows,
    open_output,
)
from pipeline.spec import StorageSpec

KEY_WIDTH = 16


def _value(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, list) and len(value) > 12:
        shown = ", ".join(str(v) for v in value[:12])
        return f"[{shown}, ... ({len(value)} items)]"
    return str(value)


def format_row(row: dict[str, Any], width: int = 100) -> str:
    """One row as 'key  value' lines; long values wrapped under their key."""
    lines = [f"--- {row.get(ID)} " + "-" * max(0, width - len(str(row.get(ID))) - 5)]
    indent = " " * (KEY_WIDTH + 2)
    for key, value in row.items():
        if value is None:
            continue
        text = readable(short_prompt(value) if key == "prompt" else _value(value), 4000)
        wrapped: list[str] = []
        for paragraph in text.splitlines() or [""]:
            wrapped.extend(textwrap.wrap(paragraph, width=max(width - len(indent), 20)) or [""])
        lines.append(f"  {key:<{KEY_WIDTH}}{wrapped[0]}")
        lines.extend(indent + more for more in wrapped[1:])
    return "\n".join(lines)


def format_counts(output: JobOutput, counts: OutputCounts) -> str:
    """The header: rows, errors by kind, media types, what produced them, the last run."""
    lines = [
        f"{output.uri}: {counts.rows:,} rows in {len(output.files):,} file(s)",
        f"  ok {counts.rows - counts.errors:,} · with errors {counts.errors:,}",
    ]
    for kind, number in counts.error_kinds.most_common():
        meaning = ERROR_KINDS.get(kind)
        lines.append(f"    {kind:<18}{number:>10,}" + (f"  ({meaning})" if meaning else ""))
    if counts.media_types:
        media = ", ".join(f"{kind or 'unknown'} {number:,}" for kind, number in counts.media_types.most_common())
        lines.append(f"  media      {media}")
    if counts.tasks or counts.models:
        lines.append(
            f"  task       {', '.join(str(t) for t in counts.tasks)} · model {', '.join(str(m) for m in counts.models)}"
        )
    if counts.mean_tiles is not None:
        lines.append(f"  tiles      {counts.mean_tiles:.2f} per row (rows without errors)")
    if counts.flagged is not None:
        lines.append(f"  flagged    {counts.flagged:,}")
    summary = output.summary
    if summary:
        lines.append(
            f"  last run   finished {summary.get('finished_at')}: {summary.get('rows_done'):,} rows in "
            f"{format_duration(summary.get('wall_s') or 0)} ({format_rate(summary.get('rows_per_s'))} rows/s), "
            f"{summary.get('rows_skipped_by_resume', 0):,} skipped by resume"
        )
    return "\n".join(lines)


def format_schema(output: JobOutput) -> str:
    """Column names and types."""
    lines = [f"schema ({len(output.schema)} columns):"]
    lines += [f"  {field.name:<{KEY_WIDTH}}{field.type}" for field in output.schema]
    return "\n".join(lines)


def inspect_output(
    uri: str,
    *,
    errors_only: bool = False,
    row_id: str | None = None,
    limit: int = 5,
    as_json: bool = False,
    storage: StorageSpec | None = None,
    width: int | None = None,
) -> str:
    """Everything `inspect` prints, as one string."""
    output = open_output(uri, storage)
    width = width or min(shutil.get_terminal_size((100, 24)).columns, 120)
    if row_id is not None:
        rows = find_rows(output, row_id)
        if not rows:
            raise JobError(f"{uri}: no row has id {row_id!r} (ids are compared as strings, exactly)")
        if as_json:
            return "\n".join(json.dumps(r, default=str, ensure_ascii=False) for r in rows)
        note = f"\n(warning: {len(rows)} rows share this id)" if len(rows) > 1 else ""
        return "\n\n".join(format_row(r, width) for r in rows) + note
    rows = first_rows(output, limit, errors_only=errors_only)
    if as_json:
        return "\n".join(json.dumps(r, default=str, ensure_ascii=False) for r in rows)
    counts = count_output(output)
    parts = [format_counts(output, counts), format_schema(output)]
    what = "rows with errors" if errors_only else "rows"
    total = counts.errors if errors_only else counts.rows
    if rows:
        parts.append(f"first {len(rows)} of {total:,} {what}:\n\n" + "\n\n".join(format_row(r, width) for r in rows))
    elif errors_only:
        parts.append("no row has an error")
    if errors_only and ERROR_KIND not in output.schema.names:
        parts.append(f"(the output has no {ERROR_KIND} column)")
    return "\n\n".join(parts)
