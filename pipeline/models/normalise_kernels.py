"""The compiled loop of `pipeline.models.normalise` (imported only when numba is installed).

Its own module so that importing the normaliser does not import numba, and so that numba
caches the machine code beside this file.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def lookup_rgb(pixels: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - compiled
    """out[i] = table[pixels[i], i % 3] over interleaved RGB bytes: one read and one write per value."""
    for i in range(pixels.shape[0] // 3):
        at = 3 * i
        out[at] = table[pixels[at], 0]
        out[at + 1] = table[pixels[at + 1], 1]
        out[at + 2] = table[pixels[at + 2], 2]
