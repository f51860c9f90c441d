"""The InternVL3 family: presets, sizes and the GPUs each member needs (filled in by the big-models work)."""

from __future__ import annotations

from pipeline.spec import JobSpec


def check_family_requirements(spec: JobSpec) -> None:
    """Refuse settings the named family member cannot run with (none known for other models)."""
    return None
