"""The read stage: one task per manifest shard, dropping rows that are already written.

It runs on workers, so the driver never holds manifest rows or done ids; each task holds
one shard's ids at most. A shard found complete here (every row already written, e.g. a
crash after the last write but before the marker) is sealed (verified, see
`pipeline.resume.seal_shard`) and yields no rows.

Filtering by written ids happens in every mode: after an `overwrite` wiped the output it
costs one empty listing, and it makes a second pass over unfinished shards (see
`pipeline.runner`) safe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.readers.manifest import ID, SHARD, SHARD_TODO, Shard, read_shard
from pipeline.resume import seal_shard, written_ids
from pipeline.spec import JobSpec

logger = logging.getLogger(__name__)
T = TypeVar("T")
IO_ATTEMPTS = 4
IO_BACKOFF_S = 1.0


def with_retries(action: Callable[[], T], what: str) -> T:
    """Run a storage action, retrying transient errors (throttling, resets) with backoff."""
    for attempt in range(IO_ATTEMPTS):
        try:
            return action()
        except OSError as error:
            if isinstance(error, (FileNotFoundError, PermissionError)) or attempt == IO_ATTEMPTS - 1:
                raise
            wait = IO_BACKOFF_S * 2**attempt
            logger.warning("%s failed (%s); retrying in %.0f s", what, error, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


class ReadShards:
    """Ray Data callable: a batch of shard descriptors in, their pending manifest rows out."""

    def __init__(self, spec: JobSpec, columns: dict[str, str], passthrough: list[str]) -> None:
        self.spec = spec
        self.columns = columns
        self.passthrough = passthrough

    def read(self, shard: Shard) -> pa.Table:
        """The rows of one shard that have no output yet, tagged with the shard and its pending count."""
        output, storage = self.spec.output.path, self.spec.storage
        table = with_retries(lambda: read_shard(shard, self.columns, self.passthrough, storage), f"reading {shard.key}")
        expected = table.column(ID).combine_chunks()
        done = with_retries(lambda: written_ids(output, shard.key, storage), f"listing {shard.key}")
        if len(done):
            table = table.filter(pc.invert(pc.is_in(expected, value_set=done)))
        if table.num_rows == 0:
            with_retries(lambda: seal_shard(output, shard, expected, storage), f"sealing {shard.key}")
        table = table.append_column(SHARD, pa.array([shard.key] * table.num_rows, type=pa.string()))
        return table.append_column(SHARD_TODO, pa.array([table.num_rows] * table.num_rows, type=pa.int64()))

    def __call__(self, batch: dict) -> pa.Table:
        tables = []
        for key, file, group, offset, rows in zip(
            batch["key"], batch["file"], batch["row_group"], batch["offset"], batch["num_rows"], strict=True
        ):
            tables.append(self.read(Shard(str(key), str(file), int(group), int(offset), int(rows))))
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def read_shards(batch: dict, *, spec: JobSpec, columns: dict[str, str], passthrough: list[str]) -> pa.Table:
    """Task-pool entry point (Ray Data schedules only functions on task pools)."""
    return ReadShards(spec, columns, passthrough)(batch)
