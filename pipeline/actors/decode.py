"""Image bytes -> an RGB Pillow image, the way the reference loads it, refusing bombs.

The reference does `Image.open(path).convert('RGB')`. We do the same for the common
modes (so tiles stay bit-exact), and do better where that call gives garbage: 16-bit
and 32-bit greyscale are scaled to 8 bits instead of clipped, palette images with a
transparent colour go through RGBA first. Animated and multi-page files use their first
frame. The pixel count is checked from the header before any pixel is decoded.

Speed: EXIF rotation is applied in place (Pillow's default returns a full copy even
when there is nothing to rotate: ~20 ms for a 12 MP photo), and the CPU stage asks
Pillow to keep each image in one memory block (`use_single_block_images`), so the
resampler can read its pixels without a copy.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from pipeline.errors import RowError, describe_exception

# We check the pixel budget ourselves, per job, before decoding; Pillow's global check
# would raise a generic error (or only warn) at a fixed size.
Image.MAX_IMAGE_PIXELS = None

_HIGH_BIT_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def use_single_block_images() -> None:
    """Make Pillow allocate each image as one block (process-wide; the CPU stage calls it once).

    Pillow's default splits large images into 16 MB blocks, and then its pixels can only
    be read through a copy (~50 ms for a 12 MP photo); a single block can be shared with
    numpy without one. It changes nothing else.
    """
    Image.core.set_use_block_allocator(1)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        values = np.asarray(image, dtype=np.float64)
        top = float(values.max()) if values.size else 0.0
        if image.mode == "F":
            scale = 255.0 if top <= 1.0 else 1.0
        else:
            scale = 1.0 if top <= 255 else 255.0 / 65535.0
        grey = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        return image.convert("RGBA").convert("RGB")
    return image.convert("RGB")


# EXIF orientations that turn the stored image by 90 degrees (width and height swap).
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_ORIENTATION_TAG = 0x0112


def header_orientation(image: Image.Image) -> int:
    """The EXIF orientation found in the headers of an opened image, without decoding pixels.

    (Pillow's PNG plugin decodes the whole image to look for an EXIF chunk placed after the
    pixel data; such rare files are read as unrotated here.)
    """
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    return int(image.getexif().get(_ORIENTATION_TAG, 1) or 1)


def header_size(image: Image.Image, exif_transpose: bool) -> tuple[int, int]:
    """Width and height as the tiler will see them, from an opened (not decoded) image."""
    width, height = image.size
    if exif_transpose and header_orientation(image) in _SWAPPING_ORIENTATIONS:
        return height, width
    return width, height


def image_size(data: bytes, exif_transpose: bool = False) -> tuple[int, int]:
    """Width and height from the image header (after EXIF rotation if asked), without decoding pixels."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return header_size(image, exif_transpose)
    except Exception as error:  # untrusted bytes: any decoder failure is this row's problem
        raise RowError("decode_error", f"not a readable image ({describe_exception(error)})") from None


def decode_image(
    data: bytes,
    max_pixels: int,
    exif_transpose: bool = False,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode image bytes to RGB, or raise a RowError.

    `draft_size`, when given (as the tiler sees the image, i.e. after EXIF rotation), lets
    the JPEG decoder scale down by a power of two while staying at least that large
    (fast, not bit-exact).
    """
    try:
        image: Image.Image = Image.open(io.BytesIO(data))
    except Exception as error:  # untrusted bytes: any decoder failure is this row's problem
        raise RowError("decode_error", f"not a readable image ({describe_exception(error)})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise RowError(
            "image_too_large",
            f"{width}x{height} = {width * height} pixels exceeds preprocess.max_image_pixels={max_pixels}",
        )
    try:
        if draft_size is not None and image.format == "JPEG":
            if header_size(image, exif_transpose) != image.size:  # stored turned by 90 degrees
                draft_size = (draft_size[1], draft_size[0])
            image.draft("RGB", draft_size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. palette-transparency notes; the conversion handles them
            image.load()
            if exif_transpose:
                ImageOps.exif_transpose(image, in_place=True)
            return to_rgb(image)
    except Exception as error:  # truncated or corrupt pixel data, odd plugins' own errors
        raise RowError("decode_error", f"cannot decode the image ({describe_exception(error)})") from None
