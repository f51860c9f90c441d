"""Generated benchmark corpora: realistic image files, written once into a work folder.

Real photos are not shipped with the repository, so the benchmarks draw them: smooth
scenes with shapes, edges and sensor-like noise (so JPEG files have realistic sizes
and decode costs: a 12 MP photo is a few MB, not the 30 MB of pure noise nor the 200 kB
of a flat gradient), and A4 pages of text lines as a scanner would produce them. Every
file is deterministic (seeded), so a re-run measures the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

CORPUS_VERSION = "v1"


@dataclass(frozen=True)
class CorpusImage:
    """One image of a corpus: what it stands for and where it is."""

    kind: str  # photo 4:3, photo 16:9, portrait, document
    path: str
    width: int
    height: int
    file_bytes: int


@dataclass(frozen=True)
class ImageRecipe:
    """How to draw one corpus image."""

    kind: str
    name: str
    width: int
    height: int
    document: bool = False
    fmt: str = "JPEG"
    quality: int = 90
    grey: bool = False


# Sizes from common devices: 12 MP phone cameras (4032x3024), web photos, 4K and
# full-HD frames, phone shots held upright (stored upright, as exported by photo apps),
# and A4 pages scanned at 300 and 200 dpi (RGB JPEG, and greyscale PNG).
PREPROCESS_RECIPES = [
    ImageRecipe("photo 4:3", "photo_4032x3024", 4032, 3024),
    ImageRecipe("photo 4:3", "photo_1600x1200", 1600, 1200),
    ImageRecipe("photo 4:3", "photo_2048x1536", 2048, 1536),
    ImageRecipe("photo 16:9", "photo_3840x2160", 3840, 2160),
    ImageRecipe("photo 16:9", "photo_1920x1080", 1920, 1080),
    ImageRecipe("photo 16:9", "photo_1280x720", 1280, 720),
    ImageRecipe("portrait", "portrait_3024x4032", 3024, 4032),
    ImageRecipe("portrait", "portrait_1080x1920", 1080, 1920),
    ImageRecipe("portrait", "portrait_1170x2532", 1170, 2532),
    ImageRecipe("document", "scan_a4_300dpi", 2480, 3508, document=True, quality=85),
    ImageRecipe("document", "scan_a4_200dpi_grey", 1654, 2339, document=True, fmt="PNG", grey=True),
    ImageRecipe("document", "scan_letter_150dpi", 1275, 1650, document=True, quality=85),
]


def draw_photo(width: int, height: int, seed: int) -> Image.Image:
    """A photo-like RGB image: a smooth scene, hard-edged shapes, texture and sensor noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    scene = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(scene)
    for _ in range(40):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(width // 40, width // 4)), int(rng.integers(height // 40, height // 4))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=colour)
        else:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=colour)
    scene = scene.filter(ImageFilter.GaussianBlur(radius=max(1.0, width / 1500)))
    pixels = np.asarray(scene, dtype=np.int16)
    texture = rng.normal(0, 1, (height // 8 + 1, width // 8 + 1)).astype(np.float32)
    texture_img = Image.fromarray(((texture * 20) + 128).clip(0, 255).astype(np.uint8)).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    pixels = pixels + (np.asarray(texture_img, dtype=np.int16)[..., None] - 128)
    pixels = pixels + rng.normal(0, 4, pixels.shape).astype(np.int16)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def draw_document(width: int, height: int, seed: int, grey: bool) -> Image.Image:
    """A scanned page: off-white paper, a title, paragraphs of text lines, a table, scanner noise."""
    rng = np.random.default_rng(seed)
    page = Image.new("L", (width, height), 245)
    draw = ImageDraw.Draw(page)
    scale = width / 2480
    body = ImageFont.load_default(size=max(10, int(34 * scale)))
    title = ImageFont.load_default(size=max(14, int(64 * scale)))
    margin = int(200 * scale)
    draw.text((margin, margin), "Quarterly report on benchmark documents", font=title, fill=20)
    y = margin + int(140 * scale)
    words = [
        "the",
        "of",
        "pipeline",
        "tiles",
        "images",
        "batch",
        "token",
        "model",
        "page",
        "table",
        "scan",
        "results",
        "value",
        "total",
    ]
    line_height = int(48 * scale)
    while y < height - margin:
        if rng.random() < 0.05:  # a table block
            rows, cols = int(rng.integers(3, 7)), 4
            cell_w = (width - 2 * margin) // cols
            for r in range(rows + 1):
                draw.line((margin, y + r * line_height, width - margin, y + r * line_height), fill=40, width=2)
            for c in range(cols + 1):
                draw.line((margin + c * cell_w, y, margin + c * cell_w, y + rows * line_height), fill=40, width=2)
            for r in range(rows):
                for c in range(cols):
                    draw.text((margin + c * cell_w + 8, y + r * line_height + 6), f"{rng.integers(0, 9999)}", font=body)
            y += (rows + 1) * line_height
            continue
        line = " ".join(rng.choice(words, int(rng.integers(8, 16))))
        draw.text((margin, y), line.capitalize() + ".", font=body, fill=int(rng.integers(10, 60)))
        y += line_height if rng.random() > 0.15 else 2 * line_height
    pixels = np.asarray(page, dtype=np.int16) + rng.normal(0, 3, (height, width)).astype(np.int16)
    page = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    return page if grey else page.convert("RGB")


def _write(recipe: ImageRecipe, folder: Path, seed: int) -> Path:
    suffix = ".png" if recipe.fmt == "PNG" else ".jpg"
    path = folder / f"{recipe.name}{suffix}"
    if path.exists():
        return path
    if recipe.document:
        image = draw_document(recipe.width, recipe.height, seed, recipe.grey)
    else:
        image = draw_photo(recipe.width, recipe.height, seed)
    tmp = path.with_suffix(".tmp" + suffix)
    if recipe.fmt == "PNG":
        image.save(tmp, format="PNG")
    else:
        image.save(tmp, format="JPEG", quality=recipe.quality, subsampling="4:2:0")
    tmp.rename(path)
    return path


def build_corpus(folder: Path, recipes: list[ImageRecipe] | None = None) -> list[CorpusImage]:
    """Write (once) and list the corpus images; files already present are reused."""
    folder = folder / f"corpus-{CORPUS_VERSION}"
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for seed, recipe in enumerate(recipes or PREPROCESS_RECIPES):
        path = _write(recipe, folder, seed)
        images.append(CorpusImage(recipe.kind, str(path), recipe.width, recipe.height, path.stat().st_size))
    (folder / "corpus.json").write_text(json.dumps([asdict(i) for i in images], indent=1))
    return images
