"""`python -m pipeline submit` against a real, token-authenticated local Ray head."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO

from pipeline.submit import EXCLUDES, STAGING_FOLDER, prepare

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def head():
    from cluster import start_head

    running = start_head()
    yield running
    running.stop()


def submit(head, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "submit", *args, "--address", head.dashboard_url],
        cwd=REPO,
        env=head.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def job_info(head, job_id: str) -> dict:
    """The job's record from the head's REST API (the token goes in a header, as Ray's client sends it)."""
    token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    request = urllib.request.Request(
        f"{head.dashboard_url}/api/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_submit_and_follow_a_successful_job(head, tmp_path: Path):
    out = tmp_path / "submitted"
    result = submit(head, "jobs/quickstart.yaml", "--follow", "--set", f"output.path={out}")
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    job_id = result.stdout.splitlines()[0]
    assert job_id.startswith("raysubmit_")
    assert "rows/s" in result.stdout  # the job's own summary, streamed back
    assert f"job {job_id} SUCCEEDED" in result.stderr
    table = pq.read_table(out)
    manifest = pq.read_table(REPO / "samples" / "manifest.parquet")
    assert sorted(table.column("id").to_pylist()) == sorted(manifest.column("id").to_pylist())
    assert table.column("error").null_count == table.num_rows
    info = job_info(head, job_id)
    assert info["entrypoint"] == f"python -m pipeline run jobs/quickstart.yaml --set output.path={out}"
    assert info["runtime_env"]["working_dir"].startswith("gcs://")
    assert info["runtime_env"]["env_vars"]["PYTHONUNBUFFERED"] == "1"
    assert info["metadata"]["pipeline_job"] == "quickstart"


def test_a_failing_job_exits_non_zero_and_an_outside_spec_is_shipped(head, tmp_path: Path):
    spec = tmp_path / "outside job.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "outside",
                "input": {"manifest": str(tmp_path / "no manifest here.parquet")},
                "output": {"path": str(tmp_path / "out")},
                "ray": {"runtime_env": {"env_vars": {"PIPELINE_MARK": "from-the-spec"}}},
            }
        )
    )
    result = submit(head, str(spec), "--follow")
    assert result.returncode == 1, (result.stdout[-3000:], result.stderr[-3000:])
    assert "error: input.manifest" in result.stdout  # the job's one-line error, from the cluster
    job_id = result.stdout.splitlines()[0]
    assert f"job {job_id} FAILED" in result.stderr
    info = job_info(head, job_id)
    assert info["entrypoint"].startswith(f"python -m pipeline run {STAGING_FOLDER}/")
    assert info["runtime_env"]["env_vars"]["PIPELINE_MARK"] == "from-the-spec"
    assert not (REPO / STAGING_FOLDER).exists()  # the staged copy is gone once uploaded
    # Without --follow: the id at once, exit 0; the job runs on.
    quick = submit(head, str(spec))
    assert quick.returncode == 0 and quick.stdout.strip().startswith("raysubmit_")
    assert "ray job logs --follow" in quick.stderr
    deadline = time.time() + 120
    while job_info(head, quick.stdout.strip())["status"] not in ("FAILED", "SUCCEEDED", "STOPPED"):
        assert time.time() < deadline
        time.sleep(1)


def test_bad_spec_or_address_fail_before_submitting(head, tmp_path: Path):
    bad = submit(head, "jobs/quickstart.yaml", "--set", "model.batch_size=0")
    assert bad.returncode == 2 and "model.batch_size" in bad.stderr and bad.stdout == ""
    nowhere = subprocess.run(
        [sys.executable, "-m", "pipeline", "submit", "jobs/quickstart.yaml", "--address", "http://127.0.0.1:9"],
        cwd=REPO,
        env=head.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert nowhere.returncode == 2 and "cannot use the Ray job API" in nowhere.stderr
    no_token_mode = {k: v for k, v in head.env.items() if k != "RAY_AUTH_MODE"}
    refused = subprocess.run(
        [sys.executable, "-m", "pipeline", "submit", "jobs/quickstart.yaml", "--address", head.dashboard_url],
        cwd=REPO,
        env=no_token_mode,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and "export RAY_AUTH_MODE=token" in refused.stderr, refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("error: --address: cannot use the Ray job API")


def test_prepare_builds_the_submission(tmp_path: Path):
    spec, submission = prepare("jobs/quickstart.yaml", ["output.path=/abs/out", "task.prompt=a b's"], REPO)
    assert submission.entrypoint == (
        "python -m pipeline run jobs/quickstart.yaml --set output.path=/abs/out --set 'task.prompt=a b'\"'\"'s'"
    )
    assert submission.runtime_env["working_dir"] == str(REPO) and submission.staged_spec is None
    assert ".venv/" in submission.runtime_env["excludes"] and "/out/" in EXCLUDES
    assert "pip" not in submission.runtime_env and spec.name == "quickstart"


def test_a_git_ignored_job_file_is_staged(tmp_path: Path):
    """Ray's upload honours .gitignore: an ignored job file is shipped as a staged copy instead."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("private/\n")
    job = tmp_path / "private" / "my job.yaml"
    job.parent.mkdir()
    shutil.copy(REPO / "jobs" / "quickstart.yaml", job)
    _, staged = prepare(str(job), [], tmp_path)
    assert staged.staged_spec is not None and staged.staged_spec.read_bytes() == job.read_bytes()
    assert staged.entrypoint == f"python -m pipeline run {STAGING_FOLDER}/{staged.staged_spec.name}"
    (tmp_path / "jobs").mkdir()
    shutil.copy(job, tmp_path / "jobs" / "kept.yaml")
    _, kept = prepare(str(tmp_path / "jobs" / "kept.yaml"), [], tmp_path)
    assert kept.staged_spec is None and kept.entrypoint == "python -m pipeline run jobs/kept.yaml"
