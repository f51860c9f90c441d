"""The benchmark suite's plumbing: the `bench` command's contract (a table, then one JSON line),
the steady-state rule, the model-card baseline's fidelity. Benchmarks report; no timing is asserted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import REPO, run_cli
from media import write_image

from benchmarks.reference import load_image, reference_tiles
from pipeline.actors.preprocess import Preprocessor
from pipeline.models.normalise import normalise_tiles
from pipeline.prompts.tasks import resolve_spec


def test_bench_batching_prints_a_table_then_one_json_line(tmp_path: Path):
    done = run_cli("bench", "batching", "--quick", "--workdir", str(tmp_path), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["name"] == "batching"
    assert 0 <= result["padding_fraction"] < result["padding_fraction_arrival"]
    assert any("padding" in line for line in lines[:-1])
    assert json.loads((tmp_path / "bench-batching.json").read_text())["name"] == "batching"


def test_bench_prefill_answers_the_same_either_way(tmp_path: Path):
    done = run_cli("bench", "prefill", "--quick", "--workdir", str(tmp_path), timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["name"] == "prefill"
    assert result["answers_identical"] == f"{result['rows']}/{result['rows']}"
    assert 0 <= result["padding_fraction"] < 1  # (tests/test_prefill.py compares the two on mixed lengths)


def test_pipeline_steady_rates_cancel_start_up():
    from benchmarks.pipeline import differential_rate, rate_after, short_rows

    assert short_rows(256) == 64  # one window of 32 for each of two replicas (see the next test)
    assert differential_rate({"rows": 64, "wall_s": 30.0}, {"rows": 256, "wall_s": 62.0}) == 192 / 32
    assert differential_rate({"rows": 64, "wall_s": 30.0}, {"rows": 256, "wall_s": 29.0}) == 0.0
    assert rate_after([10.0, 11.0, 12.0, 14.0], 1) == 3 / 4
    assert rate_after([10.0, 11.0, 12.0, 14.0], 2) == 2 / 3
    assert rate_after([5.0], 1) == 0.0
    assert rate_after([5.0, 6.0], 0) == 0.0  # no row to start the clock from


def test_both_runs_of_a_differential_use_the_long_runs_window(tmp_path: Path):
    """Left to choose, the 64-row run would take smaller windows than the 256-row run, and its
    first window's wait and last window would not cancel in the difference. Pinned, the short run
    is one window per replica."""
    import yaml

    from benchmarks.pipeline import job_file

    layouts: dict[str, dict | None] = {
        "one replica": {"model": {"replicas": 1}, "preprocess": {"workers": 2}},
        "two replicas": {"model": {"replicas": 2}, "preprocess": {"workers": 1}},
        "auto": None,  # the layout `run` will choose on this machine: pinned the same way
    }
    windows = {
        (name, size): yaml.safe_load(
            job_file(
                tmp_path / name / str(size), tmp_path / f"m{size}.parquet", "tiny-random", overrides, 256
            ).read_text()
        )["model"]["batch_window"]
        for name, overrides in layouts.items()
        for size in (64, 256)
    }
    assert windows[("one replica", 64)] == windows[("one replica", 256)] == 64
    assert windows[("two replicas", 64)] == windows[("two replicas", 256)] == 32
    assert windows[("auto", 64)] == windows[("auto", 256)]


def test_unknown_benchmark_is_refused():
    done = run_cli("bench", "nonsense")
    assert done.returncode == 2 and "nonsense" in done.stderr


def test_model_card_baseline_is_what_the_stage_reproduces(tmp_path: Path, make_spec):
    """The baseline's tiles and pixel values equal ours (so the comparison is like for like)."""
    path = write_image(tmp_path / "a.jpg", 1000, 700, seed=3)
    spec = resolve_spec(make_spec("unused.parquet", preprocess={"max_tiles": 12}))
    tiles = Preprocessor(spec).prepare({"id": "a", "uri": str(path)}).tiles[0]
    assert np.array_equal(tiles, reference_tiles(str(path)))
    import torch

    assert torch.equal(normalise_tiles(tiles, torch.device("cpu"), torch.float32), load_image(str(path)))


def test_scaling_memory_job_leaves_only_the_last_shard_to_do(tmp_path: Path):
    from benchmarks.scaling import memory_job, text_manifest
    from pipeline.readers.manifest import plan_manifest
    from pipeline.resume import done_shards, pending_shards
    from pipeline.spec import load_spec

    manifest = text_manifest(tmp_path, 25_000)
    spec = load_spec(str(memory_job(tmp_path, manifest, 25_000)))
    plan = plan_manifest(spec.input, spec.storage)
    pending = pending_shards(plan, done_shards(spec.output.path, spec.storage))
    assert len(plan.shards) == 3
    assert [shard.key for shard in pending] == [plan.shards[-1].key]


