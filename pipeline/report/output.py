"""Reading a job's output for people: its files, counts, samples, error examples, single rows.

Shared by `report` and `inspect`. Built for outputs of any size: counts stream a few light
columns file by file (never the text), samples and lookups read only the files they need,
and row-group statistics let an id lookup skip most of the output. Local or s3:// alike,
through `pipeline.storage`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import JobError
from pipeline.spec import StorageSpec
from pipeline.storage import StorageError, filesystem_for, is_remote, join_uri, uri_scheme

SUMMARY_FILE = "_summary.json"
FINGERPRINT_FILE = "_job.json"

# Output columns the readers look at (see the README's "Output" table). Moderation adds
# FLAGGED / CATEGORIES / REASON; they are used when present.
ID, URI, MEDIA_TYPE, TASK, MODEL, TEXT = "id", "uri", "media_type", "task", "model", "text"
NUM_TILES, FRAME_INDICES, FINISH_REASON = "num_tiles", "frame_indices", "finish_reason"
PROMPT_TOKENS, OUTPUT_TOKENS, ERROR_KIND, ERROR, COMPLETED_AT = (
    "prompt_tokens",
    "output_tokens",
    "error_kind",
    "error",
    "completed_at",
)
FLAGGED, CATEGORIES, REASON = "flagged", "categories", "reason"
COUNT_COLUMNS = (
    MEDIA_TYPE,
    NUM_TILES,
    FINISH_REASON,
    PROMPT_TOKENS,
    OUTPUT_TOKENS,
    ERROR_KIND,
    COMPLETED_AT,
    FLAGGED,
    CATEGORIES,
    TASK,
    MODEL,
)
EXAMPLES_PER_KIND = 3


def storage_errors() -> tuple[type[BaseException], ...]:
    """What reading an output or its media can raise when storage is unreachable: OSError, and
    botocore's own errors (s3fs passes connection and credential failures through as they are)."""
    try:
        from botocore.exceptions import BotoCoreError
    except ImportError:
        return (OSError,)
    return (OSError, BotoCoreError)


def _hidden(relative: str) -> bool:
    return any(part.startswith(("_", ".")) for part in relative.split("/"))


@dataclass
class JobOutput:
    """An output folder: where it is and which Parquet files hold its rows."""

    uri: str
    storage: StorageSpec | None
    files: list[str]  # filesystem paths, sorted
    file_rows: list[int]
    schema: pa.Schema
    summary: dict[str, Any] | None
    job: dict[str, Any] | None
    fs: Any = field(repr=False)

    @property
    def num_rows(self) -> int:
        """Rows in the output (from the files' footers)."""
        return sum(self.file_rows)

    def display_path(self, path: str) -> str:
        """A file as the user named the output (s3://bucket/..., or the local path)."""
        return f"{uri_scheme(self.uri)}://{path}" if is_remote(self.uri) else path

    def read_file(self, path: str, columns: list[str] | None = None) -> pa.Table:
        """One result file (only `columns` that exist in it, when given)."""
        with self.fs.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            if columns is not None:
                columns = [c for c in columns if c in parquet.schema_arrow.names]
            return parquet.read(columns=columns)


def open_output(uri: str, storage: StorageSpec | None = None) -> JobOutput:
    """Find an output's result files, or say what is wrong with the path."""
    try:
        fs, root = filesystem_for(uri, storage)
    except StorageError as error:
        raise JobError(f"{uri}: {error}") from None
    try:
        if not fs.exists(root):
            raise JobError(
                f"{uri}: no such output folder. Pass a job's output.path (e.g. out/quickstart) after the job ran"
            )
        if not fs.isdir(root):
            raise JobError(f"{uri}: is a file; pass the folder a job wrote (its output.path)")
        found = sorted(
            p for p in fs.find(root) if p.endswith(".parquet") and not _hidden(p[len(root.rstrip("/")) + 1 :])
        )
    except storage_errors() as error:
        raise JobError(
            f"{uri}: cannot list the output ({type(error).__name__}: {error}). Check the path, the endpoint "
            "(--endpoint-url or AWS_ENDPOINT_URL), the network and your credentials"
        ) from None
    summary = _read_json(fs, join_uri(root, SUMMARY_FILE))
    job = _read_json(fs, join_uri(root, FINGERPRINT_FILE))
    if not found:
        hint = "the job has not written any rows yet" if job else "it does not look like a job's output.path"
        raise JobError(f"{uri}: holds no result files ({hint})")
    file_rows, schema = [], None
    for path in found:
        with fs.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            file_rows.append(parquet.metadata.num_rows)
            schema = schema or parquet.schema_arrow
    assert schema is not None
    return JobOutput(uri, storage, found, file_rows, schema, summary, job, fs)


