"""Command line: `python -m pipeline COMMAND ...`.

Commands import what they need when they run, so `--help` is instant and works on a
machine without torch, a GPU or a cluster.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar, cast

import click

F = TypeVar("F", bound=Callable[..., Any])

EXIT_JOB_ERROR = 2
EXIT_RUN_FAILED = 1


def job_errors_exit(command: F) -> F:
    """Print job-level errors as one clear message and exit non-zero (no traceback)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pipeline.errors import JobError, RunFailed
        from pipeline.spec import SpecError
        from pipeline.storage import redact

        try:
            return command(*args, **kwargs)
        except (JobError, SpecError) as error:
            click.echo(f"error: {redact(str(error))}", err=True)
            sys.exit(EXIT_RUN_FAILED if isinstance(error, RunFailed) else EXIT_JOB_ERROR)
        except Exception as error:
            if not _object_store_unreachable(error):
                raise
            click.echo(
                f"error: cannot reach the object store ({type(error).__name__}: {redact(str(error))}). "
                "Check storage.endpoint_url (or AWS_ENDPOINT_URL), the network, and your AWS credentials",
                err=True,
            )
            sys.exit(EXIT_JOB_ERROR)

    return wrapper  # type: ignore[return-value]


# Set by a command that only reads and prints once it has finished (see `exits_without_teardown`).
_finished_without_needing_teardown: list[bool] = []


def exits_without_teardown(command: F) -> F:
    """Mark a command that only reads and prints: once it has returned, `entry` flushes and
    leaves the process at once, skipping the interpreter's teardown.

    Arrow's native threads can still be winding down when the interpreter tears down, and
    the C++ runtime then aborts the process ("terminate called without an active
    exception", apache/arrow#34314): a complete answer on stdout with exit status -6,
    seen twice in `pipeline inspect` under the test suite's load. Such a command holds
    nothing that needs the teardown: its files are closed, it starts no processes."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = command(*args, **kwargs)
        _finished_without_needing_teardown.append(True)
        return result

    return cast(F, wrapper)


def _object_store_unreachable(error: Exception) -> bool:
    """botocore's connection and credential errors, which s3fs passes through as they are
    (not as OSError), so that the checks that catch OSError miss them."""
    try:
        from botocore.exceptions import BotoCoreError
    except ImportError:
        return False
    return isinstance(error, BotoCoreError)


set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a spec field, e.g. --set model.batch_size=16 (repeatable).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """Batch inference with InternVL3 on Ray Data: captions, OCR and moderation labels for
    millions of images and videos, from a Parquet manifest to Parquet results."""


def entry() -> None:
    """The program's entry point (`python -m pipeline`, the `internvl-pipeline` script): `main`,
    then, after a command marked `exits_without_teardown` succeeded, an immediate exit."""
    _finished_without_needing_teardown.clear()
    try:
        main()
    except SystemExit as done:
        if done.code in (None, 0) and _finished_without_needing_teardown:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        raise


@main.command()
@click.argument("job", type=click.Path(dir_okay=False))
@set_option
@job_errors_exit
def run(job: str, overrides: tuple[str, ...]) -> None:
    """Run JOB (a YAML job spec) on the Ray cluster found (RAY_ADDRESS, job context) or a new local one."""
    from pipeline.runner import run as run_job
    from pipeline.spec import load_spec

    spec = load_spec(job, list(overrides))
    try:
        run_job(spec, echo=lambda line: click.echo(line, err=True))
    except KeyboardInterrupt:
        click.echo("interrupted; re-run the same command to resume", err=True)
        sys.exit(130)


@main.command()
@click.argument("job", type=click.Path(dir_okay=False))
@set_option
@job_errors_exit
def validate(job: str, overrides: tuple[str, ...]) -> None:
    """Check JOB's spec and manifest (columns, null and duplicate ids, templates); loads no model."""
    from pipeline.runner import check_job
    from pipeline.spec import load_spec

    checked = check_job(load_spec(job, list(overrides)))
    spec, plan = checked.spec, checked.plan
    click.echo(
        f"ok: {job}: {plan.total_rows} rows in {len(plan.files)} file(s), {len(plan.shards)} shard(s); "
        f"task {spec.task.kind}, model {spec.model.name}, max_tiles {spec.preprocess.max_tiles}, "
        f"max_new_tokens {spec.task.max_new_tokens}; output {spec.output.path} ({spec.output.mode})"
    )


