"""Tensor-parallel replicas: one model replica spread over a gang of N Ray actors.

The gang lives in one placement group (PACK by default, STRICT_PACK to force one node),
one bundle - one GPU on CUDA - per rank. In a job the driver reserves it for each
model-stage actor (`reserve_gang`, Ray Data's `ray_remote_args_fn`, as Ray Data LLM does
for vLLM) and schedules that actor into it, so a restarted actor finds its bundles again
and the driver frees them all when the job ends (`release_reserved_gangs`). Each rank joins a torch.distributed process
group (NCCL on CUDA, gloo on CPU) at rank 0's address and a fresh port, then loads the
model with transformers' tensor-parallel plan: the language model's embeddings,
attention, MLP and lm_head are sharded, the vision tower and projector run whole on every
rank. Every rank must run every collective, so every rank gets the same batch (one
object in the object store) and runs the same generate call; rank 0's answers are
returned. In float32, greedy answers equal the single-process ones token for token.

A gang is all or nothing: if a rank dies, the others block in their next collective
forever. So the driving engine watches every call: when a rank dies - or a rank fails
and its peers are still blocked after a grace period - every rank is killed and the gang
is rebuilt in the same placement group (Ray re-places the bundles of a lost node), and a batch cut off by a death is
run again (`model.max_retries` times) on the new gang. The caller only ever sees one
answer per row, or an error it can turn into row errors.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import timedelta
from typing import Any

from pipeline.errors import JobError
from pipeline.models.engine import EncodedRequest, Engine, GenerationOptions, GenerationResult
from pipeline.spec import JobSpec, ModelSpec, StorageSpec

logger = logging.getLogger(__name__)

#: Seconds the gang's other ranks get to finish (or fail) after one rank failed; past it
#: they are taken to be blocked in a collective and the gang is rebuilt.
GRACE_S = float(os.environ.get("PIPELINE_TP_GRACE_S", "60"))
#: Seconds to wait for the cluster to place a gang's placement group.
PLACEMENT_TIMEOUT_S = float(os.environ.get("PIPELINE_TP_PLACEMENT_TIMEOUT_S", "900"))
#: Collective timeout of the process group (loading 78B can skew ranks by minutes).
PROCESS_GROUP_TIMEOUT = timedelta(hours=2)
#: Environment variables with this prefix (test fault hooks) are passed on to the ranks.
FAULT_ENV_PREFIX = "PIPELINE_FAULT_"
#: Test hook (not a mock): "RANK:PATH" makes that rank's process exit in the middle of its
#: first generate call, once (PATH marks that it happened), as a crashed GPU worker would.
FAULT_RANK_EXIT_ENV = "PIPELINE_FAULT_TP_RANK_EXIT"


class GangBroken(Exception):
    """The gang cannot go on: a rank died, or stalled in a collective after a peer failed.

    `cause` is a rank's own error when no rank died (e.g. out of memory on one rank):
    after the rebuild it is re-raised so that the stage can react to it (split the batch).
    """

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class ReplicaLost(RuntimeError):
    """A batch failed on `model.max_retries + 1` gangs in a row; its rows get errors."""


def device_layout(placements: list[tuple[str, list[str]]]) -> list[tuple[str, int]]:
    """CUDA_VISIBLE_DEVICES and LOCAL_RANK for each rank, from (node, GPU ids) per rank.

    Ray shows each actor only its own GPU; NCCL then cannot use peer-to-peer transfers
    (NVLink) between ranks on one node. Each rank is shown every GPU of the gang on its
    node instead, and picks its own by index.
    """
    by_node: dict[str, list[str]] = {}
    for node, gpu_ids in placements:
        by_node.setdefault(node, []).extend(gpu_ids)
    layout = []
    for node, gpu_ids in placements:
        visible = sorted(set(by_node[node]), key=lambda gpu: (len(gpu), gpu))
        layout.append((",".join(visible), visible.index(gpu_ids[0]) if gpu_ids else 0))
    return layout


def gang_uses_gpu(model: ModelSpec) -> bool:
    """Whether the ranks reserve GPUs (model.device as the driver resolved it; 'auto' asks the cluster)."""
    if model.device != "auto":
        return model.device == "cuda"
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0)) >= model.tensor_parallel


#: CPU the model-stage actor that drives a gang takes (it only sends batches to its ranks).
DRIVER_CPUS = 0.1
#: Placement groups this process (the job's driver) reserved for model-stage actors.
_RESERVED_GANGS: list[Any] = []


def gang_bundles(model: ModelSpec, use_gpu: bool) -> list[dict[str, float]]:
    """One bundle per rank (its CPUs and GPU); bundle 0 also holds the driving actor."""
    bundles = []
    for rank in range(model.tensor_parallel):
        bundle = {"CPU": model.cpus_per_replica + (DRIVER_CPUS if rank == 0 else 0.0)}
        if use_gpu:
            bundle["GPU"] = 1.0
        bundles.append(bundle)
    return bundles


def reserve_gang(model: ModelSpec, use_gpu: bool) -> dict[str, Any]:
    """Ray Data's `ray_remote_args_fn` for the model stage: a placement group per actor, the
    actor scheduled into its bundle 0 and its children (the ranks) captured by the group."""
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = placement_group(gang_bundles(model, use_gpu), strategy=model.placement_strategy)
    _RESERVED_GANGS.append(group)
    return {
        "scheduling_strategy": PlacementGroupSchedulingStrategy(
            group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
        )
    }


def release_reserved_gangs() -> None:
    """Free every gang this driver reserved (placement groups outlive the actors in them)."""
    if not _RESERVED_GANGS:
        return
    from ray.util.placement_group import remove_placement_group

    while _RESERVED_GANGS:
        remove_placement_group(_RESERVED_GANGS.pop())


class RankWorker:
    """One rank of a gang (a Ray actor): joins the process group, loads its shard, runs batches."""

    def __init__(self, rank: int, world_size: int) -> None:
        from pipeline.heap import keep_freed_memory

        keep_freed_memory()  # as a single-process replica: each batch reuses the last one's pages
        self.rank = rank
        self.world_size = world_size
        self.engine: Engine | None = None

    def placement(self) -> tuple[str, list[str]]:
        """This actor's node address and the ids of the GPUs Ray gave it."""
        import ray

        return ray.util.get_node_ip_address(), [str(gpu) for gpu in ray.get_gpu_ids()]

    def free_port(self) -> int:
        """A free TCP port on this node, for the process group's rendezvous."""
        with socket.socket() as probe:
            probe.bind(("", 0))
            return int(probe.getsockname()[1])

    def load(
        self,
        spec: ModelSpec,
        storage: StorageSpec,
        address: str,
        port: int,
        visible_devices: str,
        local_rank: int,
        use_gpu: bool,
    ) -> dict[str, Any]:
        """Join the process group and load this rank's shard of the model (all ranks at once)."""
        os.environ.update(
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size),
            LOCAL_RANK=str(local_rank),
            MASTER_ADDR=address,
            MASTER_PORT=str(port),
            CUDA_VISIBLE_DEVICES=visible_devices if use_gpu else "",
        )
        import torch
        import torch.distributed as dist

        from pipeline.models.loading import load_engine

        if use_gpu:
            torch.cuda.set_device(local_rank)  # before NCCL creates its communicator on "the current device"
        dist.init_process_group(
            "nccl" if use_gpu else "gloo",
            init_method=f"tcp://{address}:{port}",
            rank=self.rank,
            world_size=self.world_size,
            timeout=PROCESS_GROUP_TIMEOUT,
        )
        self.engine = load_engine(spec, storage, tensor_parallel=self.world_size)
        return {"max_context": self.engine.max_context}

    def encode(self, prompts: list[str]) -> list[list[int]]:
        """Token ids (no collectives: rank 0 alone answers these)."""
        assert self.engine is not None, "load() first"
        return self.engine.encode(prompts)

    def generate(self, batch: list[EncodedRequest], options: GenerationOptions) -> list[GenerationResult]:
        """This rank's part of a batch; every rank must be given the same batch."""
        assert self.engine is not None, "load() first"
        self._maybe_crash()
        return self.engine.generate(batch, options)

    def _maybe_crash(self) -> None:
        hook = os.environ.get(FAULT_RANK_EXIT_ENV)
        if not hook:
            return
        rank, _, marker = hook.partition(":")
        if int(rank) == self.rank and not os.path.exists(marker):
            with open(marker, "w", encoding="utf-8") as handle:
                handle.write(f"rank {self.rank} exited on purpose\n")
            os._exit(1)


