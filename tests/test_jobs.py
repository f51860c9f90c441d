"""The jobs in jobs/: each validates, and its quickstart-sized version (the command in its
header) runs with tiny-random on the bundled samples. Plus whole jobs over videos written
here (the reference frame indices, row errors for bad clips and windows) and a custom
template that names manifest columns."""

from __future__ import annotations

import shlex
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import REPO
from media import write_image, write_manifest
from test_frames import reference_get_index
from videos import write_audio_only, write_video

from pipeline.actors.tiling import choose_grid
from pipeline.cli import main
from pipeline.spec import load_spec

pytestmark = pytest.mark.slow

JOBS = sorted(path.name for path in (REPO / "jobs").glob("*.yaml"))


def try_it_overrides(job: str) -> list[str]:
    """The --set overrides of the 'Try it here' command in a job's header comment."""
    for line in (REPO / "jobs" / job).read_text(encoding="utf-8").splitlines():
        text = line.lstrip("# ").strip()
        if text.startswith("python -m pipeline run") and "tiny-random" in text:
            words = shlex.split(text)
            return [words[i + 1] for i, word in enumerate(words) if word == "--set"]
    return []


def test_the_four_jobs_exist_and_say_how_to_try_them():
    assert {"caption.yaml", "ocr.yaml", "moderation.yaml", "video_caption.yaml"} <= set(JOBS)
    for job in ("caption.yaml", "ocr.yaml", "moderation.yaml", "video_caption.yaml"):
        assert "model.name=tiny-random" in try_it_overrides(job), job


