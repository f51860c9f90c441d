"""Pillow's bicubic resize, bit for bit, two to three times faster (numba; Pillow as fallback).

Resizing is most of the CPU stage's time: a 12 MP photo costs ~40 ms to decode and ~180 ms
in Pillow's two resizes (the grid and the thumbnail). Pillow's resampler is exact
integer arithmetic - coefficients in 22-bit fixed point, one pass along each axis with
the intermediate rounded to 8 bits - but its loops are scalar. This module computes the
very same integers with loops a compiler vectorises:

- the coefficients are computed exactly as Pillow's `precompute_coeffs` and
  `normalize_coeffs_8bpc` compute them (the same double-precision operations in the same
  order), so every weight is the same int32;
- the vertical pass sums whole rows times a scalar weight (SIMD along the row); the
  horizontal pass does the same on strips of 64 rows transposed into a buffer (SIMD along
  the strip's height), its results gathered transposed too and copied back a strip at a
  time (the transposes now cost more than the arithmetic);
- sums, rounding (`+ 2^21`, arithmetic shift by 22) and clipping are Pillow's, in int32,
  and the two passes run in Pillow's order (which changed in Pillow 13, see
  `pillow_runs_horizontal_first`).

The result is identical to `Image.resize(size, BICUBIC)` (tests compare them on many
sizes, up- and downscaling). Pixels are read without a copy through Pillow's Arrow
export when the image is stored in one block (see `decode.use_single_block_images`);
otherwise they are copied once. Without numba, for modes other than RGB, or if a
self-check against the installed Pillow fails, the functions fall back to Pillow itself.
"""

from __future__ import annotations

import math
import os
import warnings
from functools import lru_cache
from typing import Any

import numpy as np
import PIL
from PIL import Image

PRECISION_BITS = 22  # Pillow: 32 - 8 (result) - 2 (overflow room)
# Set PIPELINE_RESAMPLER=pillow to force Pillow's own (slower, identical) resize.
RESAMPLER_ENV = "PIPELINE_RESAMPLER"

