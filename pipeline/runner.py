"""The driver: check everything that can fail fast, then execute the plan and report.

Order matters: the spec, the manifest (schema, null and duplicate ids), the task's
template, the model's source and the cluster's GPUs are all checked before any actor
starts, so a job-level mistake costs seconds and names its cause.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import JobError, RunFailed, clean_message
from pipeline.layout import Layout
from pipeline.progress import ProgressReporter, RunTracker, bar_safe, print_summary
from pipeline.prompts.tasks import resolve_spec
from pipeline.readers.manifest import ManifestPlan, Shard, check_ids
from pipeline.spec import JobSpec
from pipeline.storage import filesystem_for, join_uri

logger = logging.getLogger(__name__)

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
    from pipeline.resume import check_resumable

    check_resumable(spec, plan)
    return CheckedJob(spec=spec, plan=plan, uploads=inputs.uploads)


def connect_ray(spec: JobSpec) -> tuple[str, int]:
    """Join a cluster, as Ray itself looks for one, or start a local instance; returns where,
    and the logical CPUs a local instance got beyond the machine's cores (`layout.spare_cpus`).

    In order: ray.address (or RAY_ADDRESS, set for `ray job submit` drivers); else the
    cluster a `ray start` on this machine left running; else a new local instance sized
    for the job. `ray.address: local` always starts a new local instance.
    """
    import ray

    from pipeline.layout import local_cluster

    if ray.is_initialized():
        return "the Ray cluster of this process", 0
    address = spec.ray.address or os.environ.get("RAY_ADDRESS") or None
    if address and address != "local":
        if not answers(address):
            raise JobError(
                f"ray.address: nothing answers at {address} (waited {PROBE_TIMEOUT_S:g} s). Check that the cluster "
                "is up (`ray status` on its head) and the address, or set ray.address: local to start one here"
            )
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise JobError(
                f"ray.address: cannot join the Ray cluster at {address}: {error}. Check that the cluster is up "
                "(`ray status` on its head) and the address, or set ray.address: local to start one here"
            ) from None
        return f"the Ray cluster at {address}", 0
    if address is None:
        found = cluster_started_here()
        if found is not None:
            try:
                ray.init(address=found, logging_level=logging.WARNING)
                return f"the running Ray cluster found on this machine ({found})", 0
            except ConnectionError:
                pass
    planned = local_cluster(spec, os.cpu_count() or 1)
    spare = 0 if spec.ray.num_cpus else planned.spare_cpus
    num_cpus = spec.ray.num_cpus or int(planned.cpus)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    return f"a new local Ray instance ({num_cpus} CPUs)", spare


PROBE_TIMEOUT_S = 3.0


def answers(address: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether something accepts a TCP connection at a plain HOST:PORT address.

    Ray's own connect to an address where nothing listens retries for minutes; a probe
    turns that into an immediate, clear error. Other forms (ray://, http://) are left to Ray.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "/" in address:
        return True
    host = host.strip("[]")  # an IPv6 literal, [::1]:6379
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def cluster_started_here() -> str | None:
    """The address the last `ray start` on this machine recorded, if its cluster still answers.

    A head that was killed, or a machine restored from a snapshot, leaves that record behind;
    joining it would hang, so a stale record counts as no cluster and `run` starts its own.
    """
    try:
        from ray._private.services import find_bootstrap_address  # where `ray.init("auto")` looks

        recorded = find_bootstrap_address(None)
    except Exception:  # a Ray without this helper: start a local instance
        return None
    if not recorded or not answers(recorded):
        return None
    return str(recorded)


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


def resolve_layout(spec: JobSpec, use_gpu: bool, spare: int, pending_rows: int) -> tuple[JobSpec, Layout]:
    """`spec` with its 'auto' stage sizes chosen for the connected cluster (`pipeline.layout`)."""
    from pipeline.layout import choose_layout, cluster_of_ray, replica_host_bytes, with_layout

    cpu_replicas = spec.model.replicas == "auto" and not use_gpu
    replica_bytes = replica_host_bytes(spec.model) if cpu_replicas else None
    cluster = cluster_of_ray(spare)
    layout = choose_layout(spec, cluster, use_gpu, replica_bytes, pending_rows)
    return with_layout(spec, layout), layout


def _write_summary(spec: JobSpec, summary: dict[str, Any]) -> None:
    import json

    from pipeline.writers.parquet import ParquetWriter

    text = json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
    ParquetWriter(spec.storage).write_bytes(text.encode("utf-8"), join_uri(spec.output.path, SUMMARY_FILE))


# A second pass over shards the first left unsealed (rows lost in flight, a seal that
# failed); more would only repeat a systematic failure.
MAX_PASSES = 2
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?([A-Z]\w*(?:Error|Exception|Failed)): (.+)$")


def root_cause(error: BaseException) -> tuple[str, str]:
    """The innermost exception's type name and first message line, through Ray's wrappers.

    Ray re-raises a worker's exception as a RayTaskError (with `.cause`, the original
    exception) or, for an actor whose constructor failed, as an ActorDiedError whose text
    holds the remote traceback; the last 'SomeError: message' line of that traceback is
    the cause.
    """
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        inner = getattr(current, "cause", None)
        current = inner if isinstance(inner, BaseException) else current.__cause__
    for exc in reversed(chain):  # a real exception object from the worker, innermost first
        text = str(exc).strip()
        if text and not type(exc).__module__.startswith("ray"):
            return type(exc).__name__, text.splitlines()[0]
    for exc in chain:  # else the remote traceback's last line
        matches = [m for line in str(exc).splitlines() if (m := _EXCEPTION_LINE.match(line.strip()))]
        if matches:
            return matches[-1].group(1), matches[-1].group(2)
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return type(error).__name__, first


def explain_failure(error: BaseException, rows_written: int) -> JobError:
    """One clear message for a run that failed inside Ray (instead of a page of Ray traceback)."""
    kind, message = root_cause(error)
    ours = kind in ("JobError", "SpecError")  # our own messages already name the field and the fix
    text = clean_message(message if ours else f"{kind}: {message}")
    stage = re.search(r"MapBatches\((\w+)\)", str(error))
    if getattr(error, "actor_init_failed", False) or "creation task" in str(error):
        where = f" ({stage.group(1)})" if stage else ""
        kept = "Nothing was written" if not rows_written else f"The {rows_written} row(s) written so far are kept"
        advice = (
            ""
            if ours
            else f". {kept}; fix the cause (the actor's log under the Ray session's logs folder has the full "
            "traceback) and re-run"
        )
        return JobError(f"the pipeline's actors{where} could not start: {text}{advice}")
    return RunFailed(
        f"the run failed: {text}. The {rows_written} row(s) written so far are kept; re-run the same command to "
        "resume (the worker logs under the Ray session's logs folder have the full traceback)"
    )


class Sealer:
    """Seals shards the statistics show complete, as small Ray tasks (workers read the ids)."""

    def __init__(self, spec: JobSpec, plan: ManifestPlan) -> None:
        import ray

        from pipeline.resume import seal_from_manifest

        self.spec = spec
        self.shards = {shard.key: shard for shard in plan.shards}
        self.task = ray.remote(num_cpus=0, max_retries=3)(seal_from_manifest)
        self.in_flight: list[Any] = []
        self.sealed: set[str] = set()
        self.unsealed: dict[str, str] = {}
        self.duplicates_removed = 0

    def submit(self, key: str) -> None:
        spec = self.spec
        self.in_flight.append(self.task.remote(spec.output.path, self.shards[key], spec.input.id_column, spec.storage))

    def collect(self, wait: bool = False) -> None:
        """Record finished seals (all of them with `wait`)."""
        import ray

        if not self.in_flight:
            return
        ready, self.in_flight = ray.wait(
            self.in_flight, num_returns=len(self.in_flight), timeout=None if wait else 0, fetch_local=True
        )
        for ref in ready:
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as error:  # the shard stays unsealed; the next pass retries it
                kind, message = root_cause(error)
                logger.warning("sealing a shard failed: %s: %s", kind, message)
                continue
            self.duplicates_removed += result.duplicates_removed
            if result.sealed:
                self.sealed.add(result.shard)
                self.unsealed.pop(result.shard, None)
            else:
                self.unsealed[result.shard] = f"{result.missing} of {result.rows} rows missing"


def _run_pass(dataset: Any, tracker: RunTracker, sealer: Sealer, lease: Any) -> None:
    """Consume one pass's statistics: seal shards as they complete, keep the lease alive."""
    # Ray Data warns when an actor pool gets fewer input blocks than actors, which every job
    # smaller than a shard per worker does; the pool's size is the user's choice, not a fault.
    warnings.filterwarnings("ignore", message="The minimum number of concurrent actors", category=UserWarning)
    try:
        for stats in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            for shard in tracker.update(stats):
                sealer.submit(shard)
            sealer.collect()
            lease.check()
    except (JobError, KeyboardInterrupt):
        raise
    except Exception as error:  # Ray's wrappers of whatever failed in a worker or the cluster
        raise explain_failure(error, tracker.rows) from error
    sealer.collect(wait=True)


