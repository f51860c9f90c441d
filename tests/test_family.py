"""The InternVL3 family presets and the validate-time model rules: sizes counted on the meta
device against the published ones, the GPUs-per-replica rule, tensor-parallel sizes vs
heads, original-format checkpoints, quantisation on CPU. Nothing here loads weights."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import REPO
from media import write_image, write_manifest

from pipeline.errors import JobError
from pipeline.models.family import FAMILY, member_shape, presets_table
from pipeline.models.loading import choose_runtime
from pipeline.runner import check_job
from pipeline.spec import ModelSpec


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    image = write_image(tmp_path / "a.png", 64, 64)
    return write_manifest(tmp_path / "manifest.parquet", [{"id": "a", "uri": str(image)}])


@pytest.fixture
def validate(make_spec, manifest):
    """The validate path (`python -m pipeline validate`): spec, manifest, then the model rules."""

    def run(**model):
        return check_job(make_spec(manifest, model=model))

    return run


@pytest.mark.parametrize("size", list(FAMILY))
def test_parameter_counts_on_meta_device_match_published_sizes(size):
    member = FAMILY[size]
    shape = member_shape(size)
    assert shape.params / 1e9 == pytest.approx(member.published_params_b, rel=0.05)
    # Whole on every rank: InternViT-300M (0.30B) or InternViT-6B (5.54B per its card), plus the projector
    # (LayerNorm over 4 x vision width, then two Linear layers into the language model's width).
    vision_b = 0.30 if member.vision.name.startswith("InternViT-300M") else 5.54
    folded, width = 4 * member.vision.hidden_size, member.language.hidden_size
    projector = 2 * folded + folded * width + width + width * width + width
    assert (shape.replicated - projector) / 1e9 == pytest.approx(vision_b, rel=0.05)
    assert shape.kv_heads == member.language.num_key_value_heads


def test_readme_presets_table_is_the_computed_one():
    """The README's table comes from `presets_table()`; this keeps them from drifting apart."""
    assert presets_table() in (REPO / "README.md").read_text(encoding="utf-8")


def test_undersized_78b_job_is_refused_with_the_gpu_count_it_needs(validate):
    with pytest.raises(JobError) as error:
        validate(name="OpenGVLab/InternVL3-78B-hf", tensor_parallel=2)
    message = str(error.value)
    assert "model.tensor_parallel=2 but InternVL3-78B needs 4 GPUs of 80 GB per replica" in message
    assert "set model.tensor_parallel: 4" in message
    validate(name="OpenGVLab/InternVL3-78B-hf", tensor_parallel=4)  # enough: passes
    with pytest.raises(JobError, match=re.escape("needs 2 GPUs of 141 GB per replica; set model.tensor_parallel: 2")):
        validate(name="OpenGVLab/InternVL3-78B-hf", gpu_memory_gb=141)
    validate(name="dummy:InternVL3-78B", tensor_parallel=2, gpu_memory_gb=141)


def test_38b_needs_two_80gb_gpus_and_one_141gb_gpu(validate):
    with pytest.raises(JobError, match=re.escape("InternVL3-38B needs 2 GPUs of 80 GB")):
        validate(name="dummy:InternVL3-38B")
    validate(name="dummy:InternVL3-38B", gpu_memory_gb=141)
    validate(name="OpenGVLab/InternVL3-8B-hf")


def test_tensor_parallel_must_divide_the_kv_heads(validate):
    with pytest.raises(JobError, match=r"tensor_parallel=3 does not divide the 8 key-value heads .* one of 1, 2, 4, 8"):
        validate(name="OpenGVLab/InternVL3-78B-hf", tensor_parallel=3)
    with pytest.raises(JobError, match=r"tensor_parallel=4 does not divide the 2 key-value heads .* one of 1, 2$"):
        validate(name="tiny-random", tensor_parallel=4)


