"""How many model replicas and CPU workers a job runs when its spec says 'auto' (the default).

Which stage bounds a job depends on where the model runs, and the driver knows that only
once it has joined its cluster, so the sizes are chosen there (`choose_layout`), from what
Ray reports, and written into the spec the stages are built from. A number in the spec is
always used as it is.

- **Model on GPUs**: the model stage is fast and the CPU stage must keep it fed (design.md:
  GPUs sit at 12-20% where decoding starves them). A replica for every `gpus_per_replica`
  GPUs of the cluster, and a CPU worker on every core the replicas leave, within the
  logical CPUs that the replicas and `TASK_CPUS` (the read and write tasks) leave.
- **Model on CPUs**: the model is the bottleneck by far (tiny-random needs ~255 ms of CPU a
  row on one thread, the CPU stage ~45 ms; a real model needs far more), and one
  single-threaded replica per core is the fastest layout measured (BENCHMARKS.md: a median
  1.9x a sequential script on 2 cores, against 1.0x to 1.4x for one replica and two
  workers). So a replica per `model.cpus_per_replica` CPUs, as many as the cluster's memory
  holds (one when the model's size cannot be known without downloading it). Where the
  replicas fill the cores (a local run whose memory holds a replica per core), no CPU
  worker: each replica prepares its own rows (`pipeline.actors.prepare_and_generate`), which
  measured faster than a worker taking its share of the same cores (BENCHMARKS.md, "The CPU
  stage in the replicas, again"). Otherwise one CPU worker per `REPLICAS_PER_CPU_WORKER`
  replicas, on the cores they leave. Since the replicas' number is known only once the
  memory is, a local cluster that `run` starts is given room for those workers in logical
  CPUs beyond the machine's cores (`spare_cpus`); a cluster the job joins is taken at its
  word, and the replicas fit in what the workers and tasks leave (so they never fill it).
- **No model** (`model.name: none`, a benchmarking tool): the engine costs nothing, so one
  replica, and a CPU worker on every core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.spec import JobSpec, ModelSpec

#: Logical CPUs one read, postprocess or write task reserves (pipeline/job.py).
TASK_SLOT_CPUS = 0.25
#: Logical CPUs 'auto' sizes keep free of actors for those tasks: four at a time.
TASK_CPUS = 4 * TASK_SLOT_CPUS
#: Least CPU an 'auto' CPU worker reserves when it must shrink to fit a small cluster.
MIN_WORKER_CPUS = 0.1
#: CPU replicas one CPU worker feeds: the CPU stage is 5x to 6x cheaper a row than even
#: tiny-random on one thread, and a real model is slower still; 4 leaves a margin for video.
REPLICAS_PER_CPU_WORKER = 4
#: Host memory a CPU replica needs beyond its weights: torch, transformers, the window's
#: tiles and pixel buffer, activations (a tiny-random replica's resident set: ~1.1 GiB).
REPLICA_RUNTIME_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class Cluster:
    """What the driver's Ray cluster offers, as Ray reports it."""

    cpus: float  # logical CPUs
    gpus: float
    memory_bytes: float  # Ray's `memory` resource: what actors may use, object store excluded
    spare_cpus: int = 0  # logical CPUs `run` added to a local cluster beyond its cores (see `spare_cpus`)

    @property
    def cores(self) -> float:
        """The CPUs that are cores: the logical CPUs less the spare ones `run` added."""
        return self.cpus - self.spare_cpus


@dataclass(frozen=True)
class Layout:
    """The stage sizes a job runs with, and why (for the log and the summary)."""

    replicas: int
    workers: int
    reason: str
    cpus_per_worker: float | None = None  # set where 'auto' workers had to shrink to fit; else the spec's


def resolved(size: int | Literal["auto"], key: str) -> int:
    """A stage size the stages are built with: 'auto' must have been chosen by then."""
    if size == "auto":
        raise ValueError(f"{key} is still 'auto': choose_layout decides it once the cluster is known")
    return size


def cpu_workers_for(replicas: int) -> int:
    """CPU workers that feed `replicas` CPU replicas."""
    return max(1, math.ceil(replicas / REPLICAS_PER_CPU_WORKER))


def spare_cpus(spec: JobSpec, cores: int) -> int:
    """Logical CPUs beyond `cores` that a local cluster for `spec` should get: room for the
    CPU workers and tasks next to a replica per core. Only 'auto' sizes need it; on a GPU
    machine `choose_layout` leaves the spare ones out of its count of workers."""
    if "auto" not in (spec.model.replicas, spec.preprocess.workers):
        return 0
    workers = spec.preprocess.workers if spec.preprocess.workers != "auto" else cpu_workers_for(cores)
    return math.ceil(workers * spec.preprocess.cpus_per_worker + TASK_CPUS)


