"""Which kind of media a row holds: the manifest's hint, else the extension, else the bytes."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from media import jpeg_bytes, noise_image
from videos import write_audio_only, write_video

from pipeline.actors.media_type import media_type_from_hint, media_type_from_name, sniff_media_type


@pytest.mark.parametrize(
    ("hint", "kind"),
    [
        ("image", "image"),
        (" Video ", "video"),
        ("text", "text"),
        ("image/jpeg", "image"),
        ("video/mp4", "video"),
        ("audio/mpeg", None),
        ("", None),
        (None, None),
        ("picture", None),
    ],
)
def test_hint(hint, kind):
    assert media_type_from_hint(hint) == kind


@pytest.mark.parametrize(
    ("uri", "kind"),
    [
        ("a/b/photo.JPG", "image"),
        ("s3://bucket/x/page.tiff", "image"),
        ("s3://bucket/clip.webm?versionId=3", "video"),
        ("file:///data/film.MKV", "video"),
        ("/data/clip.ts", "video"),
        ("song.m4a", "audio"),
        ("archive.tar.gz", None),
        ("no_extension", None),
    ],
)
def test_extension(uri, kind):
    assert media_type_from_name(uri) == kind


def encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    noise_image(32, 32).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "TIFF", "WEBP"])
def test_sniff_images(fmt: str):
    assert sniff_media_type(encoded(fmt)[:64]) == "image"
    assert sniff_media_type(jpeg_bytes(16, 16)[:64]) == "image"


@pytest.mark.parametrize("name", ["a.mp4", "a.mkv", "a.webm", "a.avi", "a.mov"])
def test_sniff_videos_written_by_pyav(tmp_path: Path, name: str):
    assert sniff_media_type(write_video(tmp_path / name, 3, 10).read_bytes()[:64]) == "video"


def test_sniff_audio_and_unknown(tmp_path: Path):
    assert sniff_media_type(write_audio_only(tmp_path / "a.mp4").read_bytes()[:64]) in ("video", "audio")
    assert sniff_media_type(b"ID3\x03\x00" + b"\x00" * 40) == "audio"
    assert sniff_media_type(b"RIFF\x00\x00\x00\x00WAVEfmt ") == "audio"
    assert sniff_media_type(b"hello world, this is text") is None
    assert sniff_media_type(b"") is None
