"""Atomic, idempotent Parquet output, written by the workers.

Layout: `{output.path}/{shard}/part-{digest}.parquet`, one folder per manifest shard (the
unit of resume bookkeeping), where `digest` is derived from the ids the file holds. So a
retried write of the same rows lands on the same name and replaces the file instead of
duplicating it, and a reader never sees a half-written file: local files are written
under a hidden temporary name and renamed; object stores publish an object only once
its upload completes. Files and folders whose names start with '_' or '.' (markers,
the job fingerprint, temporaries) are ignored by Parquet readers.
"""

from __future__ import annotations

import hashlib
import uuid
from abc import ABC, abstractmethod

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.spec import StorageSpec
from pipeline.storage import filesystem_for, is_remote, join_uri


class Writer(ABC):
    """Writes one table to one uri; a new output format is one subclass with one method."""

    @abstractmethod
    def write_table(self, table: pa.Table, uri: str) -> None:
        """Write `table` to `uri` so that readers see all of it or none of it."""


class ParquetWriter(Writer):
    """Parquet files through the shared filesystem layer."""

    def __init__(self, storage: StorageSpec | None = None, compression: str = "zstd") -> None:
        self.storage = storage
        self.compression = None if compression == "none" else compression

    def write_table(self, table: pa.Table, uri: str) -> None:
        """Atomic write: a temporary name and a rename locally, a single upload on object stores."""
        fs, path = filesystem_for(uri, self.storage)
        parent = path.rsplit("/", 1)[0]
        if is_remote(uri):
            with fs.open(path, "wb") as handle:
                pq.write_table(table, handle, compression=self.compression)
            return
        fs.makedirs(parent, exist_ok=True)
        temporary = f"{parent}/.tmp-{uuid.uuid4().hex}-{path.rsplit('/', 1)[-1]}"
        try:
            with fs.open(temporary, "wb") as handle:
                pq.write_table(table, handle, compression=self.compression)
            fs.mv(temporary, path)
        finally:
            if fs.exists(temporary):
                fs.rm(temporary)


def part_name(ids: list[str]) -> str:
    """A file name determined by the ids it holds: rewriting the same rows replaces the file."""
    digest = hashlib.sha1("\n".join(sorted(ids)).encode("utf-8")).hexdigest()[:24]
    return f"part-{digest}.parquet"


def part_uri(output: str, shard: str, ids: list[str]) -> str:
    """Where the rows `ids` of `shard` are written."""
    return join_uri(output, shard, part_name(ids))
