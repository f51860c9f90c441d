"""Resume bookkeeping: the job fingerprint, shard completion markers, done ids per shard.

Design (why not a set of done ids on the driver): a manifest of 10^9 rows would need tens
of GB of driver memory for its ids. Instead the output is organised by manifest shard
(see `pipeline.readers.manifest`): a shard whose rows are all written gets a `_SUCCESS`
marker in its folder, so the driver only ever lists markers (one small object per
10,000 rows) and skips those shards without reading them. A shard interrupted half-way
has no marker; its read task (a worker, not the driver) reads the ids already written
in that one folder and drops them, so only the missing rows are redone. Ray Data's own
checkpointing was not used: it keys on rows of one dataset run and keeps its
bookkeeping outside the output, while ours lives with the output and survives any
number of crashed drivers.

The fingerprint (`_job.json`) records what decides the answers: model, task, prompt,
generation and tiling settings, and the manifest's files. A resume with different values
is refused, naming what changed, because mixing two models' answers in one output would
be silent corruption.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import JobError
from pipeline.readers.manifest import ManifestPlan
from pipeline.spec import JobSpec, StorageSpec
from pipeline.storage import describe, filesystem_for, join_uri, make_dirs, storage_exceptions

FINGERPRINT_FILE = "_job.json"
SUCCESS_MARKER = "_SUCCESS"


def fingerprint(spec: JobSpec) -> dict[str, Any]:
    """The settings that decide the answers (a resolved spec)."""
    task = spec.task
    pre = spec.preprocess
    return {
        "model.name": spec.model.name,
        "model.revision": spec.model.revision,
        "model.dtype": spec.model.dtype,
        "model.quantization": spec.model.quantization,
        "task.kind": task.kind,
        "task.prompt": task.prompt,
        "task.caption_style": task.caption_style,
        "task.categories": list(task.categories) if task.kind == "moderation" else None,
        "task.system_message": task.system_message,
        "task.max_new_tokens": task.max_new_tokens,
        "task.temperature": task.temperature,
        "task.top_p": task.top_p,
        "task.top_k": task.top_k,
        "task.repetition_penalty": task.repetition_penalty,
        "preprocess.max_tiles": pre.max_tiles,
        "preprocess.min_tiles": pre.min_tiles,
        "preprocess.use_thumbnail": pre.use_thumbnail,
        "preprocess.max_tiles_total": pre.max_tiles_total,
        "preprocess.num_frames": pre.num_frames,
        "preprocess.tiles_per_frame": pre.tiles_per_frame,
        "preprocess.exif_transpose": pre.exif_transpose,
        "preprocess.fast_decode": pre.fast_decode,
        "input.id_column": spec.input.id_column,
        "input.uri_column": spec.input.uri_column,
    }


def _read_json(uri: str, storage: StorageSpec | None) -> dict[str, Any] | None:
    fs, path = filesystem_for(uri, storage)
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as handle:
        return json.loads(handle.read().decode("utf-8"))


def _write_json(uri: str, data: dict[str, Any], storage: StorageSpec | None) -> None:
    fs, path = filesystem_for(uri, storage)
    with fs.open(path, "wb") as handle:
        handle.write((json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8"))


def prepare_output(spec: JobSpec, plan: ManifestPlan) -> None:
    """Make the output ready: wipe it (overwrite) or check it belongs to this job (resume).

    Fails before any work starts if the output cannot be written (missing bucket, no
    permission) or was written by a different job.
    """
    output = spec.output.path
    try:
        fs, path = filesystem_for(output, spec.storage)
        if spec.output.mode == "overwrite" and fs.exists(path):
            fs.rm(path, recursive=True)
        make_dirs(output, spec.storage)
        previous = _read_json(join_uri(output, FINGERPRINT_FILE), spec.storage)
    except storage_exceptions(ValueError) as error:
        raise JobError(f"output.path: cannot use {output}: {describe(error, output, spec.storage)}") from None
    current: dict[str, Any] = {"fingerprint": fingerprint(spec), "manifest_files": plan.file_sizes}
    if previous is not None:
        _check_same_job(output, previous, current)
        current["created_at"] = previous.get("created_at")
    else:
        current["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        _write_json(join_uri(output, FINGERPRINT_FILE), current, spec.storage)
    except storage_exceptions(ValueError) as error:
        raise JobError(f"output.path: cannot write to {output}: {describe(error, output, spec.storage)}") from None


def _check_same_job(output: str, previous: dict[str, Any], current: dict[str, Any]) -> None:
    old, new = previous.get("fingerprint", {}), current["fingerprint"]
    changed = [key for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    if changed:
        details = "; ".join(f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in changed)
        raise JobError(
            f"output.path {output} holds results of a different job ({details}). Resuming would mix answers of "
            "two configurations. Use a new output.path, or set output.mode: overwrite to start over."
        )
    old_files = previous.get("manifest_files", {})
    altered = [
        f for f, size in old_files.items() if f in current["manifest_files"] and current["manifest_files"][f] != size
    ]
    removed = [f for f in old_files if f not in current["manifest_files"]]
    if altered or removed:
        names = ", ".join((altered + removed)[:5])
        raise JobError(
            f"output.path {output} was written for a different manifest (changed or removed files: {names}). "
            "Resume needs the same manifest files (new files may be added). Use a new output.path or "
            "output.mode: overwrite."
        )


def done_shards(output: str, storage: StorageSpec | None) -> set[str]:
    """Keys of the shards whose every row is written (one listing of markers)."""
    fs, path = filesystem_for(output, storage)
    if not fs.exists(path):
        return set()
    markers = fs.glob(f"{path}/shard-*/{SUCCESS_MARKER}")
    return {marker.rstrip("/").split("/")[-2] for marker in markers}


def mark_shard_done(output: str, shard: str, storage: StorageSpec | None) -> None:
    """Record that every row of `shard` is in the output."""
    fs, path = filesystem_for(join_uri(output, shard, SUCCESS_MARKER), storage)
    make_dirs(join_uri(output, shard), storage)
    with fs.open(path, "wb") as handle:
        handle.write(b"")


def written_ids(output: str, shard: str, storage: StorageSpec | None) -> pa.Array:
    """Ids already written for one shard (read by the shard's read task, on a worker)."""
    fs, path = filesystem_for(join_uri(output, shard), storage)
    if not fs.exists(path):
        return pa.array([], type=pa.string())
    files = sorted(p for p in fs.ls(path, detail=False) if p.rsplit("/", 1)[-1].startswith("part-"))
    arrays = []
    for file in files:
        with fs.open(file, "rb") as handle:
            arrays.append(pq.read_table(handle, columns=["id"]).column("id").combine_chunks())
    if not arrays:
        return pa.array([], type=pa.string())
    return pa.concat_arrays(arrays)
