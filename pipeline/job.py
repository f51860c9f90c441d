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
from pipeline.spec import JobSpec

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


def stage_resources(spec: JobSpec, use_gpu: bool) -> StageResources:
    """Resources per model actor. A tensor-parallel gang's ranks reserve their own GPUs
    (see `pipeline.models.tensor_parallel`), so its driving actor takes none."""
    tp = spec.model.tensor_parallel
    gpus = 1.0 if use_gpu and tp == 1 and spec.model.device_map is None else 0.0
    if use_gpu and spec.model.device_map == "auto":
        gpus = float(tp)
    cpus = spec.model.cpus_per_replica if tp == 1 else 0.1
    return StageResources(use_gpu=use_gpu, gpus_per_model_actor=gpus, cpus_per_model_actor=cpus)


def rows_per_model_call(spec: JobSpec) -> int:
    """Rows handed to a replica per call: a window of several micro-batches, so that rows of
    similar length can be grouped (see `pipeline.actors.batching`)."""
    return spec.model.batch_size * 4


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
    prepared = rows.map_batches(
        PreprocessStage,
        fn_constructor_kwargs={"spec": spec, "ledger": ledger},
        batch_size=spec.preprocess.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=spec.preprocess.workers),
        num_cpus=spec.preprocess.cpus_per_worker,
        **remote_args,
    )
    answered = prepared.map_batches(
        GenerateStage,
        fn_constructor_kwargs={"spec": spec, "ledger": ledger},
        batch_size=rows_per_model_call(spec),
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=spec.model.replicas),
        num_cpus=resources.cpus_per_model_actor,
        num_gpus=resources.gpus_per_model_actor,
        **remote_args,
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