def test_device_map_and_quantised_replicas_are_sized_by_whole_model(validate):
    with pytest.raises(JobError, match=re.escape("model.gpus_per_replica=1 but InternVL3-78B needs 3 GPUs of 80 GB")):
        validate(name="OpenGVLab/InternVL3-78B-hf", device_map="auto")
    validate(name="OpenGVLab/InternVL3-78B-hf", device_map="auto", gpus_per_replica=3)
    # int8 halves the Linear weights: 78B fits two 80 GB GPUs, but only layer-split.
    with pytest.raises(JobError, match=re.escape("set model.device_map: auto and model.gpus_per_replica: 2")):
        validate(name="OpenGVLab/InternVL3-78B-hf", quantization="int8")
    validate(name="OpenGVLab/InternVL3-78B-hf", quantization="fp8", device_map="auto", gpus_per_replica=2)
    with pytest.raises(JobError, match=re.escape("only applies with model.device_map: auto")):
        validate(gpus_per_replica=2)


def test_quantization_is_refused_on_cpu_and_with_tensor_parallel(validate):
    with pytest.raises(JobError, match=r"model.quantization: int8 needs NVIDIA GPUs .*Remove model.quantization"):
        validate(quantization="int8", device="cpu")
    with pytest.raises(JobError, match=re.escape("cannot be combined with model.tensor_parallel=2")):
        validate(name="OpenGVLab/InternVL3-8B-hf", quantization="fp8", tensor_parallel=2)
    # device: auto on a machine without GPUs: refused where the replica resolves its runtime.
    with pytest.raises(JobError, match=re.escape("model.quantization: fp8 needs NVIDIA GPUs")):
        choose_runtime(ModelSpec(quantization="fp8"), has_cuda=False)
    assert choose_runtime(ModelSpec(quantization="fp8"), has_cuda=True).device == "cuda"


def test_quantised_memory_figures_are_smaller():
    shape = member_shape("78B")
    assert shape.total_gb() == pytest.approx(2 * shape.params / 1e9)
    assert 0.5 * shape.total_gb() < shape.total_gb(quantization="int8") < 0.55 * shape.total_gb()


def test_original_format_ids_name_the_hf_equivalent(validate, tmp_path):
    with pytest.raises(JobError) as error:
        validate(name="OpenGVLab/InternVL3-8B")
    assert "Use OpenGVLab/InternVL3-8B-hf instead" in str(error.value)
    assert "model.trust_remote_code: true" in str(error.value)
    validate(name="OpenGVLab/InternVL3-8B", trust_remote_code=True)  # the user opted in
    with pytest.raises(JobError, match=re.escape("no tensor-parallel plan")):
        validate(name="OpenGVLab/InternVL3-8B", trust_remote_code=True, tensor_parallel=2)
    # A local original-format checkpoint is recognised by its config.
    local = tmp_path / "internvl-chat"
    local.mkdir()
    (local / "config.json").write_text(json.dumps({"model_type": "internvl_chat"}), encoding="utf-8")
    with pytest.raises(JobError, match=re.escape("model_type internvl_chat")):
        validate(name=str(local))


def test_dummy_names_must_be_family_members(validate):
    with pytest.raises(JobError, match=r"dummy:InternVL3-7B.*one of InternVL3-1B, InternVL3-2B"):
        validate(name="dummy:InternVL3-7B")
    with pytest.raises(JobError, match=re.escape("model.dummy_layers is set")):
        validate(name="tiny-random", dummy_layers=2)
    validate(name="dummy:internvl3-1b", dummy_layers=1, device="cpu")


def test_family_command_prints_the_table_for_other_gpu_sizes():
    from click.testing import CliRunner

    from pipeline.cli import main

    result = CliRunner().invoke(main, ["family", "--gpu-memory-gb", "48"])
    assert result.exit_code == 0, result.output
    assert "GPUs/replica 48 GB" in result.output
    line = next(row for row in result.output.splitlines() if row.startswith("| InternVL3-78B "))
    assert "TP 8; int8/fp8: 3" in line  # 11.4 GB replicated + 145.4/8 GB per rank fits 38.4 GB usable


@pytest.mark.parametrize("kwargs", [{}, {"trust_remote_code": False}])
def test_original_format_loader_refuses_without_the_opt_in(kwargs: dict) -> None:
    """The remote-code loader itself refuses unless model.trust_remote_code reached it as true."""
    from pipeline.models.original_format import load_original_format

    with pytest.raises(ValueError, match=r"model\.trust_remote_code: true"):
        load_original_format("/nonexistent/checkpoint", kwargs)
