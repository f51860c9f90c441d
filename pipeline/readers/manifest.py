"""Manifest discovery, contract checks and shard planning.

A manifest is one or more Parquet files. We never hold its rows on the driver: we read
file footers (schemas, row-group sizes) to cut it into *shards* - a row group, or a
slice of one when it is large - each with a stable key derived from the file's path and
position. Shards are the unit of work for the read stage and of bookkeeping for resume.
The id column is streamed once to check for nulls and duplicates (see
`pipeline.readers.duplicates`), before any model loads.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import JobError
from pipeline.readers.duplicates import DuplicateFinder
from pipeline.spec import InputSpec, StorageSpec
from pipeline.storage import StorageError, describe, filesystem_for, is_remote, storage_exceptions, uri_scheme

MAX_NAMED = 10

# Canonical names of the manifest columns inside the pipeline; the writer restores the
# user's names for pass-through columns.
ID, URI, URIS, MEDIA_HINT, ROW_PROMPT, INLINE_BYTES, START_S, END_S = (
    "id",
    "uri",
    "uris",
    "media_type_hint",
    "row_prompt",
    "inline_bytes",
    "start_s",
    "end_s",
)
SHARD, SHARD_TODO = "_shard", "_shard_todo"
PASSTHROUGH_PREFIX = "passthrough__"


@dataclass(frozen=True)
class Shard:
    """A contiguous slice of one row group of one manifest file."""

    key: str
    file: str
    row_group: int
    offset: int
    num_rows: int


@dataclass
class ManifestPlan:
    """What the driver knows of a manifest: its files, columns and shards (never its rows)."""

    files: list[str]
    file_sizes: dict[str, int]
    columns: dict[str, str]  # canonical name -> manifest column name, for the columns present
    passthrough: list[str]
    shards: list[Shard] = field(default_factory=list)

    @property
    def total_rows(self) -> int:
        """Rows in the manifest (after input.limit)."""
        return sum(shard.num_rows for shard in self.shards)


def _with_scheme(uri: str, path: str) -> str:
    return f"{uri_scheme(uri)}://{path}" if is_remote(uri) else path


def _hidden(found: str, root: str) -> bool:
    """Files and folders named '_...' or '....' below the root (markers, temporaries) are not data."""
    root_parts = len(root.rstrip("/").split("/")) - (1 if globlib.has_magic(root) else 0)
    return any(part.startswith(("_", ".")) for part in found.split("/")[root_parts:])


def discover_files(manifest: str, storage: StorageSpec | None = None) -> list[str]:
    """The Parquet files a manifest uri names: a file, a directory (recursively) or a glob."""
    try:
        fs, path = filesystem_for(manifest, storage)
    except StorageError as error:
        raise JobError(f"input.manifest: {error}") from None
    try:
        if globlib.has_magic(path):
            found = sorted(p for p in fs.glob(path) if fs.isfile(p) and not _hidden(p, path))
        elif fs.isdir(path):
            found = sorted(p for p in fs.find(path) if p.endswith(".parquet") and not _hidden(p, path))
        elif fs.isfile(path):
            found = [path]
        else:
            raise JobError(
                f"input.manifest: {manifest} does not exist; check the path (a Parquet file, a folder of them, "
                "or a glob such as data/*.parquet)"
            )
    except storage_exceptions(ValueError) as error:
        raise JobError(f"input.manifest: cannot list {manifest}: {describe(error, manifest, storage)}") from None
    if not found:
        raise JobError(
            f"input.manifest: no Parquet files found at {manifest}; point it at a .parquet file, a folder holding "
            "them, or a glob such as data/*.parquet"
        )
    return [_with_scheme(manifest, p) for p in found]


def open_parquet(uri: str, storage: StorageSpec | None = None) -> pq.ParquetFile:
    """Open a Parquet file through the shared filesystem layer, or fail naming the file."""
    fs, path = filesystem_for(uri, storage)
    try:
        return pq.ParquetFile(fs.open(path, "rb"))
    except pa.ArrowInvalid as error:
        raise JobError(
            f"input.manifest: {uri} is not a readable Parquet file ({error}); a manifest must be Parquet "
            "(convert CSV or JSON first, e.g. with pyarrow or pandas), and complete"
        ) from None
    except storage_exceptions() as error:
        raise JobError(f"input.manifest: cannot read {uri}: {describe(error, uri, storage)}") from None


def resolve_columns(spec: InputSpec, schema: pa.Schema, source: str) -> tuple[dict[str, str], list[str]]:
    """Map canonical names to the manifest's columns; check required columns and types."""
    names = schema.names
    available = ", ".join(names)
    for role, column in (("input.id_column", spec.id_column), ("input.uri_column", spec.uri_column)):
        if column not in names:
            raise JobError(
                f"{source}: the manifest has no column {column!r} ({role}); its columns are: {available}. "
                f"Set {role} to the right column name."
            )
    columns = {ID: spec.id_column, URI: spec.uri_column}
    optional = {
        URIS: spec.uris_column,
        MEDIA_HINT: spec.media_type_column,
        ROW_PROMPT: spec.prompt_column,
        INLINE_BYTES: spec.bytes_column,
        START_S: spec.start_column,
        END_S: spec.end_column,
    }
    for canonical, optional_column in optional.items():
        if optional_column and optional_column in names and optional_column not in columns.values():
            columns[canonical] = optional_column
    _check_types(schema, columns, source)
    missing = [c for c in spec.passthrough_columns if c not in names]
    if missing:
        raise JobError(
            f"input.passthrough_columns: {', '.join(missing)} not in the manifest {source}; its columns are: "
            f"{available}. Fix the names in input.passthrough_columns or add the column(s) to the manifest"
        )
    return columns, list(spec.passthrough_columns)


