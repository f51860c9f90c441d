"""The CPU stage: fetch, decode, tile and sample frames; emit uint8 tiles or a row error.

A Ray Data callable class (heavy state in `__init__`, work in `__call__`). Each row
becomes: its media type, the question with `<image>` placeholders for its images, the
tiles of all its images concatenated as raw uint8 bytes (N x 448 x 448 x 3: four times
smaller than float32 pixel values; the GPU stage normalises on the device), tiles per
image, frame indices for videos, or `error_kind`/`error` when its input is bad. Rows are
never dropped and the stage never raises for a bad input.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from pipeline.actors.decode import decode_image, image_size, use_single_block_images
from pipeline.actors.media_type import (
    IMAGE,
    TEXT,
    VIDEO,
    media_type_from_hint,
    media_type_from_name,
    sniff_media_type,
)
from pipeline.actors.tiling import TILE_SIZE, TileGrid, choose_grid, tile_image
from pipeline.actors.video import decode_video
from pipeline.errors import RowError, error_text
from pipeline.prompts.tasks import IMAGES, TEMPLATE_COLUMN_PREFIX, question_for_row
from pipeline.prompts.template import multi_image_query, single_image_query, video_query
from pipeline.readers.manifest import (
    END_S,
    ID,
    INLINE_BYTES,
    MEDIA_HINT,
    ROW_PROMPT,
    START_S,
    URI,
    URIS,
)
from pipeline.readers.media import fetch_bytes
from pipeline.schema import require_columns
from pipeline.spec import JobSpec
from pipeline.storage import is_remote

# Columns this stage adds; the GPU stage declares them as its inputs.
MEDIA_TYPE, QUERY, TILES, NUM_TILES, TILES_PER_IMAGE, FRAME_INDICES = (
    "media_type",
    "query",
    "tiles",
    "num_tiles",
    "tiles_per_image",
    "frame_indices",
)
ERROR_KIND, ERROR, PREPROCESS_S = "error_kind", "error", "preprocess_s"

PREPROCESS_SCHEMA = pa.schema(
    [
        (MEDIA_TYPE, pa.string()),
        (QUERY, pa.string()),
        (TILES, pa.large_binary()),
        (NUM_TILES, pa.int32()),
        (TILES_PER_IMAGE, pa.list_(pa.int32())),
        (FRAME_INDICES, pa.list_(pa.int32())),
        (ERROR_KIND, pa.string()),
        (ERROR, pa.string()),
        (PREPROCESS_S, pa.float64()),
    ]
)


@dataclass
class PreparedRow:
    """What the CPU stage learned about one row."""

    media_type: str | None = None
    query: str | None = None
    tiles: list[np.ndarray] = field(default_factory=list)
    tiles_per_image: list[int] = field(default_factory=list)
    frame_indices: list[int] | None = None
    error_kind: str | None = None
    error: str | None = None


def multi_image_tile_limit(
    sizes: list[tuple[int, int]], min_tiles: int, max_tiles: int, max_tiles_total: int | None, use_thumbnail: bool
) -> int:
    """The grid limit each image of a multi-image row gets so that the row stays within max_tiles_total.

    Each image is tiled on its own with `max_tiles` (InternVL's multi-image practice) unless
    the tiles of all images together, thumbnails included, would exceed `max_tiles_total`;
    then every image gets the largest common limit that fits. One limit for all keeps the
    images on an equal footing, and the largest one wastes none of the budget that a fixed
    even split would leave unused on small images. (Tile counts only grow with the limit,
    so the first limit that fits, counting down, is the largest.)
    """
    if max_tiles_total is None:
        return max_tiles
    if len(sizes) > max_tiles_total:
        raise RowError(
            "bad_row",
            f"the row has {len(sizes)} images but preprocess.max_tiles_total={max_tiles_total} allows fewer "
            "(each image needs at least one tile)",
        )
    for limit in range(max_tiles, 1, -1):
        low = min(min_tiles, limit)
        total = sum(choose_grid(w, h, low, limit, TILE_SIZE, use_thumbnail).num_tiles for w, h in sizes)
        if total <= max_tiles_total:
            return limit
    return 1


class Preprocessor:
    """Pure row logic of the CPU stage, usable without Ray (tests, benchmarks, `plan`)."""

    def __init__(self, spec: JobSpec) -> None:
        self.spec = spec
        self.pre = spec.preprocess
        assert self.pre.max_tiles is not None, "resolve_spec() fills preprocess.max_tiles"
        use_single_block_images()  # lets the resampler read decoded pixels without a copy

    def _fetch(self, uri: str) -> bytes:
        return fetch_bytes(uri, self.spec.storage, self.pre.max_file_bytes, self.pre.fetch_retries)

    def _grid(self, width: int, height: int, max_tiles: int) -> TileGrid:
        low = min(self.pre.min_tiles, max_tiles)  # a multi-image budget may push the limit below min_tiles
        return choose_grid(width, height, low, max_tiles, TILE_SIZE, self.pre.use_thumbnail)

    def _decode(self, data: bytes, max_tiles: int) -> tuple[Image.Image, TileGrid | None]:
        """Decode one image; with fast_decode, also its grid, computed from the header's size (after
        EXIF rotation, so the tile count stays exact) while the JPEG decoder may scale down to just
        above the grid's size."""
        if self.pre.fast_decode:
            grid = self._grid(*image_size(data, self.pre.exif_transpose), max_tiles)
            draft = (TILE_SIZE * grid.cols, TILE_SIZE * grid.rows)
            return decode_image(data, self.pre.max_image_pixels, self.pre.exif_transpose, draft), grid
        return decode_image(data, self.pre.max_image_pixels, self.pre.exif_transpose), None

    def _add_tiles(
        self, image: Image.Image, max_tiles: int, prepared: PreparedRow, grid: TileGrid | None = None
    ) -> None:
        """Tile one decoded image (its grid chosen from its size unless given) onto the row."""
        tiles = tile_image(image, grid or self._grid(image.width, image.height, max_tiles), TILE_SIZE)
        prepared.tiles.append(tiles)
        prepared.tiles_per_image.append(len(tiles))

    def _tiles_for_image(self, data: bytes, max_tiles: int, prepared: PreparedRow) -> None:
        """Decode and tile one image."""
        image, grid = self._decode(data, max_tiles)
        self._add_tiles(image, max_tiles, prepared, grid)

    def _video(self, row: dict[str, Any], source: str | bytes, prepared: PreparedRow) -> None:
        """Sample and tile the frames of a clip given as a local path or as its bytes (tiled as the
        reference tiles frames: up to preprocess.tiles_per_frame tiles, thumbnail when more than one)."""
        video = decode_video(source, self.pre.num_frames, _bound(row.get(START_S), row.get(END_S)))
        for frame in video.frames:
            image = Image.fromarray(frame)
            grid = choose_grid(
                image.width, image.height, 1, self.pre.tiles_per_frame, TILE_SIZE, self.pre.use_thumbnail
            )
            tiles = tile_image(image, grid, TILE_SIZE)
            prepared.tiles.append(tiles)
            prepared.tiles_per_image.append(len(tiles))
        prepared.frame_indices = video.indices

    def _local_video_path(self, uri: str) -> str:
        """The path decord should open for a local clip, after the checks a fetch would make."""
        path = uri[len("file://") :] if uri.startswith("file://") else uri
        if "\x00" in path:
            raise RowError("bad_row", f"the uri {uri!r} contains a NUL character")
        if not os.path.exists(path):
            raise RowError("missing", f"{uri} does not exist")
        if os.path.isdir(path):
            raise RowError("is_directory", f"{uri} is a directory, not a file")
        if not os.path.isfile(path):  # a pipe or a device: decord would block on it
            raise RowError("not_a_file", f"{uri} is not a regular file (a pipe, socket or device)")
        size = os.path.getsize(path)
        if size == 0:
            raise RowError("empty_file", f"{uri} is empty (0 bytes)")
        if size > self.pre.max_file_bytes:
            raise RowError("too_large", f"{uri} has {size} bytes, more than preprocess.max_file_bytes")
        if not os.access(path, os.R_OK):
            raise RowError("access_denied", f"{uri} may not be read")
        return path

    def _media_type(self, row: dict[str, Any], uri: str | None, head: bytes | None) -> str | None:
        """The row's media type from its hint, its name, or (if given) its first bytes."""
        hint = row.get(MEDIA_HINT)
        kind = media_type_from_hint(hint)
        if hint and kind is None:
            raise RowError("unknown_media", f"media type {hint!r} is not 'image', 'video' or 'text'")
        if kind is None and uri:
            kind = media_type_from_name(uri)
        if kind is None and head is not None:
            kind = sniff_media_type(head[:64])
            if kind is None:
                raise RowError("decode_error", f"{uri or 'the inline bytes'}: not a recognised image or video format")
        if kind == "audio":
            raise RowError("unknown_media", f"{uri or 'the row'} is audio, not an image or video")
        return kind

    def prepare(self, row: dict[str, Any]) -> PreparedRow:
        """Process one manifest row; never raises for a bad input."""
        prepared = PreparedRow()
        try:
            self._prepare(row, prepared)
        except RowError as error:
            prepared.tiles, prepared.tiles_per_image, prepared.frame_indices = [], [], None
            prepared.error_kind, prepared.error = error.kind, error_text(error.kind, error.message)
        return prepared

    def _prepare(self, row: dict[str, Any], prepared: PreparedRow) -> None:
        uri = row.get(URI)
        uri = uri.strip() if isinstance(uri, str) and uri.strip() else None
        uris = _uri_list(row.get(URIS))
        inline = row.get(INLINE_BYTES)
        row_prompt = row.get(ROW_PROMPT)
        row_prompt = row_prompt if isinstance(row_prompt, str) and row_prompt.strip() else None
        columns = {k[len(TEMPLATE_COLUMN_PREFIX) :]: v for k, v in row.items() if k.startswith(TEMPLATE_COLUMN_PREFIX)}

        if uris:
            if inline is not None:
                raise RowError("bad_row", "the row has both inline image bytes and a list of uris; give one of them")
            if uri is not None and uri not in uris:
                raise RowError("bad_row", f"the row has a uri ({uri}) and a list of uris without it; list every image")
            self._multi_image(uris, prepared)
            if len(uris) == 1:
                prepared.query = single_image_query(question_for_row(self.spec, IMAGE, row_prompt, columns))
            else:
                prepared.query = multi_image_query(question_for_row(self.spec, IMAGES, row_prompt, columns), len(uris))
            return
        if uri is None and inline is None:
            hint = self._media_type(row, None, None)
            if hint not in (None, TEXT):
                raise RowError("empty_uri", f"the row is marked {hint} but has no uri and no inline bytes")
            if row_prompt is None and self.spec.task.prompt is None:
                raise RowError(
                    "empty_uri",
                    "the row has no uri, no inline bytes and no prompt: a text-only row needs a value in the "
                    "prompt column (or a task.prompt template)",
                )
            prepared.media_type, prepared.query = TEXT, question_for_row(self.spec, TEXT, row_prompt, columns)
            return

        data: bytes | None = bytes(inline) if inline is not None else None
        kind = self._media_type(row, uri, data)
        if kind is None:  # nothing in the name: look at the bytes
            assert uri is not None
            data = self._fetch(uri)
            kind = self._media_type(row, uri, data)
        if kind == TEXT:
            raise RowError("bad_row", f"the row is marked text but has media ({uri or 'inline bytes'})")
        prepared.media_type = kind
        if kind == VIDEO:
            if data is None:
                assert uri is not None
                source: str | bytes = self._fetch(uri) if is_remote(uri) else self._local_video_path(uri)
            else:
                source = data
            self._video(row, source, prepared)
            prepared.query = video_query(
                question_for_row(self.spec, VIDEO, row_prompt, columns), len(prepared.tiles_per_image)
            )
            return
        if data is None:
            assert uri is not None
            data = self._fetch(uri)
        self._tiles_for_image(data, self.pre.max_tiles or 12, prepared)
        prepared.query = single_image_query(question_for_row(self.spec, IMAGE, row_prompt, columns))

    def _multi_image(self, uris: list[str], prepared: PreparedRow) -> None:
        """Tile each image of a multi-image row on its own, in list order, within the row's tile budget."""
        prepared.media_type = IMAGE
        max_tiles = self.pre.max_tiles or 12
        if self.pre.max_tiles_total is None:  # one image in memory at a time
            for position, item in enumerate(uris, start=1):
                with _naming_the_image(position, item):
                    self._tiles_for_image(self._image_bytes(item), max_tiles, prepared)
            return
        # Full decodes (no draft scaling): the common limit is chosen from the images' true sizes.
        images = []
        for position, item in enumerate(uris, start=1):
            with _naming_the_image(position, item):
                images.append(decode_image(self._image_bytes(item), self.pre.max_image_pixels, self.pre.exif_transpose))
        limit = multi_image_tile_limit(
            [image.size for image in images],
            self.pre.min_tiles,
            max_tiles,
            self.pre.max_tiles_total,
            self.pre.use_thumbnail,
        )
        for image in images:
            self._add_tiles(image, limit, prepared)

    def _image_bytes(self, uri: str) -> bytes:
        """The bytes of one image of a multi-image row (a video or audio file there is an error)."""
        data = self._fetch(uri)
        kind = self._media_type({}, uri, data)
        if kind != IMAGE:
            raise RowError("unknown_media", f"it is a {kind}; multi-image rows take images only")
        return data