@main.command(name="spec")
def spec_reference() -> None:
    """Print every job-spec field with its default and description."""
    from pipeline.spec_docs import spec_reference_markdown

    click.echo(spec_reference_markdown())


@main.command()
@click.argument("job", type=click.Path(dir_okay=False))
@click.option(
    "--address",
    default=None,
    help="The cluster's job API, e.g. http://HEAD:8265 (default RAY_API_SERVER_ADDRESS or RAY_ADDRESS).",
)
@click.option("--follow", is_flag=True, help="Stream the job's logs and exit with its status (0 only on success).")
@click.option(
    "--working-dir",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Folder shipped as the job's working directory (default: this project's folder).",
)
@click.option("--submission-id", default=None, help="A unique id for the job (default: Ray makes one).")
@set_option
@job_errors_exit
def submit(
    job: str,
    address: str | None,
    follow: bool,
    working_dir: str | None,
    submission_id: str | None,
    overrides: tuple[str, ...],
) -> None:
    """Submit JOB to a Ray cluster: ships this project as the working dir with the spec's runtime_env,
    runs `python -m pipeline run JOB` there, prints the job id; --follow streams the logs."""
    from pathlib import Path

    from pipeline import submit as submission

    where = submission.api_address(address)
    folder = Path(working_dir) if working_dir else submission.project_root()
    spec, plan = submission.prepare(job, list(overrides), folder)
    for warning in submission.path_warnings(spec):
        click.echo(f"warning: {warning}", err=True)
    client = submission.connect(where)
    job_id = submission.submit(client, plan, spec, submission_id)
    click.echo(job_id)
    if not follow:
        click.echo(
            f"submitted {spec.name!r} to {where}; follow it with: ray job logs --follow --address {where} {job_id}",
            err=True,
        )
        return
    try:
        status = submission.follow(client, job_id, lambda text: click.echo(text, nl=False))
    except KeyboardInterrupt:
        click.echo(
            f"\nstopped following; the job keeps running (stop it with: ray job stop --address {where} {job_id})",
            err=True,
        )
        sys.exit(130)
    click.echo(f"job {job_id} {status}", err=True)
    sys.exit(0 if status == "SUCCEEDED" else EXIT_RUN_FAILED)


@main.command()
@click.argument("source")
@click.option("-o", "--output", required=True, help="The manifest to write: a .parquet path, local or s3://.")
@click.option("--endpoint-url", default=None, help="S3-compatible endpoint (default AWS_ENDPOINT_URL).")
@click.option("--region", default=None, help="S3 region (default AWS_REGION).")
@click.option("--rows-per-group", default=10_000, show_default=True, help="Rows per Parquet row group.")
@job_errors_exit
def manifest(source: str, output: str, endpoint_url: str | None, region: str | None, rows_per_group: int) -> None:
    """List the images and videos under SOURCE (a folder, an s3:// prefix, or a quoted glob such as
    's3://bucket/photos/**/*.jpg') into a manifest: id (the key relative to SOURCE), uri, media_type,
    size_bytes."""
    from collections import Counter

    from pipeline.errors import JobError
    from pipeline.readers.listing import list_media, write_listing
    from pipeline.spec import StorageSpec

    storage = StorageSpec(endpoint_url=endpoint_url, region=region)
    media = list_media(source, storage)
    if not media:
        raise JobError(
            f"no images or videos found at {source} (looked for image and video file extensions); check the "
            "folder, prefix or glob"
        )
    rows = write_listing(media, output, storage, rows_per_group)
    kinds = Counter(item.media_type for item in media)
    click.echo(f"wrote {rows} rows ({kinds['image']} images, {kinds['video']} videos) to {output}")


@main.command(name="family")
@click.option(
    "--gpu-memory-gb",
    "gpu_memory",
    multiple=True,
    type=float,
    help="GPU sizes to size replicas for (repeatable; default 80 and 141).",
)
def family_table(gpu_memory: tuple[float, ...]) -> None:
    """Print the InternVL3 presets: architecture, parameters (counted on the meta device), weight
    memory and GPUs per replica. Downloads nothing."""
    from pipeline.models.family import TABLE_GPU_SIZES_GB, presets_table

    click.echo(presets_table(tuple(gpu_memory) or TABLE_GPU_SIZES_GB))


