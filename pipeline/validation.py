"""Job-level checks that need the spec and the manifest's schema, but no cluster and no model."""

from __future__ import annotations

from pipeline.errors import JobError
from pipeline.prompts.tasks import TEMPLATE_COLUMN_PREFIX, template_fields
from pipeline.readers.manifest import ManifestPlan, open_parquet
from pipeline.spec import JobSpec


def check_task_columns(spec: JobSpec, plan: ManifestPlan) -> None:
    """A prompt template may only name columns the manifest has; those columns join the plan.

    They are added to `plan.columns` under `TEMPLATE_COLUMN_PREFIX` so that the read stage
    reads them with the rest; the CPU stage fills the template and drops them.
    """
    if not spec.task.prompt:
        return
    fields = template_fields(spec.task.prompt)
    if not fields:
        return
    names = open_parquet(plan.files[0], spec.storage).schema_arrow.names
    missing = [name for name in fields if name not in names]
    if missing:
        raise JobError(
            f"task.prompt names column(s) {', '.join('{' + m + '}' for m in missing)} that the manifest "
            f"{plan.files[0]} does not have; its columns are: {', '.join(names)}. Fix the template or the "
            "manifest (write a literal brace as {{ or }})"
        )
    for name in fields:
        plan.columns[TEMPLATE_COLUMN_PREFIX + name] = name


def check_model_settings(spec: JobSpec) -> None:
    """Model settings that cannot work, whatever the cluster (family presets add their own rules)."""
    from pipeline.models.family import check_family_requirements

    check_family_requirements(spec)