@contextmanager
def _naming_the_image(position: int, uri: str) -> Iterator[None]:
    """Prefix a row error raised for one image of a multi-image row with which image it was."""
    try:
        yield
    except RowError as error:
        raise RowError(error.kind, f"image {position} ({uri}): {error.message}") from None


def _uri_list(value: Any) -> list[str]:
    """The uris of a multi-image row ([] when the column is null or empty); a blank entry is an error."""
    if value is None:
        return []
    items = list(value)
    blank = [index for index, item in enumerate(items, start=1) if not isinstance(item, str) or not item.strip()]
    if blank:
        raise RowError("bad_row", f"the uris list has null or empty entries at position(s) {blank}")
    return [item.strip() for item in items]


def _seconds(value: Any, name: str) -> float | None:
    """A manifest time in seconds; None for null or NaN."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise RowError("bad_row", f"{name} must be a number of seconds, got {value!r}") from None
    return None if math.isnan(seconds) else seconds


def _bound(start: Any, end: Any) -> tuple[float, float] | None:
    """A (start_s, end_s) window from the manifest's optional columns; None when both are absent."""
    low, high = _seconds(start, "start_s"), _seconds(end, "end_s")
    if low is None and high is None:
        return None
    if low is not None and low < 0:
        raise RowError("frame_range", f"start_s must be >= 0, got {low}")
    return (low if low is not None else 0.0, high if high is not None else 100000.0)