# The spec field that names each canonical column, so an error can say which setting to change.
_SPEC_FIELDS = {
    ID: "input.id_column",
    URI: "input.uri_column",
    URIS: "input.uris_column",
    MEDIA_HINT: "input.media_type_column",
    ROW_PROMPT: "input.prompt_column",
    INLINE_BYTES: "input.bytes_column",
    START_S: "input.start_column",
    END_S: "input.end_column",
}


def _check_types(schema: pa.Schema, columns: dict[str, str], source: str) -> None:
    def kind_of(name: str) -> pa.DataType:
        return schema.field(name).type

    expectations = {
        ID: (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t), "string"),
        URI: (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t), "string"),
        URIS: (lambda t: pa.types.is_list(t) or pa.types.is_large_list(t), "list of strings"),
        MEDIA_HINT: (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), "string"),
        ROW_PROMPT: (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), "string"),
        INLINE_BYTES: (lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t), "binary"),
        START_S: (lambda t: pa.types.is_integer(t) or pa.types.is_floating(t), "number"),
        END_S: (lambda t: pa.types.is_integer(t) or pa.types.is_floating(t), "number"),
    }
    for canonical, column in columns.items():
        check, expected = expectations[canonical]
        if not check(kind_of(column)):
            field = _SPEC_FIELDS[canonical]
            other = "another column" if canonical in (ID, URI) else "another column (or null to ignore it)"
            raise JobError(
                f"{source}: column {column!r} ({field}) must hold {expected} values, but has type "
                f"{kind_of(column)}. Store it as {expected} in the manifest, or set {field} to {other}"
            )


def shard_key(file_uri: str, row_group: int, part: int) -> str:
    """A stable, filesystem-safe name for a shard: same file and position, same key."""
    digest = hashlib.sha1(file_uri.encode("utf-8")).hexdigest()[:12]
    return f"shard-{digest}-g{row_group:05d}-p{part:04d}"


def plan_manifest(
    spec: InputSpec,
    storage: StorageSpec | None = None,
    files: list[str] | None = None,
    opener: Callable[[str], pq.ParquetFile] | None = None,
) -> ManifestPlan:
    """Discover files (unless given), check the schema contract and cut the manifest into shards.

    `opener` reads a file's footer from elsewhere than storage (a listing planned in memory
    before it is stored; see `pipeline.readers.listing`)."""
    files = files if files is not None else discover_files(spec.manifest, storage)
    plan: ManifestPlan | None = None
    remaining = spec.limit
    for uri in files:
        parquet = opener(uri) if opener is not None else open_parquet(uri, storage)
        columns, passthrough = resolve_columns(spec, parquet.schema_arrow, uri)
        if plan is None:
            plan = ManifestPlan(files=[], file_sizes={}, columns=columns, passthrough=passthrough)
        elif columns != plan.columns:
            raise JobError(
                f"input.manifest: {uri} has different columns than {files[0]}; every manifest file needs the same "
                "schema"
            )
        plan.files.append(uri)
        plan.file_sizes[uri] = int(parquet.metadata.serialized_size) + sum(
            parquet.metadata.row_group(i).total_byte_size for i in range(parquet.metadata.num_row_groups)
        )
        for group in range(parquet.metadata.num_row_groups):
            rows = parquet.metadata.row_group(group).num_rows
            for part, offset in enumerate(range(0, rows, spec.rows_per_shard)):
                count = min(spec.rows_per_shard, rows - offset)
                if remaining is not None:
                    count = min(count, remaining)
                    remaining -= count
                if count > 0:
                    plan.shards.append(Shard(shard_key(uri, group, part), uri, group, offset, count))
                if remaining == 0:
                    return plan
    assert plan is not None  # discover_files never returns an empty list
    return plan


