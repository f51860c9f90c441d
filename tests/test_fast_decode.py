"""The opt-in fast decode (JPEG draft mode): same tile counts as the exact path, EXIF
rotation included, pixels close to the exact ones; off by default."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.actors.decode import image_size
from pipeline.actors.preprocess import Preprocessor
from pipeline.prompts.tasks import resolve_spec


def photo_jpeg(width: int, height: int, orientation: int | None = None) -> bytes:
    """A smooth (photo-like) JPEG, optionally with an EXIF orientation."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([(x * 255 // width), (y * 255 // height), ((x + y) * 255 // (width + height))], axis=-1)
    image = Image.fromarray(pixels.astype(np.uint8))
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    image.save(buffer, format="JPEG", quality=92, exif=exif)
    return buffer.getvalue()


def tiles_of(make_spec, data: bytes, **preprocess) -> np.ndarray:
    spec = resolve_spec(make_spec("unused.parquet", preprocess={"max_tiles": 12, **preprocess}))
    prepared = Preprocessor(spec).prepare({"id": "a", "uri": None, "inline_bytes": data})
    assert prepared.error is None, prepared.error
    return prepared.tiles[0]


@pytest.mark.parametrize("orientation", [None, 1, 6, 8])
def test_same_tile_count_as_exact_decoding(make_spec, orientation):
    data = photo_jpeg(3200, 1800, orientation)
    exact = tiles_of(make_spec, data)
    fast = tiles_of(make_spec, data, fast_decode=True)
    assert fast.shape == exact.shape
    difference = np.abs(fast.astype(np.int16) - exact.astype(np.int16))
    assert difference.mean() < 2.0  # close, not exact
    if orientation in (6, 8):
        assert image_size(data, exif_transpose=True) == (1800, 3200)


def test_off_by_default_and_exact(make_spec):
    data = photo_jpeg(2000, 1500)
    spec = resolve_spec(make_spec("unused.parquet"))
    assert spec.preprocess.fast_decode is False
    reference = Image.open(io.BytesIO(data)).convert("RGB").resize((448, 448), Image.Resampling.BICUBIC)
    assert np.array_equal(tiles_of(make_spec, data)[-1], np.asarray(reference))