endpoint_option = click.option(
    "--endpoint-url",
    default=None,
    metavar="URL",
    help="S3-compatible endpoint for an s3:// OUTPUT and its media (default: AWS_ENDPOINT_URL or AWS).",
)


def _storage(endpoint_url: str | None) -> Any:
    from pipeline.spec import StorageSpec

    return StorageSpec(endpoint_url=endpoint_url) if endpoint_url else None


@main.command()
@click.argument("output")
@click.option(
    "--html",
    "html_path",
    default="report.html",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Where to write the page.",
)
@click.option("--sample", default=24, show_default=True, type=click.IntRange(min=0), help="Rows shown with media.")
@endpoint_option
@exits_without_teardown
@job_errors_exit
def report(output: str, html_path: str, sample: int, endpoint_url: str | None) -> None:
    """Write a self-contained HTML report of OUTPUT (a job's output.path, local or s3://): counts,
    throughput and tiles charts, errors by kind with examples, and sample rows with their media."""
    from pipeline.report import build_report

    built = build_report(output, html_path, sample=sample, storage=_storage(endpoint_url))
    click.echo(
        f"wrote {html_path} ({built['bytes'] // 1024} KiB): {built['rows']} rows, {built['errors']} with errors, "
        f"{built['sampled']} shown; open it in a browser"
    )


@main.command()
@click.argument("output")
@click.option("--errors", "errors_only", is_flag=True, help="Show only rows with an error.")
@click.option("--id", "row_id", default=None, metavar="ID", help="Show the row with this id.")
@click.option("--limit", default=5, show_default=True, type=click.IntRange(min=0), help="Rows to show.")
@click.option("--json", "as_json", is_flag=True, help="Print rows as JSON lines (no counts), e.g. for jq.")
@endpoint_option
@exits_without_teardown
@job_errors_exit
def inspect(
    output: str, errors_only: bool, row_id: str | None, limit: int, as_json: bool, endpoint_url: str | None
) -> None:
    """Print OUTPUT's counts (rows, errors by kind), its schema, and rows in a readable form."""
    from pipeline.inspect import inspect_output

    click.echo(
        inspect_output(
            output,
            errors_only=errors_only,
            row_id=row_id,
            limit=limit,
            as_json=as_json,
            storage=_storage(endpoint_url),
        )
    )


def _import_benchmarks() -> Any:
    """The `benchmarks` package of a source checkout (it is not installed with the package)."""
    import importlib
    from pathlib import Path

    try:
        return importlib.import_module("benchmarks")
    except ImportError:
        checkout = Path(__file__).resolve().parents[1]
        if not (checkout / "benchmarks" / "__init__.py").is_file():
            raise click.ClickException(
                "the benchmarks ship with the source checkout; run this from a clone of the repository"
            ) from None
        sys.path.insert(0, str(checkout))
        return importlib.import_module("benchmarks")


@main.command()
@click.argument("name", type=click.Choice(["preprocess", "pipeline", "prefill", "batching", "scaling", "gpu"]))
@click.option(
    "--reps", type=int, default=None, help="Repetitions per contender (medians are reported); default 5, pipeline 3."
)
@click.option("--quick", is_flag=True, help="A smaller corpus and fewer repetitions (a smoke run, not for figures).")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where corpora, jobs and results go (default $PIPELINE_BENCH_DIR or /tmp/internvl-pipeline-bench).",
)
def bench(name: str, reps: int | None, quick: bool, workdir: str | None) -> None:
    """Run benchmark NAME: a table, then one JSON line of results (see BENCHMARKS.md).

    \b
    preprocess  CPU stage vs the model card's preprocessing (images/s per core, bytes, exactness)
    pipeline    whole Ray pipeline vs a sequential model-card script (tiny-random), no-model ceiling
    prefill     the model stage alone: prefill by length vs one left-padded prefill, same batches
    batching    padding of arrival-order vs token-budget batches on mixed 1-13 tile rows
    scaling     rows/s with 1 and 2 CPU workers; driver peak memory for 10^4 and 10^6 rows
    gpu         dummy:InternVL3-1B/-8B images/s at 1 and 7 tiles vs the FLOP bound (needs CUDA)
    """
    from pathlib import Path

    benchmarks = _import_benchmarks()
    from benchmarks.common import DEFAULT_WORKDIR, BenchOptions

    default_reps = {"pipeline": 3, "scaling": 3}.get(name, 5)
    options = BenchOptions(
        reps=reps or default_reps, quick=quick, workdir=Path(workdir) if workdir else DEFAULT_WORKDIR
    )
    benchmarks.run_benchmark(name, options)


