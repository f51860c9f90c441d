"""Which kind of media a row holds: the manifest's column, else the extension, else the bytes.

Pure functions; the CPU stage calls `media_type_from_name` before fetching (to choose how
to read) and `sniff_media_type` on the bytes when the name says nothing.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

IMAGE, VIDEO, TEXT = "image", "video", "text"

IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".png",
        ".gif",
        ".bmp",
        ".webp",
        ".tif",
        ".tiff",
        ".ppm",
        ".pgm",
        ".pbm",
        ".ico",
        ".jp2",
        ".j2k",
        ".tga",
        ".dib",
        ".pcx",
        ".sgi",
        ".icns",
        ".avif",
        ".heic",
    }
)
VIDEO_EXTENSIONS = frozenset(
    {
        ".mp4",
        ".m4v",
        ".mov",
        ".mkv",
        ".webm",
        ".avi",
        ".mpg",
        ".mpeg",
        ".ts",
        ".mts",
        ".m2ts",
        ".flv",
        ".wmv",
        ".3gp",
        ".ogv",
    }
)
AUDIO_EXTENSIONS = frozenset({".mp3", ".wav", ".m4a", ".aac", ".flac", ".ogg", ".opus", ".wma"})


def media_type_from_hint(hint: str | None) -> str | None:
    """Normalise a manifest media-type value ('image', 'video', 'image/jpeg', ...); None if unknown."""
    if not hint:
        return None
    value = hint.strip().lower()
    for kind in (IMAGE, VIDEO, TEXT):
        if value == kind or value.startswith(kind + "/"):
            return kind
    return None


def media_type_from_name(uri: str) -> str | None:
    """'image' or 'video' from the file extension; 'audio' for audio files; None if it says nothing."""
    path = urlparse(uri).path if "://" in uri else uri
    extension = os.path.splitext(path)[1].lower()
    if extension in IMAGE_EXTENSIONS:
        return IMAGE
    if extension in VIDEO_EXTENSIONS:
        return VIDEO
    if extension in AUDIO_EXTENSIONS:
        return "audio"
    return None


def sniff_media_type(head: bytes) -> str | None:
    """'image', 'video' or 'audio' from the first bytes of a file; None if unrecognised."""
    if head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")):
        return IMAGE
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return IMAGE
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return VIDEO
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1"):
            return IMAGE
        if brand in (b"M4A ", b"M4B ", b"M4P "):
            return "audio"
        return VIDEO
    if head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip"):  # QuickTime files without an ftyp box
        return VIDEO
    if head.startswith((b"\x1a\x45\xdf\xa3", b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3", b"FLV")):
        return VIDEO  # Matroska/WebM, MPEG program stream, MPEG-1/2 elementary video, Flash video
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):  # ASF (.wmv); may also be .wma audio
        return VIDEO
    if head.startswith(b"OggS") and b"theora" in head:  # Ogg with a Theora video stream first
        return VIDEO
    if head.startswith((b"ID3", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2", b"fLaC", b"OggS")):
        return "audio"
    if head.startswith((b"\x00\x00\x00\x0cjP  ", b"\xff\x4f\xff\x51")):
        return IMAGE
    return None
