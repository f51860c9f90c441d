"""`python -m pipeline submit JOB.yaml --address http://HEAD:8265`: run a job on a remote cluster.

It does what `ray job submit --working-dir . -- python -m pipeline run JOB.yaml` does, with
the job's own settings: the project folder is shipped as the working directory (without
.venv, out/ and caches), the spec's `ray.runtime_env` (pip packages, environment
variables) becomes the job's runtime_env, and the entrypoint runs the shipped spec with
the same `--set` overrides. The spec is validated here first, so a typo fails in a second
instead of after an upload.

Credentials are never shipped: the cluster's nodes use their own AWS chain (instance
roles, their environment), and the spec refuses credential-like keys anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import JobError
from pipeline.spec import JobSpec, load_spec

# Never shipped: local environments, results, caches, VCS metadata (gitignore syntax,
# relative to the working directory).
EXCLUDES = [
    ".venv/",
    "venv/",
    "/out/",
    ".git/",
    "__pycache__/",
    "*.pyc",
    ".pytest_cache/",
    ".ruff_cache/",
    ".mypy_cache/",
    "*.egg-info/",
    "/build/",
    "/dist/",
    ".whl/",
]
STAGING_FOLDER = ".pipeline-submit"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclass
class Submission:
    """What is sent to the cluster."""

    entrypoint: str
    runtime_env: dict[str, Any]
    staged_spec: Path | None  # a copy of a spec that lives outside the working directory


def project_root() -> Path:
    """The folder holding this package's source (a checkout with pyproject.toml), else the current folder."""
    source = Path(__file__).resolve().parent.parent
    return source if (source / "pyproject.toml").is_file() and (source / "pipeline").is_dir() else Path.cwd()


def api_address(address: str | None) -> str:
    """The job API address: --address, else RAY_API_SERVER_ADDRESS or RAY_ADDRESS (as `ray job submit`)."""
    found = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not found:
        raise JobError(
            "--address: which cluster? Give its job API address, e.g. --address http://HEAD:8265 (the head's "
            "dashboard port), or set RAY_ADDRESS"
        )
    return found


def runtime_env_for(spec: JobSpec, working_dir: Path) -> dict[str, Any]:
    """The Ray runtime_env of the job: the project as working_dir plus the spec's pip and env_vars."""
    env_vars = {"PYTHONUNBUFFERED": "1", **spec.ray.runtime_env.env_vars}
    runtime_env: dict[str, Any] = {"working_dir": str(working_dir), "excludes": list(EXCLUDES), "env_vars": env_vars}
    if spec.ray.runtime_env.pip:
        runtime_env["pip"] = list(spec.ray.runtime_env.pip)
    return runtime_env


def prepare(job: str, overrides: list[str], working_dir: Path) -> tuple[JobSpec, Submission]:
    """Validate the spec and build the submission; a spec outside the working dir is staged inside it."""
    spec = load_spec(job, overrides)
    job_path = Path(job).resolve()
    working_dir = working_dir.resolve()
    if not working_dir.is_dir():
        raise JobError(f"--working-dir: {working_dir} is not a directory")
    staged: Path | None = None
    try:
        shipped = job_path.relative_to(working_dir)
        if ignored_by_git(job_path, working_dir):  # Ray leaves .gitignored files out of the upload
            raise ValueError(shipped)
    except ValueError:
        text = job_path.read_bytes()
        digest = hashlib.sha1(text).hexdigest()[:12]
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", job_path.stem)
        staged = working_dir / STAGING_FOLDER / f"{stem}-{digest}.yaml"
        staged.parent.mkdir(exist_ok=True)
        staged.write_bytes(text)
        shipped = staged.relative_to(working_dir)
    command = ["python", "-m", "pipeline", "run", shipped.as_posix()]
    for item in overrides:
        command += ["--set", item]
    entrypoint = " ".join(shlex.quote(part) for part in command)
    return spec, Submission(entrypoint, runtime_env_for(spec, working_dir), staged)


def ignored_by_git(path: Path, working_dir: Path) -> bool:
    """Whether git would ignore `path` (Ray's upload honours .gitignore); False outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "-C", str(working_dir), "check-ignore", "-q", str(path)],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):  # no git here: nothing is ignored by it
        return False
    return result.returncode == 0


def path_warnings(spec: JobSpec) -> list[str]:
    """Settings that work locally but not from a job's temporary working directory."""
    warnings = []
    if "://" not in spec.output.path and not os.path.isabs(os.path.expanduser(spec.output.path)):
        warnings.append(
            f"output.path {spec.output.path!r} is relative: on the cluster it lands inside the job's temporary "
            "working directory and is lost with it. Use an absolute path on shared storage or s3://."
        )
    return warnings


def _client_errors() -> tuple[type[BaseException], ...]:
    """What Ray's job client raises for an unreachable, refusing or unauthenticated cluster."""
    from ray.exceptions import RayError

    return (ConnectionError, RuntimeError, ValueError, RayError)


def connect(address: str) -> Any:
    """A job submission client for the cluster, or a JobError that says what to check."""
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except _client_errors() as error:
        hint = ""
        if "401" in str(error) or "Authentication" in str(error) or "token" in str(error).lower():
            hint = (
                " The cluster uses token authentication: export RAY_AUTH_MODE=token on this machine (the token is "
                "read from RAY_AUTH_TOKEN or ~/.ray/auth_token)."
            )
        raise JobError(f"--address: cannot use the Ray job API at {address}: {first_line(error)}.{hint}") from None


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error message."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__


def submit(
    client: Any, submission: Submission, spec: JobSpec, submission_id: str | None = None, wait_s: float = 60.0
) -> str:
    """Upload the working dir and start the job; returns its id. A staged spec copy is removed afterwards.

    A head that has just started answers "no available agent ... try again later" until its
    job agent is up; that answer is retried (the upload is content-addressed, so it happens once)."""
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                return str(
                    client.submit_job(
                        entrypoint=submission.entrypoint,
                        runtime_env=submission.runtime_env,
                        submission_id=submission_id,
                        metadata={"pipeline_job": spec.name},
                    )
                )
            except _client_errors() as error:
                if "try again later" in str(error) and time.monotonic() < deadline:
                    time.sleep(2.0)
                    continue
                raise JobError(f"the cluster refused the job: {first_line(error)}") from None
    finally:
        if submission.staged_spec is not None:
            submission.staged_spec.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # another submission's copy may still be there
                submission.staged_spec.parent.rmdir()


def follow(client: Any, job_id: str, write: Callable[[str], None], poll_s: float = 1.0) -> str:
    """Stream the job's logs until it ends; returns its final status (SUCCEEDED, FAILED or STOPPED)."""

    async def stream() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    try:
        asyncio.run(stream())
    except _client_errors() as error:  # the stream broke; the job may still be running
        write(f"[pipeline] log stream interrupted ({first_line(error)}); waiting for the job to end\n")
    while True:
        status = str(client.get_job_status(job_id))
        status = status.rsplit(".", 1)[-1]
        if status in TERMINAL:
            return status
        time.sleep(poll_s)
