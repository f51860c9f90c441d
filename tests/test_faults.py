"""Faults, for real: a driver killed with SIGKILL and resumed while its model actor is killed
by pid, forced out-of-memory, a row that kills its worker every time, models that cannot
load, GPUs asked for on a cluster without any. Every run is a real job on a real local Ray
with tiny-random; the only things simulated are the GPU (absent here) and the
out-of-memory condition (a real `OutOfMemory` raised by the engine's test hook).

The kill test polls for conditions (a part file exists, the model actor is inside a batch)
with generous timeouts instead of sleeping fixed times, so that it holds on a loaded 2-core
machine, and finds the processes to kill by a marker in their environment that only the
processes of that run's own Ray instance carry.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import REPO
from media import write_image, write_manifest
from reliability import (
    assert_exactly_once,
    assert_markers_consistent,
    assert_no_duplicates,
    kill_all,
    part_files,
    processes_with_env,
    wait_for,
)

from pipeline.actors.guard import FAULT_CRASH_ENV
from pipeline.models.hf_engine import FAULT_OOM_ENV

pytestmark = pytest.mark.slow

GENERATE_ACTOR = "ray::MapWorker(MapBatches(GenerateStage))"
# A node's agents outlive a killed driver by about a minute (they give up on the dead raylet
# only after a timeout); they never touch the output, so the test kills them, not waits.
NODE_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def small_manifest(folder: Path, rows: int, prefix: str = "row") -> tuple[Path, list[str]]:
    """`rows` rows over 8 small distinct images (one tile each with max_tiles 1)."""
    images = [write_image(folder / "media" / f"img{i}.png", 60 + i, 40 + i, seed=i) for i in range(8)]
    ids = [f"{prefix}-{i:04d}" for i in range(rows)]
    manifest = write_manifest(
        folder / "manifest.parquet", [{"id": ids[i], "uri": str(images[i % 8])} for i in range(rows)]
    )
    return manifest, ids


def write_job(path: Path, manifest: Path, output: Path, rows_per_shard: int, rows_per_file: int) -> Path:
    path.write_text(
        json.dumps(
            {
                "name": "faults",
                "input": {"manifest": str(manifest), "rows_per_shard": rows_per_shard},
                "task": {"max_new_tokens": 8},
                "preprocess": {"workers": 1, "max_tiles": 1},
                # One replica: the kill then leaves no other replica to carry on, and the
                # test pays for one model process per run instead of one per core.
                "model": {"name": "tiny-random", "batch_size": 2, "replicas": 1},
                "output": {"path": str(output), "rows_per_file": rows_per_file},
                "ray": {"address": "local"},
            }
        ),
        encoding="utf-8",
    )
    return path


def start_cli(job: Path, marker: str, log: Path) -> subprocess.Popen:
    """`python -m pipeline run JOB` with `marker` (NAME=value) in its environment, which every
    process of its own local Ray inherits: that is how the test finds them, and only them."""
    name, value = marker.split("=", 1)
    with open(log, "w", encoding="utf-8") as sink:  # a file, not a pipe: a full pipe would stall the run
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", str(job)],
            cwd=REPO,
            env={**os.environ, name: value},
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )


def processes_that_could_write(marker: str) -> list[str]:
    """The titles of this run's processes that could still write: all but the node's agents."""
    return [title for _, title in processes_with_env(marker) if not title.startswith(NODE_AGENTS)]


def busy_model_actor(marker: str) -> int | None:
    """The pid of this run's model actor while it is inside a batch (its title gains '.submit')."""
    for pid, title in processes_with_env(marker):
        if title.startswith(GENERATE_ACTOR + ".submit"):
            return pid
    return None


def test_driver_killed_then_resumed_while_a_model_actor_is_killed(tmp_path: Path):
    """Kill -9 the driver once some output exists; re-run the same command and, during that
    run, kill -9 its model actor inside a batch. Every id ends up exactly once."""
    manifest, ids = small_manifest(tmp_path, 120)
    output = tmp_path / "out"
    job = write_job(tmp_path / "job.json", manifest, output, rows_per_shard=15, rows_per_file=5)
    marker = f"PIPELINE_TEST_RUN={uuid.uuid4().hex}"
    first = start_cli(job, marker, tmp_path / "first.log")
    try:
        wait_for(lambda: len(part_files(output)) >= 2 or first.poll() is not None, 400, "the first output files")
        assert first.poll() is None, "the run ended before it could be killed:\n" + (tmp_path / "first.log").read_text()
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
        # The local Ray started by the killed driver goes down with it (Ray ties its processes
        # to the driver's life); wait for its workers to go, so no straggler writes during the checks.
        wait_for(lambda: not processes_that_could_write(marker), 120, "the killed run's workers to exit", 0.5)
    finally:
        kill_all([pid for pid, _ in processes_with_env(marker)])
    assert first.returncode == -signal.SIGKILL
    before = assert_no_duplicates(output)
    assert 0 < len(before) < len(ids), len(before)
    assert_markers_consistent(output)
    assert not (output / "_SUCCESS").exists()
    assert (output / "_lease.json").exists()  # left by the killed driver; the re-run takes it over

    second = start_cli(job, marker, tmp_path / "second.log")
    killed: list[int] = []
    try:

        def kill_busy_model_actor() -> bool:
            pid = busy_model_actor(marker)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            return bool(killed) or second.poll() is not None

        wait_for(kill_busy_model_actor, 400, "the resumed run's model actor inside a batch", 0.02)
        second.wait(timeout=600)
    finally:
        kill_all([pid for pid, _ in processes_with_env(marker)])
    log = (tmp_path / "second.log").read_text()
    assert killed, "the resumed run's model actor was never seen inside a batch:\n" + log[-3000:]
    assert second.returncode == 0, log[-4000:]
    table = assert_exactly_once(output, ids)
    assert table.column("error").null_count == table.num_rows  # the killed batch was redone, row by row
    markers = assert_markers_consistent(output)
    assert markers == 8  # 120 rows / 15 per shard, every one sealed
    assert (output / "_SUCCESS").exists() and not (output / "_lease.json").exists()
    summary = json.loads((output / "_summary.json").read_text())
    assert summary["rows_skipped_by_resume"] == len(before)
    assert summary["rows_done"] == len(ids) - len(before)
    assert summary["complete"] is True and summary["shards_incomplete"] == 0
    assert "skipped (resume)" in log


