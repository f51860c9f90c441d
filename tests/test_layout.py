"""'auto' stage sizes: what `choose_layout` picks for GPU, CPU and no-model jobs, on local
clusters (with the spare logical CPUs `run` adds) and joined ones; numbers in the spec win."""

from __future__ import annotations

import pytest

from pipeline.layout import (
    REPLICA_RUNTIME_BYTES,
    Cluster,
    Layout,
    choose_layout,
    cpu_workers_for,
    local_cluster,
    replica_host_bytes,
    resolved,
    shortfall,
    spare_cpus,
    with_layout,
)
from pipeline.spec import JobSpec, SpecError, parse_spec

GIB = 1024**3
TINY = float(REPLICA_RUNTIME_BYTES)  # tiny-random's weights are a rounding error


def spec(**sections: dict) -> JobSpec:
    data: dict = {"input": {"manifest": "m.parquet"}, "output": {"path": "out"}}
    data.update(sections)
    return parse_spec(data)


def local(cores: int, job: JobSpec, gpus: float = 0.0, memory_gib: float = 64.0) -> Cluster:
    """The local instance `run` starts on a machine of `cores` cores."""
    return local_cluster(job, cores, gpus, memory_gib * GIB)


def test_defaults_are_auto_and_counts_parse():
    job = spec()
    assert job.model.replicas == "auto" and job.preprocess.workers == "auto"
    assert spec(model={"replicas": "3"}).model.replicas == 3  # `--set model.replicas=3` text
    for bad in (0, -1, 2.5, True, "many"):
        with pytest.raises(SpecError, match=r"model\.replicas: .*whole number >= 1, or 'auto'"):
            spec(model={"replicas": bad})
    assert spec(preprocess={"workers": 0}).preprocess.workers == 0  # no CPU actors: the replicas prepare
    for bad in (-1, 2.5, "none"):
        with pytest.raises(SpecError, match=r"preprocess\.workers: .*whole number >= 0, or 'auto'"):
            spec(preprocess={"workers": bad})


def test_cpu_job_on_a_local_two_core_machine_gets_a_replica_per_core_preparing_its_own_rows():
    job = spec()
    cluster = local(2, job)
    assert cluster.cpus == 4 and cluster.spare_cpus == 2  # room for a CPU worker and the tasks
    layout = choose_layout(job, cluster, use_gpu=False, replica_bytes=TINY)
    assert (layout.replicas, layout.workers) == (2, 0) and "each prepares its own rows" in layout.reason
    assert choose_layout(job, local(16, job), use_gpu=False, replica_bytes=TINY).workers == 0  # 16 fill 16


def test_cpu_job_scales_workers_with_replicas_that_leave_cores():
    job = spec()
    tight = choose_layout(job, local(16, job, memory_gib=9), use_gpu=False, replica_bytes=3 * GIB)
    assert (tight.replicas, tight.workers) == (3, 1)  # 13 cores left: a worker prepares for the 3
    joined = choose_layout(job, Cluster(cpus=64, gpus=0, memory_bytes=512 * GIB), use_gpu=False, replica_bytes=TINY)
    assert (joined.replicas, joined.workers) == (50, 13)  # 50 + 13 + 1 for the tasks = 64
    assert cpu_workers_for(1) == 1 and cpu_workers_for(5) == 2


def test_cpu_replicas_fit_a_joined_cluster_and_its_memory():
    job = spec()
    joined = Cluster(cpus=4, gpus=0, memory_bytes=64 * GIB)  # taken at its word: no spare CPUs
    assert choose_layout(job, joined, use_gpu=False, replica_bytes=TINY).replicas == 2  # 2 + 1 worker + tasks
    small = Cluster(cpus=2, gpus=0, memory_bytes=64 * GIB)
    assert (choose_layout(job, small, False, TINY).replicas, choose_layout(job, small, False, TINY).workers) == (1, 1)
    tight = local(16, job, memory_gib=9)
    layout = choose_layout(job, tight, use_gpu=False, replica_bytes=3 * GIB)
    assert layout.replicas == 3 and "fit" in layout.reason


def test_cpu_replicas_of_an_unknown_size_stay_one():
    layout = choose_layout(spec(), local(8, spec()), use_gpu=False, replica_bytes=None)
    assert (layout.replicas, layout.workers) == (1, 1) and "unknown" in layout.reason


def test_cpu_replicas_take_cpus_per_replica_into_account():
    job = spec(model={"cpus_per_replica": 4})
    layout = choose_layout(job, local(16, job), use_gpu=False, replica_bytes=TINY)
    assert (layout.replicas, layout.workers) == (4, 0)  # 4 x 4 CPUs fill the 16 cores