def _unfinished(spec: JobSpec, shards: list[Shard], sealer: Sealer) -> list[Shard]:
    """Shards of this pass without a marker: one existence check each for those not sealed by the driver."""
    from pipeline.resume import shard_marker_name

    fs, root = filesystem_for(spec.output.path, spec.storage)
    return [
        shard
        for shard in shards
        if shard.key not in sealer.sealed and not fs.exists(f"{root}/{shard.key}/{shard_marker_name(shard.num_rows)}")
    ]


def _skipped_by_resume(plan: ManifestPlan, pending: list[Shard], tracker: RunTracker, lost: list[Shard]) -> int:
    """Rows that were already in the output when this run started."""
    pending_keys = {shard.key for shard in pending}
    lost_keys = {shard.key for shard in lost}
    skipped = sum(shard.num_rows for shard in plan.shards if shard.key not in pending_keys)
    for shard in pending:
        if shard.key in tracker.shard_todo:
            skipped += shard.num_rows - tracker.shard_todo[shard.key]
        elif shard.key not in lost_keys:  # sealed by its read task: everything was already there
            skipped += shard.num_rows
    return skipped


def quiet_progress_bar_notice() -> None:
    """Ray Data warns 'Progress bars disabled. To enable, set ...' when we turn its bars off for
    a non-interactive log; the pipeline prints its own progress lines there, so the advice
    only misleads. Marking Ray's once-only key as used silences exactly that warning."""
    from ray.util.debug import log_once

    log_once("ray_data_progress_manager_disabled")


