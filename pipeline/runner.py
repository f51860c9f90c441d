"""The driver: check everything that can fail fast, then execute the plan and report.

Order matters: the spec, the manifest (schema, null and duplicate ids), the task's
template, the model's source and the cluster's GPUs are all checked before any actor
starts, so a job-level mistake costs seconds and names its cause.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import JobError
from pipeline.progress import ProgressReporter, RunTracker, bar_safe, print_summary
from pipeline.prompts.tasks import resolve_spec
from pipeline.readers.manifest import ManifestPlan, check_ids
from pipeline.spec import JobSpec
from pipeline.storage import filesystem_for, join_uri

SUMMARY_FILE = "_summary.json"
PROGRESS_INTERVAL_S = float(os.environ.get("PIPELINE_PROGRESS_INTERVAL_S", "10"))


@dataclass
class CheckedJob:
    """A spec whose job-level checks passed, with what the checks learned."""

    spec: JobSpec
    plan: ManifestPlan
    uploads: dict[str, bytes] = field(default_factory=dict)  # a media listing's manifest parts, stored at run


def absolute_paths(spec: JobSpec) -> JobSpec:
    """Local relative paths made absolute on the driver: workers may run in another directory."""

    def absolute(path: str) -> str:
        return path if "://" in path else os.path.abspath(os.path.expanduser(path))

    return spec.model_copy(
        update={
            "input": spec.input.model_copy(update={"manifest": absolute(spec.input.manifest)}),
            "output": spec.output.model_copy(update={"path": absolute(spec.output.path)}),
        }
    )


def check_job(spec: JobSpec) -> CheckedJob:
    """Every check that needs no cluster and no model: spec rules, manifest contract, template columns."""
    from pipeline.readers.listing import plan_input
    from pipeline.readers.media import check_stores
    from pipeline.storage import resolved_storage
    from pipeline.validation import check_model_settings, check_task_columns

    spec = absolute_paths(resolve_spec(spec))
    spec = spec.model_copy(update={"storage": resolved_storage(spec.storage)})  # workers get the driver's endpoint
    inputs = plan_input(spec)  # a Parquet manifest, or a listing of media (whose ids are unique by construction)
    plan = inputs.plan
    check_task_columns(spec, plan)
    check_model_settings(spec)
    if not inputs.listed:
        check_ids(plan, spec.storage, spec.input.check_duplicates)
    check_stores(spec, plan, probe_media=not inputs.listed)
    return CheckedJob(spec=spec, plan=plan, uploads=inputs.uploads)


def connect_ray(spec: JobSpec) -> str:
    """Join a cluster, as Ray itself looks for one, or start a local instance.

    In order: ray.address (or RAY_ADDRESS, set for `ray job submit` drivers); else the
    cluster a `ray start` on this machine left running; else a new local instance sized
    for the job. `ray.address: local` always starts a new local instance.
    """
    import ray

    if ray.is_initialized():
        return "the Ray cluster of this process"
    address = spec.ray.address or os.environ.get("RAY_ADDRESS") or None
    if address and address != "local":
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise JobError(f"ray.address: cannot join the Ray cluster at {address}: {error}") from None
        return f"the Ray cluster at {address}"
    if address is None:
        try:
            ray.init(address="auto", logging_level=logging.WARNING)
            return "the running Ray cluster found on this machine"
        except ConnectionError:
            pass
    num_cpus = spec.ray.num_cpus or max(os.cpu_count() or 1, required_cpus(spec))
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    return f"a new local Ray instance ({num_cpus} CPUs)"


def required_cpus(spec: JobSpec) -> int:
    """Logical CPUs the stages reserve at once (a local cluster gets at least this many)."""
    model = spec.model.cpus_per_replica * spec.model.replicas * spec.model.tensor_parallel
    workers = spec.preprocess.cpus_per_worker * spec.preprocess.workers
    return int(model + workers + 1.999)


def decide_gpu(spec: JobSpec) -> bool:
    """Whether the model stage uses GPUs; fail fast when GPUs were asked for and the cluster has none."""
    import ray

    from pipeline.job import gpus_per_replica

    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    needed = gpus_per_replica(spec.model)
    if spec.model.device == "cuda" and gpus < needed:
        raise JobError(
            f"model.device is 'cuda' and each replica needs {needed} GPU(s), but the Ray cluster has {gpus:g}. "
            "Start the cluster on GPU nodes, or set model.device: cpu (slow) or auto"
        )
    if spec.model.device == "cpu":
        return False
    return gpus >= needed


def _write_summary(spec: JobSpec, summary: dict[str, Any]) -> None:
    import json

    fs, path = filesystem_for(join_uri(spec.output.path, SUMMARY_FILE), spec.storage)
    with fs.open(path, "wb") as handle:
        handle.write((json.dumps(summary, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def quiet_progress_bar_notice() -> None:
    """Ray Data warns 'Progress bars disabled. To enable, set ...' when we turn its bars off for
    a non-interactive log; the pipeline prints its own progress lines there, so the advice
    only misleads. Marking Ray's once-only key as used silences exactly that warning."""
    from ray.util.debug import log_once

    log_once("ray_data_progress_manager_disabled")