def required_cpus(spec: JobSpec) -> int:
    """Logical CPUs the stages reserve at once, the tasks' included; an 'auto' size counts
    as one here (`spare_cpus` makes room for more)."""
    replicas = 1 if spec.model.replicas == "auto" else spec.model.replicas
    workers = 1 if spec.preprocess.workers == "auto" else spec.preprocess.workers
    model = spec.model.cpus_per_replica * replicas * spec.model.tensor_parallel
    return int(model + spec.preprocess.cpus_per_worker * workers + 1.999)


def local_cluster(spec: JobSpec, cores: int, gpus: float = 0.0, memory_bytes: float = 0.0) -> Cluster:
    """The local instance `run` starts for `spec` on a machine of `cores` cores: the cores,
    the spare CPUs 'auto' sizes need, and at least what the stages reserve."""
    spare = spare_cpus(spec, cores)
    return Cluster(cpus=max(cores + spare, required_cpus(spec)), gpus=gpus, memory_bytes=memory_bytes, spare_cpus=spare)


def model_cpus_per_replica(model: ModelSpec) -> float:
    """Logical CPUs one replica reserves: its process, or a gang's ranks and driving actor."""
    if model.tensor_parallel > 1:
        from pipeline.models.tensor_parallel import DRIVER_CPUS

        return model.tensor_parallel * model.cpus_per_replica + DRIVER_CPUS
    return model.cpus_per_replica


def replica_host_bytes(model: ModelSpec) -> float | None:
    """Host memory one CPU replica of `model` needs, or None when its size cannot be known
    without downloading it (a hub id outside the InternVL3 family, an s3:// prefix)."""
    from pipeline.models.family import shape_for
    from pipeline.models.loading import NO_MODEL

    if model.name == NO_MODEL:
        return 0.0
    shape = shape_for(model)
    if shape is None:
        return None
    dtype = "float32" if model.dtype == "auto" else model.dtype
    return sum(shape.weight_bytes(dtype, model.quantization)) + REPLICA_RUNTIME_BYTES


