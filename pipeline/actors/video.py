"""Video decoding with decord: open, sample the reference's frame indices, return RGB frames.

The reference (`load_video` of the InternVL model cards) opens the clip with decord,
takes `len(reader) - 1` as the last frame and `get_avg_fps()` as the rate, samples with
`get_index`, and converts each frame to an RGB Pillow image; we do the same, so the
frames and their indices are the reference's.

decord is imported lazily (it is heavy and only CPU actors need it). It raises ordinary
exceptions on bad files (no crash was seen in ~200 corrupt inputs), of several unrelated
types (RuntimeError, its own DECORDError, IndexError), so we catch broadly around the
third-party calls and keep the cause in the row error. Truncated Matroska/WebM files open
and report the frames that survive; a truncated MP4 (its index is at the end) does not open.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

from pipeline.actors.frames import FrameRangeError, sample_frame_indices
from pipeline.errors import RowError

_QUIETED = False


@dataclass
class DecodedVideo:
    """The sampled frames of one clip."""

    frames: np.ndarray  # (num_frames, height, width, 3) uint8
    indices: list[int]
    fps: float
    frame_count: int


def _decord():
    global _QUIETED
    import decord

    if not _QUIETED:
        decord.logging.set_level(decord.logging.QUIET)
        _QUIETED = True
    return decord


def decode_video(source: str | bytes, num_frames: int, bound: tuple[float, float] | None = None) -> DecodedVideo:
    """Open a clip (a local path or its bytes) and decode the frames the reference would sample."""
    decord = _decord()
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else str(source)
        reader = decord.VideoReader(handle, ctx=decord.cpu(0), num_threads=1)
        frame_count = len(reader)
        fps = float(reader.get_avg_fps())
    except Exception as error:  # corrupt, truncated, audio-only, not a video: decord's own errors
        raise RowError("bad_video", _open_failure(error)) from None
    if frame_count < 1:
        raise RowError("bad_video", "the video has no frames")
    if not math.isfinite(fps) or fps <= 0:
        raise RowError("bad_video", f"the video reports an unusable frame rate ({fps}); its timing cannot be sampled")
    try:
        indices = sample_frame_indices(fps, frame_count - 1, num_frames, bound)
    except FrameRangeError as error:
        raise RowError("frame_range", str(error)) from None
    try:
        frames = reader.get_batch(indices).asnumpy()
    except Exception as error:  # damaged packets inside an otherwise readable clip
        raise RowError("bad_video", f"cannot decode frames {indices} ({_short(error)})") from None
    return DecodedVideo(frames=frames, indices=indices, fps=fps, frame_count=frame_count)


def _open_failure(error: BaseException) -> str:
    """Why decord could not open a clip, in words a user can act on."""
    if "cannot find video stream" in str(error):
        return (
            "no video stream decord can decode: the file is audio only, has no frames, or uses a codec "
            "decord's FFmpeg lacks (e.g. AV1)"
        )
    return f"cannot open the video ({_short(error)})"


def _short(error: BaseException) -> str:
    """decord's messages carry C++ file positions and stack dumps; keep the meaningful line."""
    text = str(error).strip().splitlines()
    useful = [line for line in text if line and not line.lstrip().startswith(("Stack trace", "[bt]", "File "))]
    message = (useful[-1] if useful else type(error).__name__)[:300]
    return f"{type(error).__name__}: {message}"
