"""uint8 tiles -> the model's pixel values, bit for bit as the model card computes them.

The reference does ToTensor (float32 / 255), then Normalize (float32 `(x - mean) / std`),
then casts to the model dtype. Tiles travel as uint8 and are normalised where the model
runs. On a GPU that is three cheap elementwise passes. On a CPU replica the same passes
over ~6 MB of tiles per row cost as much as a tenth of tiny-random's whole answer, so
there we look the result up instead: a uint8 value has 256 possible results per channel,
and a 256 x 3 table computed with exactly the reference's float32 operations gives
exactly the reference's numbers in one pass (numba; torch's in-place passes otherwise).

A CPU replica also keeps one float32 buffer for these values (`PixelBuffer`): a batch of
8 rows of 10 tiles is ~190 MB, and a fresh array per batch made the kernel zero it page
by page, which cost three times the lookup itself.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_kernels: Any = None  # the numba module, or False when numba is unavailable or fails


def _lookup_kernel() -> Any:
    """The compiled table lookup, or False (torch's passes are used then)."""
    global _kernels
    if _kernels is None:
        try:
            from pipeline.models import normalise_kernels

            probe = np.arange(6, dtype=np.uint8)
            normalise_kernels.lookup_rgb(probe, lookup_table(), np.empty(6, dtype=np.float32))
            _kernels = normalise_kernels
        except Exception:  # no numba, or it cannot compile here: the torch path gives the same numbers
            _kernels = False
    return _kernels


@lru_cache(maxsize=1)
def lookup_table() -> np.ndarray:
    """float32 [256, 3]: the reference's normalised value of each byte value in each channel."""
    import torch

    values = torch.arange(256, dtype=torch.float32).view(256, 1).expand(256, 3)
    return _reference_passes(values.clone(), torch.device("cpu")).numpy()


def _reference_passes(pixels: Any, device: Any) -> Any:
    """ToTensor's / 255, then Normalize, in place on float32 values whose last axis is RGB."""
    import torch

    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=device)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=device)
    return pixels.div_(255).sub_(mean).div_(std)


class PixelBuffer:
    """One growing float32 buffer that a replica's successive batches normalise into.

    Why: allocating ~190 MB per batch and letting the kernel fault it in cost ~10 ms a row on
    a CPU replica, more than the lookup. The values of one call are valid until the next
    call: the owner (one engine, calling the model one batch at a time) must not hold them
    across calls.
    """

    def __init__(self) -> None:
        self._values = np.empty(0, dtype=np.float32)

    def take(self, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 array of `shape` over the buffer, which grows when it is too small."""
        count = int(np.prod(shape))
        if self._values.size < count:
            self._values = np.empty(count, dtype=np.float32)
        return self._values[:count].reshape(shape)


def normalise_tiles(
    tiles: np.ndarray | Sequence[np.ndarray], device: Any, dtype: Any, buffer: PixelBuffer | None = None
):  # -> torch.Tensor
    """uint8 NHWC tiles (one array, or several stacked in order) -> normalised NCHW pixel values
    (channels-last in memory) on the device. With a `buffer`, the table lookup writes into it."""
    import torch

    pieces = [tiles] if isinstance(tiles, np.ndarray) else list(tiles)
    kernels: Any = _lookup_kernel() if device.type == "cpu" else None
    if kernels:
        shape = (sum(len(piece) for piece in pieces), *pieces[0].shape[1:])
        values = buffer.take(shape) if buffer is not None else np.empty(shape, dtype=np.float32)
        flat, start, table = values.reshape(-1), 0, lookup_table()
        for piece in pieces:  # each row's tiles straight into place: no stacked uint8 copy
            piece = np.ascontiguousarray(piece).reshape(-1)
            kernels.lookup_rgb(piece, table, flat[start : start + piece.size])
            start += piece.size
        pixels = torch.from_numpy(values)
    else:
        tiles = np.ascontiguousarray(pieces[0] if len(pieces) == 1 else np.concatenate(pieces))
        with warnings.catch_warnings():
            # Tiles arrive as read-only views of Arrow buffers; they are only read, never written.
            warnings.simplefilter("ignore", UserWarning)
            pixels = torch.from_numpy(tiles).to(device, non_blocking=True)
        pixels = _reference_passes(pixels.to(torch.float32), device)
    return pixels.permute(0, 3, 1, 2).to(dtype)
