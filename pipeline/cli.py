"""Command line: `python -m pipeline COMMAND ...`.

Commands import what they need when they run, so `--help` is instant and works on a
machine without torch, a GPU or a cluster.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

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

    return wrapper  # type: ignore[return-value]


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
