"""Job-level checks that need the spec and the manifest's schema, but no cluster and no model."""

from __future__ import annotations

from pipeline.errors import JobError
from pipeline.prompts.tasks import TEMPLATE_COLUMN_PREFIX, template_fields
from pipeline.readers.manifest import ManifestPlan, open_parquet
from pipeline.spec import JobSpec, ModelSpec


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
            f"{plan.files[0]} does not have; its columns are: {', '.join(names)}. Add the column(s) to the "
            "manifest or fix the names in task.prompt (write a literal brace as {{ or }})"
        )
    for name in fields:
        plan.columns[TEMPLATE_COLUMN_PREFIX + name] = name


def check_model_settings(spec: JobSpec) -> None:
    """Model settings that cannot work, whatever the cluster: checked before any model loads.

    In order: the model's source format (original-format checkpoints run remote code), the
    dummy-model settings, quantisation (CUDA only, not with tensor parallel), device_map
    settings, then the family rules (tensor-parallel size vs heads, GPUs per replica).
    """
    from pipeline.models.family import check_family_requirements

    check_source_format(spec.model)
    check_dummy_settings(spec.model)
    check_quantization(spec.model)
    check_device_map(spec.model)
    check_family_requirements(spec)


def check_source_format(model: ModelSpec) -> None:
    """Original-format checkpoints need remote code: refuse them unless the user opted in."""
    from pipeline.models.family import checkpoint_config, original_format_hint

    hint = original_format_hint(model.name)
    config = checkpoint_config(model) if hint is None else None
    if hint is None and config is not None and config.get("model_type") == "internvl_chat":
        hint = (
            f"model.name: {model.name} is an original-format InternVL checkpoint (model_type internvl_chat), which "
            "runs code from the model repository. Use its -hf conversion (e.g. OpenGVLab/InternVL3-8B-hf), or set "
            "model.trust_remote_code: true if you trust it"
        )
    if hint is None:
        return
    if not model.trust_remote_code:
        raise JobError(hint)
    if model.tensor_parallel > 1:
        raise JobError(
            f"model.tensor_parallel={model.tensor_parallel}: original-format (remote-code) checkpoints have no "
            "tensor-parallel plan; use the -hf checkpoint, or model.device_map: auto with model.gpus_per_replica"
        )


def check_dummy_settings(model: ModelSpec) -> None:
    """`dummy:` must name a family member; model.dummy_layers only means something for it."""
    from pipeline.models.loading import DUMMY_PREFIX

    if model.name.startswith(DUMMY_PREFIX):
        from pipeline.models.dummy import dummy_member

        dummy_member(model.name)
    elif model.dummy_layers is not None:
        raise JobError(
            f"model.dummy_layers is set but model.name is {model.name!r}; it only applies to dummy:InternVL3-<size>: "
            "remove model.dummy_layers"
        )


def check_quantization(model: ModelSpec) -> None:
    """int8 and fp8 weights need NVIDIA GPUs, and transformers cannot shard them over a gang."""
    from pipeline.models.loading import quantization_needs_cuda

    if model.quantization is None:
        return
    if model.device == "cpu":
        raise JobError(quantization_needs_cuda(model.quantization))
    if model.tensor_parallel > 1:
        raise JobError(
            f"model.quantization: {model.quantization} cannot be combined with model.tensor_parallel="
            f"{model.tensor_parallel} (transformers does not shard quantised weights); use model.device_map: auto "
            "with model.gpus_per_replica, or bfloat16 weights with tensor parallel"
        )


def check_device_map(model: ModelSpec) -> None:
    """model.gpus_per_replica sizes a device_map replica; tensor parallel sizes itself."""
    if model.gpus_per_replica is None or model.device_map == "auto":
        return
    if model.gpus_per_replica == model.tensor_parallel:
        return
    raise JobError(
        f"model.gpus_per_replica={model.gpus_per_replica} only applies with model.device_map: auto; for tensor "
        f"parallel set model.tensor_parallel: {model.gpus_per_replica} instead"
    )
