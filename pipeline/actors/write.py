"""The last two stages: task-specific postprocessing, then the Parquet write.

Both are plain tasks (Ray Data fuses them). The write stage groups a batch's rows by
shard, writes one file per group (see `pipeline.writers.parquet`), and returns one small
statistics row per file: the driver consumes only these, never the results themselves.
Each statistics row names its file, so the driver counts a file once even if a retried
task reports it twice (the retry rewrote the same name with the same rows).
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.actors.generate import GENERATE_S, GPU_PEAK_BYTES, OUTPUT_TOKENS, PROMPT_TOKENS, REPLICA
from pipeline.actors.preprocess import ERROR_KIND, MEDIA_TYPE, NUM_TILES, PREPROCESS_S, QUERY
from pipeline.readers.manifest import ID, PASSTHROUGH_PREFIX, SHARD, SHARD_TODO
from pipeline.spec import JobSpec
from pipeline.storage import join_uri
from pipeline.writers.parquet import ParquetWriter, part_name

COMPLETED_AT = "completed_at"
INTERNAL_COLUMNS = (SHARD, SHARD_TODO, QUERY, REPLICA, GPU_PEAK_BYTES)

STATS_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("file", pa.string()),
        ("shard_todo", pa.int64()),
        ("rows", pa.int64()),
        ("errors", pa.int64()),
        ("error_kinds", pa.string()),
        ("media_types", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("tiles", pa.int64()),
        ("preprocess_s", pa.float64()),
        ("generate_s", pa.float64()),
        ("write_s", pa.float64()),
        ("written_at", pa.float64()),
        ("gpu_peak_bytes", pa.string()),  # JSON {replica: bytes}; "{}" off CUDA
    ]
)


class PostprocessStage:
    """Task-specific parsing of answers into columns (moderation labels); identity otherwise."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.spec.task.kind == "moderation":
            from pipeline.prompts.moderation import add_label_columns

            return add_label_columns(batch, self.spec.task.categories)
        return batch


def output_table(batch: pa.Table, written_at: float) -> pa.Table:
    """The user-facing columns: internal ones dropped, pass-through columns under their own names."""
    keep = [name for name in batch.column_names if name not in INTERNAL_COLUMNS]
    table = batch.select(keep)
    renamed = [name[len(PASSTHROUGH_PREFIX) :] if name.startswith(PASSTHROUGH_PREFIX) else name for name in keep]
    table = table.rename_columns(renamed)
    stamp = pa.array([int(written_at * 1000)] * table.num_rows, type=pa.timestamp("ms", tz="UTC"))
    return table.append_column(COMPLETED_AT, stamp)


def gpu_peaks(table: pa.Table) -> dict[str, int]:
    """The highest peak GPU memory each replica reported in these rows (none off CUDA)."""
    if REPLICA not in table.column_names or GPU_PEAK_BYTES not in table.column_names:
        return {}
    peaks: dict[str, int] = {}
    for replica, peak in zip(table.column(REPLICA).to_pylist(), table.column(GPU_PEAK_BYTES).to_pylist(), strict=True):
        if replica is not None and peak is not None:
            peaks[replica] = max(peaks.get(replica, 0), peak)
    return peaks


def _sum(table: pa.Table, column: str) -> float:
    value = pc.sum(table.column(column)).as_py() if column in table.column_names else None
    return value or 0


class WriteStage:
    """Writes each shard's rows of a batch to one Parquet file; returns per-file statistics."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.writer = ParquetWriter(spec.storage, spec.output.compression)

    def __call__(self, batch: pa.Table) -> pa.Table:
        now = time.time()
        stats: list[dict] = []
        shards = batch.column(SHARD)
        for shard in pc.unique(shards).to_pylist():
            group = batch.filter(pc.equal(shards, shard))
            table = output_table(group, now)
            name = part_name(table.column(ID).to_pylist())
            started = time.perf_counter()
            self.writer.write_table(table, join_uri(self.spec.output.path, shard, name))
            write_s = time.perf_counter() - started
            kinds = Counter(k for k in group.column(ERROR_KIND).to_pylist() if k)
            media = Counter(m or "unknown" for m in group.column(MEDIA_TYPE).to_pylist())
            stats.append(
                {
                    "shard": shard,
                    "file": name,
                    "shard_todo": group.column(SHARD_TODO)[0].as_py(),
                    "rows": group.num_rows,
                    "errors": sum(kinds.values()),
                    "error_kinds": json.dumps(kinds),
                    "media_types": json.dumps(media),
                    "prompt_tokens": int(_sum(group, PROMPT_TOKENS)),
                    "output_tokens": int(_sum(group, OUTPUT_TOKENS)),
                    "tiles": int(_sum(group, NUM_TILES)),
                    "preprocess_s": float(_sum(group, PREPROCESS_S)),
                    "generate_s": float(_sum(group, GENERATE_S)),
                    "write_s": write_s,
                    "written_at": time.time(),
                    "gpu_peak_bytes": json.dumps(gpu_peaks(group)),
                }
            )
        return pa.Table.from_pylist(stats, schema=STATS_SCHEMA)


def postprocess_batch(batch: pa.Table, *, spec: JobSpec) -> pa.Table:
    """Task-pool entry point for `PostprocessStage`."""
    return PostprocessStage(spec)(batch)


def write_batch(batch: pa.Table, *, spec: JobSpec) -> pa.Table:
    """Task-pool entry point for `WriteStage`."""
    return WriteStage(spec)(batch)
