"""The bad-input corpus: generators for every kind of odd or broken input the pipeline must
survive, each with its documented outcome.

Row cases become rows of one manifest (the row id is the case name, except where the id
itself is the odd input); their outcome is `ANSWER` (the model answers) or the row's
`error_kind`. Job cases are whole manifests or specs that must fail before any work
starts, with a message that names the problem. The README's "Reliability" table lists
the same cases (a test keeps the two in step).

Everything is written by code into a temporary folder: real JPEG/PNG/TIFF/GIF/WebP files
in every mode, real MP4 clips (PyAV), truncated and corrupt copies, special files.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ANSWER = "answer"
JOB_ERROR = "job_error"

# Settings the corpus job runs with (small, so that the whole corpus is one quick job).
CORPUS_MAX_FILE_BYTES = 3_000_000
CORPUS_MAX_IMAGE_PIXELS = 50_000_000

MANIFEST_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("uri", pa.string()),
        ("media_type", pa.string()),
        ("prompt", pa.string()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
    ]
)


# --- media writers ---------------------------------------------------------------------


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    """Random RGB pixels."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def save(image: Image.Image, path: Path, **options: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def jpeg_bytes(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    noise(width, height, seed).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def png_bytes(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    noise(width, height, seed).save(buffer, format="PNG")
    return buffer.getvalue()


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_video(path: Path, frames: int = 12, fps: int = 12, size: tuple[int, int] = (64, 48)) -> Path:
    """A real MPEG-4 clip of noise frames (one second at 12 fps by default)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(np.asarray(noise(*size, seed=100 + index)), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_audio_only_mp4(path: Path) -> Path:
    """An .mp4 holding one second of sound and no video stream."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        samples = (np.sin(np.arange(16000) / 10.0) * 8000).astype(np.int16).reshape(1, -1)
        for start in range(0, 16000, 1024):
            frame = av.AudioFrame.from_ndarray(samples[:, start : start + 1024], format="s16", layout="mono")
            frame.sample_rate = 16000
            frame.pts = start
            frame.time_base = Fraction(1, 16000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header declaring a huge size with a tiny body: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def exif_rotated_jpeg(path: Path) -> Path:
    """A landscape JPEG whose EXIF orientation (6) says 'rotate 90 degrees to view'."""
    image = noise(96, 48, seed=21)
    exif = Image.Exif()
    exif[0x0112] = 6
    return save(image, path, format="JPEG", exif=exif.tobytes())


def multi_frame_tiff(path: Path) -> Path:
    pages = [noise(80, 60, seed=30 + i) for i in range(3)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pages[0].save(path, format="TIFF", save_all=True, append_images=pages[1:])
    return path


def animated(path: Path, fmt: str) -> Path:
    frames = [noise(64, 48, seed=40 + i) for i in range(4)]
    if fmt == "GIF":
        frames = [f.convert("P") for f in frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def sixteen_bit_png(path: Path) -> Path:
    values = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 37 % 65536).astype(np.uint16)
    return save(Image.fromarray(values), path)


def float_tiff(path: Path) -> Path:
    values = np.linspace(0.0, 1.0, 64 * 48, dtype=np.float32).reshape(48, 64)
    return save(Image.fromarray(values, mode="F"), path, format="TIFF")


def palette_transparent_png(path: Path) -> Path:
    image = noise(64, 48, seed=5).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return save(image, path, transparency=0)


# --- row cases ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RowCase:
    """One manifest row: how to make it, what it is, and what the pipeline must do with it."""

    name: str
    what: str
    outcome: str  # ANSWER or an error_kind
    build: Callable[[Path], dict[str, Any]]  # writes its files under a folder; returns manifest fields


def _uri(path: Path) -> dict[str, Any]:
    return {"uri": str(path)}


def _fifo(folder: Path) -> dict[str, Any]:
    path = folder / "pipe.jpg"
    os.mkfifo(path)
    return _uri(path)


def _broken_symlink(folder: Path) -> dict[str, Any]:
    link = folder / "dangling.jpg"
    link.symlink_to(folder / "nowhere.jpg")
    return _uri(link)


def _symlink_loop(folder: Path) -> dict[str, Any]:
    (folder / "loop_a.jpg").symlink_to(folder / "loop_b.jpg")
    (folder / "loop_b.jpg").symlink_to(folder / "loop_a.jpg")
    return _uri(folder / "loop_a.jpg")


def _relative(folder: Path) -> dict[str, Any]:
    save(noise(50, 40, seed=60), folder / "relative" / "pic.png")
    return {"uri": "media/relative/pic.png"}  # relative to the manifest's folder (the media folder's parent)


ROW_CASES: list[RowCase] = [
    # Images that must be answered.
    RowCase("jpeg_ok", "an ordinary JPEG", ANSWER, lambda d: _uri(save(noise(320, 240, 1), d / "ok.jpg"))),
    RowCase(
        "png_named_jpg",
        "a PNG file with a .jpg extension (wrong extension)",
        ANSWER,
        lambda d: _uri(write_bytes(d / "really_png.jpg", png_bytes(seed=2))),
    ),
    RowCase(
        "jpeg_no_extension",
        "a JPEG file without an extension (type sniffed from its bytes)",
        ANSWER,
        lambda d: _uri(write_bytes(d / "no_extension", jpeg_bytes(seed=3))),
    ),
    RowCase(
        "jpeg_named_txt",
        "a JPEG file named .txt (type sniffed from its bytes)",
        ANSWER,
        lambda d: _uri(write_bytes(d / "photo.txt", jpeg_bytes(seed=4))),
    ),
    RowCase(
        "wide_20000x10",
        "extreme aspect ratio, 20000x10 pixels",
        ANSWER,
        lambda d: _uri(save(noise(20000, 10, 5), d / "wide.png")),
    ),
    RowCase(
        "tall_10x20000",
        "extreme aspect ratio, 10x20000 pixels",
        ANSWER,
        lambda d: _uri(save(noise(10, 20000, 6), d / "tall.png")),
    ),
    RowCase("one_pixel", "a 1x1 image", ANSWER, lambda d: _uri(save(noise(1, 1, 7), d / "one.png"))),
    RowCase(
        "multi_frame_tiff", "a 3-page TIFF (first page used)", ANSWER, lambda d: _uri(multi_frame_tiff(d / "pages.tif"))
    ),
    RowCase(
        "animated_gif", "an animated GIF (first frame used)", ANSWER, lambda d: _uri(animated(d / "anim.gif", "GIF"))
    ),
    RowCase(
        "animated_webp",
        "an animated WebP (first frame used)",
        ANSWER,
        lambda d: _uri(animated(d / "anim.webp", "WEBP")),
    ),
    RowCase(
        "exif_rotated",
        "a JPEG with EXIF orientation 6 (rotated before tiling)",
        ANSWER,
        lambda d: _uri(exif_rotated_jpeg(d / "rotated.jpg")),
    ),
    RowCase(
        "grayscale",
        "8-bit greyscale (mode L)",
        ANSWER,
        lambda d: _uri(save(noise(64, 48, 8).convert("L"), d / "grey.png")),
    ),
    RowCase(
        "grayscale_alpha",
        "greyscale with alpha (mode LA)",
        ANSWER,
        lambda d: _uri(save(noise(64, 48, 9).convert("LA"), d / "grey_alpha.png")),
    ),
    RowCase(
        "cmyk_jpeg",
        "a CMYK JPEG",
        ANSWER,
        lambda d: _uri(save(noise(64, 48, 10).convert("CMYK"), d / "cmyk.jpg", format="JPEG")),
    ),
    RowCase("png_16bit", "a 16-bit greyscale PNG", ANSWER, lambda d: _uri(sixteen_bit_png(d / "sixteen.png"))),
    RowCase("float_tiff", "a 32-bit float TIFF (mode F)", ANSWER, lambda d: _uri(float_tiff(d / "float.tif"))),
    RowCase(
        "rgba_png",
        "RGB with an alpha channel",
        ANSWER,
        lambda d: _uri(save(noise(64, 48, 11).convert("RGBA"), d / "rgba.png")),
    ),
    RowCase(
        "palette_transparency",
        "a palette PNG with a transparent colour",
        ANSWER,
        lambda d: _uri(palette_transparent_png(d / "palette.png")),
    ),
    RowCase(
        "bilevel",
        "a 1-bit black-and-white PNG (mode 1)",
        ANSWER,
        lambda d: _uri(save(noise(64, 48, 12).convert("1"), d / "bilevel.png")),
    ),
    RowCase(
        "bmp", "a Windows bitmap", ANSWER, lambda d: _uri(save(noise(64, 48, 13), d / "picture.bmp", format="BMP"))
    ),
    RowCase(
        "unicode_filename",
        "a file name with spaces, accents and CJK characters",
        ANSWER,
        lambda d: _uri(save(noise(64, 48, 14), d / "föto 画像 #1.png")),
    ),
    RowCase(
        "file_scheme",
        "a file:// uri",
        ANSWER,
        lambda d: {"uri": "file://" + str(save(noise(64, 48, 15), d / "scheme.png"))},
    ),
    RowCase("relative_uri", "a path relative to the manifest's folder", ANSWER, _relative),
    RowCase(
        "unicode_id",
        "an id with emoji, combining marks, right-to-left and NUL characters",
        ANSWER,
        lambda d: {
            "id": "unicode-🚀-ñ-e\u0301-\u202eabc-\x00-end",
            **_uri(save(noise(64, 48, 16), d / "uid.png")),
        },
    ),
    RowCase(
        "long_id",
        "a 5000-character id",
        ANSWER,
        lambda d: {"id": "long-" + "x" * 4995, **_uri(save(noise(64, 48, 17), d / "lid.png"))},
    ),
    RowCase(
        "path_like_id",
        "an id that looks like a path ('../../etc/passwd')",
        ANSWER,
        lambda d: {"id": "../../etc/passwd", **_uri(save(noise(64, 48, 18), d / "pid.png"))},
    ),
    RowCase("video_ok", "an MPEG-4 clip", ANSWER, lambda d: _uri(write_video(d / "clip.mp4"))),
    RowCase(
        "video_window",
        "a clip with a start_s/end_s window inside it",
        ANSWER,
        lambda d: {**_uri(write_video(d / "window.mp4")), "start_s": 0.2, "end_s": 0.8},
    ),
    RowCase(
        "text_only",
        "no media, a per-row prompt and media_type 'text'",
        ANSWER,
        lambda d: {"uri": None, "media_type": "text", "prompt": "Say something about boats."},
    ),
    # Row errors.
    RowCase(
        "truncated_jpeg",
        "a JPEG cut at 40% of its bytes",
        "decode_error",
        lambda d: _uri(
            write_bytes(d / "truncated.jpg", jpeg_bytes(320, 240, 19)[: int(len(jpeg_bytes(320, 240, 19)) * 0.4)])
        ),
    ),
    RowCase(
        "truncated_png",
        "a PNG cut at 50% of its bytes",
        "decode_error",
        lambda d: _uri(write_bytes(d / "truncated.png", _cut(png_bytes(320, 240, 20), 0.5))),
    ),
    RowCase(
        "corrupt_jpeg",
        "a JPEG start-of-image marker followed by random bytes",
        "decode_error",
        lambda d: _uri(write_bytes(d / "corrupt.jpg", b"\xff\xd8\xff" + np.random.default_rng(1).bytes(4000))),
    ),
    RowCase("zero_bytes", "an empty (0-byte) file", "empty_file", lambda d: _uri(write_bytes(d / "zero.jpg", b""))),
    RowCase(
        "text_named_png",
        "a text file with a .png extension",
        "decode_error",
        lambda d: _uri(write_bytes(d / "text.png", b"this is not an image at all\n")),
    ),
    RowCase(
        "random_no_extension",
        "random bytes without an extension",
        "decode_error",
        lambda d: _uri(write_bytes(d / "blob", np.random.default_rng(2).bytes(2000))),
    ),
    RowCase(
        "pdf_file",
        "a PDF document",
        "decode_error",
        lambda d: _uri(write_bytes(d / "doc.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n")),
    ),
    RowCase(
        "svg_file",
        "an SVG drawing (vector images are not decoded)",
        "decode_error",
        lambda d: _uri(write_bytes(d / "drawing.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><rect/></svg>')),
    ),
    RowCase(
        "video_named_jpg",
        "an MP4 clip with a .jpg extension",
        "decode_error",
        lambda d: _uri(write_bytes(d / "clip_as.jpg", write_video(d / "src_for_jpg.mp4").read_bytes())),
    ),
    RowCase(
        "jpeg_named_mp4",
        "a JPEG with an .mp4 extension",
        "bad_video",
        lambda d: _uri(write_bytes(d / "photo_as.mp4", jpeg_bytes(seed=22))),
    ),
    RowCase("directory", "a directory instead of a file", "is_directory", lambda d: _uri(_mkdir(d / "a_folder.jpg"))),
    RowCase("missing_file", "a path that does not exist", "missing", lambda d: _uri(d / "does-not-exist.jpg")),
    RowCase("broken_symlink", "a symlink to nothing", "missing", _broken_symlink),
    RowCase("symlink_loop", "two symlinks pointing at each other", "missing", _symlink_loop),
    RowCase("fifo", "a named pipe (reading it would block forever)", "not_a_file", _fifo),
    RowCase(
        "fifo_video",
        "a named pipe with an .mp4 extension",
        "not_a_file",
        lambda d: (os.mkfifo(d / "pipe.mp4"), _uri(d / "pipe.mp4"))[1],
    ),
    RowCase("device_file", "a device (/dev/zero: endless bytes)", "not_a_file", lambda d: {"uri": "/dev/zero"}),
    RowCase("nul_in_uri", "a path with a NUL character in it", "bad_row", lambda d: {"uri": str(d / "a\x00b.jpg")}),
    RowCase(
        "http_uri", "an http:// uri (not supported)", "unsupported_uri", lambda d: {"uri": "http://example.com/a.jpg"}
    ),
    RowCase("gs_uri", "a gs:// uri (not supported)", "unsupported_uri", lambda d: {"uri": "gs://bucket/a.jpg"}),
    RowCase("empty_uri", "an empty uri string", "empty_uri", lambda d: {"uri": ""}),
    RowCase("null_uri", "a null uri", "empty_uri", lambda d: {"uri": None}),
    RowCase("blank_uri", "a uri of spaces", "empty_uri", lambda d: {"uri": "   "}),
    RowCase(
        "decompression_bomb",
        "a PNG header declaring 200000x200000 pixels",
        "image_too_large",
        lambda d: _uri(write_bytes(d / "bomb.png", png_header_only(200_000, 200_000))),
    ),
    RowCase(
        "too_many_bytes",
        f"a file larger than preprocess.max_file_bytes ({CORPUS_MAX_FILE_BYTES} in the corpus job)",
        "too_large",
        lambda d: _uri(write_bytes(d / "huge.jpg", b"\xff\xd8\xff" + b"\x00" * (CORPUS_MAX_FILE_BYTES + 10))),
    ),
    RowCase(
        "truncated_video",
        "an MP4 clip cut in half",
        "bad_video",
        lambda d: _uri(write_bytes(d / "cut.mp4", _half(write_video(d / "src_for_cut.mp4")))),
    ),
    RowCase(
        "corrupt_video",
        "random bytes with an .mp4 extension",
        "bad_video",
        lambda d: _uri(write_bytes(d / "noise.mp4", np.random.default_rng(3).bytes(5000))),
    ),
    RowCase(
        "audio_only_mp4",
        "an .mp4 with sound and no picture",
        "bad_video",
        lambda d: _uri(write_audio_only_mp4(d / "sound.mp4")),
    ),
    RowCase(
        "mp3_file",
        "an audio file (.mp3)",
        "unknown_media",
        lambda d: _uri(write_bytes(d / "song.mp3", b"ID3\x03\x00\x00\x00\x00\x00\x00" + b"\x00" * 100)),
    ),
    RowCase(
        "window_past_end",
        "a start_s/end_s window after the end of a 1 s clip",
        "frame_range",
        lambda d: {**_uri(write_video(d / "short.mp4")), "start_s": 100.0, "end_s": 200.0},
    ),
    RowCase(
        "negative_start",
        "a negative start_s",
        "frame_range",
        lambda d: {**_uri(write_video(d / "neg.mp4")), "start_s": -5.0, "end_s": 0.5},
    ),
    RowCase(
        "unknown_media_hint",
        "media_type 'pdf' in the manifest",
        "unknown_media",
        lambda d: {**_uri(save(noise(64, 48, 23), d / "hinted.png")), "media_type": "pdf"},
    ),
    RowCase(
        "video_hint_on_image",
        "media_type 'video' on a JPEG",
        "bad_video",
        lambda d: {**_uri(save(noise(64, 48, 24), d / "not_video.jpg")), "media_type": "video"},
    ),
    RowCase(
        "text_row_without_prompt",
        "no uri and no prompt",
        "empty_uri",
        lambda d: {"uri": None, "media_type": "text"},
    ),
    RowCase(
        "prompt_too_long",
        "a per-row prompt longer than the model's context",
        "context_too_long",
        lambda d: {**_uri(save(noise(64, 48, 25), d / "long_prompt.png")), "prompt": "describe it " * 40000},
    ),
]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _half(path: Path) -> bytes:
    return _cut(path.read_bytes(), 0.5)


def _cut(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


@dataclass
class RowCorpus:
    """A manifest holding every row case, and the outcome expected for each id."""

    manifest: Path
    expected: dict[str, str] = field(default_factory=dict)  # id -> ANSWER or error_kind
    case_of: dict[str, str] = field(default_factory=dict)  # id -> case name


def build_row_corpus(root: Path, cases: list[RowCase] | None = None) -> RowCorpus:
    """Write every row case's files under `root/media` and one manifest `root/manifest.parquet`."""
    media = root / "media"
    media.mkdir(parents=True, exist_ok=True)
    rows, corpus = [], RowCorpus(manifest=root / "manifest.parquet")
    for case in cases or ROW_CASES:
        fields = case.build(media)
        row = {"id": case.name, "uri": None, "media_type": None, "prompt": None, "start_s": None, "end_s": None}
        row.update(fields)
        rows.append(row)
        corpus.expected[row["id"]] = case.outcome
        corpus.case_of[row["id"]] = case.name
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), corpus.manifest)
    return corpus


# --- job cases ---------------------------------------------------------------------------


@dataclass(frozen=True)
class JobCase:
    """A manifest (or spec) that must fail before any work starts, naming what is wrong."""

    name: str
    what: str
    message: str  # a fragment the one-line error must contain
    build: Callable[[Path], tuple[str, dict[str, Any]]]  # -> (manifest uri, spec overrides as nested dicts)


def _manifest(path: Path, rows: list[dict[str, Any]], schema: pa.Schema | None = None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return str(path)


def _good_rows(n: int = 3) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "uri": f"/nowhere/{i}.jpg"} for i in range(n)]


def _truncated_manifest(folder: Path) -> tuple[str, dict[str, Any]]:
    path = Path(_manifest(folder / "full.parquet", _good_rows(50)))
    target = folder / "truncated.parquet"
    target.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    path.unlink()
    return str(target), {}


def _mixed_schemas(folder: Path) -> tuple[str, dict[str, Any]]:
    _manifest(folder / "parts" / "a.parquet", _good_rows())
    _manifest(folder / "parts" / "b.parquet", [{"id": "x", "uri": "/a.jpg", "prompt": "hi"}])
    return str(folder / "parts"), {}


def _empty_checkpoint(folder: Path) -> tuple[str, dict[str, Any]]:
    (folder / "empty_ckpt").mkdir()
    return _manifest(folder / "m.parquet", _good_rows()), {"model": {"name": str(folder / "empty_ckpt")}}


def _corrupt_checkpoint(folder: Path) -> tuple[str, dict[str, Any]]:
    ckpt = folder / "corrupt_ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"model_type": "internvl", "vision_config": ', encoding="utf-8")
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 100)
    return _manifest(folder / "m.parquet", _good_rows()), {"model": {"name": str(ckpt)}}


def _truncated_weights(folder: Path) -> tuple[str, dict[str, Any]]:
    """A checkpoint whose config and tokenizer are fine but whose weights file was cut short."""
    import json

    ckpt = folder / "cut_weights"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "internvl"}), encoding="utf-8")
    (ckpt / "tokenizer.json").write_text("{}", encoding="utf-8")
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4_000_000]}}).encode()
    (ckpt / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 1000)
    return _manifest(folder / "m.parquet", _good_rows()), {"model": {"name": str(ckpt)}}


