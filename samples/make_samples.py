"""Regenerate the bundled sample images and manifest (deterministic; run from the repo root).

The images are drawn, not photographed, so they are small and free of licences: scenes of
several aspect ratios (so their tile counts differ), a document page, and a short video.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

HERE = Path(__file__).parent
IMAGES = HERE / "images"


def scene(width: int, height: int, seed: int) -> Image.Image:
    """Sky, ground, sun and a few shapes: a cartoon 'photo'."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), (120, 170, 230))
    draw = ImageDraw.Draw(image)
    horizon = int(height * rng.uniform(0.55, 0.7))
    draw.rectangle([0, horizon, width, height], fill=(70, 140, 60))
    sun = int(min(width, height) * 0.12)
    x = int(width * rng.uniform(0.1, 0.9))
    draw.ellipse([x - sun, int(height * 0.1), x + sun, int(height * 0.1) + 2 * sun], fill=(250, 220, 80))
    for _ in range(5):
        left = int(rng.uniform(0, width * 0.85))
        top = int(rng.uniform(horizon * 0.6, horizon))
        w = int(rng.uniform(width * 0.05, width * 0.15))
        h = int(rng.uniform(height * 0.08, height * 0.25))
        color = tuple(int(c) for c in rng.integers(40, 220, 3))
        draw.rectangle([left, top - h, left + w, top], fill=color)
        draw.polygon([(left, top - h), (left + w // 2, top - h - w // 2), (left + w, top - h)], fill=(150, 60, 50))
    return image


def document(width: int, height: int) -> Image.Image:
    """A scanned-page look: a title, paragraphs and a table."""
    image = Image.new("RGB", (width, height), (250, 250, 245))
    draw = ImageDraw.Draw(image)
    draw.text((60, 50), "QUARTERLY REPORT", fill=(0, 0, 0))
    y = 100
    for paragraph in range(3):
        for line in range(6):
            draw.text(
                (60, y), f"Paragraph {paragraph + 1}, line {line + 1}: revenue grew in every region.", fill=(20, 20, 20)
            )
            y += 18
        y += 20
    for row in range(5):
        for col in range(3):
            draw.rectangle([60 + col * 150, y + row * 30, 210 + col * 150, y + row * 30 + 30], outline=(0, 0, 0))
            draw.text((70 + col * 150, y + row * 30 + 8), f"cell {row},{col}", fill=(0, 0, 0))
    return image


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, (width, height, seed) in {
        "landscape_4x3.jpg": (640, 480, 1),
        "wide_16x9.jpg": (960, 540, 2),
        "portrait_phone.jpg": (360, 780, 3),
        "square.png": (448, 448, 4),
        "panorama.jpg": (1400, 300, 5),
        "small.png": (120, 90, 6),
    }.items():
        image = scene(width, height, seed)
        image.save(IMAGES / name, quality=85) if name.endswith(".jpg") else image.save(IMAGES / name)
        rows.append({"id": Path(name).stem, "uri": f"images/{name}"})
    document(620, 877).save(IMAGES / "document_a4.png")
    rows.append({"id": "document_a4", "uri": "images/document_a4.png"})
    pq.write_table(pa.Table.from_pylist(rows), HERE / "manifest.parquet")


if __name__ == "__main__":
    main()