class TensorParallelEngine(Engine):
    """A replica made of `model.tensor_parallel` rank actors, driven from this process.

    Inside a job this process is a model-stage actor scheduled into the gang's placement
    group (see `reserve_gang`); used on its own (tests, notebooks) it reserves and frees
    a group itself.
    """

    def __init__(self, spec: JobSpec) -> None:
        import ray

        self.model_spec = spec.model
        self.storage = spec.storage
        self.size = spec.model.tensor_parallel
        self.name = spec.model.name
        self.max_retries = spec.model.max_retries
        self.ranks: list[Any] = []
        #: Gangs built after the first (deaths survived); for logs and tests.
        self.rebuilds = 0
        self.group: Any = ray.util.get_current_placement_group()
        self.owns_group = self.group is None
        if self.group is None:
            self.group = self._reserve_own_group()
        self.use_gpu = "GPU" in self.group.bundle_specs[0]
        if len(self.group.bundle_specs) != self.size:
            raise JobError(
                f"model.tensor_parallel={self.size} but this model actor's placement group has "
                f"{len(self.group.bundle_specs)} bundles"
            )
        self._wait_until_placed()
        self._build_until_up()

    # ------------------------------------------------------------------ gang life cycle

    def _reserve_own_group(self) -> Any:
        from ray.util.placement_group import placement_group

        bundles = gang_bundles(self.model_spec, gang_uses_gpu(self.model_spec))
        return placement_group(bundles, strategy=self.model_spec.placement_strategy)

    def _wait_until_placed(self) -> None:
        import ray
        from ray.exceptions import GetTimeoutError

        try:
            ray.get(self.group.ready(), timeout=PLACEMENT_TIMEOUT_S)
        except GetTimeoutError:
            bundles = self.group.bundle_specs
            self.close()
            raise JobError(
                f"model.tensor_parallel={self.size}: the cluster could not place a gang of {bundles} "
                f"({self.model_spec.placement_strategy}) within {PLACEMENT_TIMEOUT_S:g}s; check `ray status`, lower "
                "model.replicas, or use PACK instead of STRICT_PACK"
            ) from None

    def _build_until_up(self) -> None:
        """Build a gang, again after a rank dies while starting (up to max_retries times)."""
        for attempt in range(self.max_retries + 1):
            try:
                self._build()
                return
            except GangBroken as broken:
                self._teardown()
                if broken.cause is not None:
                    raise broken.cause from None
                logger.warning("tensor-parallel gang failed to start (attempt %d): %s", attempt + 1, broken)
        raise ReplicaLost(f"a tensor-parallel gang of {self.size} ranks failed to start {self.max_retries + 1} times")

    def _build(self) -> None:
        """Start one rank actor per bundle, join them at rank 0's address, load the shards."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        forwarded = {key: value for key, value in os.environ.items() if key.startswith(FAULT_ENV_PREFIX)}
        worker = ray.remote(RankWorker)
        self.ranks = [
            worker.options(
                num_cpus=self.model_spec.cpus_per_replica,
                num_gpus=1 if self.use_gpu else 0,
                max_restarts=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=index),
                **({"runtime_env": {"env_vars": forwarded}} if forwarded else {}),
            ).remote(index, self.size)
            for index in range(self.size)
        ]
        placements = self._gather([rank.placement.remote() for rank in self.ranks])
        layout = device_layout(placements) if self.use_gpu else [("", 0)] * self.size
        port = self._gather([self.ranks[0].free_port.remote()])[0]  # a fresh port for every gang
        address = placements[0][0]
        infos = self._gather(
            [
                rank.load.remote(self.model_spec, self.storage, address, port, visible, local_rank, self.use_gpu)
                for rank, (visible, local_rank) in zip(self.ranks, layout, strict=True)
            ]
        )
        self.max_context = int(infos[0]["max_context"])

    def _teardown(self) -> None:
        """Kill every rank: a live one may be blocked in a collective that will never complete."""
        import ray

        for rank in self.ranks:
            ray.kill(rank, no_restart=True)
        self.ranks = []

    def _gather(self, refs: list[Any]) -> list[Any]:
        """Results of one call per rank, in rank order.

        A death raises GangBroken at once. A rank's own error waits for the others: if they
        all finish (all failed alike, or the failure came after the last collective) the
        gang is still in step and the error is raised as is; if some are still running
        GRACE_S later they are blocked in a collective, and the gang is broken.
        """
        import ray
        from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError

        index_of = {ref: index for index, ref in enumerate(refs)}
        results: dict[Any, Any] = {}
        failures: list[tuple[int, BaseException]] = []
        pending = list(refs)
        deadline: float | None = None
        while pending:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, pending = ray.wait(pending, num_returns=1, timeout=timeout)
            if not done:
                rank, cause = failures[0]
                raise GangBroken(
                    f"rank {rank} failed ({type(cause).__name__}: {cause}) and ranks "
                    f"{sorted(index_of[ref] for ref in pending)} were still blocked {GRACE_S:g}s later",
                    cause=cause,
                )
            ref = done[0]
            try:
                results[ref] = ray.get(ref)
            except (RayActorError, WorkerCrashedError) as error:
                raise GangBroken(f"rank {index_of[ref]} died: {str(error).splitlines()[0]}") from None
            except RayTaskError as error:
                failures.append((index_of[ref], error.cause if error.cause is not None else error))
                if deadline is None:
                    deadline = time.monotonic() + GRACE_S
        if failures:
            raise failures[0][1]
        return [results[ref] for ref in refs]

    def _rebuild(self, reason: GangBroken) -> None:
        logger.warning("tensor-parallel gang broken (%s); rebuilding it", reason)
        self._teardown()
        self.rebuilds += 1
        self._build_until_up()

    # ------------------------------------------------------------------ Engine

    def encode(self, prompts: list[str]) -> list[list[int]]:
        """Token ids, from rank 0's tokenizer."""
        for _ in range(self.max_retries + 1):
            try:
                return self._gather([self.ranks[0].encode.remote(prompts)])[0]
            except GangBroken as broken:
                self._rebuild(broken)
        raise ReplicaLost(f"rank 0 of the tensor-parallel gang died {self.max_retries + 1} times while tokenizing")

    def generate(self, batch: list[EncodedRequest], options: GenerationOptions) -> list[GenerationResult]:
        """Run the batch on every rank and return rank 0's answers; a batch cut off by a dead
        rank is run again on a rebuilt gang."""
        import ray

        for _ in range(self.max_retries + 1):
            shared = ray.put(batch)  # one copy of the tiles in the object store for all ranks
            try:
                return self._gather([rank.generate.remote(shared, options) for rank in self.ranks])[0]
            except GangBroken as broken:
                self._rebuild(broken)
                if broken.cause is not None:
                    raise broken.cause from None  # e.g. out of memory on one rank: the stage splits the batch
        raise ReplicaLost(
            f"a batch of {len(batch)} rows broke the tensor-parallel gang {self.max_retries + 1} times in a row"
        )

    def close(self) -> None:
        """Stop the gang (and free its placement group if this engine reserved it)."""
        self._teardown()
        if self.owns_group and self.group is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self.group)
            self.group = None