_PILLOW_MAJOR = int(PIL.__version__.split(".")[0])
_kernels: Any = None  # the compiled numba kernels, or False when numba is unavailable


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Pillow's bicubic filter (a = -0.5), elementwise, with its exact operation order."""
    x = np.abs(x)
    near = (1.5 * x - 2.5) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * -0.5
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@lru_cache(maxsize=256)
def bicubic_coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first input index, taps, int32 weights) per output pixel, as Pillow computes them."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ksize = math.ceil(support) * 2 + 1
    center = 0.0 + (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    inverse = 1.0 / filterscale
    xmin = np.trunc(center - support + 0.5).astype(np.int64)
    xmin = np.maximum(xmin, 0)
    xmax = np.trunc(center + support + 0.5).astype(np.int64)
    xmax = np.minimum(xmax, in_size) - xmin
    weights = np.zeros((out_size, ksize), dtype=np.float64)
    total = np.zeros(out_size, dtype=np.float64)
    for tap in range(ksize):
        live = tap < xmax
        w = _bicubic(((tap + xmin).astype(np.float64) - center + 0.5) * inverse)
        w = np.where(live, w, 0.0)
        weights[:, tap] = w
        total = np.where(live, total + w, total)  # summed in tap order, like Pillow
    safe = np.where(total != 0.0, total, 1.0)
    weights = np.where(total[:, None] != 0.0, weights / safe[:, None], weights)
    scaled = weights * float(1 << PRECISION_BITS)
    fixed = np.where(scaled < 0, np.trunc(-0.5 + scaled), np.trunc(0.5 + scaled)).astype(np.int32)
    fixed[np.arange(ksize)[None, :] >= xmax[:, None]] = 0
    return xmin.astype(np.int32), xmax.astype(np.int32), fixed


def _compile() -> Any:
    """Load the numba kernels once per process (numba caches the machine code on disk).

    Returns False - Pillow's own resize is used - without numba, when PIPELINE_RESAMPLER
    is 'pillow', or when a self-check finds a difference from the installed Pillow.
    """
    global _kernels
    if _kernels is not None:
        return _kernels
    _kernels = False
    if os.environ.get(RESAMPLER_ENV, "").lower() == "pillow":
        return _kernels
    try:
        from pipeline.actors import resample_kernels
    except ImportError:  # numba is not installed: Pillow's own resize (identical, slower)
        return _kernels
    _kernels = resample_kernels
    try:
        problem = None if _self_check() else f"it does not reproduce Pillow {PIL.__version__} exactly"
    except Exception as error:  # numba cannot compile or cache here: Pillow's resize still works
        problem = f"numba failed ({type(error).__name__}: {error})"
    if problem:
        warnings.warn(f"fast resampler disabled, using Pillow's resize: {problem}", RuntimeWarning, stacklevel=2)
        _kernels = False
    return _kernels


def fast_resize_available() -> bool:
    """Whether the numba resampler is in use (else Pillow's own resize is)."""
    return bool(_compile())


def rgbx_pixels(image: Image.Image) -> np.ndarray:
    """An RGB image's pixels as (H, W) uint32 (R, G, B, pad bytes), without a copy when possible.

    Pillow stores RGB with four bytes per pixel; its Arrow export hands that memory over
    when the image is one block, else we copy it once.
    """
    import pyarrow as pa

    width, height = image.size
    try:
        exported = pa.array(image)
    except (ValueError, TypeError):  # not one block (Pillow's default for large images), or an old Pillow
        raw = image.tobytes("raw", "RGBX")
        return np.frombuffer(raw, dtype=np.uint32).reshape(height, width)
    values = exported.values
    data = np.frombuffer(values.buffers()[1], dtype=np.uint8, count=len(values), offset=values.offset)
    return data.view(np.uint32).reshape(height, width)


def pillow_runs_horizontal_first(width: int, height: int, out_width: int, out_height: int) -> bool:
    """Which pass Pillow runs first (the intermediate is rounded to 8 bits, so the order matters).

    Pillow up to 12 always starts with the horizontal pass; Pillow 13 starts with the
    vertical one when the height shrinks by more than twice as many pixels as the width.
    """
    if _PILLOW_MAJOR < 13:
        return True
    shrink_y = height - out_height
    return not (shrink_y > 0 and shrink_y > (width - out_width) * 2)


def _vertical(pixels: np.ndarray, out_height: int) -> np.ndarray:
    """Pillow's vertical pass on (H, W) uint32 RGBX pixels."""
    rows, width = pixels.shape
    starts, taps, weights = bicubic_coefficients(rows, out_height)
    out = np.empty((out_height, width), dtype=np.uint32)
    _kernels.resample_rows(np.ascontiguousarray(pixels).view(np.uint8), starts, taps, weights, out.view(np.uint8))
    return out


def _horizontal(pixels: np.ndarray, out_width: int) -> np.ndarray:
    """Pillow's horizontal pass on (H, W) uint32 RGBX pixels."""
    return _horizontal_many(pixels, [out_width])[0]


def _horizontal_many(pixels: np.ndarray, out_widths: list[int]) -> list[np.ndarray]:
    """Pillow's horizontal pass to each width; two widths at a time share the strips'
    transposes (a grid and its thumbnail are both resized from the same pixels)."""
    height, width = pixels.shape
    source = np.ascontiguousarray(pixels)
    outs = [np.empty((height, out_width), dtype=np.uint32) for out_width in out_widths]
    coefficients = [bicubic_coefficients(width, out_width) for out_width in out_widths]
    for index in range(0, len(outs), 2):
        if index + 1 < len(outs):
            _kernels.resample_columns_twice(
                source, *coefficients[index], outs[index], *coefficients[index + 1], outs[index + 1]
            )
        else:
            _kernels.resample_columns(source, *coefficients[index], outs[index])
    return outs


def _starts_horizontal(width: int, height: int, out_width: int, out_height: int) -> bool:
    """Whether Pillow's resize to this size begins with a horizontal pass."""
    return out_width != width and pillow_runs_horizontal_first(width, height, out_width, out_height)


def _resize_pixels(
    pixels: np.ndarray, out_width: int, out_height: int, widened: np.ndarray | None = None
) -> np.ndarray:
    """One Pillow-exact resize of (H, W) RGBX pixels: Pillow's passes, in Pillow's order.
    `widened`: the horizontal first pass, when it was computed already."""
    height, width = pixels.shape
    need_horizontal, need_vertical = out_width != width, out_height != height
    if not need_horizontal and not need_vertical:
        return pixels.copy()
    if _starts_horizontal(width, height, out_width, out_height):
        current = widened if widened is not None else _horizontal(pixels, out_width)
        return _vertical(current, out_height) if need_vertical else current
    current = _vertical(pixels, out_height) if need_vertical else pixels
    return _horizontal(current, out_width) if need_horizontal else current


def resize_rgbx(image: Image.Image, sizes: list[tuple[int, int]]) -> list[np.ndarray] | None:
    """Pillow-exact bicubic resizes of an RGB image to each (width, height), as (h, w) uint32 RGBX.

    None when the fast resampler cannot be used (no numba, or not an RGB image): callers
    then use Pillow's own resize.
    """
    for out_width, out_height in sizes:
        if out_width < 1 or out_height < 1:
            raise ValueError(f"cannot resize to {out_width}x{out_height}")
    if image.mode != "RGB" or not _compile():
        return None
    pixels = rgbx_pixels(image)
    height, width = pixels.shape
    first = [index for index, size in enumerate(sizes) if _starts_horizontal(width, height, *size)]
    widened = dict(zip(first, _horizontal_many(pixels, [sizes[index][0] for index in first]), strict=True))
    return [_resize_pixels(pixels, *size, widened.get(index)) for index, size in enumerate(sizes)]


def rgb_view(pixels: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 view of (h, w) RGBX pixels."""
    return pixels.view(np.uint8).reshape(pixels.shape[0], pixels.shape[1], 4)[..., :3]


def resize_rgb_many(image: Image.Image, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """`np.asarray(image.resize(size, BICUBIC))` for each size, bit-identical, fast when possible."""
    resized = resize_rgbx(image, sizes)
    if resized is None:
        return [np.asarray(image.resize(size, Image.Resampling.BICUBIC)) for size in sizes]
    return [rgb_view(pixels) for pixels in resized]


def cut_tiles(pixels: np.ndarray, tiles: np.ndarray, first: int, cols: int) -> None:
    """Copy (rows*S, cols*S) RGBX pixels into RGB `tiles[first:first + rows*cols]`, row-major."""
    _kernels.cut_tiles(np.ascontiguousarray(pixels), tiles, first, cols)


def _self_check() -> bool:
    """Compare with the installed Pillow on small images that take every path (both pass orders)."""
    rng = np.random.default_rng(7)
    for width, height, sizes in (
        (37, 29, [(90, 61), (11, 29), (37, 5), (8, 8), (37, 29)]),
        (23, 97, [(30, 12), (23, 40), (9, 96)]),
    ):
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        pixels = rgbx_pixels(image)
        for size in sizes:
            ours = rgb_view(_resize_pixels(pixels, *size))
            if not np.array_equal(ours, np.asarray(image.resize(size, Image.Resampling.BICUBIC))):
                return False
    return True
