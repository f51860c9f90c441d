"""Media listings as manifests: a folder, an S3 prefix or a glob of images and videos.

Two users of one listing:
- `python -m pipeline manifest s3://bucket/photos/ -o manifest.parquet` writes it out;
- `input.manifest: s3://bucket/photos/**/*.jpg` (or a prefix holding media and no Parquet)
  runs straight from it.

Ids are the keys relative to the listing's root (`2024/cats/tabby 1.jpg`): unique within
a listing, readable in the output, and the same every time the same root is listed.
Files whose names have no image or video extension are left out, and so are hidden ones
(a path part starting with '.').

A job run from a listing stores it with its output, as Parquet under `_manifest/`, so
that shards, resume and the exactly-once bookkeeping work as for any manifest. The
listing is planned on the driver from in-memory bytes (so `validate` writes nothing) and
uploaded once the output is prepared. A resumed run lists again and adds a part holding
only the keys that are new; parts already stored never change, so the shards already
done stay valid.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.actors.media_type import IMAGE, IMAGE_EXTENSIONS, VIDEO, VIDEO_EXTENSIONS
from pipeline.errors import JobError
from pipeline.readers.manifest import ManifestPlan, discover_files, open_parquet, plan_manifest
from pipeline.spec import JobSpec, StorageSpec
from pipeline.storage import (
    StorageError,
    describe,
    filesystem_for,
    is_remote,
    join_uri,
    make_dirs,
    storage_exceptions,
    with_scheme,
)

LISTING_FOLDER = "_manifest"
LISTING_PREFIX = "listing-"


@dataclass(frozen=True)
class MediaFile:
    """One listed image or video."""

    id: str
    uri: str
    media_type: str
    size: int


@dataclass
class InputPlan:
    """The manifest plan of a job, and the listing parts to store before it runs."""

    plan: ManifestPlan
    listed: bool = False
    uploads: dict[str, bytes] = field(default_factory=dict)


def media_type_of(name: str) -> str | None:
    """image or video from a file name's extension; None for anything else."""
    dot = name.rfind(".")
    extension = name[dot:].lower() if dot >= 0 else ""
    if extension in IMAGE_EXTENSIONS:
        return IMAGE
    if extension in VIDEO_EXTENSIONS:
        return VIDEO
    return None


def _root_of(path: str) -> str:
    """The folder ids are relative to: the path itself, or a glob's deepest folder without magic."""
    if not globlib.has_magic(path):
        return path.rstrip("/")
    parts = path.split("/")
    fixed: list[str] = []
    for part in parts:
        if globlib.has_magic(part):
            break
        fixed.append(part)
    return "/".join(fixed).rstrip("/")


def _found(source: str, storage: StorageSpec | None) -> tuple[str, dict[str, dict[str, Any]]]:
    """Every file a folder, prefix or glob names, with its details, and the root of the ids."""
    try:
        fs, path = filesystem_for(source, storage)
    except StorageError as error:
        raise JobError(str(error)) from None
    try:
        if globlib.has_magic(path):
            found = fs.glob(path, detail=True)
        elif fs.isdir(path):
            found = fs.find(path, detail=True)
        elif fs.isfile(path):
            found = {path: fs.info(path)}
            return path.rsplit("/", 1)[0], found
        else:
            raise JobError(f"{source} does not exist; check the path (a folder, a prefix or a glob)")
    except storage_exceptions() as error:
        raise JobError(f"cannot list {source}: {describe(error, source, storage)}") from None
    files = {name: info for name, info in found.items() if info.get("type") == "file" and not name.endswith("/")}
    return _root_of(path), files


def _visible(relative: str) -> bool:
    return not any(part.startswith(".") for part in relative.split("/"))


def media_files(source: str, root: str, found: dict[str, dict[str, Any]]) -> list[MediaFile]:
    """The images and videos among listed files, sorted by id."""
    media: list[MediaFile] = []
    for name, info in found.items():
        relative = name[len(root) :].lstrip("/") if name.startswith(root) else name.rsplit("/", 1)[-1]
        kind = media_type_of(name)
        if kind is None or not relative or not _visible(relative):
            continue
        media.append(MediaFile(relative, with_scheme(source, name), kind, int(info.get("size") or 0)))
    media.sort(key=lambda item: item.id)
    return media


def list_media(source: str, storage: StorageSpec | None = None) -> list[MediaFile]:
    """The images and videos under a folder, an s3:// prefix or a glob, sorted by id."""
    root, found = _found(source, storage)
    return media_files(source, root, found)


def listing_table(
    media: list[MediaFile], id_column: str = "id", uri_column: str = "uri", media_type_column: str | None = "media_type"
) -> pa.Table:
    """A manifest table of listed media, with the spec's column names."""
    columns: dict[str, pa.Array] = {
        id_column: pa.array([item.id for item in media], type=pa.string()),
        uri_column: pa.array([item.uri for item in media], type=pa.string()),
    }
    if media_type_column:
        columns[media_type_column] = pa.array([item.media_type for item in media], type=pa.string())
    columns["size_bytes"] = pa.array([item.size for item in media], type=pa.int64())
    return pa.table(columns)


