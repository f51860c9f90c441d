"""Duplicate detection over any number of ids in bounded memory.

Ids are hashed to 64 bits and buffered; when the buffer is full it is spilled to 256
bucket files on local disk by the hash's top byte, so memory stays at the buffer size
whatever the manifest's length (8 bytes per id on disk). Repeated hashes are then
confirmed on a second pass over the ids, so a hash collision is never reported as a
duplicate.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable

import numpy as np
import pyarrow as pa

NUM_BUCKETS = 256


def hash_ids(ids: pa.Array) -> np.ndarray:
    """64-bit hashes of string ids (stable within a process run)."""
    from pandas.util import hash_array

    values = np.asarray(ids.to_numpy(zero_copy_only=False), dtype=object)
    return hash_array(values, categorize=False).astype(np.uint64, copy=False)


class DuplicateFinder:
    """Feed it batches of ids with `add`, then ask for `duplicates`."""

    # 2 MB of hashes: the driver's memory stays flat from small manifests to large ones
    # (`python -m pipeline bench scaling`); spilling costs a sequential write of 8 bytes per id.
    DEFAULT_BUFFER_IDS = 262_144

    def __init__(self, buffer_ids: int = DEFAULT_BUFFER_IDS, spill_dir: str | None = None) -> None:
        self._buffer_ids = buffer_ids
        self._pending: list[np.ndarray] = []
        self._pending_count = 0
        self._spill_dir = spill_dir
        self._spilled = False

    def add(self, ids: pa.Array) -> None:
        """Account for a batch of non-null ids."""
        if len(ids) == 0:
            return
        self._pending.append(hash_ids(ids))
        self._pending_count += len(ids)
        if self._pending_count >= self._buffer_ids:
            self._spill()

    def _spill(self) -> None:
        if not self._pending:
            return
        if self._spill_dir is None:
            self._spill_dir = tempfile.mkdtemp(prefix="pipeline-ids-")
        os.makedirs(self._spill_dir, exist_ok=True)
        hashes = np.concatenate(self._pending)
        self._pending, self._pending_count = [], 0
        buckets = (hashes >> np.uint64(56)).astype(np.uint8)
        order = np.argsort(buckets, kind="stable")
        hashes, buckets = hashes[order], buckets[order]
        bounds = np.searchsorted(buckets, np.arange(NUM_BUCKETS + 1))
        for bucket in range(NUM_BUCKETS):
            start, end = bounds[bucket], bounds[bucket + 1]
            if end > start:
                with open(os.path.join(self._spill_dir, f"{bucket:03d}.u64"), "ab") as handle:
                    handle.write(hashes[start:end].tobytes())
        self._spilled = True

    def _repeated_hashes(self, limit: int) -> tuple[set[int], int]:
        """Hashes seen more than once (up to a sample) and how many distinct ones repeat."""
        sample: set[int] = set()
        total = 0

        def scan(hashes: np.ndarray) -> None:
            nonlocal total
            values, counts = np.unique(hashes, return_counts=True)
            repeated = values[counts > 1]
            total += len(repeated)
            for value in repeated[: max(0, limit * 4 - len(sample))]:
                sample.add(int(value))

        if not self._spilled:
            if self._pending:
                scan(np.concatenate(self._pending))
            return sample, total
        self._spill()
        assert self._spill_dir is not None
        for name in sorted(os.listdir(self._spill_dir)):
            scan(np.fromfile(os.path.join(self._spill_dir, name), dtype=np.uint64))
        return sample, total

    def duplicates(self, reread: Callable[[], Iterable[pa.Array]], limit: int = 10) -> tuple[list[str], int]:
        """Up to `limit` duplicated ids, confirmed by a second pass, and the count of repeated hashes."""
        try:
            sample, total = self._repeated_hashes(limit)
            if not sample:
                return [], 0
            seen: dict[int, set[str]] = {}
            confirmed: list[str] = []
            for ids in reread():
                hashes = hash_ids(ids)
                hits = np.flatnonzero(np.isin(hashes, np.fromiter(sample, dtype=np.uint64)))
                for index in hits:
                    value = ids[int(index)].as_py()
                    bucket = seen.setdefault(int(hashes[index]), set())
                    if value in bucket and value not in confirmed:
                        confirmed.append(value)
                    bucket.add(value)
                if len(confirmed) >= limit:
                    break
            return confirmed[:limit], total if confirmed else 0
        finally:
            if self._spill_dir is not None and os.path.isdir(self._spill_dir):
                shutil.rmtree(self._spill_dir, ignore_errors=True)