def test_gpu_job_gets_a_replica_per_gpu_and_the_cpus_left_as_workers():
    job = spec()
    cluster = local(16, job, gpus=8)  # `run` added spare CPUs before it knew of the GPUs
    layout = choose_layout(job, cluster, use_gpu=True, replica_bytes=None)
    assert layout.replicas == 8
    assert layout.workers == 16 - 8  # the cores the replicas leave (the logical CPUs allow it)
    gangs = spec(model={"tensor_parallel": 4})
    assert choose_layout(gangs, Cluster(cpus=64, gpus=8, memory_bytes=GIB), True, None).replicas == 2
    joined = Cluster(cpus=64, gpus=8, memory_bytes=GIB)
    assert choose_layout(job, joined, True, None).workers == 64 - 8 - 1  # within the logical CPUs, tasks' room kept
    assert choose_layout(job, Cluster(cpus=2, gpus=1, memory_bytes=GIB), True, None).workers == 1  # never none


def test_no_model_gets_one_replica_and_the_cpus_as_workers():
    job = spec(model={"name": "none"})
    layout = choose_layout(job, local(8, job), use_gpu=False, replica_bytes=0.0)
    assert (layout.replicas, layout.workers) == (1, 8)  # the idle replica's CPU is only logical
    two = local(2, job)
    assert choose_layout(job, two, use_gpu=False, replica_bytes=0.0).workers == 2


def test_small_jobs_get_no_more_replicas_than_batches():
    job = spec(model={"batch_size": 4})
    layout = choose_layout(job, local(16, job), use_gpu=False, replica_bytes=TINY, pending_rows=7)
    assert (layout.replicas, layout.workers) == (2, 1) and "batch" in layout.reason  # cores left: a worker
    assert choose_layout(job, local(16, job), False, TINY, pending_rows=0).replicas == 1


def test_numbers_in_the_spec_are_kept():
    job = spec(model={"replicas": 3}, preprocess={"workers": 5})
    assert spare_cpus(job, 16) == 0  # nothing to choose: the local cluster is sized as before
    layout = choose_layout(job, local(16, job), use_gpu=True, replica_bytes=None)
    assert layout == Layout(replicas=3, workers=5, reason="as the spec says")
    assert with_layout(spec(preprocess={"cpus_per_worker": 2}), layout).preprocess.cpus_per_worker == 2
    fixed_workers = spec(preprocess={"workers": 3})
    assert choose_layout(fixed_workers, local(2, fixed_workers), False, TINY).workers == 3
    no_workers = spec(preprocess={"workers": 0})  # kept on GPUs too, where the GPU waits while its replica prepares
    on_gpus = choose_layout(no_workers, local(16, no_workers, gpus=8), use_gpu=True, replica_bytes=None)
    assert (on_gpus.replicas, on_gpus.workers) == (8, 0)


def test_with_layout_and_resolved():
    job = with_layout(spec(), Layout(replicas=2, workers=1, reason="test"))
    assert resolved(job.model.replicas, "model.replicas") == 2
    with pytest.raises(ValueError, match="still 'auto'"):
        resolved(spec().model.replicas, "model.replicas")


def test_replica_host_bytes_knows_family_members_and_not_unknown_models():
    assert replica_host_bytes(spec(model={"name": "none"}).model) == 0.0
    assert replica_host_bytes(spec().model) == pytest.approx(TINY, rel=0.01)  # tiny-random: runtime only
    one_b = replica_host_bytes(spec(model={"name": "OpenGVLab/InternVL3-1B-hf"}).model)
    assert one_b is not None and 3 * GIB < one_b - TINY < 5 * GIB  # ~0.9 B parameters in float32
    assert replica_host_bytes(spec(model={"name": "s3://bucket/some-model/"}).model) is None


def test_auto_workers_shrink_to_fit_a_small_joined_cluster_and_fixed_sizes_are_warned():
    job = spec()
    two = Cluster(cpus=2, gpus=0, memory_bytes=64 * GIB)  # `ray start --head` on a 2-core machine
    layout = choose_layout(job, two, use_gpu=False, replica_bytes=TINY)
    assert (layout.replicas, layout.workers, layout.cpus_per_worker) == (1, 1, 0.75)  # a task still fits
    sized = with_layout(job, layout)
    assert sized.preprocess.cpus_per_worker == 0.75 and shortfall(sized, two, use_gpu=False) is None
    two_workers = spec(preprocess={"workers": 2})
    fixed = with_layout(two_workers, choose_layout(two_workers, two, use_gpu=False, replica_bytes=TINY))
    warning = shortfall(fixed, two, use_gpu=False)
    assert warning is not None and "reserve 3.25 CPU(s)" in warning and "has 2 CPU(s)" in warning
    gpus = with_layout(spec(model={"replicas": 4}), Layout(replicas=4, workers=1, reason="test"))
    assert "4 GPU(s)" in (shortfall(gpus, Cluster(cpus=64, gpus=2, memory_bytes=GIB), use_gpu=True) or "")
