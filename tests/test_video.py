"""Video rows in the CPU stage: decord decoding, the reference's frame indices, the very frames
those indices name, windows, and broken files as row errors (videos written by PyAV)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from test_frames import reference_get_index
from videos import frame_number, write_audio_only, write_video

from pipeline.actors.preprocess import Preprocessor
from pipeline.actors.video import decode_video
from pipeline.errors import RowError
from pipeline.prompts.tasks import resolve_spec

NTSC = Fraction(30000, 1001)
FILM = Fraction(24000, 1001)


def reference_indices(frames: int, fps: float | Fraction, num_segments: int, bound=None) -> list[int]:
    """What the reference `load_video` samples: decord's frame count and average rate into `get_index`."""
    return reference_get_index(bound, float(fps), frames - 1, 0, num_segments)


@pytest.mark.parametrize(
    ("name", "frames", "fps"),
    [
        ("a.mp4", 1, 25),
        ("b.mp4", 9, 1),
        ("c.mkv", 37, FILM),
        ("d.webm", 50, 12.5),
        ("e.avi", 73, 25),
        ("f.mov", 121, NTSC),
        ("g.mp4", 257, 60),
    ],
)
def test_lengths_and_rates_give_the_reference_frames(tmp_path: Path, name: str, frames: int, fps):
    path = write_video(tmp_path / name, frames, fps)
    for num_frames in (1, 4, 8, 13):
        video = decode_video(str(path), num_frames)
        assert video.frame_count == frames
        assert video.fps == pytest.approx(float(fps))
        assert video.indices == reference_indices(frames, video.fps, num_frames)
        assert [frame_number(frame) for frame in video.frames] == video.indices  # the very frames
        assert video.frames.shape == (num_frames, 72, 128, 3) and video.frames.dtype == np.uint8


def test_bytes_and_paths_decode_alike(tmp_path: Path):
    path = write_video(tmp_path / "clip.mkv", 40, 20)
    from_path = decode_video(str(path), 8, (0.5, 1.5))
    from_bytes = decode_video(path.read_bytes(), 8, (0.5, 1.5))
    assert from_path.indices == from_bytes.indices == reference_indices(40, 20, 8, (0.5, 1.5))
    assert np.array_equal(from_path.frames, from_bytes.frames)


@pytest.mark.parametrize(
    "bound", [(0.0, 1.0), (1.0, 2.5), (2.0, 100.0), (0.0, 0.0), (3.95, 4.0), (0.26, 0.74)], ids=str
)
def test_windows_inside_the_clip_follow_the_reference(tmp_path: Path, bound):
    path = write_video(tmp_path / "clip.mp4", 100, 25)  # 4 s
    video = decode_video(str(path), 8, bound)
    assert video.indices == reference_indices(100, 25, 8, bound)
    assert [frame_number(frame) for frame in video.frames] == video.indices


@pytest.mark.parametrize("bound", [(5.0, 6.0), (4.2, 10.0), (100.0, 200.0)], ids=str)
def test_windows_past_the_end_are_frame_range_errors(tmp_path: Path, bound):
    path = write_video(tmp_path / "clip.mp4", 100, 25)  # 4 s
    with pytest.raises(RowError) as error:
        decode_video(str(path), 8, bound)
    assert error.value.kind == "frame_range"
    assert "past the end of the clip" in error.value.message and "100 frames" in error.value.message


