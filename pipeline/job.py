"""Builds the Ray Data plan from a spec: the one place where stages are wired.

Building is pure: it does not start Ray, load a model or touch the output (Ray Data plans
are lazy; `pipeline.runner` executes them). Resources are declared here, next to the
stage that needs them.

    shards --read (tasks)--> manifest rows
           --preprocess (CPU actor pool)--> uint8 tiles + query, or a row error
           --generate (model actor pool: one replica per actor / gang)--> answers
           --postprocess + write (tasks)--> Parquet files; one stats row per file

With `preprocess.workers: 0` there is no CPU actor pool: the model actors take manifest
rows and prepare them themselves (`pipeline.actors.prepare_and_generate`).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import asdict, dataclass
from typing import Any, cast

from pipeline.layout import TASK_SLOT_CPUS, resolved
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


def splits_layers(model: ModelSpec) -> bool:
    """Whether a replica spreads its layers over its GPUs (accelerate's `device_map: auto`)
    rather than sharding each layer (tensor parallel): always so for quantised weights,
    which transformers cannot shard."""
    return model.device_map == "auto" or model.quantization is not None


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
WINDOWS_PER_REPLICA = 4  # a small job's windows shrink until each replica gets this many


def rows_per_model_call(spec: JobSpec, pending_rows: int | None = None) -> int:
    """Rows handed to a replica per call: a window of several micro-batches, so that rows of
    similar length can be grouped (see `pipeline.actors.batching`). 8 x batch_size keeps
    padding under 10% on mixed 1-13 tile images (`python -m pipeline bench batching`).

    A window is the unit Ray Data hands a replica, so a job of few windows per replica ends
    unevenly: replicas that drew their last window early wait for the one that drew it late,
    and a replica cannot start before a whole window is prepared. When the job's
    `pending_rows` would give a replica fewer than `WINDOWS_PER_REPLICA` default windows,
    the window shrinks (to a multiple of batch_size, at least one batch) until each gets
    that many. An explicit `model.batch_window` is used as it is."""
    if spec.model.batch_window:
        return spec.model.batch_window
    batch = spec.model.batch_size
    window = batch * WINDOW_BATCHES
    if pending_rows is None:
        return window
    replicas = resolved(spec.model.replicas, "model.replicas")
    share = -(-pending_rows // (replicas * WINDOWS_PER_REPLICA))  # ceil
    return min(window, max(batch, -(-share // batch) * batch))


def windows_in_flight(use_gpu: bool) -> int:
    """Windows Ray Data may hand one replica before it has finished the one it is on.

    Ray Data's default, two, lets a replica pull its next window while it answers one: on
    a GPU, where a window takes a second or two and may come from another node, that keeps
    the device busy. But the first replica to finish loading then takes two windows at
    once, and a replica that is ready a moment later finds none left: a job of few windows
    per replica ends one window late (a 64-row job on two CPU replicas took 26-29 s, or
    32-34 s in the 4 runs of 14 where one replica drew both windows). A CPU replica spends
    seconds to minutes on a window, and its next one is already in this node's object
    store, so waiting for it costs nothing measurable: on CPUs each replica takes one
    window at a time."""
    return 2 if use_gpu else 1


def in_blocks_of(dataset: Any, rows: int, remote_args: dict[str, Any]) -> Any:
    """`dataset` cut into blocks of `rows` rows (Ray Data's streaming repartition), fused into
    the map stage that produced `dataset`, whose `remote_args` it must then share.

    Ray 2.60's `repartition` takes no resources, so its tasks would each ask for a whole
    CPU: they did not fuse with the read stage (0.25 CPU), and a job whose actors had
    reserved every CPU (a tensor-parallel gang on a small node) waited for one forever.
    Giving the repartition the read stage's arguments fuses the two: one task reads a
    shard and cuts it. The logical operator is Ray's internal; tests/test_batching.py
    checks the blocks, and tests/test_tensor_parallel.py a job with every CPU reserved."""
    split = dataset.repartition(target_num_rows_per_block=rows)
    split._logical_plan.dag.ray_remote_args.update(remote_args)
    return split


def manifest_rows(spec: JobSpec, plan: ManifestPlan, pending: list[Shard], block_rows: int) -> Any:
    """The lazy dataset of manifest rows read from the pending shards, in blocks of `block_rows`.

    The rows are cut into blocks of one batch of the stage that takes them (a CPU batch,
    or a model window where the replicas prepare their own rows), so that each of its calls
    is a task of its own. Ray Data hands a block to one actor: a whole shard went to one
    worker while the others idled. And it merges a task's outputs into blocks of over
    128 MiB (24 rows of 10-tile images), which the model stage's windows then took whole
    (72, 72, 72 and 40 rows for a 256-row job, windows of 64). With one batch per task a
    block is one batch (unless it exceeds 192 MiB, which Ray Data splits), so windows that
    are a multiple of the CPU batch come out exact."""
    import ray.data

    from pipeline.actors.read import read_shards

    read_args = {"num_cpus": TASK_SLOT_CPUS, **stage_remote_args()}
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
        **read_args,
    )
    return in_blocks_of(rows, block_rows, read_args)


def prepared_rows(spec: JobSpec, plan: ManifestPlan, pending: list[Shard], ledger: Any | None = None) -> Any:
    """The lazy dataset of the CPU stage's output: manifest rows read from the pending shards,
    then tiles and queries (or row errors), one block per CPU batch."""
    import ray.data

    from pipeline.actors.preprocess import PreprocessStage

    rows = manifest_rows(spec, plan, pending, spec.preprocess.batch_size)
    return rows.map_batches(
        PreprocessStage,
        fn_constructor_kwargs={"spec": spec, "ledger": ledger},
        batch_size=spec.preprocess.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=resolved(spec.preprocess.workers, "preprocess.workers")),
        num_cpus=spec.preprocess.cpus_per_worker,
        **stage_remote_args(),
    )


def replicas_prepare(spec: JobSpec) -> bool:
    """Whether the model replicas prepare their own rows: a job without CPU actors
    (`preprocess.workers: 0`, which 'auto' chooses where CPU replicas fill the cores; see
    `pipeline.actors.prepare_and_generate`)."""
    return resolved(spec.preprocess.workers, "preprocess.workers") == 0


def build_dataset(
    spec: JobSpec, plan: ManifestPlan, pending: list[Shard], resources: StageResources, ledger: Any | None = None
) -> Any:
    """The lazy Ray Data dataset whose rows are write statistics. `ledger` is the run's crash
    ledger actor (see `pipeline.actors.guard`)."""
    import ray.data

    from pipeline.actors.generate import GenerateStage
    from pipeline.actors.prepare_and_generate import PrepareAndGenerateStage
    from pipeline.actors.write import postprocess_batch, write_batch

    remote_args = stage_remote_args()
    window = rows_per_model_call(spec, sum(shard.num_rows for shard in pending))
    model_stage: type[GenerateStage] | type[PrepareAndGenerateStage]
    if replicas_prepare(spec):
        model_input, model_stage = manifest_rows(spec, plan, pending, window), PrepareAndGenerateStage
    else:
        model_input, model_stage = prepared_rows(spec, plan, pending, ledger), GenerateStage
    with warnings.catch_warnings():
        # `ray_remote_args_fn` (per-actor placement groups) is deprecated from Ray 2.60 without a
        # replacement yet; Ray Data LLM reserves its vLLM gangs the same way. Revisit with Ray >= 2.64.
        warnings.filterwarnings("ignore", message="`ray_remote_args_fn` is deprecated")
        answered = model_input.map_batches(
            model_stage,
            fn_constructor_kwargs={"spec": model_stage_spec(spec, resources), "ledger": ledger},
            batch_size=window,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(
                size=resolved(spec.model.replicas, "model.replicas"),
                max_tasks_in_flight_per_actor=windows_in_flight(resources.use_gpu),
            ),
            num_cpus=resources.cpus_per_model_actor,
            num_gpus=resources.gpus_per_model_actor,
            **remote_args,
            **model_actor_placement(spec, resources),
        )
    labelled = answered.map_batches(
        cast(Any, postprocess_batch),
        fn_kwargs={"spec": spec},
        batch_format="pyarrow",
        num_cpus=TASK_SLOT_CPUS,
        **remote_args,
    )
    return labelled.map_batches(
        cast(Any, write_batch),
        fn_kwargs={"spec": spec},
        batch_size=spec.output.rows_per_file,
        batch_format="pyarrow",
        num_cpus=TASK_SLOT_CPUS,
        **remote_args,
    )
