"""`bench gpu`: its bound is the planner's, it names GPUs as the planner does, and its smoke
run on the CPU (one-layer members; no GPU here, so the CUDA path is not exercised) gives
the contract's table and JSON line with rows of exactly 1 and 7 tiles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from benchmarks.gpu import bench_spec, bound_images_per_s, planner_device
from pipeline.planner import FAMILY, RowPrediction, row_flops


@pytest.mark.parametrize(
    ("name", "device"),
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA L4", "l4"),
        ("Tesla T4", None),
    ],
)
def test_gpu_names_map_to_the_planners_devices(name: str, device: str | None):
    assert planner_device(name) == device


def test_the_bound_is_the_planners_flop_model_with_the_answer_included():
    spec = bench_spec("InternVL3-8B", quick=False, on_gpu=True)
    tokens = 7 * 256 + 40
    flops, prefill = row_flops(FAMILY["InternVL3-8B"], RowPrediction("r", "image", 7, tokens), 64)
    assert bound_images_per_s(spec, 7, tokens, 800.0) == pytest.approx(800e12 / flops)
    # design.md's ~25 images/s at 7 tiles counts the prefill only; the answer's 64 tokens cost more.
    assert 800e12 / flops < 800e12 / prefill == pytest.approx(25, rel=0.1)


def test_one_layer_members_count_one_layer():
    full = bench_spec("InternVL3-1B", quick=False, on_gpu=True)
    reduced = bench_spec("InternVL3-1B", quick=True, on_gpu=False)
    assert reduced.model.dummy_layers == 1 and full.model.dummy_layers is None
    assert bound_images_per_s(reduced, 1, 300, 1.0) > 5 * bound_images_per_s(full, 1, 300, 1.0)


def test_smoke_run_on_the_cpu_prints_a_table_then_one_json_line(tmp_path: Path):
    done = run_cli("bench", "gpu", "--quick", "--workdir", str(tmp_path), timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["name"] == "gpu" and result["smoke_run"] is True and result["device"] == "cpu"
    assert [(case["tiles"], case["model"]) for case in result["cases"]] == [
        (1, "dummy:InternVL3-1B (1 layer)"),
        (7, "dummy:InternVL3-1B (1 layer)"),
    ]
    for case in result["cases"]:
        assert case["images_per_s"] > 0 and case["cpu_stage_s_per_image"] > 0
        assert case["fraction_of_bound"] is None and case["gpu_utilisation_percent"] is None
    # 7 tiles: six grid tiles and the thumbnail, each 256 image tokens
    assert result["cases"][1]["prompt_tokens"] - result["cases"][0]["prompt_tokens"] == 6 * 256
    assert any("images/s" in line for line in lines[:-1])


def test_without_cuda_a_full_run_is_refused_before_any_model_loads(tmp_path: Path):
    done = run_cli("bench", "gpu", "--workdir", str(tmp_path), timeout=300)
    assert done.returncode != 0
    assert "needs a CUDA device" in done.stderr + done.stdout
    assert not (tmp_path / "bench-gpu.json").exists()