def tiles_array(prepared: list[PreparedRow]) -> pa.Array:
    """The tiles of each row as one binary value, packed with a single copy of the pixels."""
    sizes = [sum(t.nbytes for t in p.tiles) for p in prepared]
    offsets = np.zeros(len(prepared) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    data = np.empty(int(offsets[-1]), dtype=np.uint8)
    for p, start in zip(prepared, offsets[:-1], strict=True):
        for tiles in p.tiles:
            data[start : start + tiles.nbytes] = tiles.reshape(-1)
            start += tiles.nbytes
    valid = np.array([bool(p.tiles) for p in prepared])
    validity = None if valid.all() else pa.array(valid).buffers()[1]
    return pa.LargeBinaryArray.from_buffers(
        pa.large_binary(),
        len(prepared),
        [validity, pa.py_buffer(offsets), pa.py_buffer(data)],
        null_count=int((~valid).sum()),
    )


def prepared_columns(prepared: list[PreparedRow], seconds: list[float]) -> dict[str, pa.Array]:
    """The columns this stage adds, as Arrow arrays."""
    data = {
        MEDIA_TYPE: [p.media_type for p in prepared],
        QUERY: [p.query for p in prepared],
        NUM_TILES: [sum(p.tiles_per_image) for p in prepared],
        TILES_PER_IMAGE: [p.tiles_per_image for p in prepared],
        FRAME_INDICES: [p.frame_indices for p in prepared],
        ERROR_KIND: [p.error_kind for p in prepared],
        ERROR: [p.error for p in prepared],
        PREPROCESS_S: seconds,
    }
    columns = {name: pa.array(values, type=PREPROCESS_SCHEMA.field(name).type) for name, values in data.items()}
    columns[TILES] = tiles_array(prepared)
    return {name: columns[name] for name in PREPROCESS_SCHEMA.names}


class PreprocessStage:
    """Ray Data callable class for the CPU actor pool.

    Calls go through a `StageGuard` (see `pipeline.actors.guard`): a row that crashes the
    worker every time, or raises something unforeseen, becomes an error row.
    """

    REQUIRED_COLUMNS = (ID, URI)

    def __init__(self, spec: JobSpec, ledger: Any | None = None) -> None:
        from pipeline.actors.guard import StageGuard, Watchdog, kill_this_worker
        from pipeline.heap import keep_freed_memory

        keep_freed_memory()  # each row's large buffers reuse the last row's pages
        self.preprocessor = Preprocessor(spec)
        self.guard = StageGuard("preprocess", self.process, self.failed, ledger, spec.preprocess.max_retries)
        limit = spec.preprocess.row_timeout_s
        self.watchdog = Watchdog(limit, kill_this_worker(self.guard, limit, "preprocess.row_timeout_s"))

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.guard(batch)

    def process(self, batch: pa.Table) -> pa.Table:
        """Prepare every row of a batch."""
        require_columns("preprocess", batch, self.REQUIRED_COLUMNS)
        rows = batch.to_pylist()
        prepared, seconds = [], []
        for row in rows:
            started = time.perf_counter()
            self.watchdog.arm(str(row[ID]))
            try:
                prepared.append(self.preprocessor.prepare(row))
            finally:
                self.watchdog.disarm()
            seconds.append(time.perf_counter() - started)
        return self._output(batch, prepared, seconds)

    def failed(self, batch: pa.Table, kind: str, message: str) -> pa.Table:
        """The stage's output for rows that get an error without being prepared."""
        prepared = [PreparedRow(error_kind=kind, error=error_text(kind, message)) for _ in range(batch.num_rows)]
        return self._output(batch, prepared, [0.0] * batch.num_rows)

    @staticmethod
    def _output(batch: pa.Table, prepared: list[PreparedRow], seconds: list[float]) -> pa.Table:
        # Inline bytes and the columns a prompt template named have served their purpose.
        keep = [
            name for name in batch.column_names if name != INLINE_BYTES and not name.startswith(TEMPLATE_COLUMN_PREFIX)
        ]
        out = batch.select(keep)
        for name, array in prepared_columns(prepared, seconds).items():
            out = out.append_column(name, array)
        return out
