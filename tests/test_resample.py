"""The fast resampler is Pillow's bicubic resize bit for bit: every size, both pass orders,
both ways of reading pixels, and the Pillow fallback."""

from __future__ import annotations

import numpy as np
import pytest
from media import noise_image
from PIL import Image

from pipeline.actors import resample
from pipeline.actors.tiling import choose_grid, tile_image


def pillow(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(image.resize(size, Image.Resampling.BICUBIC))


def test_the_fast_path_is_active_here():
    """numba is a dependency: the benchmarks' figures assume this path."""
    assert resample.fast_resize_available()


@pytest.mark.parametrize(
    ("width", "height", "sizes"),
    [
        (640, 480, [(1344, 896), (448, 448)]),  # up- and downscale at once
        (77, 901, [(448, 4032), (448, 448)]),  # tall: Pillow 13 runs the vertical pass first
        (5000, 40, [(5376, 448), (448, 448)]),  # wide
        (300, 300, [(448, 448), (300, 448), (448, 300)]),  # one axis only
        (448, 448, [(448, 448)]),  # nothing to do
        (1, 1, [(448, 448)]),
        (2, 3, [(448, 896)]),
        (4032, 3024, [(1792, 1344), (448, 448)]),  # a 12 MP photo's grid and thumbnail
    ],
)
def test_equals_pillow(width: int, height: int, sizes: list[tuple[int, int]]):
    image = noise_image(width, height, seed=width + height)
    ours = resample.resize_rgb_many(image, sizes)
    for size, array in zip(sizes, ours, strict=True):
        assert array.shape == (size[1], size[0], 3)
        assert np.array_equal(array, pillow(image, size)), size


def test_equals_pillow_on_random_sizes():
    rng = np.random.default_rng(2024)
    for case in range(25):
        width, height = (int(v) for v in rng.integers(1, 1500, 2))
        image = noise_image(width, height, seed=case)
        sizes = [
            (int(rng.integers(1, 2000)), int(rng.integers(1, 2000))),
            (448, 448),
            (width, int(rng.integers(1, 600))),
            (int(rng.integers(1, 600)), height),
        ]
        for size, array in zip(sizes, resample.resize_rgb_many(image, sizes), strict=True):
            assert np.array_equal(array, pillow(image, size)), (width, height, size)


def test_pass_order_follows_pillow():
    major = int(Image.__version__.split(".")[0])
    assert resample.pillow_runs_horizontal_first(4032, 3024, 1792, 1344)
    assert resample.pillow_runs_horizontal_first(77, 901, 448, 448) is (major < 13)


def test_pixels_read_through_a_copy_when_not_in_one_block():
    """Pillow's default allocator splits big images; the resampler then copies them, same result."""
    image_size = (2200, 2100)  # 18 MB of RGBX: more than one 16 MB block
    previous = Image.core.get_use_block_allocator()
    Image.core.set_use_block_allocator(0)
    try:
        image = noise_image(*image_size, seed=5)
        split = resample.rgbx_pixels(image)
    finally:
        Image.core.set_use_block_allocator(previous)
    assert np.array_equal(resample.rgb_view(split), np.asarray(image))
    Image.core.set_use_block_allocator(1)
    try:
        whole = noise_image(*image_size, seed=5)
        shared = resample.rgbx_pixels(whole)
    finally:
        Image.core.set_use_block_allocator(previous)
    assert np.array_equal(shared, split)
    assert np.array_equal(resample.resize_rgb_many(whole, [(896, 896)])[0], pillow(image, (896, 896)))


def test_other_modes_and_the_pillow_fallback_give_the_same_tiles(monkeypatch):
    image = noise_image(1600, 1200, seed=9)
    grid = choose_grid(*image.size)
    fast = tile_image(image, grid)
    assert resample.resize_rgbx(image.convert("RGBA"), [(448, 448)]) is None  # only RGB takes the fast path
    monkeypatch.setattr(resample, "_kernels", False)
    assert resample.resize_rgbx(image, [(448, 448)]) is None
    assert np.array_equal(tile_image(image, grid), fast)


def test_coefficients_sum_to_one_in_fixed_point():
    for in_size, out_size in ((4032, 1792), (300, 448), (901, 448), (5, 5000)):
        starts, taps, weights = resample.bicubic_coefficients(in_size, out_size)
        assert (starts >= 0).all() and (starts + taps <= in_size).all()
        sums = weights.sum(axis=1)
        assert np.abs(sums - (1 << resample.PRECISION_BITS)).max() <= weights.shape[1]


def test_self_check_passes_with_this_pillow():
    assert resample._self_check()


def test_bad_size_is_refused():
    with pytest.raises(ValueError, match="cannot resize"):
        resample.resize_rgbx(noise_image(10, 10), [(0, 5)])


def test_a_numba_failure_falls_back_to_pillow(monkeypatch):
    """If numba cannot compile or cache on a node, the stage warns and uses Pillow (same pixels)."""

    def broken() -> bool:
        raise RuntimeError("cannot cache function: no locator available")

    monkeypatch.setattr(resample, "_kernels", None)
    monkeypatch.setattr(resample, "_self_check", broken)
    with pytest.warns(RuntimeWarning, match="fast resampler disabled"):
        assert resample.fast_resize_available() is False
    image = noise_image(300, 200, seed=4)
    assert np.array_equal(resample.resize_rgb_many(image, [(448, 448)])[0], pillow(image, (448, 448)))