def parquet_bytes(table: pa.Table, row_group_size: int) -> bytes:
    """A table as Parquet bytes (deterministic for the same rows and settings)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=row_group_size, compression="zstd")
    return sink.getvalue().to_pybytes()


def write_bytes(uri: str, data: bytes, storage: StorageSpec | None) -> None:
    """Publish a whole file at once: a temporary name and a rename locally, one upload on S3."""
    fs, path = filesystem_for(uri, storage)
    if is_remote(uri):
        with fs.open(path, "wb") as handle:
            handle.write(data)
        return
    parent = os.path.dirname(path)
    make_dirs(parent, storage)
    temporary = os.path.join(parent, f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_listing(media: list[MediaFile], output: str, storage: StorageSpec | None, rows_per_group: int) -> int:
    """Write a listing as a manifest file (`python -m pipeline manifest`); returns the row count."""
    table = listing_table(media)
    try:
        fs, path = filesystem_for(output, storage)
        if fs.isdir(path):
            raise JobError(f"-o {output} is a directory; name a .parquet file")
        write_bytes(output, parquet_bytes(table, rows_per_group), storage)
    except StorageError as error:
        raise JobError(str(error)) from None
    except storage_exceptions() as error:
        raise JobError(f"cannot write {output}: {describe(error, output, storage)}") from None
    return table.num_rows


def classify_input(source: str, storage: StorageSpec | None) -> tuple[str, str, dict[str, dict[str, Any]]]:
    """Whether `input.manifest` names Parquet ('parquet') or media to list ('media'), with what was listed."""
    try:
        fs, path = filesystem_for(source, storage)
    except StorageError as error:
        raise JobError(f"input.manifest: {error}") from None
    try:
        if not globlib.has_magic(path) and not fs.isdir(path):
            return ("media" if media_type_of(path) else "parquet"), "", {}
    except storage_exceptions() as error:
        raise JobError(f"input.manifest: cannot read {source}: {describe(error, source, storage)}") from None
    try:
        root, found = _found(source, storage)
    except JobError as error:
        raise JobError(f"input.manifest: {error}") from None
    names = [name for name in found if _visible(name[len(root) :])]
    has_parquet = any(name.endswith(".parquet") for name in names)
    has_media = any(media_type_of(name) for name in names)
    if has_media and has_parquet and globlib.has_magic(path):
        raise JobError(
            f"input.manifest: {source} matches both Parquet files and media; narrow the glob to one kind "
            "(e.g. **/*.parquet for a manifest, **/*.jpg for media)"
        )
    if not has_parquet and not has_media:
        what = (
            "matches no Parquet files and no images or videos"
            if globlib.has_magic(path)
            else ("holds no Parquet files and no images or videos")
        )
        raise JobError(f"input.manifest: {source} {what}; point it at a manifest, a folder or a glob of media")
    return ("media" if has_media and not has_parquet else "parquet"), root, found


def _previous_parts(spec: JobSpec) -> list[str]:
    """Listing parts stored by earlier runs of this output (only resume keeps them)."""
    if spec.output.mode != "resume":
        return []
    folder = join_uri(spec.output.path, LISTING_FOLDER)
    fs, path = filesystem_for(folder, spec.storage)
    try:
        if not fs.isdir(path):
            return []
        names = fs.ls(path, detail=False)
    except storage_exceptions() as error:
        raise JobError(f"output.path: cannot read {folder}: {describe(error, folder, spec.storage)}") from None
    parts = [n for n in names if n.rsplit("/", 1)[-1].startswith(LISTING_PREFIX) and n.endswith(".parquet")]
    return sorted(with_scheme(folder, name) for name in parts)


def _known_ids(parts: list[str], spec: JobSpec) -> set[str]:
    ids: set[str] = set()
    for part in parts:
        table = open_parquet(part, spec.storage).read(columns=[spec.input.id_column])
        ids.update(table.column(0).to_pylist())
    return ids


def plan_listing(spec: JobSpec, media: list[MediaFile]) -> InputPlan:
    """A manifest plan over the stored listing parts plus a new part for media not listed before."""
    previous = _previous_parts(spec)
    known = _known_ids(previous, spec) if previous else set()
    new = [item for item in media if item.id not in known]
    if not media and not previous:
        raise JobError(
            f"input.manifest: no images or videos found at {spec.input.manifest} (files are recognised by "
            "their extension); check the folder, prefix or glob"
        )
    uploads: dict[str, bytes] = {}
    if new:
        table = listing_table(new, spec.input.id_column, spec.input.uri_column, spec.input.media_type_column)
        data = parquet_bytes(table, spec.input.rows_per_shard)
        name = f"{LISTING_PREFIX}{hashlib.sha1(data).hexdigest()[:16]}.parquet"
        uploads[join_uri(spec.output.path, LISTING_FOLDER, name)] = data
    files = previous + sorted(uploads)

    def opener(uri: str) -> pq.ParquetFile:
        if uri in uploads:
            return pq.ParquetFile(pa.BufferReader(uploads[uri]))
        return open_parquet(uri, spec.storage)

    plan = plan_manifest(spec.input, spec.storage, files=files, opener=opener)
    return InputPlan(plan=plan, listed=True, uploads=uploads)


def plan_input(spec: JobSpec) -> InputPlan:
    """The plan for `input.manifest`, whether it names Parquet or a folder/prefix/glob of media."""
    source = spec.input.manifest
    kind, root, found = classify_input(source, spec.storage)
    if kind == "parquet":
        files = discover_files(source, spec.storage)
        return InputPlan(plan=plan_manifest(spec.input, spec.storage, files=files))
    if not root:  # a single media file
        root, found = _found(source, spec.storage)
    return plan_listing(spec, media_files(source, root, found))


def store_listing(uploads: dict[str, bytes], storage: StorageSpec | None) -> None:
    """Write the new listing parts next to the output (after the output is prepared)."""
    for uri, data in uploads.items():
        fs, path = filesystem_for(uri, storage)
        try:
            if fs.exists(path) and fs.size(path) == len(data):
                continue  # content-addressed name: the same bytes are already there
            write_bytes(uri, data, storage)
        except storage_exceptions() as error:
            raise JobError(f"output.path: cannot store the listing {uri}: {describe(error, uri, storage)}") from None