def test_broken_videos_are_bad_video_errors(tmp_path: Path):
    good = write_video(tmp_path / "good.mp4", 60, 25).read_bytes()
    cases = {
        "zero_frames": write_video(tmp_path / "zero.mp4", 0, 25),
        "zero_frames_mkv": write_video(tmp_path / "zero.mkv", 0, 25),
        "audio_only": write_audio_only(tmp_path / "song.mp4"),
        "truncated_mp4": tmp_path / "half.mp4",
        "not_a_video": tmp_path / "text.mp4",
        "bit_flips": tmp_path / "flipped.mp4",
    }
    cases["truncated_mp4"].write_bytes(good[: len(good) // 2])
    cases["not_a_video"].write_bytes(b"this is not a video " * 50)
    flipped = bytearray(good)
    for position in np.random.default_rng(0).integers(200, len(good), 200):
        flipped[position] ^= 0xFF
    cases["bit_flips"].write_bytes(bytes(flipped))
    for name, path in cases.items():
        with pytest.raises(RowError) as error:
            decode_video(str(path), 8)
        assert error.value.kind == "bad_video", name
        assert "Stack trace" not in error.value.message and len(error.value.message) < 400
    with pytest.raises(RowError, match="no video stream decord can decode"):
        decode_video(str(cases["audio_only"]), 8)


def test_av1_is_a_clear_row_error(tmp_path: Path):
    """decord's wheels cannot decode AV1: the row says so instead of failing obscurely."""
    import av

    if "libsvtav1" not in av.codecs_available:
        pytest.skip("this PyAV build cannot write AV1")
    path = write_video(tmp_path / "clip.mp4", 10, 25, codec="libsvtav1")
    with pytest.raises(RowError, match="AV1") as error:
        decode_video(str(path), 8)
    assert error.value.kind == "bad_video"


def test_truncated_matroska_gives_the_frames_that_survive(tmp_path: Path):
    data = write_video(tmp_path / "clip.mkv", 100, 25).read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[: len(data) // 2])
    video = decode_video(str(tmp_path / "cut.mkv"), 8)
    assert 0 < video.frame_count < 100
    assert video.indices == reference_indices(video.frame_count, 25, 8)
    assert [frame_number(frame) for frame in video.frames] == video.indices


@pytest.fixture
def video_spec(make_spec):
    def build(**preprocess):
        return resolve_spec(make_spec("unused.parquet", preprocess={"workers": 1, **preprocess}))

    return build


def test_video_row_in_the_cpu_stage(tmp_path: Path, video_spec):
    path = write_video(tmp_path / "clip.mp4", 90, 30)
    prepared = Preprocessor(video_spec(num_frames=6)).prepare({"id": "v", "uri": str(path)})
    assert prepared.error is None and prepared.media_type == "video"
    assert prepared.frame_indices == reference_indices(90, 30, 6)
    assert prepared.tiles_per_image == [1] * 6
    assert prepared.query == "".join(f"Frame{i}: <image>\n" for i in range(1, 7)) + "Please describe the video shortly."
    # Each 448 px tile is its frame, resized: the bars still name the frame.
    assert [frame_number(tile) for tiles in prepared.tiles for tile in tiles] == prepared.frame_indices


def test_tiles_per_frame_adds_a_thumbnail_like_the_reference(tmp_path: Path, video_spec):
    path = write_video(tmp_path / "wide.mp4", 20, 10, width=256, height=96)
    prepared = Preprocessor(video_spec(num_frames=3, tiles_per_frame=4)).prepare({"id": "v", "uri": str(path)})
    assert prepared.error is None
    assert prepared.tiles_per_image == [4] * 3  # a 3x1 grid plus the thumbnail, per frame


@pytest.mark.parametrize(
    ("row", "kind"),
    [
        ({"start_s": 10.0, "end_s": 12.0}, "frame_range"),
        ({"start_s": 5.0}, "frame_range"),
        ({"start_s": -1.0, "end_s": 1.0}, "frame_range"),
        ({"start_s": 2.0, "end_s": 1.0}, "frame_range"),
        ({"start_s": "soon"}, "bad_row"),
    ],
    ids=str,
)
def test_bad_windows_are_row_errors(tmp_path: Path, video_spec, row, kind):
    path = write_video(tmp_path / "clip.mp4", 75, 25)  # 3 s
    prepared = Preprocessor(video_spec()).prepare({"id": "v", "uri": str(path), **row})
    assert prepared.error_kind == kind and prepared.error.startswith(kind + ": ")
    assert prepared.tiles == [] and prepared.frame_indices is None


def test_window_columns_null_or_nan_mean_the_whole_clip(tmp_path: Path, video_spec):
    path = write_video(tmp_path / "clip.mp4", 75, 25)
    for row in ({"start_s": None, "end_s": None}, {"start_s": float("nan"), "end_s": float("nan")}):
        prepared = Preprocessor(video_spec()).prepare({"id": "v", "uri": str(path), **row})
        assert prepared.frame_indices == reference_indices(75, 25, 8)
    only_end = Preprocessor(video_spec()).prepare({"id": "v", "uri": str(path), "end_s": 1.0})
    assert only_end.frame_indices == reference_indices(75, 25, 8, (0.0, 1.0))


def test_media_type_from_hint_extension_or_bytes(tmp_path: Path, video_spec):
    spec = video_spec(num_frames=2)
    clip = write_video(tmp_path / "clip.mp4", 10, 10)
    no_extension = tmp_path / "blob"
    no_extension.write_bytes(clip.read_bytes())
    wrong_extension = tmp_path / "clip.dat"
    wrong_extension.write_bytes(clip.read_bytes())
    preprocessor = Preprocessor(spec)
    for row in (
        {"id": "a", "uri": str(clip)},
        {"id": "b", "uri": str(no_extension)},  # sniffed: ftyp box
        {"id": "c", "uri": str(wrong_extension), "media_type_hint": "video"},
        {"id": "d", "uri": None, "inline_bytes": clip.read_bytes()},
    ):
        prepared = preprocessor.prepare(row)
        assert prepared.error is None, (row["id"], prepared.error)
        assert prepared.media_type == "video" and prepared.frame_indices == reference_indices(10, 10, 2)
    audio = preprocessor.prepare({"id": "e", "uri": str(write_audio_only(tmp_path / "song.m4a"))})
    assert audio.error_kind == "unknown_media"
    hinted_image = preprocessor.prepare({"id": "f", "uri": str(clip), "media_type_hint": "image"})
    assert hinted_image.error_kind == "decode_error"  # the hint wins, and the bytes are no image
