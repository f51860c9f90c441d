"""Regenerate the bundled samples and their manifests (deterministic; run from the repo root).

The media are drawn, not filmed or photographed, so they are small and free of licences:
scenes of several aspect ratios (so their tile counts differ), two document pages, and
two short clips of different lengths and frame rates (written with PyAV, a test
dependency: `pip install -e '.[test]'`).

Manifests, one per job in jobs/:
- manifest.parquet   the images (quickstart, caption)
- documents.parquet  pages, one per row, and a two-page document as one multi-image row (ocr)
- videos.parquet     whole clips and a time window of one (video_caption)
- mixed.parquet      one row of every kind: image, several images, video window, text only (moderation)
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

HERE = Path(__file__).parent
IMAGES = HERE / "images"
VIDEOS = HERE / "videos"


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


def invoice(width: int, height: int) -> Image.Image:
    """A second page: a header, an address block and a table of line items."""
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.text((50, 40), "INVOICE No. 2024-117", fill=(0, 0, 0))
    for line, text in enumerate(["ACME Tools Ltd.", "12 Harbour Road", "Portsmouth PO1 2AB"]):
        draw.text((50, 80 + 16 * line), text, fill=(40, 40, 40))
    y = 170
    for row, (item, qty, price) in enumerate(
        [("Item", "Qty", "Price"), ("Hammer", "2", "24.00"), ("Saw", "1", "31.50"), ("Total", "", "55.50")]
    ):
        for col, text in enumerate((item, qty, price)):
            left = 50 + col * 140
            draw.rectangle([left, y + row * 28, left + 140, y + row * 28 + 28], outline=(0, 0, 0))
            draw.text((left + 8, y + row * 28 + 8), text, fill=(0, 0, 0))
    return image


def frame(index: int, width: int, height: int) -> np.ndarray:
    """Frame `index` of a clip: a ball crossing the sky, its colour changing with time."""
    image = scene(width, height, seed=20)
    draw = ImageDraw.Draw(image)
    radius = height // 6
    x = int((index * 7) % (width + 2 * radius)) - radius
    colour = ((index * 37) % 256, (index * 91 + 64) % 256, (index * 151 + 128) % 256)
    draw.ellipse([x - radius, height // 3 - radius, x + radius, height // 3 + radius], fill=colour)
    return np.asarray(image)


def write_clip(path: Path, frames: int, fps: Fraction, width: int = 160, height: int = 96) -> None:
    """An H.264 clip (any container PyAV knows from the extension) of `frames` frames at `fps`."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "30", "preset": "ultrafast"}
        for index in range(frames):
            picture = av.VideoFrame.from_ndarray(frame(index, width, height), format="rgb24")
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


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

    invoice(620, 877).save(IMAGES / "invoice_page.png")
    uris = pa.list_(pa.string())
    documents = pa.schema([("id", pa.string()), ("uri", pa.string()), ("uris", uris)])
    pages = [
        {"id": "report_page", "uri": "images/document_a4.png", "uris": None},
        {"id": "invoice_page", "uri": "images/invoice_page.png", "uris": None},
        {"id": "report_and_invoice", "uri": None, "uris": ["images/document_a4.png", "images/invoice_page.png"]},
    ]
    pq.write_table(pa.Table.from_pylist(pages, schema=documents), HERE / "documents.parquet")

    VIDEOS.mkdir(parents=True, exist_ok=True)
    write_clip(VIDEOS / "ball_24fps.mp4", 60, Fraction(24))  # 2.5 s
    write_clip(VIDEOS / "ball_ntsc.mkv", 100, Fraction(30000, 1001))  # 3.3 s at 29.97 fps
    clips = pa.schema([("id", pa.string()), ("uri", pa.string()), ("start_s", pa.float64()), ("end_s", pa.float64())])
    videos = [
        {"id": "ball_24fps", "uri": "videos/ball_24fps.mp4", "start_s": None, "end_s": None},
        {"id": "ball_ntsc", "uri": "videos/ball_ntsc.mkv", "start_s": None, "end_s": None},
        {"id": "ball_ntsc_1s_to_2s", "uri": "videos/ball_ntsc.mkv", "start_s": 1.0, "end_s": 2.0},
    ]
    pq.write_table(pa.Table.from_pylist(videos, schema=clips), HERE / "videos.parquet")

    mixed_schema = pa.schema(
        [
            ("id", pa.string()),
            ("uri", pa.string()),
            ("uris", uris),
            ("start_s", pa.float64()),
            ("end_s", pa.float64()),
            ("prompt", pa.string()),
        ]
    )
    comment = "Moderate this user comment: 'What a lovely beach, thanks for sharing!'"
    mixed = [
        {"id": "one_image", "uri": "images/landscape_4x3.jpg"},
        {"id": "two_images", "uri": None, "uris": ["images/square.png", "images/panorama.jpg"]},
        {"id": "video_window", "uri": "videos/ball_24fps.mp4", "start_s": 0.5, "end_s": 2.0},
        {"id": "text_only", "uri": None, "prompt": comment},
    ]
    pq.write_table(pa.Table.from_pylist(mixed, schema=mixed_schema), HERE / "mixed.parquet")


if __name__ == "__main__":
    main()
