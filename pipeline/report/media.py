"""Thumbnails for the report, embedded as data URIs so the page needs nothing else.

Images are decoded the way the CPU stage decodes them (same decoder, EXIF rotation) and
shrunk; videos get a grid of the frames the model saw (the row's `frame_indices`,
decoded again, at most `MAX_FRAMES` of them). Media that cannot be shown - moved, no
credentials, a row whose input was broken to begin with - get a short reason instead:
a report never fails because of one row.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from pipeline.actors.decode import decode_image
from pipeline.errors import RowError, describe_exception
from pipeline.readers.media import fetch_bytes
from pipeline.report.output import storage_errors
from pipeline.spec import PreprocessSpec, StorageSpec

THUMBNAIL_SIDE = 320
FRAME_HEIGHT = 150
MAX_FRAMES = 4
MAX_FETCH_BYTES = PreprocessSpec.model_fields["max_file_bytes"].default
MAX_PIXELS = PreprocessSpec.model_fields["max_image_pixels"].default


@dataclass
class Thumbnail:
    """What the report shows for a row's media: an embedded image, or why there is none."""

    data_uri: str | None
    caption: str


def jpeg_data_uri(image: Image.Image, quality: int = 82) -> str:
    """A JPEG data URI of an RGB image."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_thumbnail(data: bytes, side: int = THUMBNAIL_SIDE) -> Image.Image:
    """Decode as the pipeline does and shrink to fit a side x side box."""
    image = decode_image(data, MAX_PIXELS, exif_transpose=True, draft_size=(side * 2, side * 2))
    image.thumbnail((side, side), Image.Resampling.BICUBIC)
    return image


def frame_sheet(
    data: bytes, frame_indices: list[int] | None, height: int = FRAME_HEIGHT
) -> tuple[Image.Image, list[int]]:
    """A few frames of a clip in a grid: from `frame_indices` (the frames the model saw) or,
    without them, spread over the clip. Raises RowError if the clip cannot be decoded."""
    import decord

    decord.logging.set_level(decord.logging.QUIET)
    try:
        reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
        count = len(reader)
        if count < 1:
            raise RowError("bad_video", "the video has no frames")
        indices = [i for i in (frame_indices or []) if 0 <= i < count]
        if not indices:
            indices = list(np.linspace(0, count - 1, num=min(MAX_FRAMES, count)).round().astype(int))
        if len(indices) > MAX_FRAMES:
            picks = np.linspace(0, len(indices) - 1, num=MAX_FRAMES).round().astype(int)
            indices = [indices[i] for i in picks]
        frames = reader.get_batch([int(i) for i in indices]).asnumpy()
    except RowError:
        raise
    except Exception as error:  # decord's own error types for undecodable clips
        raise RowError("bad_video", f"cannot decode the video ({type(error).__name__})") from None
    return contact_sheet([Image.fromarray(frame) for frame in frames], height), [int(i) for i in indices]


def contact_sheet(frames: list[Image.Image], height: int = FRAME_HEIGHT, columns: int = 2) -> Image.Image:
    """Frames in a grid, `columns` wide, each scaled to `height` pixels (fits a thumbnail column)."""
    gap = 4
    scaled = [f.resize((max(1, round(f.width * height / f.height)), height), Image.Resampling.BICUBIC) for f in frames]
    width = max(f.width for f in scaled)
    columns = min(columns, len(scaled))
    rows = -(-len(scaled) // columns)
    sheet = Image.new("RGB", (columns * width + gap * (columns - 1), rows * height + gap * (rows - 1)), (24, 24, 27))
    for index, frame in enumerate(scaled):
        row, column = divmod(index, columns)
        sheet.paste(frame, (column * (width + gap), row * (height + gap)))
    return sheet


def row_thumbnail(row: dict[str, Any], storage: StorageSpec | None) -> Thumbnail:
    """The thumbnail of one output row, or the reason there is none."""
    uri = row.get("uri")
    media = row.get("media_type")
    if media == "text":
        return Thumbnail(None, "text-only row")
    if not uri:
        return Thumbnail(None, "inline image (its bytes are not kept in the output)")
    try:
        data = fetch_bytes(uri, storage, max_bytes=MAX_FETCH_BYTES, retries=1)
        if media == "video":
            sheet, indices = frame_sheet(data, row.get("frame_indices"))
            return Thumbnail(jpeg_data_uri(sheet), "frames " + ", ".join(str(i) for i in indices))
        image = image_thumbnail(data)
        return Thumbnail(jpeg_data_uri(image), "")
    except storage_errors() as error:  # e.g. an object store that cannot be reached from here
        return Thumbnail(None, f"cannot show: {describe_exception(error)}")
    except RowError as error:
        if row.get("error_kind"):  # the row's own error already says why; do not repeat it
            return Thumbnail(None, "no preview: this row's input could not be read either")
        return Thumbnail(None, f"cannot show: {error}")
