"""The job-spec reference, generated from the pydantic models (so it cannot drift)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from pipeline.spec import JobSpec


def _default(field: Any) -> str:
    if field.default is not PydanticUndefined:
        return repr(field.default)
    if field.default_factory is not None:
        value = field.default_factory()
        return "{...}" if isinstance(value, BaseModel) else repr(value)
    return "required"


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows: list[str] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(_rows(annotation, f"{prefix}{name}."))
            continue
        rows.append(f"| `{prefix}{name}` | `{_default(field)}` | {field.description} |")
    return rows


def spec_reference_markdown() -> str:
    """A Markdown table of every field: key, default, description."""
    return "\n".join(["| key | default | description |", "|---|---|---|", *_rows(JobSpec, "")])
