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

import functools
import warnings
from dataclasses import asdict, dataclass
from typing import Any, cast

from pipeline.readers.manifest import ManifestPlan, Shard
from pipeline.spec import JobSpec, ModelSpec

# Fault tolerance: Ray Data's actor pools restart dead actors without limit and retry
# their batches (max_restarts=-1, max_task_retries=-1 are its defaults, which we keep).
# A retried batch is rewritten under the same file names (they follow the rows' ids),
# so a retry never duplicates output; a row that kills its actor every time is given a
# `worker_died` error after the stage's max_retries (see `pipeline.actors.guard`).

# Environment variables with this prefix on the driver (cache dir, test hooks) are passed
# on to every stage: on a cluster, or with a Ray started earlier, workers do not inherit
# the driver's environment.
FORWARDED_ENV_PREFIX = "PIPELINE_"


def forwarded_env() -> dict[str, str]:
    """The driver's PIPELINE_* variables, for the stages' runtime_env."""
    import os

    return {name: value for name, value in os.environ.items() if name.startswith(FORWARDED_ENV_PREFIX)}


def stage_remote_args() -> dict[str, Any]:
    """Ray remote arguments every stage gets (the forwarded environment)."""
    env = forwarded_env()
    return {"runtime_env": {"env_vars": env}} if env else {}


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
    - a tensor-parallel gang: the actor only drives the gang. Each actor gets a placement
      group of one bundle per rank (see `model_actor_placement`); the actor itself takes a
      sliver of bundle 0's CPU and no GPU, its ranks take the bundles' GPUs.
    """
    from pipeline.models.tensor_parallel import DRIVER_CPUS

    model = spec.model
    if model.tensor_parallel > 1:
        return StageResources(use_gpu=use_gpu, gpus_per_model_actor=0.0, cpus_per_model_actor=DRIVER_CPUS)
    gpus = float(gpus_per_replica(model)) if use_gpu else 0.0
    return StageResources(use_gpu=use_gpu, gpus_per_model_actor=gpus, cpus_per_model_actor=model.cpus_per_replica)


def model_actor_placement(spec: JobSpec, resources: StageResources) -> dict[str, Any]:
    """Extra map_batches arguments of the model stage: for tensor parallel, a function Ray Data
    calls for each actor it creates, reserving that actor's gang (a placement group)."""
    if spec.model.tensor_parallel == 1:
        return {}
    from pipeline.models.tensor_parallel import reserve_gang

    return {"ray_remote_args_fn": functools.partial(reserve_gang, spec.model, resources.use_gpu)}


def release_model_stage_resources() -> None:
    """Free what the model stage reserved outside Ray Data's actors (tensor-parallel gangs);
    the driver calls it when the dataset has finished, or failed."""
    from pipeline.models.tensor_parallel import release_reserved_gangs

    release_reserved_gangs()


def model_stage_spec(spec: JobSpec, resources: StageResources) -> JobSpec:
    """The spec the model stage sees: 'auto' device resolved as the driver decided, so that a
    replica (or a gang's ranks, in their bundles) runs on what Ray reserved for it."""
    if spec.model.device != "auto":
        return spec
    device = "cuda" if resources.use_gpu else "cpu"
    return spec.model_copy(update={"model": spec.model.model_copy(update={"device": device})})


WINDOW_BATCHES = 8  # default window: this many micro-batches (see pipeline/actors/batching.py)


def rows_per_model_call(spec: JobSpec) -> int:
    """Rows handed to a replica per call: a window of several micro-batches, so that rows of
    similar length can be grouped (see `pipeline.actors.batching`). 8 x batch_size keeps
    padding under 10% on mixed 1-13 tile images (`python -m pipeline bench batching`)."""
    return spec.model.batch_window or spec.model.batch_size * WINDOW_BATCHES


def build_dataset(
    spec: JobSpec, plan: ManifestPlan, pending: list[Shard], resources: StageResources, ledger: Any | None = None
) -> Any:
    """The lazy Ray Data dataset whose rows are write statistics. `ledger` is the run's crash
    ledger actor (see `pipeline.actors.guard`)."""
    import ray.data

    from pipeline.actors.generate import GenerateStage
    from pipeline.actors.preprocess import PreprocessStage
    from pipeline.actors.read import read_shards
    from pipeline.actors.write import postprocess_batch, write_batch

    remote_args = stage_remote_args()
    shards = ray.data.from_items([asdict(shard) for shard in pending], override_num_blocks=max(1, len(pending)))
    rows = shards.map_batches(
        cast(Any, read_shards),
        fn_kwargs={
            "spec": spec,
            "columns": plan.columns,
            "passthrough": plan.passthrough,
        },
        batch_size=1,
        batch_format="numpy",
        num_cpus=0.25,
        **remote_args,
    )
    if spec.preprocess.workers > 1:
        # Ray Data hands each block to one CPU actor: unsplit, a shard (up to input.rows_per_shard
        # rows) was one block, preprocessed by one worker while the others idled.
        rows = rows.repartition(target_num_rows_per_block=spec.preprocess.batch_size)
    prepared = rows.map_batches(
        PreprocessStage,
        fn_constructor_kwargs={"spec": spec, "ledger": ledger},
        batch_size=spec.preprocess.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=spec.preprocess.workers),
        num_cpus=spec.preprocess.cpus_per_worker,
        **remote_args,
    )
    with warnings.catch_warnings():
        # `ray_remote_args_fn` (per-actor placement groups) is deprecated from Ray 2.60 without a
        # replacement yet; Ray Data LLM reserves its vLLM gangs the same way. Revisit with Ray >= 2.64.
        warnings.filterwarnings("ignore", message="`ray_remote_args_fn` is deprecated")
        answered = prepared.map_batches(
            GenerateStage,
            fn_constructor_kwargs={"spec": model_stage_spec(spec, resources), "ledger": ledger},
            batch_size=rows_per_model_call(spec),
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=spec.model.replicas),
            num_cpus=resources.cpus_per_model_actor,
            num_gpus=resources.gpus_per_model_actor,
            **remote_args,
            **model_actor_placement(spec, resources),
        )
    labelled = answered.map_batches(
        cast(Any, postprocess_batch), fn_kwargs={"spec": spec}, batch_format="pyarrow", num_cpus=0.25, **remote_args
    )
    return labelled.map_batches(
        cast(Any, write_batch),
        fn_kwargs={"spec": spec},
        batch_size=spec.output.rows_per_file,
        batch_format="pyarrow",
        num_cpus=0.25,
        **remote_args,
    )
