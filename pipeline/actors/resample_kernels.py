"""The compiled loops of `pipeline.actors.resample` (imported only when numba is installed).

Kept in their own module so that importing the resampler does not import numba, and so
that numba can cache the machine code beside this file (compiled once per machine).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def transpose_pixels(src: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """(H, W) uint32 pixels -> (W, H), in cache-sized blocks."""
    height, width = src.shape
    block = 16
    for y0 in range(0, height, block):
        y1 = min(y0 + block, height)
        for x0 in range(0, width, block):
            x1 = min(x0 + block, width)
            for x in range(x0, x1):
                for y in range(y0, y1):
                    out[x, y] = src[y, x]


@numba.njit(cache=True, nogil=True)
def resample_rows(
    src: np.ndarray, starts: np.ndarray, taps: np.ndarray, weights: np.ndarray, out: np.ndarray
) -> None:  # pragma: no cover - compiled
    """out[o] = clip((sum_t weights[o, t] * src[starts[o] + t] + 2^21) >> 22) over rows of uint8.

    Pillow's fixed-point arithmetic (int32 sums, arithmetic shift, clip to 0..255), with
    the loop over taps outside the loop over the row so the inner loop vectorises.
    """
    width = src.shape[1]
    acc = np.empty(width, dtype=np.int32)
    for o in range(out.shape[0]):
        acc[:] = 1 << 21
        first = starts[o]
        for t in range(taps[o]):
            k = weights[o, t]
            row = src[first + t]
            for i in range(width):
                acc[i] += np.int32(row[i]) * k
        target = out[o]
        for i in range(width):
            v = acc[i] >> 22
            target[i] = 0 if v < 0 else (255 if v > 255 else v)


@numba.njit(cache=True, nogil=True)
def cut_tiles(pixels: np.ndarray, tiles: np.ndarray, first: int, cols: int) -> None:  # pragma: no cover
    """Cut (rows*S, cols*S) RGBX pixels into RGB tiles[first:], row-major, dropping the pad byte."""
    size = tiles.shape[1]
    source = pixels.view(np.uint8)
    for y in range(pixels.shape[0]):
        tile_row = (y // size) * cols
        ty = y % size
        for col in range(cols):
            target = tiles[first + tile_row + col, ty]
            base = col * size * 4
            for x in range(size):
                target[x, 0] = source[y, base + 4 * x]
                target[x, 1] = source[y, base + 4 * x + 1]
                target[x, 2] = source[y, base + 4 * x + 2]
