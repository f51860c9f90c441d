"""The read stage: one task per manifest shard, dropping rows that are already written.

It runs on workers, so the driver never holds manifest rows or done ids; each task holds
one shard's ids at most. A shard found complete here (every row already written, e.g. a
crash after the last write but before the marker) gets its marker and yields no rows.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.readers.manifest import ID, SHARD, SHARD_TODO, Shard, read_shard
from pipeline.resume import mark_shard_done, written_ids
from pipeline.spec import JobSpec


class ReadShards:
    """Ray Data callable: a batch of shard descriptors in, their pending manifest rows out."""

    def __init__(self, spec: JobSpec, columns: dict[str, str], passthrough: list[str], resume: bool) -> None:
        self.spec = spec
        self.columns = columns
        self.passthrough = passthrough
        self.resume = resume

    def read(self, shard: Shard) -> pa.Table:
        """The rows of one shard that have no output yet, tagged with the shard and its pending count."""
        table = read_shard(shard, self.columns, self.passthrough, self.spec.storage)
        if self.resume:
            done = written_ids(self.spec.output.path, shard.key, self.spec.storage)
            if len(done):
                table = table.filter(pc.invert(pc.is_in(table.column(ID), value_set=done)))
        if table.num_rows == 0:
            mark_shard_done(self.spec.output.path, shard.key, self.spec.storage)
        table = table.append_column(SHARD, pa.array([shard.key] * table.num_rows, type=pa.string()))
        return table.append_column(SHARD_TODO, pa.array([table.num_rows] * table.num_rows, type=pa.int64()))

    def __call__(self, batch: dict) -> pa.Table:
        tables = []
        for key, file, group, offset, rows in zip(
            batch["key"], batch["file"], batch["row_group"], batch["offset"], batch["num_rows"], strict=True
        ):
            tables.append(self.read(Shard(str(key), str(file), int(group), int(offset), int(rows))))
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def read_shards(
    batch: dict, *, spec: JobSpec, columns: dict[str, str], passthrough: list[str], resume: bool
) -> pa.Table:
    """Task-pool entry point (Ray Data schedules only functions on task pools)."""
    return ReadShards(spec, columns, passthrough, resume)(batch)