def execute(checked: CheckedJob, echo: Any = print) -> dict[str, Any]:
    """Run a checked job to the end; returns the summary."""
    from ray.data import DataContext

    from pipeline.job import build_dataset, release_model_stage_resources, stage_resources
    from pipeline.models.preflight import preflight_model
    from pipeline.resume import done_shards, mark_shard_done, prepare_output

    spec, plan = checked.spec, checked.plan
    preflight_model(spec)
    where = connect_ray(spec)
    echo(f"[pipeline] using {where}")
    use_gpu = decide_gpu(spec)
    prepare_output(spec, plan)
    if checked.uploads:
        from pipeline.readers.listing import store_listing

        store_listing(checked.uploads, spec.storage)
    done = done_shards(spec.output.path, spec.storage) if spec.output.mode == "resume" else set()
    pending = [shard for shard in plan.shards if shard.key not in done]
    tracker = RunTracker(
        total_rows=plan.total_rows,
        pending_rows=sum(shard.num_rows for shard in pending),
        skipped_shards=len(plan.shards) - len(pending),
    )
    echo(
        f"[pipeline] {plan.total_rows} manifest rows in {len(plan.shards)} shard(s); "
        f"{len(plan.shards) - len(pending)} shard(s) already complete; model {spec.model.name} on "
        f"{'GPU' if use_gpu else 'CPU'}; output {spec.output.path}"
    )
    interactive = sys.stderr.isatty()
    context = DataContext.get_current()
    context.enable_progress_bars = interactive
    if not interactive:
        quiet_progress_bar_notice()
    if pending:
        # Progress: per-stage counts from Ray Data's executor, a line every interval (bar-safe
        # when Ray Data draws its bars), the same counters as Ray metrics.
        from pipeline.metrics import RunMetrics
        from pipeline.stage_probe import probing

        reporter = ProgressReporter(
            tracker, bar_safe(echo) if interactive else echo, PROGRESS_INTERVAL_S, RunMetrics(spec.name).publish
        )
        try:
            with probing(tracker):
                dataset = build_dataset(spec, plan, pending, stage_resources(spec, use_gpu))
                with reporter:
                    for stats in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
                        for shard in tracker.update(stats):
                            mark_shard_done(spec.output.path, shard, spec.storage)
        finally:
            release_model_stage_resources()
    # Rows skipped inside partially done shards are counted as skipped, not pending.
    tracker.pending_rows = tracker.rows
    summary = tracker.summary(spec.name, spec.output.path, spec.model.name)
    _write_summary(spec, summary)
    return summary


def run(spec: JobSpec, echo: Any = print) -> dict[str, Any]:
    """Check and execute a job; print the summary."""
    checked = check_job(spec)
    summary = execute(checked, echo)
    print_summary(summary)
    return summary
