"""Resume bookkeeping: the job fingerprint, verified shard markers, done ids per shard.

Design (why not a set of done ids on the driver): a manifest of 10^9 rows would need tens
of GB of driver memory for its ids. Instead the output is organised by manifest shard
(see `pipeline.readers.manifest`): a shard whose rows are all written gets a marker
`_SUCCESS-{rows}` in its folder, so the driver only ever lists markers (one small object
per 10,000 rows by default; the row count is in the name, so no marker is ever read) and
skips those shards without reading them. A shard interrupted half-way has no marker; its
read task (a worker, not the driver) reads the ids already written in that one folder and
drops them, so only the missing rows are redone. Ray Data's own checkpointing was not
used: it keys on rows of one dataset run and keeps its bookkeeping outside the output,
while ours lives with the output and survives any number of crashed drivers.

A marker is a verified statement, not a guess from counters: `seal_shard` (run by a worker)
reads the ids of the shard's part files and of its manifest rows, removes any row found
in two files (which only a crashed earlier run writing concurrently could leave), drops
stale temporary files, and writes the marker only if every manifest id of the shard is
present exactly once. The row count in the marker's name makes a marker written under a
different `input.limit` not count for a shard that has grown.

The fingerprint (`_job.json`) records what decides the answers (model, task, prompt,
generation and tiling settings) and what decides the shard layout (id column,
rows_per_shard, the manifest's files). A resume with different values is refused, naming
what changed, because mixing two models' answers in one output would be silent corruption
and a different shard layout would write rows twice.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import JobError
from pipeline.readers.manifest import ManifestPlan, Shard, open_parquet
from pipeline.spec import JobSpec, StorageSpec
from pipeline.storage import describe, filesystem_for, is_remote, join_uri, make_dirs, storage_exceptions
from pipeline.writers.parquet import TEMP_PREFIX, ParquetWriter, is_part_file, part_name

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "_job.json"
SUCCESS_MARKER = "_SUCCESS"  # at the output's root: every shard is complete
SHARD_MARKER_PREFIX = "_SUCCESS-"  # in a shard's folder, followed by the shard's row count
CORRUPT_PREFIX = ".corrupt-"
# Output entries a run creates itself (anything else in a non-empty output folder means
# the folder belongs to someone else and must not be deleted or mixed into).
OWN_ROOT_ENTRIES = re.compile(r"^(shard-.*|_.*|\..*)$")
# A temporary file older than this in a complete shard belongs to a writer that died.
STALE_TEMP_S = 600.0


def fingerprint(spec: JobSpec) -> dict[str, Any]:
    """The settings that decide the answers and the shard layout (a resolved spec)."""
    task = spec.task
    pre = spec.preprocess
    return {
        "model.name": spec.model.name,
        "model.revision": spec.model.revision,
        "model.dtype": spec.model.dtype,
        "model.quantization": spec.model.quantization,
        # A dummy model's depth is part of the model: another depth gives other answers. (Null
        # for every other model, so fingerprints written before this key still match them.)
        "model.dummy_layers": spec.model.dummy_layers,
        "task.kind": task.kind,
        "task.prompt": task.prompt,
        "task.caption_style": task.caption_style,
        "task.categories": list(task.categories) if task.kind == "moderation" else None,
        "task.system_message": task.system_message,
        "task.max_new_tokens": task.max_new_tokens,
        "task.temperature": task.temperature,
        "task.top_p": task.top_p,
        # Sampling answers depend on the seed; greedy ones do not (null, as in older fingerprints).
        "task.seed": task.seed if task.temperature > 0 else None,
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
        "input.rows_per_shard": spec.input.rows_per_shard,
    }


def _read_json(uri: str, storage: StorageSpec | None) -> dict[str, Any] | None:
    fs, path = filesystem_for(uri, storage)
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as handle:
        raw = handle.read()
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise JobError(f"{uri} is not valid JSON ({error}); restore it or delete it to start over") from None


def _write_json(uri: str, data: dict[str, Any], storage: StorageSpec | None) -> None:
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    ParquetWriter(storage).write_bytes(text.encode("utf-8"), uri)


def _entry_names(fs: Any, path: str) -> list[str]:
    return [entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(path, detail=False)]


def check_output_folder(output: str, storage: StorageSpec | None) -> list[str]:
    """The names in the output folder, after checking it is ours to write: absent, empty, or
    written by this pipeline (a folder of someone else's files is never deleted or mixed into)."""
    try:
        fs, path = filesystem_for(output, storage)
        if fs.isfile(path):
            raise JobError(f"output.path: {output} is a file; it must be a folder (or not exist yet)")
        names = _entry_names(fs, path) if fs.isdir(path) else []
    except storage_exceptions(ValueError) as error:
        raise JobError(f"output.path: cannot use {output}: {describe(error, output, storage)}") from None
    foreign = [n for n in names if not OWN_ROOT_ENTRIES.match(n)]
    if foreign and FINGERPRINT_FILE not in names:
        raise JobError(
            f"output.path: {output} is not empty ({', '.join(sorted(foreign)[:5])}) and was not written by this "
            "pipeline (no _job.json); refusing to delete or mix into it. Choose an empty or new folder."
        )
    return names


def prepare_output(spec: JobSpec, plan: ManifestPlan, keep: tuple[str, ...] = ()) -> None:
    """Make the output ready: wipe it (overwrite) or check it belongs to this job (resume).

    Fails before any work starts if the output cannot be written (missing bucket, no
    permission), belongs to something else (a non-empty folder this pipeline did not
    write: it is never deleted or mixed into), or was written by a different job. `keep`
    names root entries an overwrite must leave (the run's lease).
    """
    output = spec.output.path
    try:
        fs, path = filesystem_for(output, spec.storage)
        names = check_output_folder(output, spec.storage)
        if SUCCESS_MARKER in names:  # this run may add rows: the output is complete again only at its end
            fs.rm(join_uri(path, SUCCESS_MARKER))
        if spec.output.mode == "overwrite":
            # The old fingerprint stays until the new one replaces it: an overwrite cut off half-way
            # leaves old results under the old fingerprint, never under the new one.
            for name in names:
                if name not in (*keep, SUCCESS_MARKER, FINGERPRINT_FILE):
                    fs.rm(join_uri(path, name), recursive=True)
        make_dirs(output, spec.storage)
        previous = None
        if spec.output.mode == "resume":
            previous = _read_json(join_uri(output, FINGERPRINT_FILE), spec.storage)
    except storage_exceptions(ValueError) as error:
        raise JobError(f"output.path: cannot use {output}: {describe(error, output, spec.storage)}") from None
    current: dict[str, Any] = {"fingerprint": fingerprint(spec), "manifest_files": plan.file_sizes}
    if previous is not None and _has_results(names):
        _check_same_job(output, previous, current)
        current["created_at"] = previous.get("created_at")
    else:
        current["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        _write_json(join_uri(output, FINGERPRINT_FILE), current, spec.storage)
    except storage_exceptions(ValueError) as error:
        raise JobError(f"output.path: cannot write to {output}: {describe(error, output, spec.storage)}") from None


def check_resumable(spec: JobSpec, plan: ManifestPlan) -> None:
    """Read-only version of the checks `prepare_output` makes (for `validate` and before Ray starts)."""
    names = check_output_folder(spec.output.path, spec.storage)
    if spec.output.mode == "resume" and FINGERPRINT_FILE in names and _has_results(names):
        previous = _read_json(join_uri(spec.output.path, FINGERPRINT_FILE), spec.storage)
        if previous is not None:
            current = {"fingerprint": fingerprint(spec), "manifest_files": plan.file_sizes}
            _check_same_job(spec.output.path, previous, current)


def _has_results(names: list[str]) -> bool:
    """Whether an output folder holds any rows (a job that failed before writing any may be changed freely)."""
    return any(name.startswith("shard-") for name in names)


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


def shard_marker_name(num_rows: int) -> str:
    """The marker of a complete shard of `num_rows` manifest rows."""
    return f"{SHARD_MARKER_PREFIX}{num_rows}"


def done_shards(output: str, storage: StorageSpec | None) -> dict[str, int]:
    """Shard key -> rows covered by its marker (one listing; no marker is read)."""
    fs, path = filesystem_for(output, storage)
    if not fs.exists(path):
        return {}
    done: dict[str, int] = {}
    for marker in fs.glob(f"{path}/shard-*/{SHARD_MARKER_PREFIX}*"):
        parts = marker.rstrip("/").split("/")
        count = parts[-1][len(SHARD_MARKER_PREFIX) :]
        if count.isdigit():
            done[parts[-2]] = max(done.get(parts[-2], 0), int(count))
    return done


def pending_shards(plan: ManifestPlan, done: dict[str, int]) -> list[Shard]:
    """Shards without a marker for all their rows. A marker counts rows from the shard's start,
    so one for fewer rows (written under a smaller `input.limit`) does not cover a shard that grew."""
    return [shard for shard in plan.shards if done.get(shard.key, 0) < shard.num_rows]


def shard_ids(shard: Shard, id_column: str, storage: StorageSpec | None) -> pa.Array:
    """The manifest ids of one shard, as strings."""
    parquet = open_parquet(shard.file, storage)
    table = parquet.read_row_group(shard.row_group, columns=[id_column]).slice(shard.offset, shard.num_rows)
    ids = table.column(id_column).combine_chunks()
    return ids if pa.types.is_string(ids.type) else ids.cast(pa.string())


def _part_files(fs: Any, folder: str) -> list[str]:
    return sorted(p for p in fs.ls(folder, detail=False) if is_part_file(p.rstrip("/").rsplit("/", 1)[-1]))


def _quarantine(fs: Any, file: str) -> None:
    """Move an unreadable part file out of the way (kept for inspection; its rows are redone)."""
    folder, name = file.rsplit("/", 1)
    target = f"{folder}/{CORRUPT_PREFIX}{int(time.time())}-{name}"
    logger.warning("part file %s is unreadable; moved to %s and its rows will be redone", file, target)
    fs.mv(file, target)


def _file_ids(fs: Any, file: str) -> pa.Array | None:
    """The ids in one part file, or None (after quarantining it) if it cannot be read."""
    try:
        with fs.open(file, "rb") as handle:
            return pq.read_table(handle, columns=["id"]).column("id").combine_chunks()
    except FileNotFoundError:
        return None  # replaced or removed meanwhile (a retried write, a concurrent seal)
    except (pa.ArrowInvalid, OSError, KeyError) as error:
        logger.warning("cannot read %s: %s", file, error)
        _quarantine(fs, file)
        return None


def written_ids(output: str, shard: str, storage: StorageSpec | None) -> pa.Array:
    """Ids already written for one shard (read by the shard's read task, on a worker)."""
    fs, path = filesystem_for(join_uri(output, shard), storage)
    if not fs.exists(path):
        return pa.array([], type=pa.string())
    arrays = [ids for file in _part_files(fs, path) if (ids := _file_ids(fs, file)) is not None]
    if not arrays:
        return pa.array([], type=pa.string())
    return pa.concat_arrays([a.cast(pa.string()) for a in arrays])


@dataclass
class SealResult:
    """What sealing one shard found."""

    shard: str
    sealed: bool
    rows: int  # manifest rows of the shard
    missing: int = 0  # manifest ids with no output row (the shard stays unsealed)
    duplicates_removed: int = 0
    temps_removed: int = 0


def seal_shard(output: str, shard: Shard, expected: pa.Array, storage: StorageSpec | None) -> SealResult:
    """Verify a shard's folder holds every id of `expected` exactly once; then write its marker.

    Duplicates (an id in two part files) are removed: a file whose ids were all seen in
    earlier files is deleted, a file with some is rewritten without them (new file first,
    then the old one is deleted, so a crash in between leaves duplicates for the next seal
    to remove, never a loss). Idempotent: sealing a sealed shard re-verifies it.
    """
    fs, folder = filesystem_for(join_uri(output, shard.key), storage)
    result = SealResult(shard=shard.key, sealed=False, rows=shard.num_rows)
    if not fs.exists(folder):
        fs.makedirs(folder, exist_ok=True)
    seen: set[str] = set()
    writer = ParquetWriter(storage)
    files = _part_files(fs, folder)
    for position, file in enumerate(files):
        ids = _file_ids(fs, file)
        if ids is None:
            continue
        values = ids.cast(pa.string()).to_pylist()
        repeated = [value in seen for value in values]
        if any(repeated):
            result.duplicates_removed += sum(repeated)
            logger.warning("shard %s: removing %d row(s) written twice", shard.key, sum(repeated))
            kept_ids = [value for value, again in zip(values, repeated, strict=True) if not again]
            target = part_name(kept_ids) if kept_ids else None
            later = {f.rsplit("/", 1)[-1] for f in files[position + 1 :]}
            if target is None:
                fs.rm(file)
            elif target in later:  # the rows it still has are exactly a file not yet checked
                fs.rm(file)
                result.duplicates_removed += len(kept_ids)
                seen.update(value for value, again in zip(values, repeated, strict=True) if again)
                continue
            else:
                with fs.open(file, "rb") as handle:
                    table = pq.read_table(handle)
                kept = table.filter(pa.array([not again for again in repeated]))
                writer.write_table(kept, join_uri(output, shard.key, target))
                fs.rm(file)
        seen.update(values)
    result.temps_removed = _remove_stale_temporaries(fs, folder, output)
    missing = pc.invert(pc.is_in(expected, value_set=pa.array(list(seen), type=pa.string())))
    result.missing = missing.true_count
    if result.missing == 0:
        with fs.open(f"{folder}/{shard_marker_name(shard.num_rows)}", "wb") as handle:
            handle.write(b"")
        result.sealed = True
    return result


def _remove_stale_temporaries(fs: Any, folder: str, output: str) -> int:
    """Temporary files left by writers that died (local filesystems only; object stores have none)."""
    if is_remote(output):
        return 0
    removed = 0
    for entry in fs.ls(folder, detail=True):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if name.startswith(TEMP_PREFIX) and time.time() - float(entry.get("mtime", 0)) > STALE_TEMP_S:
            try:
                os.remove(entry["name"])
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def seal_from_manifest(output: str, shard: Shard, id_column: str, storage: StorageSpec | None) -> SealResult:
    """Seal a shard, reading its expected ids from the manifest (a Ray task of the driver's)."""
    return seal_shard(output, shard, shard_ids(shard, id_column, storage), storage)


def mark_job_complete(output: str, storage: StorageSpec | None) -> None:
    """Write the root `_SUCCESS`: every manifest row of the job is in the output."""
    fs, path = filesystem_for(join_uri(output, SUCCESS_MARKER), storage)
    with fs.open(path, "wb") as handle:
        handle.write(b"")
