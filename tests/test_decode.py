"""Image decoding: every mode to RGB, bombs and broken files as row errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from media import (
    jpeg_bytes,
    noise_image,
    write_animated_gif,
    write_palette_with_transparency,
    write_png_16bit,
    write_png_header_only,
)
from PIL import Image

from pipeline.actors.decode import decode_image, image_size
from pipeline.errors import RowError, error_text

BUDGET = 178_956_970


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "1", "I", "F", "CMYK", "YCbCr"])
def test_every_mode_becomes_rgb(mode: str):
    image = noise_image(64, 48, mode=mode)
    data = png_bytes(image) if mode not in ("CMYK", "YCbCr", "F", "I") else None
    if mode in ("CMYK", "YCbCr"):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG")
        data = buffer.getvalue()
    if mode in ("F", "I"):
        buffer = io.BytesIO()
        image.save(buffer, format="TIFF")
        data = buffer.getvalue()
    decoded = decode_image(data, BUDGET)
    assert decoded.mode == "RGB" and decoded.size == (64, 48)


def test_rgb_matches_reference_convert():
    data = jpeg_bytes(200, 100, seed=1)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.array_equal(np.asarray(decode_image(data, BUDGET)), expected)


def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path):
    decoded = np.asarray(decode_image(write_png_16bit(tmp_path / "a.png").read_bytes(), BUDGET))
    assert decoded.max() > 200 and decoded.min() < 50 and len(np.unique(decoded)) > 100


def test_palette_with_transparency(tmp_path: Path):
    assert decode_image(write_palette_with_transparency(tmp_path / "p.png").read_bytes(), BUDGET).mode == "RGB"


def test_animated_gif_uses_first_frame(tmp_path: Path):
    path = write_animated_gif(tmp_path / "a.gif")
    first = np.asarray(Image.open(path).convert("RGB"))
    assert np.array_equal(np.asarray(decode_image(path.read_bytes(), BUDGET)), first)


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path):
    data = write_png_header_only(tmp_path / "bomb.png", 100_000, 100_000).read_bytes()
    with pytest.raises(RowError) as error:
        decode_image(data, BUDGET)
    assert error.value.kind == "image_too_large"


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, not an image", jpeg_bytes(300, 200)[:1500], b"\x89PNG\r\n\x1a\n" + b"\x00" * 40],
    ids=["empty", "text", "truncated-jpeg", "broken-png"],
)
def test_broken_bytes_are_row_errors(data: bytes):
    with pytest.raises(RowError) as error:
        decode_image(data, BUDGET)
    assert error.value.kind == "decode_error"


def test_row_errors_hold_no_object_reprs():
    # Pillow says "cannot identify image file <_io.BytesIO object at 0x7f...>": the repr means
    # nothing to a reader and differs on every run, so the row's error leaves it out.
    expected = "decode_error: not a readable image (UnidentifiedImageError: cannot identify image file)"
    for decode in (lambda data: decode_image(data, BUDGET), image_size):
        with pytest.raises(RowError) as error:
            decode(b"hello, not an image")
        assert str(error.value) == expected
        assert "0x" not in error.value.message


def test_error_text_removes_object_reprs_from_any_message():
    message = "cannot open <_io.BufferedReader object at 0x7F00AB12> or <foo.Bar object at 0xdeadbeef> here"
    assert error_text("bad_video", message) == "bad_video: cannot open or here"


def test_exif_rotation_is_optional():
    image = noise_image(300, 100)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    data = buffer.getvalue()
    assert decode_image(data, BUDGET).size == (300, 100)
    assert decode_image(data, BUDGET, exif_transpose=True).size == (100, 300)