def choose_layout(
    spec: JobSpec, cluster: Cluster, use_gpu: bool, replica_bytes: float | None, pending_rows: int | None = None
) -> Layout:
    """The replicas and CPU workers for `spec` on `cluster` (see the module's docstring).
    `replica_bytes` is `replica_host_bytes(spec.model)`, used for CPU replicas only; a job
    of `pending_rows` rows gets no more 'auto' replicas than it has batches of
    `model.batch_size` (a replica without a batch would only load the model)."""
    from pipeline.models.loading import NO_MODEL

    model, preprocess = spec.model, spec.preprocess
    feeds_cpu_replicas = not use_gpu and model.name != NO_MODEL
    reasons: list[str] = []
    if model.replicas != "auto":
        replicas = model.replicas
    elif feeds_cpu_replicas:
        replicas = _cpu_replicas(spec, cluster, replica_bytes, reasons)
    elif use_gpu:
        from pipeline.job import gpus_per_replica

        span = gpus_per_replica(model)
        replicas = max(1, int(cluster.gpus // span))
        reasons.append(f"a replica per {span} of the cluster's {cluster.gpus:g} GPU(s)")
    else:
        replicas = 1
        reasons.append("one replica (no model)")
    if model.replicas == "auto" and pending_rows is not None:
        batches = max(1, math.ceil(pending_rows / model.batch_size))
        if batches < replicas:
            replicas = batches
            reasons.append(f"no more than the job's {batches} batch(es)")
    if preprocess.workers != "auto":
        workers = preprocess.workers
    elif feeds_cpu_replicas and replicas * model_cpus_per_replica(model) >= cluster.cores:
        workers = 0
        reasons.append("no CPU worker: the replicas fill the cores, so each prepares its own rows")
    elif feeds_cpu_replicas:
        workers = cpu_workers_for(replicas)
        reasons.append(f"a CPU worker per {REPLICAS_PER_CPU_WORKER} CPU replicas")
    else:
        workers = _feeding_workers(spec, cluster, replicas, busy_replicas=use_gpu)
        reasons.append("CPU workers on the cores the replicas leave")
    per_worker = None
    if preprocess.workers == "auto":
        # A small cluster the job joins (`ray start --head` on 2 cores) has no room for a task
        # next to a replica and a worker of one CPU each; all three would wait forever.
        left = cluster.cpus - replicas * model_cpus_per_replica(model) - TASK_SLOT_CPUS
        if workers * preprocess.cpus_per_worker > left >= workers * MIN_WORKER_CPUS:
            per_worker = math.floor(left / workers * 100) / 100
            reasons.append(f"each CPU worker reserves {per_worker:g} CPU to fit the cluster's {cluster.cpus:g}")
    return Layout(
        replicas=replicas, workers=workers, reason="; ".join(reasons) or "as the spec says", cpus_per_worker=per_worker
    )


def shortfall(spec: JobSpec, cluster: Cluster, use_gpu: bool) -> str | None:
    """What the stages of a sized `spec` reserve beyond what `cluster` has now, or None.

    Not an error: an autoscaling cluster grows to fit; a fixed one would wait forever, so the
    driver says so before it starts."""
    from pipeline.job import gpus_per_replica

    replicas = resolved(spec.model.replicas, "model.replicas")
    workers = resolved(spec.preprocess.workers, "preprocess.workers")
    cpus = replicas * model_cpus_per_replica(spec.model) + workers * spec.preprocess.cpus_per_worker + TASK_SLOT_CPUS
    gpus = replicas * gpus_per_replica(spec.model) if use_gpu else 0
    if cpus <= cluster.cpus + 1e-9 and gpus <= cluster.gpus:
        return None
    need = f"{cpus:g} CPU(s)" + (f" and {gpus} GPU(s)" if gpus else "")
    have = f"{cluster.cpus:g} CPU(s)" + (f" and {cluster.gpus:g} GPU(s)" if gpus else "")
    return (
        f"the stages reserve {need} ({replicas} replica(s), {workers} CPU worker(s) of "
        f"{spec.preprocess.cpus_per_worker:g} CPU, {TASK_SLOT_CPUS:g} for a read or write task) but the cluster has "
        f"{have} now: the job waits until it grows. Lower model.replicas, preprocess.workers or "
        "preprocess.cpus_per_worker (or leave them 'auto'), or give the cluster more (ray start --num-cpus N)"
    )


def _feeding_workers(spec: JobSpec, cluster: Cluster, replicas: int, busy_replicas: bool) -> int:
    """'auto' CPU workers where the CPU stage bounds the job: the cores that the replicas do
    not keep busy (a GPU replica's process feeds its GPU; a no-model replica idles), within
    the cluster's logical CPUs next to the replicas' reservations and the tasks'."""
    per_replica = model_cpus_per_replica(spec.model)
    per_worker = spec.preprocess.cpus_per_worker
    cores = cluster.cores - (replicas * per_replica if busy_replicas else 0.0)
    logical = cluster.cpus - replicas * per_replica - TASK_CPUS
    return max(1, int(min(cores, logical) // per_worker))


def _cpu_replicas(spec: JobSpec, cluster: Cluster, replica_bytes: float | None, reasons: list[str]) -> int:
    """'auto' replicas on CPUs: one per core, within the cluster's logical CPUs and memory."""
    if replica_bytes is None:
        reasons.append("one replica: the model's size is unknown before it loads")
        return 1
    per_replica = model_cpus_per_replica(spec.model)
    preprocess = spec.preprocess

    def reserved(replicas: int) -> float:
        workers = preprocess.workers if preprocess.workers != "auto" else cpu_workers_for(replicas)
        return replicas * per_replica + workers * preprocess.cpus_per_worker + TASK_CPUS

    replicas = max(1, int(cluster.cores // per_replica))
    while replicas > 1 and reserved(replicas) > cluster.cpus:
        replicas -= 1
    reasons.append(f"a replica per {per_replica:g} CPU(s)")
    if replica_bytes > 0 and replicas * replica_bytes > cluster.memory_bytes:
        replicas = max(1, int(cluster.memory_bytes // replica_bytes))
        gib = 1024**3
        reasons.append(f"{replicas} of {replica_bytes / gib:.1f} GiB fit its {cluster.memory_bytes / gib:.1f} GiB")
    return replicas


def with_layout(spec: JobSpec, layout: Layout) -> JobSpec:
    """`spec` with its stage sizes set to `layout`'s numbers."""
    preprocess: dict[str, Any] = {"workers": layout.workers}
    if layout.cpus_per_worker is not None:
        preprocess["cpus_per_worker"] = layout.cpus_per_worker
    return spec.model_copy(
        update={
            "model": spec.model.model_copy(update={"replicas": layout.replicas}),
            "preprocess": spec.preprocess.model_copy(update=preprocess),
        }
    )


def cluster_of_ray(spare: int = 0) -> Cluster:
    """The connected Ray cluster's CPUs, GPUs and actor memory."""
    import ray

    resources: dict[str, Any] = ray.cluster_resources()
    return Cluster(
        cpus=float(resources.get("CPU", 0.0)),
        gpus=float(resources.get("GPU", 0.0)),
        memory_bytes=float(resources.get("memory", 0.0)),
        spare_cpus=spare,
    )
