"""Helpers for the reliability tests: exactly-once checks of an output, and finding the
processes of one run's own Ray instance (never anyone else's on this shared machine)."""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.resume import SHARD_MARKER_PREFIX


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def part_files(output: Path) -> list[Path]:
    return sorted(output.glob("shard-*/part-*.parquet"))


def output_ids(output: Path) -> collections.Counter:
    """Every id in the output's visible files (what any Parquet reader of the folder sees)."""
    if not part_files(output):
        return collections.Counter()
    return collections.Counter(pq.read_table(output, columns=["id"]).column("id").to_pylist())


def assert_no_duplicates(output: Path) -> collections.Counter:
    ids = output_ids(output)
    repeated = {key: count for key, count in ids.items() if count > 1}
    assert not repeated, f"ids written more than once: {list(repeated)[:10]}"
    return ids


def assert_markers_consistent(output: Path, manifest_ids_by_shard: dict[str, list[str]] | None = None) -> int:
    """Each shard marker covers exactly the ids in its folder, each once; returns the markers seen."""
    markers = 0
    for marker in output.glob(f"shard-*/{SHARD_MARKER_PREFIX}*"):
        markers += 1
        folder = marker.parent
        rows = int(marker.name[len(SHARD_MARKER_PREFIX) :])
        files = sorted(folder.glob("part-*.parquet"))
        ids = pa.concat_arrays([pq.read_table(f, columns=["id"]).column("id").combine_chunks() for f in files])
        values = ids.to_pylist()
        assert len(values) == len(set(values)) == rows, (folder.name, rows, len(values), len(set(values)))
        if manifest_ids_by_shard is not None:
            assert sorted(values) == sorted(manifest_ids_by_shard[folder.name]), folder.name
    return markers


def assert_exactly_once(output: Path, manifest_ids: list[str]) -> pa.Table:
    """Every manifest id appears exactly once in the output, nothing else does; all files are whole."""
    for file in part_files(output):
        pq.read_metadata(file)  # a partial file would not even have a footer
    table = pq.read_table(output)
    ids = table.column("id").to_pylist()
    counts = collections.Counter(ids)
    repeated = [key for key, count in counts.items() if count > 1]
    missing = set(manifest_ids) - set(counts)
    extra = set(counts) - set(manifest_ids)
    assert not repeated and not missing and not extra, (repeated[:5], sorted(missing)[:5], sorted(extra)[:5])
    return table


def processes_with_env(marker: str) -> Iterator[tuple[int, str]]:
    """(pid, title) of this user's processes whose environment holds `marker` (NAME=value)."""
    needle = marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if needle not in handle.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                title = handle.read().split(b"\0")[0].decode("utf-8", "replace")
        except OSError:
            continue
        yield int(entry), title


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
