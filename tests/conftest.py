"""Shared fixtures: a session cache for tiny-random, a session Ray instance, spec builders.

Nothing here mocks the pipeline: jobs run on a real local Ray with real files. The only
thing that cannot exist on these machines is a GPU; tests that need one are marked `gpu`
and skipped without CUDA.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def run_cli(
    *args: str, env: dict[str, str] | None = None, inherit: bool = True, timeout: int = 600, cwd: Path = REPO
) -> subprocess.CompletedProcess:
    """`python -m pipeline ARGS` in a child process, as a user runs it; its output captured.

    `env` is added to this process's environment, or with `inherit=False` is the whole of it
    (for tests that must leave out a variable the test process has)."""
    environment = {**os.environ, **(env or {})} if inherit else dict(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny-random build per test session (deterministic, so any cache would do)."""
    cache = Path(os.environ.get("PIPELINE_TEST_CACHE_DIR") or tmp_path_factory.getbasetemp() / "model-cache")
    os.environ["PIPELINE_CACHE_DIR"] = str(cache)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PIPELINE_PROGRESS_INTERVAL_S", "1")
    return cache


@pytest.fixture(scope="session", autouse=True)
def fake_aws_environment() -> None:
    """Fake AWS credentials and no shared AWS config for the whole session (set before any Ray
    starts, so workers inherit them): tests can never reach a real account, and a developer's
    own credentials never get near a test."""
    from s3 import FAKE_AWS_ENV

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(name, None)
    os.environ.update(FAKE_AWS_ENV)


@pytest.fixture(scope="session")
def s3():
    """A real S3 API on 127.0.0.1 (moto server mode); tests make their own buckets."""
    from s3 import start_s3

    server = start_s3()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ray_session(model_cache: Path):
    """A local Ray instance shared by the in-process job tests (started once: ~10 s)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture
def make_spec(tmp_path: Path):
    """Build a JobSpec from a manifest path and nested overrides."""
    from pipeline.spec import parse_spec

    def build(manifest: Path | str, **sections: dict[str, Any]):
        data: dict[str, Any] = {
            "input": {"manifest": str(manifest)},
            "output": {"path": str(tmp_path / "out")},
            "task": {"max_new_tokens": 8},
            "preprocess": {"workers": 1},
            "model": {"batch_size": 4, "replicas": 1},  # fixed sizes: tests/test_layout.py covers 'auto'
        }
        for section, values in sections.items():
            data.setdefault(section, {}).update(values)
        return parse_spec(data)

    return build
