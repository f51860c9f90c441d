"""Prompt strings equal the reference format byte for byte."""

from __future__ import annotations

import json

import pytest
from conftest import GOLDEN

from pipeline.prompts.template import (
    DEFAULT_SYSTEM_MESSAGE,
    PromptError,
    build_prompt,
    multi_image_query,
    single_image_query,
    video_query,
)

REFERENCE = json.loads((GOLDEN / "prompt_internvl2_5.json").read_text(encoding="utf-8"))
CASES = {case["name"]: case for case in REFERENCE["cases"]}


def test_template_constants_match_reference():
    assert REFERENCE["system_message"] == DEFAULT_SYSTEM_MESSAGE
    assert REFERENCE["stop_token"] == "<|im_end|>"
    assert REFERENCE["image_tokens_per_tile"] == 256
    assert REFERENCE["padding_side"] == "left"


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_case(name: str):
    case = CASES[name]
    assert build_prompt(case["query"], case["tiles_per_image"]) == case["prompt"]


def test_queries_are_built_as_the_reference_builds_them():
    assert single_image_query("Please describe the image shortly.") == CASES["single_image_1_tile"]["query"]
    assert multi_image_query("Describe the two images in detail.", 2) == CASES["two_images_separate"]["query"]
    assert video_query("What is happening in this video?", 4) == CASES["video_4_frames"]["query"]


def test_placeholder_count_must_match_images():
    with pytest.raises(PromptError, match="2 image"):
        build_prompt("<image>\nhello", [1, 1])


def test_system_message_can_be_replaced_or_dropped():
    assert build_prompt("hi", [], system_message="Be brief.").startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    assert build_prompt("hi", [], system_message=None).startswith("<|im_start|>user\nhi")
