"""Task presets: the question each task asks, and its defaults.

A preset is data, chosen by `task.kind` from a small registry; the only task with logic
beyond a question is moderation, whose answer is held to a JSON schema and parsed in
`pipeline.prompts.moderation`. Which question a row gets: the row's own prompt column,
else `task.prompt` (a template that may name manifest columns as {column}), else the
preset's question for what the row holds (one image, several images, a video).
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.spec import JobSpec, SpecError

# What a row holds, as far as the question is concerned.
IMAGE, IMAGES, VIDEO, TEXT = "image", "images", "video", "text"
# Manifest columns a prompt template names are read under this prefix (see
# `pipeline.validation.check_task_columns`) and dropped after the CPU stage.
TEMPLATE_COLUMN_PREFIX = "template__"


@dataclass(frozen=True)
class TaskPreset:
    """Defaults of one task kind: its questions and the settings that suit it."""

    image_question: str
    images_question: str
    video_question: str
    max_new_tokens: int
    max_tiles: int

    def question(self, holds: str) -> str:
        """The question for a row holding `holds` (image, images, video); text rows have none."""
        return {IMAGE: self.image_question, IMAGES: self.images_question, VIDEO: self.video_question}[holds]


# The caption questions are the InternVL model card's own.
CAPTION_SHORT = TaskPreset(
    image_question="Please describe the image shortly.",
    images_question="Please describe the images shortly.",
    video_question="Please describe the video shortly.",
    max_new_tokens=64,
    max_tiles=12,
)
CAPTION_DETAILED = TaskPreset(
    image_question="Please describe the image in detail.",
    images_question="Please describe the images in detail.",
    video_question="Please describe the video in detail.",
    max_new_tokens=512,
    max_tiles=12,
)
OCR = TaskPreset(
    image_question=(
        "Transcribe all the text on this page as Markdown, in reading order. Keep headings, lists and "
        "tables (as Markdown tables). Output only the transcription."
    ),
    images_question=(
        "Transcribe all the text on these pages as Markdown, page by page and in reading order. Keep headings, "
        "lists and tables (as Markdown tables). Output only the transcription."
    ),
    video_question="Transcribe all the text that appears in this video, in order of appearance.",
    max_new_tokens=2048,
    max_tiles=24,
)
# {media} and {categories} are filled per row; the answer's form is also enforced by the grammar.
MODERATION_TEMPLATE = (
    "You are a content moderator. Decide whether {media} shows content in any of these categories: "
    '{categories}. Answer with a JSON object with the keys "flagged" (true or false), "categories" '
    '(the list of matching categories, empty if none) and "reason" (one short sentence in English).'
)
MODERATION_MEDIA = {IMAGE: "this image", IMAGES: "these images", VIDEO: "this video"}
MODERATION = TaskPreset(
    image_question=MODERATION_TEMPLATE,
    images_question=MODERATION_TEMPLATE,
    video_question=MODERATION_TEMPLATE,
    max_new_tokens=384,  # room for every category and a 200-character reason (see moderation.reason_limit)
    max_tiles=6,  # a verdict needs less detail than a caption: half the tiles, twice the throughput
)
CUSTOM = TaskPreset(image_question="", images_question="", video_question="", max_new_tokens=256, max_tiles=12)


def preset_for(spec: JobSpec) -> TaskPreset:
    """The preset of the spec's task kind (and caption style)."""
    kind = spec.task.kind
    if kind == "caption":
        return CAPTION_DETAILED if spec.task.caption_style == "detailed" else CAPTION_SHORT
    return {"ocr": OCR, "moderation": MODERATION, "custom": CUSTOM}[kind]


def resolve_spec(spec: JobSpec) -> JobSpec:
    """Fill the preset-dependent defaults (tiles, answer length) and check the task's own rules."""
    preset = preset_for(spec)
    if spec.task.kind == "custom" and not spec.task.prompt:
        raise SpecError("task.prompt: a 'custom' task needs a prompt template, e.g. 'Describe {title}.'")
    task = spec.task.model_copy(update={"max_new_tokens": spec.task.max_new_tokens or preset.max_new_tokens})
    preprocess = spec.preprocess.model_copy(update={"max_tiles": spec.preprocess.max_tiles or preset.max_tiles})
    if preprocess.max_tiles is not None and preprocess.min_tiles > preprocess.max_tiles:
        whence = "" if spec.preprocess.max_tiles else f" (the {spec.task.kind} preset's default)"
        raise SpecError(
            f"preprocess.min_tiles={preprocess.min_tiles} exceeds preprocess.max_tiles={preprocess.max_tiles}"
            f"{whence}; lower preprocess.min_tiles or raise preprocess.max_tiles"
        )
    if spec.task.prompt is not None:
        template_fields(spec.task.prompt)  # a malformed template fails here, not in every row
    if spec.task.kind == "moderation":
        from pipeline.prompts.moderation import reason_limit

        assert task.max_new_tokens is not None
        reason_limit(spec.task.categories, task.max_new_tokens)  # the answer must fit the token budget
    return spec.model_copy(update={"task": task, "preprocess": preprocess})


def template_fields(template: str) -> list[str]:
    """Names of the {column} fields a prompt template uses, in order of appearance."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as error:
        raise SpecError(f"task.prompt: not a valid template ({error}); write literal braces as {{{{ and }}}}") from None
    for _, field, _, _ in parsed:
        if field is None:
            continue
        if not field.isidentifier():
            raise SpecError(
                f"task.prompt: template field {{{field}}} must be a plain column name such as {{title}}; "
                "write a literal brace as {{ or }}"
            )
        if field not in names:
            names.append(field)
    return names


def question_for_row(spec: JobSpec, holds: str, row_prompt: str | None, columns: Mapping[str, Any]) -> str:
    """The question for one row (before image placeholders are added).

    `holds` is what the row holds (IMAGE, IMAGES, VIDEO or TEXT); `columns` maps the
    manifest columns a template names to this row's values (null becomes '').
    """
    if row_prompt:
        return row_prompt
    template = spec.task.prompt
    if template is not None:
        fields = template_fields(template)
        return template.format(**{name: "" if columns.get(name) is None else columns[name] for name in fields})
    if holds == TEXT:
        raise ValueError("a text-only row needs a prompt of its own or task.prompt")
    question = preset_for(spec).question(holds)
    if spec.task.kind == "moderation":
        return question.format(media=MODERATION_MEDIA[holds], categories=", ".join(spec.task.categories))
    return question
