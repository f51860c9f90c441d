"""The run's counters as Ray metrics, so the Ray dashboard and Prometheus show them.

Published from the driver, which already holds every counter (the write stage's
statistics rows reach it anyway), so the stages pay nothing. Ray prefixes the names
with `ray_`; every series carries the job's name as the `job` tag:

| metric | kind | meaning |
|---|---|---|
| `pipeline_rows_done` | counter | rows written by this run |
| `pipeline_row_errors` | counter | rows written with an error, tag `kind` |
| `pipeline_tokens` | counter | prompt and output tokens, tag `kind` |
| `pipeline_tiles` | counter | 448 px tiles given to the model |
| `pipeline_rows_pending` | gauge | rows this run set out to do |
| `pipeline_rows_per_second` | gauge | current rate (last minute) |
| `pipeline_eta_seconds` | gauge | time left at the current rate (-1: unknown) |
| `pipeline_stage_rows` | gauge | rows that left each stage, tag `stage` |

Ray Data publishes its own per-operator series beside these (`ray_data_*`).
"""

from __future__ import annotations

from typing import Any

from pipeline.progress import STAGES, RunTracker


class RunMetrics:
    """Ray metric objects for one run; `publish` turns the tracker's totals into increments."""

    def __init__(self, job: str) -> None:
        from ray.util.metrics import Counter, Gauge

        self.tags = {"job": job}
        self.rows_done = Counter("pipeline_rows_done", "Rows written by this run.", tag_keys=("job",))
        self.row_errors = Counter(
            "pipeline_row_errors", "Rows written with an error, by error kind.", tag_keys=("job", "kind")
        )
        self.tokens = Counter("pipeline_tokens", "Prompt and output tokens.", tag_keys=("job", "kind"))
        self.tiles = Counter("pipeline_tiles", "448 px tiles given to the model.", tag_keys=("job",))
        self.rows_pending = Gauge("pipeline_rows_pending", "Rows this run set out to do.", tag_keys=("job",))
        self.rows_per_second = Gauge(
            "pipeline_rows_per_second", "Rows written per second over the last minute.", tag_keys=("job",)
        )
        self.eta_seconds = Gauge(
            "pipeline_eta_seconds", "Seconds left at the current rate (-1 when unknown).", tag_keys=("job",)
        )
        self.stage_rows = Gauge("pipeline_stage_rows", "Rows that left each stage.", tag_keys=("job", "stage"))
        self._published: dict[tuple[str, ...], float] = {}

    def _increment(self, counter: Any, key: tuple[str, ...], total: float, tags: dict[str, str]) -> None:
        delta = total - self._published.get(key, 0)
        if delta > 0:
            counter.inc(delta, tags=tags)
            self._published[key] = total

    def publish(self, tracker: RunTracker) -> None:
        """Bring the metrics up to the tracker's current counts."""
        tags = self.tags
        self._increment(self.rows_done, ("rows",), tracker.rows, tags)
        for kind, count in list(tracker.error_kinds.items()):
            self._increment(self.row_errors, ("errors", kind), count, {**tags, "kind": kind})
        self._increment(self.tokens, ("tokens", "prompt"), tracker.prompt_tokens, {**tags, "kind": "prompt"})
        self._increment(self.tokens, ("tokens", "output"), tracker.output_tokens, {**tags, "kind": "output"})
        self._increment(self.tiles, ("tiles",), tracker.tiles, tags)
        self.rows_pending.set(tracker.pending_rows, tags=tags)
        self.rows_per_second.set(tracker.rate(), tags=tags)
        eta = tracker.eta_s()
        self.eta_seconds.set(-1 if eta is None else eta, tags=tags)
        for stage in STAGES:
            rows = tracker.stages.count(stage)
            if rows is not None:
                self.stage_rows.set(rows, tags={**tags, "stage": stage})