def test_out_of_memory_backs_off_end_to_end_and_overwrite_starts_clean(
    tmp_path: Path, make_spec, ray_session, monkeypatch
):
    """The engine's test hook raises a real OutOfMemory for batches above N rows; the hook
    reaches the actors through the forwarded PIPELINE_* environment."""
    from pipeline.runner import run

    manifest, ids = small_manifest(tmp_path, 6)
    base = {"preprocess": {"workers": 1, "max_tiles": 1}, "model": {"batch_size": 4}}
    output = tmp_path / "out"
    monkeypatch.setenv(FAULT_OOM_ENV, "1")  # only single rows fit: every batch is split
    run(make_spec(manifest, **base, output={"path": str(output)}))
    answered = assert_exactly_once(output, ids)
    assert answered.column("error").null_count == len(ids)
    assert answered.column("text").null_count == 0

    # Not even one row fits: every row gets `oom`. The same output in overwrite mode: the
    # answers of the first run are gone, each id is there once, with its new outcome.
    monkeypatch.setenv(FAULT_OOM_ENV, "0")
    summary = run(make_spec(manifest, **base, output={"path": str(output), "mode": "overwrite"}))
    failed = assert_exactly_once(output, ids)
    assert set(failed.column("error_kind").to_pylist()) == {"oom"}
    assert failed.column("error")[0].as_py().startswith("oom: out of memory for this row alone")
    assert summary["errors_by_kind"] == {"oom": len(ids)} and summary["rows_skipped_by_resume"] == 0


@pytest.mark.parametrize(("stage", "workers"), [("preprocess", 1), ("generate", 1), ("preprocess", 0)])
def test_row_that_kills_its_worker_every_time_is_written_with_its_error(
    tmp_path: Path, make_spec, ray_session, monkeypatch, stage: str, workers: int
):
    """A row whose work kills its process (a decoder that crashes on a bad file, a model that
    does on a row) in either stage's actor: the actor restarts (Ray Data hands the stage's code
    to its actors through the object store, which Ray logs a caution about at start-up), the
    batch is redone row by row, and the row is written with its error. With no CPU actors
    (`workers` 0) the decoder's crash kills a model replica, which restarts the same way."""
    from pipeline.runner import run

    manifest, ids = small_manifest(tmp_path, 12)
    poison = ids[5]
    monkeypatch.setenv(FAULT_CRASH_ENV, f"{stage}:{poison}")
    spec = make_spec(
        manifest,
        preprocess={"workers": workers, "max_tiles": 1, "batch_size": 2, "max_retries": 1},
        model={"batch_size": 2, "max_retries": 1},
        output={"path": str(tmp_path / "out")},
    )
    summary = run(spec)
    table = assert_exactly_once(tmp_path / "out", ids)
    rows = {row["id"]: row for row in table.to_pylist()}
    assert rows[poison]["error_kind"] == "worker_died"
    assert "died 2 time(s)" in rows[poison]["error"]
    assert all(rows[i]["error"] is None and rows[i]["text"] for i in ids if i != poison)
    assert summary["errors_by_kind"] == {"worker_died": 1} and summary["complete"]


def test_model_that_cannot_load_in_its_actor_fails_with_one_message(tmp_path: Path, make_spec, ray_session):
    """A checkpoint that passes the driver's checks but fails inside the actor (weights that do
    not match the config): the run stops at the first actor's death with the cause, no hang."""
    from pipeline.errors import JobError
    from pipeline.models.tiny_random import ensure_tiny_random
    from pipeline.runner import run

    broken = tmp_path / "mismatched"
    shutil.copytree(ensure_tiny_random(), broken)
    config = json.loads((broken / "config.json").read_text())
    config["text_config"]["intermediate_size"] = 96  # the weights have 128
    (broken / "config.json").write_text(json.dumps(config))
    manifest, _ = small_manifest(tmp_path, 4)
    spec = make_spec(manifest, model={"name": str(broken)}, preprocess={"workers": 1, "max_tiles": 1})
    with pytest.raises(JobError) as failure:
        run(spec)
    message = str(failure.value)
    assert message.startswith("the pipeline's actors (GenerateStage) could not start: RuntimeError:"), message
    assert "\n" not in message and "Traceback" not in message


def test_gpus_requested_but_none_in_the_cluster(tmp_path: Path, make_spec, ray_session):
    from pipeline.errors import JobError
    from pipeline.runner import run

    manifest, _ = small_manifest(tmp_path, 2)
    with pytest.raises(
        JobError, match=r"model.device is 'cuda' and each replica needs 1 GPU\(s\), but the Ray cluster"
    ):
        run(make_spec(manifest, model={"device": "cuda"}))
    assert not (tmp_path / "out").exists()  # nothing was started or written
