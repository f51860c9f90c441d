"""Tiling reproduces the reference exactly: grid choice on every golden row, and pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import GOLDEN
from media import noise_image
from PIL import Image

from pipeline.actors.tiling import TILE_SIZE, choose_grid, tile_image

GOLDEN_ROWS = [json.loads(line) for line in (GOLDEN / "tiling_golden.jsonl").read_text().splitlines()]


def test_golden_file_is_the_shared_one():
    """Our copy of the golden vectors is byte-identical to ../shared/golden when that exists."""
    shared = GOLDEN.parents[2] / "shared" / "golden"
    if not shared.is_dir():
        pytest.skip("no ../shared/golden next to this checkout")
    for name in ("tiling_golden.jsonl", "frames_golden.jsonl", "prompt_internvl2_5.json"):
        assert (GOLDEN / name).read_bytes() == (shared / name).read_bytes(), name


def test_every_golden_row():
    mismatches = []
    for row in GOLDEN_ROWS:
        grid = choose_grid(
            row["width"], row["height"], row["min_num"], row["max_num"], row["image_size"], row["use_thumbnail"]
        )
        if (grid.cols, grid.rows, grid.num_tiles) != (row["cols"], row["rows"], row["num_tiles"]):
            mismatches.append((row, grid))
    assert len(GOLDEN_ROWS) > 1000
    assert mismatches == []


def reference_tiles(image: Image.Image, max_num: int, use_thumbnail: bool = True) -> list[np.ndarray]:
    """The model card's dynamic_preprocess, written out independently: resize, crop per tile, thumbnail."""
    width, height = image.size
    ratios = sorted(
        {
            (i, j)
            for n in range(1, max_num + 1)
            for i in range(1, n + 1)
            for j in range(1, n + 1)
            if 1 <= i * j <= max_num
        },
        key=lambda r: r[0] * r[1],
    )
    best, best_diff = (1, 1), float("inf")
    for ratio in ratios:
        diff = abs(width / height - ratio[0] / ratio[1])
        if diff < best_diff:
            best, best_diff = ratio, diff
        elif diff == best_diff and width * height > 0.5 * 448 * 448 * ratio[0] * ratio[1]:
            best = ratio
    target_w, target_h = 448 * best[0], 448 * best[1]
    resized = image.resize((target_w, target_h))
    tiles = []
    for i in range(best[0] * best[1]):
        box = ((i % best[0]) * 448, (i // best[0]) * 448, (i % best[0] + 1) * 448, (i // best[0] + 1) * 448)
        tiles.append(np.asarray(resized.crop(box)))
    if use_thumbnail and len(tiles) != 1:
        tiles.append(np.asarray(image.resize((448, 448))))
    return tiles


@pytest.mark.parametrize(
    ("width", "height", "max_num"),
    [
        (640, 480, 12),
        (1920, 1080, 12),
        (1080, 2340, 12),
        (2480, 3508, 12),
        (300, 300, 6),
        (5000, 40, 12),
        (77, 901, 24),
    ],
)
def test_tiles_are_bit_exact(width: int, height: int, max_num: int):
    image = noise_image(width, height, seed=width + height)
    grid = choose_grid(width, height, 1, max_num)
    tiles = tile_image(image, grid)
    expected = reference_tiles(image, max_num)
    assert tiles.dtype == np.uint8
    assert tiles.shape == (len(expected), TILE_SIZE, TILE_SIZE, 3)
    for ours, theirs in zip(tiles, expected, strict=True):
        assert np.array_equal(ours, theirs)


def test_thumbnail_only_with_several_tiles():
    assert choose_grid(448, 448, 1, 12, use_thumbnail=True).num_tiles == 1
    assert choose_grid(896, 448, 1, 12, use_thumbnail=True).num_tiles == 3
    assert choose_grid(896, 448, 1, 12, use_thumbnail=False).num_tiles == 2


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError, match="tile bounds"):
        choose_grid(100, 100, 3, 2)
    with pytest.raises(ValueError, match="positive"):
        choose_grid(0, 100)
