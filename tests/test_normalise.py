"""Tiles are normalised exactly as the model card's ToTensor + Normalize, by either path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.models import normalise
from pipeline.models.normalise import IMAGENET_MEAN, IMAGENET_STD, PixelBuffer, lookup_table, normalise_tiles


def reference_pixel_values(tiles: np.ndarray) -> torch.Tensor:
    """The model card's operations, written out: per tile ToTensor (/255) then Normalize."""
    out = []
    for tile in tiles:
        tensor = torch.from_numpy(tile.copy()).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        out.append(tensor.sub(mean).div(std))
    return torch.stack(out)


@pytest.fixture(params=["lookup", "torch"])
def path(request, monkeypatch):
    """Run each test through the numba table lookup and through torch's passes."""
    if request.param == "torch":
        monkeypatch.setattr(normalise, "_kernels", False)
    else:
        monkeypatch.setattr(normalise, "_kernels", None)
        assert normalise._lookup_kernel(), "numba is a dependency: the lookup must be available"
    return request.param


def test_every_byte_value_in_every_channel_matches(path: str) -> None:
    values = np.arange(256, dtype=np.uint8)
    tiles = np.stack(np.meshgrid(values, values, values[::-1], indexing="ij"), axis=-1)[:, :, :1, :]
    tiles = tiles.reshape(1, 256, 256, 3)
    assert torch.equal(normalise_tiles(tiles, torch.device("cpu"), torch.float32), reference_pixel_values(tiles))


def test_random_tiles_match_bit_for_bit(path: str) -> None:
    tiles = np.random.default_rng(7).integers(0, 256, (3, 448, 448, 3), dtype=np.uint8)
    got = normalise_tiles(tiles, torch.device("cpu"), torch.float32)
    assert got.shape == (3, 3, 448, 448)
    assert torch.equal(got, reference_pixel_values(tiles))


def test_casts_to_the_model_dtype(path: str) -> None:
    tiles = np.random.default_rng(8).integers(0, 256, (1, 448, 448, 3), dtype=np.uint8)
    got = normalise_tiles(tiles, torch.device("cpu"), torch.bfloat16)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, reference_pixel_values(tiles).to(torch.bfloat16))


def test_table_is_the_reference_on_each_value() -> None:
    table = torch.from_numpy(lookup_table())
    expected = reference_pixel_values(np.arange(256, dtype=np.uint8).repeat(3).reshape(1, 256, 1, 3))
    assert torch.equal(table, expected[0, :, :, 0].T)


def test_rows_normalised_in_place_equal_their_stack(path: str) -> None:
    """A batch's rows go straight into one output (no stacked uint8 copy) with the same values."""
    rng = np.random.default_rng(9)
    rows = [rng.integers(0, 256, (count, 448, 448, 3), dtype=np.uint8) for count in (2, 1, 3)]
    got = normalise_tiles(rows, torch.device("cpu"), torch.float32, PixelBuffer())
    assert torch.equal(got, reference_pixel_values(np.concatenate(rows)))


def test_a_replica_reuses_one_buffer_and_grows_it_when_needed() -> None:
    """Successive batches land in the same memory (no fresh ~190 MB per batch), a larger one grows it."""
    buffer = PixelBuffer()
    rng = np.random.default_rng(10)
    cpu = torch.device("cpu")
    first = normalise_tiles(rng.integers(0, 256, (2, 448, 448, 3), dtype=np.uint8), cpu, torch.float32, buffer)
    address = first.data_ptr()
    smaller = rng.integers(0, 256, (1, 448, 448, 3), dtype=np.uint8)
    second = normalise_tiles(smaller, cpu, torch.float32, buffer)
    assert second.data_ptr() == address
    assert torch.equal(second, reference_pixel_values(smaller))
    larger = rng.integers(0, 256, (3, 448, 448, 3), dtype=np.uint8)
    third = normalise_tiles(larger, cpu, torch.float32, buffer)
    assert torch.equal(third, reference_pixel_values(larger))
    assert normalise_tiles(smaller, cpu, torch.float32, buffer).data_ptr() == third.data_ptr()
