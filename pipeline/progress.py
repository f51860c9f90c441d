"""Run counters: fed by the write stage's statistics rows, printed as progress lines and
as the end-of-run summary (`_summary.json` beside the output).

The driver sees one small row per written file, never the results; counters are per
run, so a resumed run reports what it did and what it skipped. Rows in flight per stage
come from Ray Data's own operator counters (see `pipeline.stage_probe`), so a progress line says
where the rows are even before the first file is written.

Bookkeeping and formatting only: Ray is imported lazily where a hook needs it, and the
same counters go to Ray's metrics in `pipeline.metrics`.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import pyarrow as pa

# Stages in pipeline order, and how to recognise them in Ray Data's operator names
# ("MapBatches(PreprocessStage)", "MapBatches(postprocess_batch)->MapBatches(write_batch)").
STAGES = ("read", "preprocess", "generate", "write")
_STAGE_MARKERS = (
    ("write", "write_batch"),
    ("generate", "GenerateStage"),
    ("preprocess", "PreprocessStage"),
    ("read", "read_shards"),
)
RATE_WINDOW_S = 60.0
STEADY_MIN_SPAN_S = 5.0


def format_duration(seconds: float) -> str:
    """'2d03h', '1h02m', '3m05s' or '12s'."""
    seconds = max(0, round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_bytes(count: float) -> str:
    """Bytes in binary units: '812 MiB', '12.3 GiB'."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit == "GiB" else f"{value:.0f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop always returns


def format_rate(rate: float | None) -> str:
    """A rate with sensible precision: '0.25', '12.5', '1840'."""
    if rate is None:
        return "-"
    if rate >= 100:
        return f"{rate:.0f}"
    if rate >= 10:
        return f"{rate:.1f}"
    return f"{rate:.2f}"


def stage_of(operator_name: str) -> str | None:
    """Which pipeline stage a Ray Data operator is (None for Ray's own input operators)."""
    for stage, marker in _STAGE_MARKERS:
        if marker in operator_name:
            return stage
    return None


@dataclass
class StageRows:
    """Rows that entered and left each stage so far, as Ray Data counts them."""

    rows_in: dict[str, int] = field(default_factory=dict)
    rows_out: dict[str, int] = field(default_factory=dict)

    def count(self, stage: str) -> int | None:
        """Rows that left `stage` (for the write stage, rows handed to it); None if unknown."""
        return self.rows_in.get(stage) if stage == "write" else self.rows_out.get(stage)

    def describe(self) -> str:
        """'read 1200 > preprocess 1180 > generate 1100 > write 1000'."""
        parts = [f"{stage} {self.count(stage)}" for stage in STAGES if self.count(stage) is not None]
        return " > ".join(parts)


@dataclass
class RunTracker:
    """Accumulates the write statistics of one run; safe to read from a reporter thread."""

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
    first_write_rows: int = 0
    last_write: float | None = None
    throughput: list[tuple[float, int]] = field(default_factory=list)
    shard_written: dict[str, int] = field(default_factory=dict)
    gpu_peak_bytes: dict[str, int] = field(default_factory=dict)
    stages: StageRows = field(default_factory=StageRows)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
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
        with self._lock:
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
                for replica, peak in json.loads(row.get("gpu_peak_bytes") or "{}").items():
                    self.gpu_peak_bytes[replica] = max(self.gpu_peak_bytes.get(replica, 0), int(peak))
                if self.first_write is None:
                    self.first_write, self.first_write_rows = row["written_at"], row["rows"]
                self.last_write = max(self.last_write or 0.0, row["written_at"])
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

    def set_stage_rows(self, stages: StageRows) -> None:
        """Replace the per-stage counts (called from Ray Data's executor thread)."""
        self.stages = stages

    @property
    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.time() - self.started

    def rate(self, now: float | None = None, window_s: float = RATE_WINDOW_S) -> float:
        """Rows per second over the last `window_s` seconds (the whole run while it is younger).

        A window, not the run's average: after hours of steady work a stall shows at once,
        and the ETA follows the current speed. Start-up (model loading) counts only until
        it leaves the window.
        """
        now = self.elapsed if now is None else now
        if now <= 0:
            return 0.0
        with self._lock:
            series = list(self.throughput)
            rows = self.rows
        start_t, start_rows = 0.0, 0
        if now > window_s:
            start_t = now - window_s
            for t, done in series:
                if t > start_t:
                    break
                start_rows = done
        return max(0, rows - start_rows) / max(now - start_t, 1e-6)

    def steady_rate(self) -> float | None:
        """Rows per second between the first and the last write (start-up excluded); None when
        the writes span too little of the run to say (a short job writes in one burst)."""
        if self.first_write is None or self.last_write is None:
            return None
        span = self.last_write - self.first_write
        if span < max(STEADY_MIN_SPAN_S, 0.2 * self.elapsed):
            return None
        return (self.rows - self.first_write_rows) / span

    def eta_s(self) -> float | None:
        """Seconds left at the current rate; None when nothing was written yet."""
        rate = self.rate()
        remaining = max(0, self.pending_rows - self.rows)
        if remaining == 0:
            return 0.0
        return remaining / rate if rate > 0 else None

    def progress_line(self) -> str:
        """One line for logs: done/total, rate, ETA, errors, rows per stage."""
        rate = self.rate()
        eta = self.eta_s()
        share = 100.0 * self.rows / self.pending_rows if self.pending_rows else 100.0
        line = (
            f"[pipeline] {self.rows}/{self.pending_rows} rows ({share:.1f}%) | {format_rate(rate)} rows/s | "
            f"ETA {format_duration(eta) if eta is not None else '?'} | errors {self.errors} | "
            f"elapsed {format_duration(self.elapsed)}"
        )
        stages = self.stages.describe()
        return f"{line} | {stages}" if stages else line

    def summary(self, spec_name: str, output: str, model: str) -> dict[str, Any]:
        """The end-of-run summary, as written to `_summary.json`."""
        wall = self.elapsed
        images = sum(count for kind, count in self.media_types.items() if kind in ("image", "video"))
        ok = self.rows - self.errors
        steady = self.steady_rate()
        return {
            "job": spec_name,
            "model": model,
            "output": output,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
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
            "steady_rows_per_s": round(steady, 4) if steady is not None else None,
            "images_per_s": round(images / wall, 4) if wall > 0 else None,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "tokens_per_s": round((self.prompt_tokens + self.output_tokens) / wall, 2) if wall > 0 else None,
            "output_tokens_per_s": round(self.output_tokens / wall, 2) if wall > 0 else None,
            "mean_tiles_per_row": round(self.tiles / ok, 3) if ok else None,
            "stage_seconds": {
                "preprocess": round(self.preprocess_s, 3),
                "generate": round(self.generate_s, 3),
                "write": round(self.write_s, 3),
            },
            "stage_seconds_per_row": {
                "preprocess": round(self.preprocess_s / self.rows, 4) if self.rows else None,
                "generate": round(self.generate_s / ok, 4) if ok else None,
                "write": round(self.write_s / self.rows, 4) if self.rows else None,
            },
            # Only replicas on CUDA report a peak; None means no replica ran on a GPU.
            "gpu_peak_memory_bytes": dict(sorted(self.gpu_peak_bytes.items())) or None,
            "throughput": [[round(t, 2), n] for t, n in self.throughput],
        }


def print_summary(summary: dict[str, Any], stream: TextIO | None = None) -> None:
    """The summary as a short table (on stdout unless `stream` is given), with what to do next."""

    def row(label: str, value: Any) -> str:
        return f"  {label:<22}{value}"

    lines = [
        "",
        f"== {summary['job']}: {summary['rows_done']} rows in {format_duration(summary['wall_s'])} ==",
        row("rows ok", summary["rows_ok"]),
        row("rows with errors", summary["rows_with_errors"]),
    ]
    for kind, count in summary["errors_by_kind"].items():
        lines.append(row(f"  {kind}", count))
    lines.append(row("skipped (resume)", summary["rows_skipped_by_resume"]))
    steady = summary.get("steady_rows_per_s")
    rate = format_rate(summary["rows_per_s"])
    lines.append(row("rows/s", rate + (f"  (steady state {format_rate(steady)})" if steady else "")))
    lines.append(
        row(
            "tokens/s",
            f"{format_rate(summary['tokens_per_s'])}  "
            f"(prompt {summary['prompt_tokens']}, output {summary['output_tokens']} tokens)",
        )
    )
    lines.append(row("mean tiles/row", summary["mean_tiles_per_row"] if summary["mean_tiles_per_row"] else "-"))
    per_row = summary.get("stage_seconds_per_row", {})
    for stage, seconds in summary["stage_seconds"].items():
        each = per_row.get(stage)
        lines.append(
            row(f"{stage} time", f"{seconds:.2f} s summed over rows" + (f", {each:.3f} s/row" if each else ""))
        )
    peaks = summary.get("gpu_peak_memory_bytes")
    if peaks:
        lines.append(row("peak GPU memory", ", ".join(f"{name} {format_bytes(b)}" for name, b in peaks.items())))
    output = summary["output"]
    lines += [
        row("output", output),
        "",
        f"  look at it:  python -m pipeline report {output} --html report.html",
    ]
    if summary["rows_with_errors"]:
        lines.append(f"  errors:      python -m pipeline inspect {output} --errors")
    print("\n".join(lines), file=stream or sys.stdout, flush=True)


def bar_safe(echo: Callable[[str], Any]) -> Callable[[str], Any]:
    """An echo that does not tear Ray Data's progress bars (interactive terminals): the bars
    are hidden while the line is printed, as Ray's own `safe_print` does."""
    try:
        from ray.experimental.tqdm_ray import safe_print
    except ImportError:
        return echo
    return lambda line: safe_print(line, file=sys.stderr, flush=True)


class ProgressReporter:
    """Prints `tracker.progress_line()` every `interval_s` seconds from a background thread
    (lines appear even while no file is being written, e.g. while models load) and
    publishes the counters as Ray metrics; prints a last line when stopped."""

    def __init__(
        self,
        tracker: RunTracker,
        echo: Callable[[str], Any],
        interval_s: float,
        publish: Callable[[RunTracker], None] | None = None,
    ) -> None:
        self.tracker = tracker
        self.echo = echo
        self.interval_s = max(interval_s, 0.1)
        self.publish = publish
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pipeline-progress", daemon=True)

    def _tick(self) -> None:
        if self.publish is not None:
            self.publish(self.tracker)
        self.echo(self.tracker.progress_line())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._tick()

    def __enter__(self) -> ProgressReporter:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        if exc_info[0] is None:
            self._tick()
