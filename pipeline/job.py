"""Builds the Ray Data plan from a spec: the one place where stages are wired.

Building is pure: it does not start Ray, load a model or touch the output (Ray Data plans
are lazy; `pipeline.runner` executes them). Resources are declared here, next to the
stage that needs them.

    shards --read (tasks)--> manifest rows
           --preprocess (CPU actor pool)--> uint8 tiles + query, or a row error
           --generate (model actor pool: one replica per actor / gang)--> answers
           --postprocess + write (tasks)--> Parquet files; one stats row per file
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, cast

from pipeline.readers.manifest import ManifestPlan, Shard
from pipeline.spec import JobSpec, ModelSpec

# Fault tolerance: Ray Data's actor pools restart dead actors without limit and retry
# their batches (max_restarts=-1, max_task_retries=-1 are its defaults, which we keep).
# A retried batch is rewritten under the same file names (they follow the rows' ids),
# so a retry never duplicates output.


@dataclass(frozen=True)
class StageResources:
    """What Ray reserves for the stages, from the spec and the cluster's accelerators."""

    use_gpu: bool
    gpus_per_model_actor: float
    cpus_per_model_actor: float


def gpus_per_replica(model: ModelSpec) -> int:
    """GPUs one replica spans: its tensor-parallel ranks, or the GPUs a device_map replica is given."""
    if model.device_map == "auto":
        return model.gpus_per_replica or 1
    return model.tensor_parallel


def stage_resources(spec: JobSpec, use_gpu: bool) -> StageResources:
    """Resources per model-stage actor.

    - one process per replica (tensor_parallel 1): 1 GPU, or `gpus_per_replica` GPUs for a
      `device_map: auto` replica whose layers accelerate spreads over them;
    - a tensor-parallel gang: the actor only drives the gang; its ranks reserve their own
      GPUs and CPUs in a placement group (see `pipeline.models.tensor_parallel`), so the
      driving actor takes a sliver of a CPU and no GPU.
    """
    model = spec.model
    if model.tensor_parallel > 1:
        return StageResources(use_gpu=use_gpu, gpus_per_model_actor=0.0, cpus_per_model_actor=0.1)
    gpus = float(gpus_per_replica(model)) if use_gpu else 0.0
    return StageResources(use_gpu=use_gpu, gpus_per_model_actor=gpus, cpus_per_model_actor=model.cpus_per_replica)


def model_stage_spec(spec: JobSpec, resources: StageResources) -> JobSpec:
    """The spec the model stage sees: 'auto' device resolved as the driver decided, so that a
    replica (or a gang's ranks, which reserve their GPUs themselves) runs where Ray reserved."""
    if spec.model.device != "auto":
        return spec
    device = "cuda" if resources.use_gpu else "cpu"
    return spec.model_copy(update={"model": spec.model.model_copy(update={"device": device})})


def rows_per_model_call(spec: JobSpec) -> int:
    """Rows handed to a replica per call: a window of several micro-batches, so that rows of
    similar length can be grouped (see `pipeline.actors.batching`)."""
    return spec.model.batch_size * 4


def build_dataset(spec: JobSpec, plan: ManifestPlan, pending: list[Shard], resources: StageResources) -> Any:
    """The lazy Ray Data dataset whose rows are write statistics."""
    import ray.data

    from pipeline.actors.generate import GenerateStage
    from pipeline.actors.preprocess import PreprocessStage
    from pipeline.actors.read import read_shards
    from pipeline.actors.write import postprocess_batch, write_batch

    resume = spec.output.mode == "resume"
    shards = ray.data.from_items([asdict(shard) for shard in pending], override_num_blocks=max(1, len(pending)))
    rows = shards.map_batches(
        cast(Any, read_shards),
        fn_kwargs={
            "spec": spec,
            "columns": plan.columns,
            "passthrough": plan.passthrough,
            "resume": resume,
        },
        batch_size=1,
        batch_format="numpy",
        num_cpus=0.25,
    )
    prepared = rows.map_batches(
        PreprocessStage,
        fn_constructor_kwargs={"spec": spec},
        batch_size=spec.preprocess.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=spec.preprocess.workers),
        num_cpus=spec.preprocess.cpus_per_worker,
    )
    answered = prepared.map_batches(
        GenerateStage,
        fn_constructor_kwargs={"spec": model_stage_spec(spec, resources)},
        batch_size=rows_per_model_call(spec),
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=spec.model.replicas),
        num_cpus=resources.cpus_per_model_actor,
        num_gpus=resources.gpus_per_model_actor,
    )
    labelled = answered.map_batches(
        cast(Any, postprocess_batch), fn_kwargs={"spec": spec}, batch_format="pyarrow", num_cpus=0.25
    )
    return labelled.map_batches(
        cast(Any, write_batch),
        fn_kwargs={"spec": spec},
        batch_size=spec.output.rows_per_file,
        batch_format="pyarrow",
        num_cpus=0.25,
    )
