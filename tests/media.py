"""Writers of real test media: images in every mode, broken files, manifests.

Tests build their inputs with these instead of shipping binary fixtures, so every case is
visible in code.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def noise_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """Random pixels (every image differs, so the model's answers do too)."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    return image if mode == "RGB" else image.convert(mode)


def write_image(path: Path, width: int, height: int, seed: int = 0, mode: str = "RGB", **save: Any) -> Path:
    """Save a noise image; the format follows the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise_image(width, height, seed, mode).save(path, **save)
    return path


def write_png_16bit(path: Path, width: int = 300, height: int = 200) -> Path:
    """A 16-bit greyscale PNG (Pillow opens it as mode I;16 / I)."""
    values = (np.arange(width * height, dtype=np.uint32).reshape(height, width) * 37 % 65536).astype(np.uint16)
    Image.fromarray(values).save(path)
    return path


def write_palette_with_transparency(path: Path) -> Path:
    """A palette PNG whose colour 0 is transparent."""
    image = noise_image(200, 120, seed=3).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    image.save(path, transparency=0)
    return path


def write_animated_gif(path: Path, frames: int = 4) -> Path:
    """An animated GIF (the first frame is used)."""
    images = [noise_image(160, 120, seed=10 + i).convert("P") for i in range(frames)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)
    return path


def write_png_header_only(path: Path, width: int, height: int) -> Path:
    """A valid PNG header declaring a huge size, with a tiny (truncated) body: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def truncated_copy(source: Path, target: Path, fraction: float = 0.5) -> Path:
    """The first `fraction` of a file's bytes."""
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


def jpeg_bytes(width: int, height: int, seed: int = 0, mode: str = "RGB") -> bytes:
    """An in-memory JPEG."""
    buffer = io.BytesIO()
    noise_image(width, height, seed, mode).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_manifest(path: Path, rows: list[dict[str, Any]], schema: pa.Schema | None = None) -> Path:
    """A Parquet manifest from row dicts."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def read_output(path: Path) -> pa.Table:
    """Every row of a job's output."""
    return pq.read_table(path)
