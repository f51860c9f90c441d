"""Task presets: the question each task asks, and its defaults.

A preset is data, chosen by `task.kind` from a small registry; the only task with logic
beyond a question is moderation, whose answer is parsed in `pipeline.prompts.moderation`.
Which question a row gets: the row's own prompt column, else `task.prompt` (a template
that may name manifest columns as {column}), else the preset's question for the row's
media type.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.spec import JobSpec, SpecError


@dataclass(frozen=True)
class TaskPreset:
    """Defaults of one task kind."""

    image_question: str
    video_question: str
    max_new_tokens: int
    max_tiles: int


CAPTION_SHORT = TaskPreset(
    image_question="Please describe the image shortly.",
    video_question="Please describe the video shortly.",
    max_new_tokens=64,
    max_tiles=12,
)
CAPTION_DETAILED = TaskPreset(
    image_question="Please describe the image in detail.",
    video_question="Please describe the video in detail.",
    max_new_tokens=512,
    max_tiles=12,
)
OCR = TaskPreset(
    image_question=(
        "Transcribe all the text on this page as Markdown, in reading order. Keep headings, lists and "
        "tables (as Markdown tables). Output only the transcription."
    ),
    video_question="Transcribe all the text that appears in this video, in order of appearance.",
    max_new_tokens=2048,
    max_tiles=24,
)
MODERATION_TEMPLATE = (
    "You are a content moderator. Decide whether this {media} shows content in any of these categories: "
    '{categories}. Answer with a JSON object with the keys "flagged" (true or false), "categories" '
    '(the list of matching categories, empty if none) and "reason" (one short sentence).'
)
MODERATION = TaskPreset(
    image_question=MODERATION_TEMPLATE,
    video_question=MODERATION_TEMPLATE,
    max_new_tokens=256,
    max_tiles=6,
)
CUSTOM = TaskPreset(image_question="", video_question="", max_new_tokens=256, max_tiles=12)


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
        raise SpecError(
            f"preprocess.min_tiles={preprocess.min_tiles} exceeds preprocess.max_tiles={preprocess.max_tiles}"
        )
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
            raise SpecError(f"task.prompt: template field {{{field}}} must be a plain column name")
        if field not in names:
            names.append(field)
    return names


def question_for_row(spec: JobSpec, media_type: str, row_prompt: str | None, columns: Mapping[str, Any]) -> str:
    """The question for one row (before image placeholders are added)."""
    if row_prompt:
        return row_prompt
    preset = preset_for(spec)
    template = spec.task.prompt
    if template is None:
        template = preset.video_question if media_type == "video" else preset.image_question
        if spec.task.kind == "moderation":
            media = "video" if media_type == "video" else ("text" if media_type == "text" else "image")
            return template.format(media=media, categories=", ".join(spec.task.categories))
        return template
    fields = template_fields(template)
    if not fields:
        return template
    return template.format(**{name: "" if columns.get(name) is None else columns[name] for name in fields})