@pytest.mark.parametrize("job", JOBS)
def test_every_job_validates(job: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(main, ["validate", f"jobs/{job}"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"ok: jobs/{job}:")


def run_job(job: str, out: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    from pipeline.runner import run

    monkeypatch.chdir(REPO)
    spec = load_spec(REPO / "jobs" / job, [*try_it_overrides(job), f"output.path={out}"])
    summary = run(spec, echo=lambda line: None)
    rows = pq.read_table(out).to_pylist()
    manifest = pq.read_table(REPO / spec.input.manifest)
    assert sorted(row["id"] for row in rows) == sorted(manifest.column("id").to_pylist())
    assert summary["rows_with_errors"] == sum(1 for row in rows if row["error"])
    return rows


def test_caption_job(tmp_path: Path, ray_session, monkeypatch: pytest.MonkeyPatch):
    from PIL import Image

    for row in run_job("caption.yaml", tmp_path / "out", monkeypatch):
        assert row["error"] is None and row["text"] and row["task"] == "caption", row
        with Image.open(row["uri"]) as image:
            assert row["num_tiles"] == choose_grid(image.width, image.height, 1, 12).num_tiles


def test_ocr_job(tmp_path: Path, ray_session, monkeypatch: pytest.MonkeyPatch):
    rows = {row["id"]: row for row in run_job("ocr.yaml", tmp_path / "out", monkeypatch)}
    for row in rows.values():
        assert row["error"] is None and row["text"] and row["task"] == "ocr", row
    assert rows["report_page"]["num_tiles"] == choose_grid(620, 877, 1, 24).num_tiles
    two_pages = rows["report_and_invoice"]
    assert len(two_pages["tiles_per_image"]) == 2 and two_pages["num_tiles"] <= 48  # preprocess.max_tiles_total


def test_moderation_job_gives_valid_labels_on_every_row(tmp_path: Path, ray_session, monkeypatch):
    spec = load_spec(REPO / "jobs" / "moderation.yaml")
    rows = run_job("moderation.yaml", tmp_path / "out", monkeypatch)
    assert {row["media_type"] for row in rows} == {"image", "video", "text"}
    for row in rows:
        assert row["error"] is None and row["finish_reason"] == "stop", row
        assert isinstance(row["flagged"], bool) and isinstance(row["reason"], str)
        assert set(row["categories"]) <= set(spec.task.categories)
        assert len(row["categories"]) == len(set(row["categories"]))


def test_video_caption_job(tmp_path: Path, ray_session, monkeypatch: pytest.MonkeyPatch):
    rows = {row["id"]: row for row in run_job("video_caption.yaml", tmp_path / "out", monkeypatch)}
    expected = {
        "ball_24fps": reference_get_index(None, 24.0, 59, 0, 8),
        "ball_ntsc": reference_get_index(None, 30000 / 1001, 99, 0, 8),
        "ball_ntsc_1s_to_2s": reference_get_index((1.0, 2.0), 30000 / 1001, 99, 0, 8),
    }
    for row_id, indices in expected.items():
        row = rows[row_id]
        assert row["error"] is None and row["media_type"] == "video", row
        assert row["frame_indices"] == indices and row["tiles_per_image"] == [1] * 8


def test_video_job_over_clips_of_every_kind(tmp_path: Path, make_spec, ray_session):
    """Lengths, rates and containers not seen elsewhere; windows inside, overlapping and past the end;
    broken files: the good rows get the reference's frame indices, the others row errors."""
    from fractions import Fraction

    from pipeline.runner import run

    media = tmp_path / "media"
    clips = {  # id: (file, frames, fps)
        "short_mp4": ("short.mp4", 3, 25),
        "odd_mkv": ("odd.mkv", 47, Fraction(24000, 1001)),
        "webm": ("clip.webm", 30, 15),
        "avi": ("clip.avi", 64, 8),
        "long_mov": ("long.mov", 333, 60),
    }
    rows, expected = [], {}
    for row_id, (name, frames, fps) in clips.items():
        path = write_video(media / name, frames, fps)
        rows.append({"id": row_id, "uri": str(path), "start_s": None, "end_s": None})
        expected[row_id] = reference_get_index(None, float(fps), frames - 1, 0, 8)
    long_mov = str(media / "long.mov")  # 5.55 s
    windows = {"window_inside": (1.0, 3.0), "window_over_the_end": (4.0, 60.0), "window_at_zero": (0.0, 0.0)}
    for row_id, (start, end) in windows.items():
        rows.append({"id": row_id, "uri": long_mov, "start_s": start, "end_s": end})
        expected[row_id] = reference_get_index((start, end), 60.0, 332, 0, 8)
    errors = {"past_the_end": "frame_range", "negative_start": "frame_range", "zero_frames": "bad_video"}
    errors.update({"audio_only": "bad_video", "truncated": "bad_video", "missing": "missing"})
    rows.append({"id": "past_the_end", "uri": long_mov, "start_s": 10.0, "end_s": 20.0})
    rows.append({"id": "negative_start", "uri": long_mov, "start_s": -2.0, "end_s": 1.0})
    rows.append({"id": "zero_frames", "uri": str(write_video(media / "zero.mp4", 0, 25))})
    rows.append({"id": "audio_only", "uri": str(write_audio_only(media / "song.mp4"))})
    data = (media / "long.mov").read_bytes()
    (media / "cut.mp4").write_bytes(data[: len(data) // 3])
    rows.append({"id": "truncated", "uri": str(media / "cut.mp4")})
    rows.append({"id": "missing", "uri": str(media / "nowhere.mp4")})
    manifest = write_manifest(tmp_path / "videos.parquet", rows)
    spec = make_spec(manifest, task={"max_new_tokens": 4}, model={"batch_size": 4}, preprocess={"batch_size": 4})
    summary = run(spec, echo=lambda line: None)
    out = {row["id"]: row for row in pq.read_table(spec.output.path).to_pylist()}
    assert sorted(out) == sorted(row["id"] for row in rows)
    for row_id, indices in expected.items():
        row = out[row_id]
        assert row["error"] is None and row["text"] is not None, row
        assert row["media_type"] == "video" and row["frame_indices"] == indices and row["num_tiles"] == 8
    for row_id, kind in errors.items():
        row = out[row_id]
        assert row["error_kind"] == kind and row["error"].startswith(kind + ": "), row
        assert row["text"] is None and row["frame_indices"] is None and row["finish_reason"] == "error"
    assert summary["rows_with_errors"] == len(errors)


def test_custom_template_job(tmp_path: Path, make_spec, ray_session):
    from pipeline.runner import run

    image = write_image(tmp_path / "a.jpg", 640, 480)
    manifest = write_manifest(
        tmp_path / "m.parquet",
        [
            {"id": "a", "uri": str(image), "title": "Harbour at dawn", "lang": "English"},
            {"id": "b", "uri": None, "title": "A poem about rain", "lang": "French"},
        ],
    )
    spec = make_spec(
        manifest,
        task={"kind": "custom", "prompt": "Write a {lang} title for: {title}", "max_new_tokens": 4},
        output={"include_prompt": True},
        input={"passthrough_columns": ["lang"]},
    )
    run(spec, echo=lambda line: None)
    out = {row["id"]: row for row in pq.read_table(spec.output.path).to_pylist()}
    assert "<IMG_CONTEXT>" in out["a"]["prompt"] and "Write a English title for: Harbour at dawn" in out["a"]["prompt"]
    assert (
        out["b"]["media_type"] == "text"
        and "Write a French title for: A poem about rain<|im_end|>" in out["b"]["prompt"]
    )
    assert out["a"]["lang"] == "English" and not [c for c in out["a"] if c.startswith("template__")]
    assert all(row["error"] is None for row in out.values())


def test_custom_template_naming_a_missing_column_fails_validate(tmp_path: Path, monkeypatch):
    manifest = write_manifest(tmp_path / "m.parquet", [{"id": "a", "uri": "x.jpg", "title": "t"}])
    job = tmp_path / "job.yaml"
    job.write_text(
        f"input: {{manifest: {manifest}}}\noutput: {{path: {tmp_path / 'out'}}}\n"
        "task: {kind: custom, prompt: 'Describe {title} for {audience}.'}\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(main, ["validate", str(job)])
    assert result.exit_code == 2
    assert "{audience}" in result.output and "id, uri, title" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()
