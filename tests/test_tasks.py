"""Task presets, per-row questions, templates, and the rows the model card shows (text only,
several images, video) through the CPU stage: their prompts equal the golden cases byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import GOLDEN
from media import write_image, write_manifest
from PIL import Image
from videos import write_video

from pipeline.actors.preprocess import Preprocessor, PreprocessStage, multi_image_tile_limit
from pipeline.actors.tiling import choose_grid
from pipeline.errors import JobError
from pipeline.prompts.tasks import (
    TEMPLATE_COLUMN_PREFIX,
    preset_for,
    question_for_row,
    resolve_spec,
    template_fields,
)
from pipeline.prompts.template import build_prompt
from pipeline.readers.manifest import plan_manifest, read_shard
from pipeline.spec import SpecError
from pipeline.validation import check_task_columns

REFERENCE = json.loads((GOLDEN / "prompt_internvl2_5.json").read_text(encoding="utf-8"))
CASES = {case["name"]: case for case in REFERENCE["cases"]}


@pytest.fixture
def spec_for(make_spec):
    def build(**sections):
        return resolve_spec(make_spec("unused.parquet", **sections))

    return build


# --- rows of every kind, through the CPU stage, against the golden prompts -------------


def golden_check(spec, prepared, case_name: str) -> None:
    case = CASES[case_name]
    assert prepared.error is None, prepared.error
    assert prepared.query == case["query"]
    assert prepared.tiles_per_image == case["tiles_per_image"]
    assert build_prompt(prepared.query, prepared.tiles_per_image) == case["prompt"]


def test_text_only_row_matches_golden(spec_for):
    spec = spec_for()
    prepared = Preprocessor(spec).prepare({"id": "t", "uri": None, "row_prompt": CASES["text_only"]["query"]})
    assert prepared.media_type == "text" and prepared.tiles == []
    golden_check(spec, prepared, "text_only")


def test_two_image_row_matches_golden(tmp_path: Path, spec_for):
    first = write_image(tmp_path / "a.jpg", 1344, 896, seed=1)  # 3x2 grid + thumbnail = 7
    second = write_image(tmp_path / "b.png", 896, 896, seed=2)  # 2x2 grid + thumbnail = 5
    spec = spec_for()
    row = {
        "id": "m",
        "uri": None,
        "uris": [str(first), str(second)],
        "row_prompt": "Describe the two images in detail.",
    }
    prepared = Preprocessor(spec).prepare(row)
    assert prepared.media_type == "image"
    golden_check(spec, prepared, "two_images_separate")
    # In list order: swapping the images swaps their tile runs.
    swapped = Preprocessor(spec).prepare({**row, "uris": [str(second), str(first)]})
    assert swapped.tiles_per_image == [5, 7]


def test_four_frame_video_row_matches_golden(tmp_path: Path, spec_for):
    clip = write_video(tmp_path / "clip.mp4", 40, 10)
    spec = spec_for(preprocess={"num_frames": 4})
    prepared = Preprocessor(spec).prepare(
        {"id": "v", "uri": str(clip), "row_prompt": CASES["video_4_frames"]["query"].rsplit("\n", 1)[-1]}
    )
    assert prepared.media_type == "video" and len(prepared.frame_indices) == 4
    golden_check(spec, prepared, "video_4_frames")


@pytest.mark.parametrize(
    ("case_name", "size"), [("single_image_1_tile", (448, 448)), ("single_image_13_tiles", (1792, 1344))]
)
def test_single_image_rows_match_golden(tmp_path: Path, spec_for, case_name: str, size):
    style = "short" if "1_tile" in case_name else "detailed"
    spec = spec_for(task={"caption_style": style})
    prepared = Preprocessor(spec).prepare({"id": "i", "uri": str(write_image(tmp_path / "i.png", *size))})
    golden_check(spec, prepared, case_name)


# --- multi-image rows ------------------------------------------------------------------


def test_multi_image_without_a_total_cap_tiles_each_image_with_max_tiles(tmp_path: Path, spec_for):
    sizes = [(1600, 1200), (300, 900), (2000, 500)]
    uris = [str(write_image(tmp_path / f"{i}.jpg", w, h, seed=i)) for i, (w, h) in enumerate(sizes)]
    prepared = Preprocessor(spec_for(preprocess={"max_tiles": 6})).prepare({"id": "m", "uri": None, "uris": uris})
    assert prepared.tiles_per_image == [choose_grid(w, h, 1, 6).num_tiles for w, h in sizes]
    assert prepared.query.startswith("Image-1: <image>\nImage-2: <image>\nImage-3: <image>\n")
    assert prepared.query.endswith("Please describe the images shortly.")


@pytest.mark.parametrize("total", [3, 4, 7, 10, 13, 20, 40])
def test_max_tiles_total_caps_the_sum_with_the_largest_common_limit(tmp_path: Path, spec_for, total: int):
    sizes = [(1600, 1200), (448, 448), (2000, 500)]
    uris = [str(write_image(tmp_path / f"{i}.png", w, h, seed=i)) for i, (w, h) in enumerate(sizes)]
    spec = spec_for(preprocess={"max_tiles": 12, "max_tiles_total": total})
    prepared = Preprocessor(spec).prepare({"id": "m", "uri": None, "uris": uris})
    assert prepared.error is None
    assert sum(prepared.tiles_per_image) <= total
    limit = multi_image_tile_limit(sizes, 1, 12, total, True)
    assert prepared.tiles_per_image == [choose_grid(w, h, 1, limit).num_tiles for w, h in sizes]
    if limit < 12:  # the next limit up would not fit
        assert sum(choose_grid(w, h, 1, limit + 1).num_tiles for w, h in sizes) > total


def test_more_images_than_the_total_allows_is_a_row_error(tmp_path: Path, spec_for):
    uris = [str(write_image(tmp_path / f"{i}.png", 100, 100, seed=i)) for i in range(3)]
    prepared = Preprocessor(spec_for(preprocess={"max_tiles_total": 2})).prepare({"id": "m", "uri": None, "uris": uris})
    assert prepared.error_kind == "bad_row" and "3 images" in prepared.error


def test_min_tiles_never_blocks_a_small_budget():
    assert multi_image_tile_limit([(2000, 2000), (2000, 2000)], 4, 12, 4, True) == 1


def test_multi_image_errors_name_the_image(tmp_path: Path, spec_for):
    good = str(write_image(tmp_path / "good.png", 200, 200))
    clip = str(write_video(tmp_path / "clip.mp4", 5, 5))
    preprocessor = Preprocessor(spec_for())
    missing = preprocessor.prepare({"id": "m", "uri": None, "uris": [good, str(tmp_path / "nope.png")]})
    assert missing.error_kind == "missing" and "image 2" in missing.error
    video = preprocessor.prepare({"id": "m", "uri": None, "uris": [clip, good]})
    assert video.error_kind == "unknown_media" and "image 1" in video.error
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    capped = Preprocessor(spec_for(preprocess={"max_tiles_total": 8}))
    broken = capped.prepare({"id": "m", "uri": None, "uris": [good, str(tmp_path / "broken.png")]})
    assert broken.error_kind == "decode_error" and "image 2" in broken.error and broken.tiles == []
    blank = preprocessor.prepare({"id": "m", "uri": None, "uris": [good, ""]})
    assert blank.error_kind == "bad_row" and "[2]" in blank.error
    both = preprocessor.prepare({"id": "m", "uri": str(tmp_path / "other.png"), "uris": [good]})
    assert both.error_kind == "bad_row"
    same = preprocessor.prepare({"id": "m", "uri": good, "uris": [good]})
    assert same.error is None and same.tiles_per_image == [1]
    empty_list = preprocessor.prepare({"id": "m", "uri": good, "uris": []})
    assert empty_list.error is None and empty_list.query.startswith("<image>\n")


# --- text-only rows --------------------------------------------------------------------


def test_text_only_rows_need_a_prompt(spec_for):
    preprocessor = Preprocessor(spec_for())
    assert preprocessor.prepare({"id": "t", "uri": None}).error_kind == "empty_uri"
    assert preprocessor.prepare({"id": "t", "uri": "  ", "row_prompt": "   "}).error_kind == "empty_uri"
    marked = preprocessor.prepare({"id": "t", "uri": None, "media_type_hint": "video", "row_prompt": "hi"})
    assert marked.error_kind == "empty_uri"
    templated = Preprocessor(spec_for(task={"prompt": "Say hello."})).prepare({"id": "t", "uri": None})
    assert templated.error is None and templated.query == "Say hello."


# --- presets and questions ---------------------------------------------------------------


def test_presets_fill_defaults_the_user_did_not_set(make_spec):
    caption = resolve_spec(make_spec("m.parquet", task={"max_new_tokens": None}))
    assert caption.task.max_new_tokens == 64 and caption.preprocess.max_tiles == 12
    detailed = resolve_spec(make_spec("m.parquet", task={"caption_style": "detailed", "max_new_tokens": None}))
    assert detailed.task.max_new_tokens == 512
    ocr = resolve_spec(make_spec("m.parquet", task={"kind": "ocr", "max_new_tokens": None}))
    assert ocr.preprocess.max_tiles == 24 and ocr.task.max_new_tokens == 2048
    moderation = resolve_spec(make_spec("m.parquet", task={"kind": "moderation", "max_new_tokens": None}))
    assert moderation.preprocess.max_tiles == 6 and moderation.task.max_new_tokens == 384
    mine = resolve_spec(make_spec("m.parquet", task={"kind": "ocr", "max_new_tokens": 99}, preprocess={"max_tiles": 3}))
    assert mine.task.max_new_tokens == 99 and mine.preprocess.max_tiles == 3


def test_questions_per_kind_and_media(spec_for):
    short, detailed = spec_for(), spec_for(task={"caption_style": "detailed"})
    assert question_for_row(short, "image", None, {}) == "Please describe the image shortly."
    assert question_for_row(detailed, "image", None, {}) == "Please describe the image in detail."
    assert question_for_row(detailed, "video", None, {}) == "Please describe the video in detail."
    assert question_for_row(short, "images", None, {}) == "Please describe the images shortly."
    ocr = question_for_row(spec_for(task={"kind": "ocr"}), "image", None, {})
    assert "Markdown" in ocr and "reading order" in ocr
    moderation = spec_for(task={"kind": "moderation", "categories": ["violence", "spam"], "max_new_tokens": 200})
    video_question = question_for_row(moderation, "video", None, {})
    assert "this video" in video_question and "violence, spam" in video_question and "{" not in video_question
    assert "these images" in question_for_row(moderation, "images", None, {})


def test_row_prompt_overrides_task_prompt_and_preset(spec_for):
    spec = spec_for(task={"prompt": "What is {title}?"})
    assert question_for_row(spec, "image", "Row question?", {"title": "x"}) == "Row question?"
    assert question_for_row(spec, "image", None, {"title": "a cat"}) == "What is a cat?"
    assert question_for_row(spec, "image", None, {"title": None}) == "What is ?"


def test_template_fields_and_literal_braces(spec_for):
    assert template_fields("Describe {title} by {author}; {title} again") == ["title", "author"]
    assert template_fields('Answer like {{"a": 1}}') == []
    spec = spec_for(task={"prompt": 'Answer like {{"a": 1}}'})
    assert question_for_row(spec, "image", None, {}) == 'Answer like {"a": 1}'
    for bad in ("Describe {0}", "Describe {}", "Describe {a.b}", "Describe {title"):
        with pytest.raises(SpecError, match=r"task\.prompt"):
            template_fields(bad)


def test_custom_needs_a_template_and_moderation_needs_room(make_spec):
    with pytest.raises(SpecError, match="custom"):
        resolve_spec(make_spec("m.parquet", task={"kind": "custom"}))
    with pytest.raises(SpecError, match=r"task\.max_new_tokens=64 is too small"):
        resolve_spec(make_spec("m.parquet", task={"kind": "moderation", "max_new_tokens": 64}))
    with pytest.raises(SpecError, match=r"task\.prompt"):
        resolve_spec(make_spec("m.parquet", task={"prompt": "Broken {"}))


def test_preset_registry_covers_every_kind(spec_for):
    for kind in ("caption", "ocr", "moderation", "custom"):
        task = {"kind": kind, "prompt": "Describe {id}." if kind == "custom" else None, "max_new_tokens": None}
        assert preset_for(spec_for(task=task)).max_new_tokens > 0


# --- custom templates against the manifest ------------------------------------------------


def test_template_naming_a_missing_column_fails_validation_with_its_name(tmp_path: Path, make_spec):
    manifest = write_manifest(tmp_path / "m.parquet", [{"id": "a", "uri": "x.jpg", "title": "t"}])
    spec = resolve_spec(make_spec(manifest, task={"kind": "custom", "prompt": "Describe {title} by {author}."}))
    plan = plan_manifest(spec.input)
    with pytest.raises(JobError, match=r"\{author\}") as error:
        check_task_columns(spec, plan)
    assert "title" not in str(error.value).split("columns are:")[0]  # only the missing one is blamed
    assert "id, uri, title" in str(error.value)


def test_template_columns_are_read_filled_and_dropped(tmp_path: Path, make_spec):
    image = write_image(tmp_path / "a.png", 300, 200)
    manifest = write_manifest(
        tmp_path / "m.parquet",
        [
            {"id": "a", "uri": str(image), "title": "Sunset", "year": 1999},
            {"id": "b", "uri": None, "title": "Book", "year": None},
        ],
    )
    spec = resolve_spec(make_spec(manifest, task={"kind": "custom", "prompt": "Title: {title} ({year})."}))
    plan = plan_manifest(spec.input)
    check_task_columns(spec, plan)
    assert plan.columns[TEMPLATE_COLUMN_PREFIX + "title"] == "title"
    rows = read_shard(plan.shards[0], plan.columns, plan.passthrough, None)
    out = PreprocessStage(spec)(rows)
    assert out.column("query").to_pylist() == ["<image>\nTitle: Sunset (1999).", "Title: Book ()."]
    assert out.column("media_type").to_pylist() == ["image", "text"]
    assert not [name for name in out.column_names if name.startswith(TEMPLATE_COLUMN_PREFIX)]
    assert isinstance(out, pa.Table) and "inline_bytes" not in out.column_names


def test_exif_and_modes_keep_working_in_multi_image_rows(tmp_path: Path, spec_for):
    grey = tmp_path / "grey.png"
    Image.new("L", (500, 300), 128).save(grey)
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (300, 500), (10, 20, 30, 40)).save(rgba)
    prepared = Preprocessor(spec_for()).prepare({"id": "m", "uri": None, "uris": [str(grey), str(rgba)]})
    assert prepared.error is None and all(t.shape[1:] == (448, 448, 3) for t in prepared.tiles)