def test_per_core_processes_answer_as_the_sequential_script(tmp_path: Path):
    """`bench pipeline`'s per-core processes run this project's stages without Ray; their answers
    must be the script's, row for row, or they would not measure the same work."""
    import subprocess
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks.reference import run_sequential
    from pipeline.models.tiny_random import ensure_tiny_random
    from pipeline.prompts.tasks import CAPTION_SHORT
    from pipeline.prompts.template import DEFAULT_SYSTEM_MESSAGE

    paths = [str(write_image(tmp_path / f"{i}.jpg", 300 + 170 * i, 260, seed=i)) for i in range(3)]
    manifest = tmp_path / "manifest.parquet"
    ids = [f"row-{i}" for i in range(3)]
    pq.write_table(pa.table({"id": ids, "uri": paths}), manifest)
    texts: dict[str, str] = {}
    for worker in range(2):  # two "cores": row 0, then rows 1 and 2
        out = tmp_path / f"out-{worker}.json"
        args = [str(manifest), str(out), str(worker), "2", "4", "8"]
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.per_core", *args], cwd=REPO, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-2000:]
        data = json.loads(out.read_text())
        texts.update(zip(data["ids"], data["texts"], strict=True))
        assert [window["rows"] for window in data["windows"]] == [len(data["ids"])]  # one window of 1 or 2 rows
    reference = run_sequential(
        str(ensure_tiny_random(None)), paths, 4, 8, CAPTION_SHORT.image_question, DEFAULT_SYSTEM_MESSAGE
    )
    assert [texts[row_id] for row_id in ids] == reference.texts
    assert all(reference.texts)


def test_per_core_steady_rate_leaves_out_each_process_first_window():
    from benchmarks.cpu_shares import PER_CORE
    from benchmarks.pipeline import window_rate

    def windows(*ends: tuple[int, float, float]) -> list[dict[str, float]]:
        return [{"rows": rows, "ended_at": ended_at, "cpu_s": cpu_s} for rows, ended_at, cpu_s in ends]

    # The first windows (ending at 100 s and 105 s) do not count; 64 rows in 20 s and 64 + 32 rows in 24 s do.
    first = windows((64, 100.0, 24.0), (64, 120.0, 44.0))
    second = windows((64, 105.0, 28.0), (64, 121.0, 44.0), (32, 129.0, 52.0))
    rate, cpu = window_rate([first, second])
    assert rate == 64 / 20 + 96 / 24
    assert cpu == {PER_CORE: round(1000 * (20 + 24) / 160, 1)}
    assert window_rate([first, windows((64, 100.0, 24.0))]) is None  # a process with one window: no steady part
    assert window_rate([]) is None


def test_cpu_roles_from_the_titles_ray_gives_processes():
    from benchmarks.cpu_shares import CPU_STAGE, DRIVER, MODEL_STAGE, OTHER, PER_CORE, RAY, role_of

    assert role_of("ray::MapWorker(MapBatches(GenerateStage)).submit") == MODEL_STAGE
    assert role_of("ray::RankWorker.generate") == MODEL_STAGE  # a tensor-parallel rank
    assert role_of("ray::MapWorker(MapBatches(PreprocessStage))") == CPU_STAGE
    assert role_of("/venv/bin/python -m pipeline run jobs/caption.yaml") == DRIVER
    assert role_of("/venv/bin/python -m benchmarks.per_core m.parquet out.json 0 2 12 64") == PER_CORE
    assert role_of("ray::IDLE") == RAY
    assert role_of("/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --node_ip=1") == RAY
    assert role_of("/usr/bin/python3 some_other_program.py") == OTHER


def test_cpu_shares_counts_a_real_process_by_its_role(tmp_path: Path):
    """A real child process that burns CPU for a while: its time lands in its role, the
    machine's idle time is counted too, and a role that only shows later (as a Ray worker's
    title changes) is picked up."""
    import subprocess
    import sys

    from benchmarks.cpu_shares import IDLE, OTHER, CpuShares, available

    if not available():
        import pytest

        pytest.skip("no /proc here")
    marker = tmp_path / "renamed"

    def classify(command: str) -> str:
        return "burner" if "burn-for-the-test" in command and marker.exists() else OTHER

    script = (
        "import sys, time\n"
        "end = time.process_time() + 0.6\n"
        "while time.process_time() < end: pass\n"
        "open(sys.argv[1], 'w').close()\n"  # now it is a 'burner': its earlier time moves with it
        "time.sleep(0.6)\n"
    )
    with CpuShares(interval_s=0.1, classify=classify) as shares:
        subprocess.run([sys.executable, "-c", script, str(marker), "burn-for-the-test"], check=True)
    assert shares.seconds["burner"] >= 0.3  # it burnt 0.6 s of CPU; the sampler saw it after its rename
    assert shares.seconds[IDLE] >= 0
    assert shares.wall_s >= 1.2


def test_steady_state_cpu_is_the_difference_of_two_runs():
    from benchmarks.pipeline import cpu_table, differential_cpu

    short = {"rows": 128, "cpu_s": {"model stage": 40.0, "CPU stage": 8.0, "idle": 4.0}}
    long = {"rows": 256, "cpu_s": {"model stage": 72.0, "CPU stage": 15.68, "Ray": 1.28, "idle": 5.28}}
    per_row = differential_cpu(short, long)
    assert per_row == {"model stage": 250.0, "CPU stage": 60.0, "Ray": 10.0, "idle": 10.0}
    assert differential_cpu(short, {"rows": 256, "cpu_s": None}) is None
    text, medians = cpu_table({"pipeline": [{"cpu_ms_per_row": per_row}], "sequential": [{}]})
    assert medians == {"pipeline": per_row}
    header = text.splitlines()[0].split("  ")
    assert [cell.strip() for cell in header if cell.strip()] == [
        "contender",
        "model stage",
        "CPU stage",
        "Ray",
        "idle",
        "all",
    ]
