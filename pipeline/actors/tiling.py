"""InternVL dynamic tiling as pure functions (Pillow and numpy only; no Ray, no torch).

The reference (`dynamic_preprocess` from the InternVL model cards) resizes the whole
image once to a grid of 448 px tiles, cuts it row-major, and appends a 448x448
thumbnail when the grid has more than one tile. We reproduce its grid choice exactly,
including its tie-break, and produce the same pixels, but faster: both resizes are
Pillow's bicubic computed bit for bit by the vectorised resampler in
`pipeline.actors.resample` (sharing one read of the source), tiles are cut straight
from the resized pixels instead of a Pillow crop per tile, and they stay uint8
(normalisation happens on the model's device).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from pipeline.actors.resample import cut_tiles, resize_rgbx

TILE_SIZE = 448


@dataclass(frozen=True)
class TileGrid:
    """The grid chosen for one image: `cols` x `rows` tiles, plus maybe a thumbnail."""

    cols: int
    rows: int
    thumbnail: bool

    @property
    def num_tiles(self) -> int:
        """Tiles produced, thumbnail included."""
        return self.cols * self.rows + (1 if self.thumbnail else 0)


@lru_cache(maxsize=64)
def candidate_grids(min_num: int, max_num: int) -> tuple[tuple[int, int], ...]:
    """All (cols, rows) with min_num <= cols*rows <= max_num, ordered by tile count.

    The order among grids of equal tile count matters for the reference's tie-break, so
    we build the candidates exactly as the reference does: a Python set of tuples,
    iterated and stably sorted by product (CPython's tuple hashing of small ints is
    deterministic, so this order is the same on every machine).
    """
    if min_num < 1 or max_num < min_num:
        raise ValueError(f"tile bounds must satisfy 1 <= min_num <= max_num, got {min_num}, {max_num}")
    grids = {
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    }
    return tuple(sorted(grids, key=lambda grid: grid[0] * grid[1]))


def choose_grid(
    width: int,
    height: int,
    min_num: int = 1,
    max_num: int = 12,
    image_size: int = TILE_SIZE,
    use_thumbnail: bool = True,
) -> TileGrid:
    """Pick the tile grid the reference would pick for an image of this size.

    The grid whose cols/rows ratio is closest to width/height wins; on an exact tie a
    later (larger) grid wins only if the image has more than half of its pixels.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    aspect_ratio = width / height
    area = width * height
    best_diff = float("inf")
    best = (1, 1)
    for cols, rows in candidate_grids(min_num, max_num):
        diff = abs(aspect_ratio - cols / rows)
        if diff < best_diff:
            best_diff = diff
            best = (cols, rows)
        elif diff == best_diff and area > 0.5 * image_size * image_size * cols * rows:
            best = (cols, rows)
    cols, rows = best
    return TileGrid(cols=cols, rows=rows, thumbnail=use_thumbnail and cols * rows > 1)


def tile_image(image: Image.Image, grid: TileGrid, image_size: int = TILE_SIZE) -> np.ndarray:
    """Cut an RGB image into the tiles of `grid` (from `choose_grid` on its original size).

    Returns a uint8 array of shape (num_tiles, image_size, image_size, 3), row-major grid
    tiles first and the thumbnail last, bit-identical to the reference's tiles when the
    image is the fully decoded original.
    """
    if image.mode != "RGB":
        raise ValueError(f"tile_image needs an RGB image, got mode {image.mode!r}")
    target = (image_size * grid.cols, image_size * grid.rows)
    sizes = [target, (image_size, image_size)] if grid.thumbnail else [target]
    tiles = np.empty((grid.num_tiles, image_size, image_size, 3), dtype=np.uint8)
    resized = resize_rgbx(image, sizes)
    if resized is not None:
        cut_tiles(resized[0], tiles, 0, grid.cols)
        if grid.thumbnail:
            cut_tiles(resized[1], tiles, grid.num_tiles - 1, 1)
        return tiles
    # Pillow's own resize (no numba): the same pixels, slower.
    whole = np.asarray(image.resize(target, Image.Resampling.BICUBIC))
    for index in range(grid.cols * grid.rows):
        top = (index // grid.cols) * image_size
        left = (index % grid.cols) * image_size
        tiles[index] = whole[top : top + image_size, left : left + image_size]
    if grid.thumbnail:
        tiles[-1] = np.asarray(image.resize((image_size, image_size), Image.Resampling.BICUBIC))
    return tiles
