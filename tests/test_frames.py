"""Frame sampling equals the reference `get_index` on every golden row; bounds past the end
of a clip are refused with `FrameRangeError` instead of producing frames that do not exist."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import GOLDEN

from pipeline.actors.frames import FrameRangeError, sample_frame_indices

GOLDEN_ROWS = [json.loads(line) for line in (GOLDEN / "frames_golden.jsonl").read_text().splitlines() if line.strip()]


def reference_get_index(bound, fps, max_frame, first_idx=0, num_segments=32) -> list[int]:
    """The reference sampler as published with the InternVL model cards (numpy rounding and all)."""
    if bound:
        start, end = bound[0], bound[1]
    else:
        start, end = -100000, 100000
    start_idx = max(first_idx, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    seg_size = float(end_idx - start_idx) / num_segments
    return [int(start_idx + (seg_size / 2) + np.round(seg_size * idx)) for idx in range(num_segments)]


def test_golden_file_covers_the_cases_we_rely_on():
    assert len(GOLDEN_ROWS) > 800
    assert any(r["bound"] is None for r in GOLDEN_ROWS) and any(r["bound"] for r in GOLDEN_ROWS)
    assert {r["fps"] for r in GOLDEN_ROWS} >= {23.976, 29.97, 60.0}


def golden_id(row: dict) -> str:
    return f"fps{row['fps']}-max{row['max_frame']}-n{row['num_segments']}-{row['bound']}"


@pytest.mark.parametrize("row", GOLDEN_ROWS, ids=golden_id)
def test_every_golden_row(row: dict):
    bound = tuple(row["bound"]) if row["bound"] is not None else None
    indices = sample_frame_indices(row["fps"], row["max_frame"], row["num_segments"], bound, row["first_idx"])
    assert indices == row["indices"]
    assert all(isinstance(i, int) for i in indices)


@pytest.mark.parametrize("fps", [1.0, 12.5, 23.976, 25.0, 29.97, 30000 / 1001, 50.0, 59.94])
@pytest.mark.parametrize("frames", [1, 2, 3, 5, 17, 61, 250, 1001])
@pytest.mark.parametrize("num_segments", [1, 3, 8, 13, 32])
def test_unseen_lengths_match_the_reference(fps: float, frames: int, num_segments: int):
    duration = frames / fps
    for bound in (None, (0.0, duration), (0.3, 0.9 * duration), (duration / 2, duration * 5), (0.0, 0.0)):
        expected = reference_get_index(bound, fps, frames - 1, 0, num_segments)
        if bound is not None and bound[1] < bound[0]:  # a mistake in the manifest: refused, not guessed
            with pytest.raises(FrameRangeError, match="ends before it starts"):
                sample_frame_indices(fps, frames - 1, num_segments, bound)
        elif min(expected) >= 0 and max(expected) <= frames - 1:
            assert sample_frame_indices(fps, frames - 1, num_segments, bound) == expected
        else:  # the reference would read frames that do not exist
            with pytest.raises(FrameRangeError):
                sample_frame_indices(fps, frames - 1, num_segments, bound)


@pytest.mark.parametrize(
    ("bound", "frames", "fps"),
    [((10.0, 20.0), 50, 25.0), ((3.0, 4.0), 30, 30.0), ((100.0, 100000.0), 240, 24.0), ((3.0, 4.0), 2, 1.0)],
)
def test_window_past_the_end_is_refused(bound, frames, fps):
    # The reference would return indices past the last frame here (and crash when reading them).
    assert max(reference_get_index(bound, fps, frames - 1, 0, 8)) > frames - 1
    with pytest.raises(FrameRangeError, match="past the end of the clip"):
        sample_frame_indices(fps, frames - 1, 8, bound)


def test_window_overlapping_the_end_is_clamped_like_the_reference():
    # [1 s, 100 s] of a 4 s clip: the reference clamps the end to the last frame.
    assert sample_frame_indices(25.0, 99, 4, (1.0, 100.0)) == reference_get_index((1.0, 100.0), 25.0, 99, 0, 4)


@pytest.mark.parametrize(
    ("fps", "max_frame", "bound", "message"),
    [
        (25.0, -1, None, "no frames"),
        (0.0, 10, None, "frame rate"),
        (float("nan"), 10, None, "frame rate"),
        (25.0, 10, (2.0, 1.0), "ends before it starts"),
        (25.0, 10, (float("inf"), 1.0), "not finite"),
    ],
)
def test_unusable_inputs_are_refused(fps, max_frame, bound, message):
    with pytest.raises(FrameRangeError, match=message):
        sample_frame_indices(fps, max_frame, 8, bound)


def test_num_segments_must_be_positive():
    with pytest.raises(ValueError, match="num_segments"):
        sample_frame_indices(25.0, 10, 0)
