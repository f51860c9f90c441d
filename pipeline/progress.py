"""Run counters: fed by the write stage's statistics rows, printed as progress lines and
as the end-of-run summary (`_summary.json` beside the output).

The driver sees one small row per written file, never the results; counters are per
run, so a resumed run reports what it did and what it skipped.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO

import pyarrow as pa


def format_duration(seconds: float) -> str:
    """'1h02m', '3m05s' or '12s'."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


@dataclass
class RunTracker:
    """Accumulates the write statistics of one run."""

    total_rows: int
    pending_rows: int
    skipped_shards: int = 0
    started: float = field(default_factory=time.time)
    rows: int = 0
    errors: int = 0
    error_kinds: Counter = field(default_factory=Counter)
    media_types: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0
    output_tokens: int = 0
    tiles: int = 0
    preprocess_s: float = 0.0
    generate_s: float = 0.0
    write_s: float = 0.0
    files: int = 0
    first_write: float | None = None
    throughput: list[tuple[float, int]] = field(default_factory=list)
    shard_written: dict[str, int] = field(default_factory=dict)
    # Files already counted per shard in progress: a retried write task reports its file
    # again; counting it twice could call a shard complete before its last file exists.
    shard_files: dict[str, set[str]] = field(default_factory=dict)
    # Rows each shard still had to do when this run first read it (O(shards), not O(rows)):
    # what the shard's rows minus this is, was skipped by resume.
    shard_todo: dict[str, int] = field(default_factory=dict)
    repeated_reports: int = 0

    def update(self, stats: pa.Table) -> list[str]:
        """Add a batch of statistics rows; return the shards that just became complete."""
        completed: list[str] = []
        for row in stats.to_pylist():
            shard = row["shard"]
            files = self.shard_files.setdefault(shard, set())
            if row.get("file") is not None:
                if row["file"] in files:
                    self.repeated_reports += 1
                    continue
                files.add(row["file"])
            self.shard_todo.setdefault(shard, row["shard_todo"])
            self.files += 1
            self.rows += row["rows"]
            self.errors += row["errors"]
            self.error_kinds.update(json.loads(row["error_kinds"]))
            self.media_types.update(json.loads(row["media_types"]))
            self.prompt_tokens += row["prompt_tokens"]
            self.output_tokens += row["output_tokens"]
            self.tiles += row["tiles"]
            self.preprocess_s += row["preprocess_s"]
            self.generate_s += row["generate_s"]
            self.write_s += row.get("write_s") or 0.0
            self.first_write = self.first_write or row["written_at"]
            written = self.shard_written.get(shard, 0) + row["rows"]
            if written >= row["shard_todo"]:
                self.shard_written.pop(shard, None)
                self.shard_files.pop(shard, None)
                completed.append(shard)
            else:
                self.shard_written[shard] = written
        self.throughput.append((time.time() - self.started, self.rows))
        if len(self.throughput) > 2000:  # keep the series bounded: thin it out evenly
            self.throughput = self.throughput[::2]
        return completed

    @property
    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.time() - self.started

    def rate(self) -> float:
        """Rows per second since the first result was written (steady state, start-up excluded)."""
        if self.first_write is None or self.rows == 0:
            return 0.0
        span = max(time.time() - self.first_write, 1e-6)
        return self.rows / span if self.rows > 1 else self.rows / max(self.elapsed, 1e-6)

    def progress_line(self) -> str:
        """One line for logs: done/total, rate, ETA, errors."""
        rate = self.rate()
        remaining = max(0, self.pending_rows - self.rows)
        eta = format_duration(remaining / rate) if rate > 0 else "?"
        share = 100.0 * self.rows / self.pending_rows if self.pending_rows else 100.0
        return (
            f"[pipeline] {self.rows}/{self.pending_rows} rows ({share:.1f}%) | {rate:.2f} rows/s | ETA {eta} | "
            f"errors {self.errors} | elapsed {format_duration(self.elapsed)}"
        )

    def summary(self, spec_name: str, output: str, model: str) -> dict[str, Any]:
        """The end-of-run summary, as written to `_summary.json`."""
        wall = self.elapsed
        images = sum(count for kind, count in self.media_types.items() if kind in ("image", "video"))
        ok = self.rows - self.errors
        return {
            "job": spec_name,
            "model": model,
            "output": output,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "manifest_rows": self.total_rows,
            "rows_done": self.rows,
            "rows_ok": ok,
            "rows_with_errors": self.errors,
            "errors_by_kind": dict(self.error_kinds.most_common()),
            "rows_skipped_by_resume": self.total_rows - self.pending_rows,
            "shards_skipped_by_resume": self.skipped_shards,
            "rows_by_media_type": dict(self.media_types),
            "files_written": self.files,
            "wall_s": round(wall, 3),
            "rows_per_s": round(self.rows / wall, 4) if wall > 0 else None,
            "steady_rows_per_s": round(self.rate(), 4),
            "images_per_s": round(images / wall, 4) if wall > 0 else None,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "tokens_per_s": round((self.prompt_tokens + self.output_tokens) / wall, 2) if wall > 0 else None,
            "mean_tiles_per_row": round(self.tiles / ok, 3) if ok else None,
            "stage_seconds": {
                "preprocess": round(self.preprocess_s, 3),
                "generate": round(self.generate_s, 3),
                "write": round(self.write_s, 3),
            },
            "throughput": [[round(t, 2), n] for t, n in self.throughput],
        }


def print_summary(summary: dict[str, Any], stream: TextIO = sys.stdout) -> None:
    """A short human-readable table of the summary."""
    lines = [
        "",
        f"== {summary['job']}: {summary['rows_done']} rows in {format_duration(summary['wall_s'])} "
        f"({summary['rows_per_s']} rows/s) ==",
        f"  ok                 {summary['rows_ok']}",
        f"  errors             {summary['rows_with_errors']}",
    ]
    for kind, count in summary["errors_by_kind"].items():
        lines.append(f"    {kind:<17}{count}")
    lines += [
        f"  skipped (resume)   {summary['rows_skipped_by_resume']}",
        f"  tokens/s           {summary['tokens_per_s']}",
        f"  mean tiles/row     {summary['mean_tiles_per_row']}",
        f"  preprocess (sum)   {summary['stage_seconds']['preprocess']} s",
        f"  generate (sum)     {summary['stage_seconds']['generate']} s",
        f"  write (sum)        {summary['stage_seconds'].get('write', 0.0)} s",
        f"  output             {summary['output']}",
    ]
    print("\n".join(lines), file=stream, flush=True)
