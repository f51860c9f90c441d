"""The compiled loops of `pipeline.actors.resample` (imported only when numba is installed).

Kept in their own module so that importing the resampler does not import numba, and so
that numba can cache the machine code beside this file (compiled once per machine).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(inline="always", nogil=True)
def _weighted_sum(
    lines: np.ndarray, first: int, taps: int, weights: np.ndarray, target: np.ndarray, acc: np.ndarray, lanes: int
) -> None:  # pragma: no cover - compiled
    """target[:lanes] = clip((sum_t weights[t] * lines[first + t, :lanes] + 2^21) >> 22).

    Pillow's fixed-point arithmetic (int32 sums, arithmetic shift, clip to 0..255), with
    the loop over taps outside the loop over the lanes, so the inner loop vectorises.
    Inlined into every caller, so a caller that passes a constant `lanes` (a full strip)
    gets that loop unrolled as well.
    """
    for i in range(lanes):
        acc[i] = 1 << 21
    for t in range(taps):
        k = weights[t]
        line = lines[first + t]
        for i in range(lanes):
            acc[i] += np.int32(line[i]) * k
    for i in range(lanes):
        v = acc[i] >> 22
        target[i] = 0 if v < 0 else (255 if v > 255 else v)


@numba.njit(cache=True, nogil=True)
def resample_rows(
    src: np.ndarray, starts: np.ndarray, taps: np.ndarray, weights: np.ndarray, out: np.ndarray
) -> None:  # pragma: no cover - compiled
    """The vertical pass: out[o] = clip((sum_t weights[o, t] * src[starts[o] + t] + 2^21) >> 22).

    Rows of uint8 (each byte a channel): each output row is a weighted sum of whole input rows.
    """
    width = src.shape[1]
    acc = np.empty(width, dtype=np.int32)
    for o in range(out.shape[0]):
        _weighted_sum(src, starts[o], taps[o], weights[o], out[o], acc, width)


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


STRIP = 64  # rows per strip of the horizontal pass: 256 int32 lanes (64 RGBX pixels)


@numba.njit(cache=True, nogil=True)
def _strip_columns(
    block_bytes: np.ndarray,
    rows: int,
    starts: np.ndarray,
    taps: np.ndarray,
    weights: np.ndarray,
    result: np.ndarray,
    acc: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Every output column of one transposed strip of `rows` rows, into `result` (Wo, STRIP).

    A full strip passes a constant lane count, which the compiler unrolls completely.
    """
    result_bytes = result.view(np.uint8)
    if rows == STRIP:
        for o in range(result.shape[0]):
            _weighted_sum(block_bytes, starts[o], taps[o], weights[o], result_bytes[o], acc, STRIP * 4)
    else:
        for o in range(result.shape[0]):
            _weighted_sum(block_bytes, starts[o], taps[o], weights[o], result_bytes[o], acc, rows * 4)


@numba.njit(cache=True, nogil=True)
def _transpose_strip(src: np.ndarray, y0: int, rows: int, block: np.ndarray) -> None:  # pragma: no cover
    """block[x, j] = src[y0 + j, x]: a strip of rows, transposed."""
    for j in range(rows):
        line = src[y0 + j]
        for x in range(src.shape[1]):
            block[x, j] = line[x]


@numba.njit(cache=True, nogil=True)
def _copy_back(result: np.ndarray, out: np.ndarray, y0: int, rows: int) -> None:  # pragma: no cover
    """out[y0 + j, o] = result[o, j]: a strip's results, transposed back."""
    for j in range(rows):
        line = out[y0 + j]
        for o in range(out.shape[1]):
            line[o] = result[o, j]


@numba.njit(cache=True, nogil=True)
def resample_columns_twice(
    src: np.ndarray,
    starts: np.ndarray,
    taps: np.ndarray,
    weights: np.ndarray,
    out: np.ndarray,
    starts2: np.ndarray,
    taps2: np.ndarray,
    weights2: np.ndarray,
    out2: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """The horizontal pass: (H, W) uint32 RGBX pixels -> (H, Wo) and (H, Wo2), Pillow's
    arithmetic, to two widths at once (a grid and its thumbnail): each strip is transposed
    once for both, and the transpose costs more than either set of sums.

    Works on strips of rows: a strip is transposed into a buffer so that each output column
    is a weighted sum of whole buffer rows (the same vectorised loop as `resample_rows`).
    The results are written to a transposed buffer too, whose rows are contiguous (so the
    rounding and clipping vectorise as well), and copied back a strip at a time: writing
    each result straight into the output touched a different output row for every pixel.
    """
    height, width = src.shape
    block = np.empty((width, STRIP), dtype=np.uint32)
    result = np.empty((out.shape[1], STRIP), dtype=np.uint32)
    result2 = np.empty((out2.shape[1], STRIP), dtype=np.uint32)
    acc = np.empty(STRIP * 4, dtype=np.int32)
    for y0 in range(0, height, STRIP):
        rows = min(STRIP, height - y0)
        _transpose_strip(src, y0, rows, block)
        _strip_columns(block.view(np.uint8), rows, starts, taps, weights, result, acc)
        _copy_back(result, out, y0, rows)
        _strip_columns(block.view(np.uint8), rows, starts2, taps2, weights2, result2, acc)
        _copy_back(result2, out2, y0, rows)


@numba.njit(cache=True, nogil=True)
def resample_columns(
    src: np.ndarray, starts: np.ndarray, taps: np.ndarray, weights: np.ndarray, out: np.ndarray
) -> None:  # pragma: no cover - compiled
    """The horizontal pass to one width: `resample_columns_twice` with an empty second
    target (no columns, so no sums and nothing copied back)."""
    nothing = np.empty((out.shape[0], 0), dtype=np.uint32)
    resample_columns_twice(
        src,
        starts,
        taps,
        weights,
        out,
        np.empty_like(starts[:0]),
        np.empty_like(taps[:0]),
        np.empty_like(weights[:0]),
        nothing,
    )
