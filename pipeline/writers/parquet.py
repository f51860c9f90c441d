"""Atomic, idempotent Parquet output, written by the workers.

Layout: `{output.path}/{shard}/part-{digest}.parquet`, one folder per manifest shard (the
unit of resume bookkeeping), where `digest` is derived from the ids the file holds. So a
retried write of the same rows lands on the same name and replaces the file instead of
duplicating it.

No reader ever sees a half-written file, and a crash never leaves one under a name that
counts: the file is encoded in memory first (a part file is at most `output.rows_per_file`
rows of text and numbers, so a few MB), then
- on a local or mounted filesystem it goes to a hidden temporary name in the same folder,
  is flushed and fsynced, and renamed onto its final name (rename is atomic on POSIX); a
  crash leaves at most a `.tmp-*` file, which readers skip and the shard's seal removes;
- on an object store it is uploaded in one request (`pipe`): the object appears only
  when the upload completes. (Streaming through an open s3fs file would be wrong: its
  close() after an exception publishes whatever was written so far.)
Files and folders whose names start with '_' or '.' (markers, the job fingerprint,
temporaries) are ignored by Parquet readers.

Transient storage errors (throttling, connection resets) are retried with backoff here,
so one hiccup of the object store does not fail a task and with it the job.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from abc import ABC, abstractmethod

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.spec import StorageSpec
from pipeline.storage import filesystem_for, is_remote, join_uri

logger = logging.getLogger(__name__)

PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
TEMP_PREFIX = ".tmp-"
WRITE_ATTEMPTS = 5
WRITE_BACKOFF_S = 1.0


class Writer(ABC):
    """Writes one table to one uri; a new output format is one subclass with one method."""

    @abstractmethod
    def write_table(self, table: pa.Table, uri: str) -> None:
        """Write `table` to `uri` so that readers see all of it or none of it."""


def encode_parquet(table: pa.Table, compression: str | None) -> bytes:
    """The Parquet file for `table`, in memory."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=compression)
    return sink.getvalue().to_pybytes()


def write_local_atomically(path: str, data: bytes) -> None:
    """Write bytes under a temporary name in the target folder, fsync, rename onto `path`."""
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f"{TEMP_PREFIX}{uuid.uuid4().hex}-{name}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


class ParquetWriter(Writer):
    """Parquet files through the shared filesystem layer."""

    def __init__(self, storage: StorageSpec | None = None, compression: str = "zstd") -> None:
        self.storage = storage
        self.compression = None if compression == "none" else compression

    def write_table(self, table: pa.Table, uri: str) -> None:
        """Atomic write: temporary name + fsync + rename locally, a single upload on object stores."""
        self.write_bytes(encode_parquet(table, self.compression), uri)

    def write_bytes(self, data: bytes, uri: str) -> None:
        """Publish already-encoded bytes at `uri` atomically, retrying transient storage errors."""
        fs, path = filesystem_for(uri, self.storage)
        for attempt in range(WRITE_ATTEMPTS):
            try:
                if is_remote(uri):
                    fs.pipe_file(path, data)
                else:
                    write_local_atomically(path, data)
                return
            except OSError as error:
                if attempt == WRITE_ATTEMPTS - 1:
                    raise
                wait = WRITE_BACKOFF_S * 2**attempt
                logger.warning("writing %s failed (%s); retrying in %.0f s", uri, error, wait)
                time.sleep(wait)


def ids_digest(ids: list[str]) -> str:
    """A digest of a set of ids (order does not matter)."""
    digest = hashlib.sha1()
    for value in sorted(ids):  # length-prefixed: ids may hold any character, separators included
        encoded = value.encode("utf-8", "surrogatepass")
        digest.update(b"%d:" % len(encoded))
        digest.update(encoded)
    return digest.hexdigest()


def part_name(ids: list[str]) -> str:
    """A file name determined by the ids it holds: rewriting the same rows replaces the file."""
    return f"{PART_PREFIX}{ids_digest(ids)[:24]}{PART_SUFFIX}"


def part_uri(output: str, shard: str, ids: list[str]) -> str:
    """Where the rows `ids` of `shard` are written."""
    return join_uri(output, shard, part_name(ids))


def is_part_file(name: str) -> bool:
    """Whether a file name (last path component) is a finished part file."""
    return name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX)