def execute(checked: CheckedJob, echo: Any = print) -> dict[str, Any]:
    """Run a checked job to the end; returns the summary."""
    from ray.data import DataContext

    from pipeline.actors.guard import start_ledger
    from pipeline.job import build_dataset, release_model_stage_resources, stage_resources
    from pipeline.layout import cluster_of_ray, shortfall
    from pipeline.lease import LEASE_FILE, Lease
    from pipeline.models.preflight import preflight_model
    from pipeline.resume import done_shards, mark_job_complete, pending_shards, prepare_output

    spec, plan = checked.spec, checked.plan
    preflight_model(spec)
    where, spare = connect_ray(spec)
    echo(f"[pipeline] using {where}")
    use_gpu = decide_gpu(spec)
    lease = Lease(spec.output.path, spec.storage)
    lease.acquire()
    try:
        prepare_output(spec, plan, keep=(LEASE_FILE,))
        if checked.uploads:
            from pipeline.readers.listing import store_listing

            store_listing(checked.uploads, spec.storage)
        pending = pending_shards(plan, done_shards(spec.output.path, spec.storage))
        spec, layout = resolve_layout(spec, use_gpu, spare, sum(shard.num_rows for shard in pending))
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
        echo(f"[pipeline] {layout.replicas} replica(s), {layout.workers} CPU worker(s): {layout.reason}")
        problem = shortfall(spec, cluster_of_ray(spare), use_gpu)
        if problem:
            echo(f"[pipeline] warning: {problem}")
        interactive = sys.stderr.isatty()
        context = DataContext.get_current()
        context.enable_progress_bars = interactive
        if not interactive:
            quiet_progress_bar_notice()
        # Progress: per-stage counts from Ray Data's executor, a line every interval (bar-safe
        # when Ray Data draws its bars), the same counters as Ray metrics.
        from pipeline.metrics import RunMetrics
        from pipeline.stage_probe import probing

        reporter = ProgressReporter(
            tracker, bar_safe(echo) if interactive else echo, PROGRESS_INTERVAL_S, RunMetrics(spec.name).publish
        )
        remaining = pending
        sealer: Sealer | None = None
        try:
            with reporter:
                for attempt in range(MAX_PASSES):
                    if not remaining:
                        break
                    if attempt:
                        echo(f"[pipeline] another pass over {len(remaining)} unfinished shard(s)")
                    sealer = sealer or Sealer(spec, plan)
                    ledger = start_ledger()
                    tracker.shard_written.clear()  # counts of a pass are about that pass's read
                    tracker.shard_files.clear()
                    with probing(tracker):
                        dataset = build_dataset(spec, plan, remaining, stage_resources(spec, use_gpu), ledger)
                        _run_pass(dataset, tracker, sealer, lease)
                    remaining = _unfinished(spec, remaining, sealer)
        except (JobError, KeyboardInterrupt) as error:  # what this run did still goes on record
            partial = tracker.summary(spec.name, spec.output.path, spec.model.name)
            partial.update(complete=False, error=str(error) or "interrupted")
            try:
                _write_summary(spec, partial)
            except OSError as problem:
                logger.warning("could not write the summary: %s", problem)
            raise
        finally:
            release_model_stage_resources()
        skipped = _skipped_by_resume(plan, pending, tracker, remaining)
        tracker.pending_rows = plan.total_rows - skipped
        summary = tracker.summary(spec.name, spec.output.path, spec.model.name)
        summary["layout"] = {"replicas": layout.replicas, "cpu_workers": layout.workers, "reason": layout.reason}
        summary["shards_total"] = len(plan.shards)
        summary["shards_incomplete"] = len(remaining)
        summary["duplicates_removed"] = sealer.duplicates_removed if sealer else 0
        summary["complete"] = not remaining
        _write_summary(spec, summary)
        if remaining:
            reasons = "; ".join(
                f"{shard.key}: {sealer.unsealed.get(shard.key, 'not written') if sealer else 'not written'}"
                for shard in remaining[:5]
            )
            raise RunFailed(
                f"{len(remaining)} shard(s) are still incomplete after {MAX_PASSES} passes ({reasons}). What was "
                "written is kept; re-run the same command to resume"
            )
        mark_job_complete(spec.output.path, spec.storage)
        return summary
    finally:
        lease.release()


def run(spec: JobSpec, echo: Any = print) -> dict[str, Any]:
    """Check and execute a job; print the summary."""
    checked = check_job(spec)
    summary = execute(checked, echo)
    print_summary(summary)
    return summary