def read_shard(
    shard: Shard, plan_columns: dict[str, str], passthrough: list[str], storage: StorageSpec | None
) -> pa.Table:
    """The manifest rows of one shard, with canonical column names."""
    parquet = open_parquet(shard.file, storage)
    wanted = list(dict.fromkeys([*plan_columns.values(), *passthrough]))
    table = parquet.read_row_group(shard.row_group, columns=wanted).slice(shard.offset, shard.num_rows)
    out: dict[str, pa.Array | pa.ChunkedArray] = {}
    base = manifest_base(shard.file)
    for canonical, column in plan_columns.items():
        array = table.column(column)
        if canonical == ID and not pa.types.is_string(array.type):
            array = array.cast(pa.string())
        elif canonical == URI:
            array = pa.array([resolve_uri(u, base) for u in array.to_pylist()], type=pa.string())
        elif canonical == URIS:
            array = pa.array(
                [None if us is None else [resolve_uri(u, base) for u in us] for us in array.to_pylist()],
                type=pa.list_(pa.string()),
            )
        out[canonical] = array
    for column in passthrough:
        out[PASSTHROUGH_PREFIX + column] = table.column(column)
    return pa.table(out)


def manifest_base(file_uri: str) -> str:
    """The folder relative media uris in this manifest file are resolved against."""
    return file_uri.rsplit("/", 1)[0] if "/" in file_uri else "."


def resolve_uri(uri: str | None, base: str) -> str | None:
    """A manifest uri made absolute: relative local paths are taken relative to the manifest's folder."""
    if uri is None or not isinstance(uri, str) or not uri.strip():
        return uri
    if "://" in uri or uri.startswith("/"):
        return uri
    if uri.startswith("~"):
        return os.path.expanduser(uri)
    return f"{base.rstrip('/')}/{uri}"


def iter_ids(plan: ManifestPlan, storage: StorageSpec | None) -> Iterator[tuple[Shard, pa.Array]]:
    """Stream the id column shard by shard (strings), for the contract checks.

    Each row group is read once, however many shards it holds, and only one is held at a
    time: the driver's memory is bounded by the largest row group, whatever the manifest's length.
    """
    id_column = plan.columns[ID]
    current_file, parquet = None, None
    current_group: tuple[str, int] | None = None
    group: pa.Table | None = None
    for shard in plan.shards:
        if shard.file != current_file:
            current_file, parquet = shard.file, open_parquet(shard.file, storage)
        assert parquet is not None
        if current_group != (shard.file, shard.row_group):
            group = None  # release the previous row group before reading the next
            group = parquet.read_row_group(shard.row_group, columns=[id_column])
            current_group = (shard.file, shard.row_group)
        assert group is not None
        array = group.slice(shard.offset, shard.num_rows).column(id_column).combine_chunks()
        if not pa.types.is_string(array.type):
            array = array.cast(pa.string())
        yield shard, array


def check_ids(plan: ManifestPlan, storage: StorageSpec | None, check_duplicates: bool = True) -> None:
    """Fail if any id is null, empty or (optionally) repeated, naming up to 10 offenders."""
    id_column = plan.columns[ID]
    null_rows: list[str] = []
    null_count = 0
    finder = DuplicateFinder() if check_duplicates else None
    for shard, ids in iter_ids(plan, storage):
        nulls = ids.is_null()
        empties = pa.compute.equal(pa.compute.utf8_length(ids.fill_null("x")), 0)
        bad = pa.compute.or_(nulls, empties)
        if bad.true_count:
            null_count += bad.true_count
            for index in pa.compute.indices_nonzero(bad).to_pylist()[: MAX_NAMED - len(null_rows)]:
                null_rows.append(f"row {shard.offset + index} of row group {shard.row_group} in {shard.file}")
        if finder is not None:
            finder.add(ids.drop_null())
    if null_count:
        raise JobError(
            f"input.manifest: column {id_column!r} (input.id_column) has {null_count} null or empty id(s): "
            + "; ".join(null_rows)
            + ". Every row needs a unique, non-empty id: fill in those ids or drop those rows in the manifest, "
            "or set input.id_column to a column without gaps."
        )
    if finder is None:
        return
    duplicates, total = finder.duplicates(lambda: (ids for _, ids in iter_ids(plan, storage)), limit=MAX_NAMED)
    if duplicates:
        named = ", ".join(repr(d) for d in duplicates)
        raise JobError(
            f"input.manifest: column {id_column!r} (input.id_column) has {total} duplicated id value(s), e.g. "
            f"{named}. Every id must be unique (the output has one row per id): deduplicate the manifest, or set "
            "input.id_column to a column whose values are unique."
        )
