"""Video frame-index sampling, exactly as the InternVL reference `get_index` samples.

Pure functions only; decoding lives in `pipeline.actors.video`. The reference splits the
[start, end] range (in frames) into `num_segments` equal segments and takes the middle
frame of each. It uses Python's and numpy's round-half-to-even; so do we.

Windows (`bound`, in seconds) follow the reference too: an end past the clip is clamped
to the last frame. Given a window that starts past the end, the reference returns
frames that do not exist and crashes later; we compute the same indices and raise
`FrameRangeError` when any of them falls outside the clip, which the CPU stage turns into
a `frame_range` row error. (A start within about half a frame of the end still yields
the last frames through the reference's rounding; we keep those, as the golden vectors
do.) A window that ends before it starts is refused outright: the reference's answer
to it is an accident of its arithmetic.
"""

from __future__ import annotations

import math

NO_BOUND = (-100000.0, 100000.0)


class FrameRangeError(ValueError):
    """The requested time range selects no frame of the clip."""


def sample_frame_indices(
    fps: float,
    max_frame: int,
    num_segments: int,
    bound: tuple[float, float] | None = None,
    first_idx: int = 0,
) -> list[int]:
    """Frame indices the reference sampler picks.

    `max_frame` is the index of the last frame (frame count - 1); `bound` is an optional
    (start_s, end_s) window in seconds.
    """
    if num_segments < 1:
        raise ValueError(f"num_segments must be >= 1, got {num_segments}")
    if max_frame < 0:
        raise FrameRangeError("the video has no frames")
    if not math.isfinite(fps) or fps <= 0:
        raise FrameRangeError(f"the video reports an unusable frame rate ({fps})")
    start, end = bound if bound is not None else NO_BOUND
    if bound is not None and not (math.isfinite(start) and math.isfinite(end)):
        raise FrameRangeError(f"the time window [{start}, {end}] s is not finite")
    if bound is not None and end < start:
        raise FrameRangeError(f"the time window ends before it starts: [{start}, {end}] s")
    start_idx = max(first_idx, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    seg_size = float(end_idx - start_idx) / num_segments
    # round_half_even on a float, the way np.round does it for the reference.
    indices = [int(start_idx + (seg_size / 2) + round(seg_size * idx)) for idx in range(num_segments)]
    if min(indices) < 0 or max(indices) > max_frame:
        duration = (max_frame + 1) / fps
        raise FrameRangeError(
            f"the time window [{start:g}, {end:g}] s lies past the end of the clip "
            f"({max_frame + 1} frames, {duration:.3f} s at {fps:g} fps)"
        )
    return indices