def _read_json(fs: Any, path: str) -> dict[str, Any] | None:
    try:
        with fs.open(path, "rb") as handle:
            return json.loads(handle.read().decode("utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


@dataclass
class OutputCounts:
    """What a scan of the light columns learned."""

    rows: int = 0
    errors: int = 0
    error_kinds: Counter = field(default_factory=Counter)
    error_examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    media_types: Counter = field(default_factory=Counter)
    finish_reasons: Counter = field(default_factory=Counter)
    tasks: Counter = field(default_factory=Counter)
    models: Counter = field(default_factory=Counter)
    tiles: Counter = field(default_factory=Counter)  # tiles per row -> rows (rows without an error)
    prompt_tokens: int = 0
    output_tokens: int = 0
    completed_seconds: Counter = field(default_factory=Counter)  # unix second -> rows written then
    flagged: int | None = None
    categories: Counter = field(default_factory=Counter)

    @property
    def first_completed(self) -> float | None:
        """When the first row was written (unix seconds)."""
        return min(self.completed_seconds) if self.completed_seconds else None

    @property
    def last_completed(self) -> float | None:
        """When the last row was written (unix seconds)."""
        return max(self.completed_seconds) if self.completed_seconds else None

    @property
    def mean_tiles(self) -> float | None:
        """Mean tiles per row over rows without an error."""
        rows = sum(self.tiles.values())
        return sum(t * n for t, n in self.tiles.items()) / rows if rows else None


def _counter_of(table: pa.Table, column: str) -> Counter:
    if column not in table.column_names:
        return Counter()
    counts = pc.value_counts(table.column(column).combine_chunks())
    return Counter(
        {value: count for value, count in zip(counts.field(0).to_pylist(), counts.field(1).to_pylist(), strict=True)}
    )


def count_output(output: JobOutput, examples_per_kind: int = EXAMPLES_PER_KIND) -> OutputCounts:
    """Stream the light columns of every file once; keep a few error examples per kind."""
    counts = OutputCounts()
    has_flagged = FLAGGED in output.schema.names
    if has_flagged:
        counts.flagged = 0
    for path in output.files:
        table = output.read_file(path, list(COUNT_COLUMNS))
        counts.rows += table.num_rows
        kinds = _counter_of(table, ERROR_KIND)
        kinds.pop(None, None)
        counts.errors += sum(kinds.values())
        counts.error_kinds.update(kinds)
        counts.media_types.update(_counter_of(table, MEDIA_TYPE))
        counts.finish_reasons.update(_counter_of(table, FINISH_REASON))
        counts.tasks.update(_counter_of(table, TASK))
        counts.models.update(_counter_of(table, MODEL))
        if NUM_TILES in table.column_names:
            ok = table.filter(pc.is_null(table.column(ERROR_KIND))) if ERROR_KIND in table.column_names else table
            counts.tiles.update(_counter_of(ok, NUM_TILES))
            counts.tiles.pop(None, None)
        for column in (PROMPT_TOKENS, OUTPUT_TOKENS):
            if column in table.column_names:
                total = pc.sum(table.column(column)).as_py() or 0
                if column == PROMPT_TOKENS:
                    counts.prompt_tokens += total
                else:
                    counts.output_tokens += total
        if COMPLETED_AT in table.column_names:
            seconds = pc.divide(table.column(COMPLETED_AT).cast(pa.int64()), 1000)
            counts.completed_seconds.update(_counter_of(pa.table({"s": seconds}), "s"))
            counts.completed_seconds.pop(None, None)
        if has_flagged and FLAGGED in table.column_names:
            counts.flagged = (counts.flagged or 0) + int(pc.sum(table.column(FLAGGED).cast(pa.int64())).as_py() or 0)
        if CATEGORIES in table.column_names and pa.types.is_list(table.schema.field(CATEGORIES).type):
            counts.categories.update(_counter_of(pa.table({"c": pc.list_flatten(table.column(CATEGORIES))}), "c"))
        wanted = [k for k in kinds if len(counts.error_examples.get(k, [])) < examples_per_kind]
        if wanted:
            _collect_examples(output, path, wanted, counts.error_examples, examples_per_kind)
    return counts


def _collect_examples(
    output: JobOutput, path: str, kinds: list[str], examples: dict[str, list[dict[str, Any]]], limit: int
) -> None:
    table = output.read_file(path, [ID, URI, MEDIA_TYPE, ERROR_KIND, ERROR])
    rows = table.filter(pc.is_in(table.column(ERROR_KIND), value_set=pa.array(kinds)))
    for row in rows.to_pylist():
        bucket = examples.setdefault(row[ERROR_KIND], [])
        if len(bucket) < limit:
            bucket.append(row)


def sample_rows(output: JobOutput, count: int) -> list[dict[str, Any]]:
    """`count` rows spread evenly over the whole output (file order), reading only their files."""
    total = output.num_rows
    if count <= 0 or total == 0:
        return []
    if count >= total:
        picks = list(range(total))
    else:
        step = total / count
        picks = sorted({int(i * step + step / 2) for i in range(count)})
    rows: list[dict[str, Any]] = []
    start = 0
    pick = 0
    for path, size in zip(output.files, output.file_rows, strict=True):
        local = []
        while pick < len(picks) and picks[pick] < start + size:
            local.append(picks[pick] - start)
            pick += 1
        if local:
            table = output.read_file(path)
            rows.extend(table.take(pa.array(local)).to_pylist())
        start += size
        if pick >= len(picks):
            break
    return rows


def first_rows(output: JobOutput, limit: int, errors_only: bool = False) -> list[dict[str, Any]]:
    """The first `limit` rows in file order (only rows with an error, with `errors_only`)."""
    rows: list[dict[str, Any]] = []
    for path in output.files:
        if len(rows) >= limit:
            break
        if errors_only:
            kinds = output.read_file(path, [ERROR_KIND])
            if ERROR_KIND not in kinds.column_names or kinds.column(ERROR_KIND).null_count == kinds.num_rows:
                continue  # no error in this file: skip reading its other columns
            table = output.read_file(path)
            table = table.filter(pc.is_valid(table.column(ERROR_KIND)))
        else:
            table = output.read_file(path)
        rows.extend(table.slice(0, limit - len(rows)).to_pylist())
    return rows


def find_rows(output: JobOutput, row_id: str) -> list[dict[str, Any]]:
    """Every row with this id (one, in a healthy output), skipping row groups whose id range excludes it."""
    found: list[dict[str, Any]] = []
    for path in output.files:
        with output.fs.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            index = parquet.schema_arrow.get_field_index(ID)
            for group in range(parquet.metadata.num_row_groups):
                stats = parquet.metadata.row_group(group).column(index).statistics if index >= 0 else None
                if stats is not None and stats.has_min_max and not (stats.min <= row_id <= stats.max):
                    continue
                ids = parquet.read_row_group(group, columns=[ID]).column(ID)
                hits = pc.indices_nonzero(pc.equal(ids, row_id))
                if len(hits):
                    table = parquet.read_row_group(group)
                    found.extend(table.take(hits).to_pylist())
    return found


def timestamp(value: Any) -> float | None:
    """Unix seconds of a `completed_at` value or of an ISO 'YYYY-MM-DDTHH:MM:SSZ' (UTC) string."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    try:
        return datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None
