"""uint8 tiles -> the model's pixel values, bit for bit as the model card computes them.

The reference does ToTensor (float32 / 255), then Normalize (float32 `(x - mean) / std`),
then casts to the model dtype. Tiles travel as uint8 and are normalised where the model
runs. On a GPU that is three cheap elementwise passes. On a CPU replica the same passes
over ~6 MB of tiles per row cost as much as a tenth of tiny-random's whole answer, so
there we look the result up instead: a uint8 value has 256 possible results per channel,
and a 256 x 3 table computed with exactly the reference's float32 operations gives
exactly the reference's numbers in one pass (numba; torch's in-place passes otherwise).
"""

from __future__ import annotations

import warnings
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


def normalise_tiles(tiles: np.ndarray, device: Any, dtype: Any):  # -> torch.Tensor
    """uint8 NHWC tiles -> normalised NCHW pixel values (channels-last in memory) on the device."""
    import torch

    tiles = np.ascontiguousarray(tiles)
    kernels: Any = _lookup_kernel() if device.type == "cpu" else None
    if kernels:
        values = np.empty(tiles.shape, dtype=np.float32)
        kernels.lookup_rgb(tiles.reshape(-1), lookup_table(), values.reshape(-1))
        pixels = torch.from_numpy(values)
    else:
        with warnings.catch_warnings():
            # Tiles arrive as read-only views of Arrow buffers; they are only read, never written.
            warnings.simplefilter("ignore", UserWarning)
            pixels = torch.from_numpy(tiles).to(device, non_blocking=True)
        pixels = _reference_passes(pixels.to(torch.float32), device)
    return pixels.permute(0, 3, 1, 2).to(dtype)