@main.command()
@click.argument("job", type=click.Path(dir_okay=False))
@set_option
@click.option("--sample", type=int, default=1000, show_default=True, help="Manifest rows to sample (evenly spaced).")
@click.option(
    "--device",
    default="h100",
    show_default=True,
    help="h100, h100-pcie, h200, a100, l40s, l4, or cpu (one thread's matmul rate, measured here).",
)
@click.option("--utilisation", type=float, default=0.5, show_default=True, help="Share of the peak rate achieved.")
@click.option(
    "--model", "model", default=None, help="Family member to cost (default: from model.name), e.g. InternVL3-8B."
)
@click.option("--peak-tflops", type=float, default=None, help="Override the device's peak dense BF16 TFLOP/s.")
@click.option(
    "--output-tokens",
    type=int,
    default=None,
    help="Expected answer length (default task.max_new_tokens, an upper bound).",
)
@click.option(
    "--gpus",
    type=click.IntRange(min=1),
    default=None,
    help="Devices of the cluster (GPUs; cores with --device cpu): adds replicas, rows/s, wall-clock hours "
    "and the CPU cores that keep them fed.",
)
@click.option(
    "--cpus",
    type=click.IntRange(min=1),
    default=None,
    help="CPUs of the cluster, with --gpus: the CPU workers 'auto' gives them and whether they keep the GPUs fed.",
)
@click.option(
    "--cpu-sample",
    type=click.IntRange(min=0),
    default=16,
    show_default=True,
    help="Sampled rows to fetch, decode and tile here to cost the CPU stage (0: skip).",
)
@click.option(
    "--check",
    "check_output",
    type=click.Path(file_okay=False),
    default=None,
    help="A finished run's output folder: compare tiles and prompt tokens per row, and model time.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as one JSON object.")
@job_errors_exit
def plan(
    job: str,
    overrides: tuple[str, ...],
    sample: int,
    device: str,
    utilisation: float,
    model: str | None,
    peak_tflops: float | None,
    output_tokens: int | None,
    gpus: int | None,
    cpus: int | None,
    cpu_sample: int,
    check_output: str | None,
    as_json: bool,
) -> None:
    """Predict JOB's tiles, tokens and device-hours from a sample of its manifest (headers only)."""
    import json

    from pipeline.planner import check_against_run, format_plan, plan_job
    from pipeline.spec import load_spec

    if cpus is not None and gpus is None:
        raise click.UsageError("--cpus sizes a cluster together with --gpus")

    result = plan_job(
        load_spec(job, list(overrides)),
        sample=sample,
        device=device,
        utilisation=utilisation,
        model=model,
        peak_tflops=peak_tflops,
        output_tokens=output_tokens,
        gpus=gpus,
        cpu_sample=cpu_sample,
        cpus=cpus,
    )
    data = result.to_json()
    if check_output:
        data["check"] = check_against_run(result, check_output)
    if as_json:
        click.echo(json.dumps(data, default=str))
        return
    click.echo(format_plan(result))
    if check_output:
        check = data["check"]
        click.echo(
            f"  check vs {check_output}: tiles exact {check['tiles_exact']}/{check['rows_compared']}, "
            f"prompt tokens exact {check['prompt_tokens_exact']}/{check['rows_compared']}"
        )
        if "measured_over_predicted" in check:
            click.echo(
                f"  model time: measured {check['measured_model_seconds']:.3g} s, predicted "
                f"{check['predicted_model_seconds']:.3g} s (measured/predicted {check['measured_over_predicted']})"
            )
        if "cpu_stage_run_over_plan" in check:
            click.echo(
                f"  CPU stage: run/plan {check['cpu_stage_run_over_plan']} (median over "
                f"{check['cpu_stage_rows_compared']} rows: the run's preparing, in CPU actors or replicas, "
                "against the plan's measurement)"
            )