JOB_CASES: list[JobCase] = [
    JobCase(
        "manifest_missing",
        "the manifest path does not exist",
        "does not exist",
        lambda d: (str(d / "nothing-here.parquet"), {}),
    ),
    JobCase(
        "manifest_not_parquet",
        "random bytes named .parquet",
        "not a readable Parquet file",
        lambda d: (str(write_bytes(d / "junk.parquet", np.random.default_rng(4).bytes(3000))), {}),
    ),
    JobCase("manifest_truncated", "a Parquet file cut in half", "not a readable Parquet file", _truncated_manifest),
    JobCase(
        "manifest_empty_folder",
        "a folder with no Parquet files",
        "holds no Parquet files and no images or videos",
        lambda d: (str(_mkdir(d / "empty")), {}),
    ),
    JobCase(
        "null_ids",
        "null ids",
        "null or empty id",
        lambda d: (_manifest(d / "m.parquet", [*_good_rows(), {"id": None, "uri": "/a.jpg"}]), {}),
    ),
    JobCase(
        "empty_ids",
        "empty-string ids",
        "null or empty id",
        lambda d: (_manifest(d / "m.parquet", [*_good_rows(), {"id": "", "uri": "/a.jpg"}]), {}),
    ),
    JobCase(
        "duplicate_ids",
        "the same id twice",
        "duplicated id",
        lambda d: (_manifest(d / "m.parquet", [*_good_rows(), {"id": "r1", "uri": "/b.jpg"}]), {}),
    ),
    JobCase(
        "no_uri_column",
        "no uri column",
        "no column 'uri'",
        lambda d: (_manifest(d / "m.parquet", [{"id": "a", "path": "/a.jpg"}]), {}),
    ),
    JobCase(
        "float_ids",
        "an id column of floats",
        "must hold string values",
        lambda d: (_manifest(d / "m.parquet", [{"id": 1.5, "uri": "/a.jpg"}]), {}),
    ),
    JobCase("mixed_schemas", "manifest files with different columns", "different columns", _mixed_schemas),
    JobCase(
        "spec_unknown_key",
        "a misspelt spec key (model.batch_sise)",
        "model.batch_sise: unknown key",
        lambda d: (_manifest(d / "m.parquet", _good_rows()), {"model": {"batch_sise": 4}}),
    ),
    JobCase(
        "spec_bad_value",
        "an out-of-range spec value (model.batch_size: 0)",
        "model.batch_size: Input should be greater than or equal to 1",
        lambda d: (_manifest(d / "m.parquet", _good_rows()), {"model": {"batch_size": 0}}),
    ),
    JobCase("model_dir_empty", "model.name is an empty folder", "no config.json", _empty_checkpoint),
    JobCase("model_config_corrupt", "model.name holds a corrupt config.json", "config.json", _corrupt_checkpoint),
    JobCase("model_weights_truncated", "model.name holds a cut-short weights file", "truncated", _truncated_weights),
]
