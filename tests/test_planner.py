"""The capacity planner: exact tiles and prompt tokens against a real run (headers only), the
FLOP model against design.md's figures, manifest sampling, and the `plan` command."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import run_cli
from media import jpeg_bytes, write_image, write_manifest, write_png_header_only
from PIL import Image

from pipeline.errors import JobError
from pipeline.planner import (
    FAMILY,
    RowPrediction,
    check_against_run,
    format_plan,
    make_plan,
    model_shape,
    plan_job,
    readable_duration,
    sample_rows,
)


def write_video(path: Path, frames: int = 40, size: tuple[int, int] = (320, 240)) -> Path:
    """A short H.264 clip written with PyAV."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def rotated_jpeg(path: Path, width: int, height: int) -> Path:
    """A JPEG stored landscape with EXIF orientation 6 (shown portrait)."""
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    path.write_bytes(buffer.getvalue())
    return path


@pytest.mark.slow
def test_predictions_equal_a_real_run(tmp_path: Path, make_spec, ray_session):
    """Tiles and prompt tokens per row, from headers only, equal what the run computed."""
    from pipeline.runner import run

    media = tmp_path / "media"
    media.mkdir()
    rows = [
        {"id": "photo", "uri": str(write_image(media / "photo.jpg", 1600, 1200, seed=1))},
        {"id": "wide", "uri": str(write_image(media / "wide.png", 2000, 500, seed=2))},
        {"id": "small", "uri": str(write_image(media / "small.jpg", 300, 200, seed=3))},
        {"id": "portrait", "uri": str(write_image(media / "portrait.jpg", 900, 1600, seed=4))},
        {"id": "rotated", "uri": str(rotated_jpeg(media / "rotated.jpg", 1400, 700))},
        {"id": "grey", "uri": str(write_image(media / "grey.png", 700, 990, seed=5, mode="L"))},
        {"id": "video", "uri": str(write_video(media / "clip.mp4"))},
        {"id": "text", "uri": None, "prompt": "Name three colours."},
        {"id": "asks", "uri": str(write_image(media / "asks.jpg", 640, 480, seed=6)), "prompt": "What is here?"},
        {"id": "missing", "uri": str(media / "nope.jpg")},
        {"id": "bomb", "uri": str(write_png_header_only(media / "bomb.png", 200_000, 200_000))},
    ]
    for row in rows:
        row.setdefault("prompt", None)
    manifest = write_manifest(tmp_path / "manifest.parquet", rows)
    spec = make_spec(manifest, task={"max_new_tokens": 4}, preprocess={"max_tiles": 12, "num_frames": 6})
    run(spec)
    result = plan_job(spec, sample=100, device="cpu", utilisation=1.0)
    assert result.sampled_rows == len(rows)
    predicted = {p.id: p for p in result.rows}
    assert predicted["missing"].error_kind == "missing"
    assert predicted["bomb"].error_kind == "image_too_large"
    check = check_against_run(result, spec.output.path)
    assert check["rows_compared"] == len(rows) - 2
    assert check["tiles_exact"] == check["rows_compared"], check["mismatches"]
    assert check["prompt_tokens_exact"] == check["rows_compared"], check["mismatches"]
    actual = {r["id"]: r for r in pq.read_table(spec.output.path).to_pylist()}
    assert predicted["video"].num_tiles == 6 == actual["video"]["num_tiles"]
    assert actual["rotated"]["num_tiles"] == predicted["rotated"].num_tiles
    assert check["measured_over_predicted"] > 0
    measured = [p for p in result.rows if p.cpu_stage_s is not None]
    assert len(measured) == len(rows) == result.cpu_stage_rows_measured  # the default 16 covers them all
    assert check["cpu_stage_rows_compared"] == len(rows) - 2 and check["cpu_stage_run_over_plan"] > 0


def test_flop_model_matches_design_figures():
    """design.md: InternVL3-8B on one H100 at 800 TFLOP/s bounds captions at ~77 images/s with
    2 tiles and ~25 with 7 tiles (prefill only); InternViT-300M ~0.72 TFLOP per tile."""
    shape = FAMILY["InternVL3-8B"]
    assert shape.vision.flops_per_tile == pytest.approx(0.72e12, rel=0.1)
    assert FAMILY["InternVL3-78B"].vision.flops_per_tile == pytest.approx(12e12, rel=0.1)
    assert shape.language.params == pytest.approx(7.6e9, rel=0.03)
    text_tokens = 60  # system message, template and a short question
    for tiles, images_per_s in ((2, 77), (7, 25)):
        prediction = RowPrediction("r", "image", tiles, 256 * tiles + text_tokens)
        flops = shape.vision.flops_per_tile * tiles + shape.language.prefill_flops(prediction.prompt_tokens)
        assert 800e12 / flops == pytest.approx(images_per_s, rel=0.1)


def test_family_names_resolve():
    assert model_shape("OpenGVLab/InternVL3-8B-hf").name == "InternVL3-8B"
    assert model_shape("dummy:InternVL3-1B").name == "InternVL3-1B"
    assert model_shape("/models/internvl3-14b").name == "InternVL3-14B"
    from pipeline.planner import devices_per_replica

    assert devices_per_replica(model_shape("InternVL3-78B"), "h100", None) > 1
    assert devices_per_replica(model_shape("InternVL3-8B"), "h100", None) == 1
    assert model_shape("tiny-random").name == "tiny-random"
    assert model_shape("some/other-model") is None


def test_a_reduced_dummy_is_planned_with_its_own_layers():
    from pipeline.planner import job_model_shape
    from pipeline.spec import ModelSpec

    full = job_model_shape(ModelSpec(name="dummy:InternVL3-1B"))
    reduced = job_model_shape(ModelSpec(name="dummy:InternVL3-1B", dummy_layers=1))
    assert full == model_shape("InternVL3-1B")
    assert (reduced.vision.layers, reduced.language.layers) == (1, 1)
    assert reduced.vision.hidden == full.vision.hidden and reduced.language.vocab == full.language.vocab
    assert job_model_shape(ModelSpec(name="some/other-model")) is None


def test_plan_scales_the_sample_to_the_manifest(tmp_path: Path, make_spec):
    from pipeline.readers.manifest import plan_manifest

    image = write_image(tmp_path / "a.jpg", 900, 600)
    manifest = write_manifest(tmp_path / "m.parquet", [{"id": f"r{i}", "uri": str(image)} for i in range(250)])
    spec = make_spec(manifest, input={"manifest": str(manifest), "rows_per_shard": 40})
    rows = sample_rows(spec, plan_manifest(spec.input), 10)
    ids = [int(r["id"][1:]) for r in rows]
    assert len(ids) == 10 and ids[0] == 0 and ids[-1] == 249 and ids == sorted(ids)
    result = plan_job(spec, sample=10, device="h100", utilisation=0.5, model="InternVL3-2B", output_tokens=32)
    assert result.manifest_rows == 250 and result.mean_tiles == 7  # 900x600 -> 3x2 grid + thumbnail
    per_row_s = result.tflop_per_row * 1e12 / (989e12 * 0.5)
    assert result.device_seconds_per_1000_rows == pytest.approx(1000 * per_row_s, rel=1e-3)
    assert result.device_hours_total == pytest.approx(250 * per_row_s / 3600, rel=1e-2)
    assert result.replica_seconds_per_1000_rows == result.device_seconds_per_1000_rows  # one device a replica
    plan = make_plan(spec, plan_manifest(spec.input), result.rows, FAMILY["InternVL3-2B"], "x", 100.0, 1.0, 0, "t", 0)
    assert plan.tflop_per_row == plan.tflop_per_row_prefill_only


def test_plan_command(tmp_path: Path):
    image = write_image(tmp_path / "a.jpg", 1200, 900)
    manifest = write_manifest(tmp_path / "m.parquet", [{"id": f"r{i}", "uri": str(image)} for i in range(20)])
    job = tmp_path / "job.yaml"
    job.write_text(f"input:\n  manifest: {manifest}\noutput:\n  path: {tmp_path / 'out'}\n")
    done = run_cli("plan", str(job), "--model", "InternVL3-8B", "--gpus", "8", "--json", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(done.stdout.strip().splitlines()[-1])
    assert data["manifest_rows"] == 20 and data["model"] == "InternVL3-8B" and data["device"] == "h100"
    assert (
        data["device_hours_total"] > 0 and data["cluster"]["replicas"] == 8 and data["cluster"]["cpu_stage_cores"] > 0
    )
    too_few = run_cli("plan", str(job), "--model", "InternVL3-78B", "--gpus", "2", timeout=300)
    assert too_few.returncode == 2 and "--gpus 2 is fewer than the 4 device(s)" in too_few.stderr
    alone = run_cli("plan", str(job), "--cpus", "16", timeout=300)
    assert alone.returncode == 2 and "--cpus sizes a cluster together with --gpus" in alone.stderr
    unknown = run_cli("plan", str(job), "--set", "model.name=acme/vlm", timeout=300)
    assert unknown.returncode == 2 and "--model" in unknown.stderr


def test_a_tensor_parallel_replica_splits_the_language_model_and_repeats_the_vision_tower(tmp_path: Path, make_spec):
    """78B needs 4 H100s a replica. Its language model is split over them, but every rank runs
    the whole vision tower (README: tensor parallel), so a row's vision FLOPs are spent 4
    times and its language FLOPs once. (The planner once charged all 4 devices the whole
    row: on these rows 78B's device-hours came out 2.4x too high, its bound per replica 9.6x too low.)"""
    image = write_image(tmp_path / "a.jpg", 900, 600)  # 3x2 grid + thumbnail: 7 tiles
    manifest = write_manifest(tmp_path / "m.parquet", [{"id": f"r{i}", "uri": str(image)} for i in range(30)])
    spec = make_spec(manifest)
    result = plan_job(spec, sample=5, device="h100", utilisation=0.5, model="InternVL3-78B", output_tokens=32)
    assert result.gpus_per_replica == 4 and result.mean_tiles == 7
    vision = 7 * FAMILY["InternVL3-78B"].vision.flops_per_tile
    language = result.tflop_per_row * 1e12 - vision
    assert 0 < vision < language
    rate = 989e12 * 0.5
    assert result.device_seconds_per_1000_rows == pytest.approx(1000 * (4 * vision + language) / rate, rel=1e-3)
    assert result.device_hours_total == pytest.approx(30 * (4 * vision + language) / rate / 3600, rel=1e-3)
    assert result.bound_rows_per_s == pytest.approx(989e12 / (vision + language / 4), rel=1e-3)
    assert result.replica_seconds_per_1000_rows == pytest.approx(1000 * (vision + language / 4) / rate, rel=1e-3)
    text = format_plan(result)
    assert "rows/s per replica (" in text and " per device)" in text


def test_a_layer_split_replica_holds_its_devices_for_the_whole_row_and_the_spec_may_ask_for_more(
    tmp_path: Path, make_spec
):
    """Quantised 78B cannot be tensor-parallel: its replica spans 2 H100s layer by layer, the
    devices working in turn, so a row takes all its FLOPs at one device's rate while both are
    held. A job that gives its own model more devices than it needs is planned with them."""
    image = write_image(tmp_path / "a.jpg", 900, 600)
    manifest = write_manifest(tmp_path / "m.parquet", [{"id": f"r{i}", "uri": str(image)} for i in range(30)])
    quantised = make_spec(manifest, model={"name": "dummy:InternVL3-78B", "quantization": "int8"})
    result = plan_job(quantised, sample=5, device="h100", utilisation=0.5, output_tokens=32)
    assert (result.gpus_per_replica, result.replica_split) == (2, "layers")
    per_row = result.tflop_per_row * 1e12
    assert result.bound_rows_per_s == pytest.approx(989e12 / per_row, rel=1e-3)
    assert result.replica_seconds_per_1000_rows == pytest.approx(1000 * per_row / (989e12 * 0.5), rel=1e-3)
    assert result.device_seconds_per_1000_rows == pytest.approx(2 * result.replica_seconds_per_1000_rows, rel=1e-3)
    assert "2 device(s) per replica, layers split" in format_plan(result)

    wide = make_spec(manifest, model={"name": "dummy:InternVL3-78B", "tensor_parallel": 8})
    eight = plan_job(wide, sample=5, device="h100", utilisation=0.5, output_tokens=32)
    assert (eight.gpus_per_replica, eight.replica_split) == (8, "tensor_parallel")
    four = plan_job(wide, sample=5, device="h100", utilisation=0.5, model="InternVL3-78B", output_tokens=32)
    assert four.gpus_per_replica == 4  # --model plans the member as the family needs it
    assert eight.replica_seconds_per_1000_rows < four.replica_seconds_per_1000_rows
    assert eight.device_seconds_per_1000_rows > four.device_seconds_per_1000_rows  # the vision tower on 8 ranks


def test_plan_costs_the_cpu_stage_and_sizes_a_cluster(tmp_path: Path, make_spec):
    """The CPU stage's cost is measured on a few sampled rows (decoded in full, here) and turned
    into the cores that keep a replica fed; --gpus gives replicas, rows/s and wall-clock hours."""
    image = write_image(tmp_path / "a.jpg", 1200, 900)
    manifest = write_manifest(tmp_path / "m.parquet", [{"id": f"r{i}", "uri": str(image)} for i in range(20)])
    spec = make_spec(manifest)
    result = plan_job(spec, sample=20, device="h100", model="InternVL3-8B", output_tokens=32, gpus=8, cpu_sample=4)
    measured = [p for p in result.rows if p.cpu_stage_s is not None]
    assert [p.id for p in measured] == ["r0", "r6", "r12", "r19"]  # evenly spaced over the sample
    assert all(p.cpu_stage_s > 0 for p in measured) and result.cpu_stage_rows_measured == 4
    assert result.cpu_stage_core_seconds_per_row == pytest.approx(np.mean([p.cpu_stage_s for p in measured]), rel=1e-3)
    replica_rows_per_s = 1000 / result.replica_seconds_per_1000_rows
    assert result.cpu_cores_per_replica == pytest.approx(
        replica_rows_per_s * result.cpu_stage_core_seconds_per_row, rel=1e-2
    )
    cluster = result.cluster
    assert cluster is not None and (cluster.gpus, cluster.replicas) == (8, 8)
    assert cluster.rows_per_s == pytest.approx(8 * replica_rows_per_s, rel=1e-3)
    assert cluster.wall_hours == pytest.approx(20 / cluster.rows_per_s / 3600, rel=1e-3)
    assert cluster.cpu_stage_cores == pytest.approx(8 * result.cpu_cores_per_replica, abs=0.01)
    text = format_plan(result)
    assert "CPU to keep up" in text and "on 8 devices" in text and "8 replica(s)" in text

    skipped = plan_job(spec, sample=20, device="h100", model="InternVL3-8B", cpu_sample=0)
    assert skipped.cpu_stage_core_seconds_per_row is None and skipped.cluster is None
    assert "CPU stage" not in format_plan(skipped) and all(p.cpu_stage_s is None for p in skipped.rows)
    with pytest.raises(JobError, match="--gpus 2 is fewer than the 4 device"):
        plan_job(spec, sample=5, device="h100", model="InternVL3-78B", gpus=2, cpu_sample=0)


def test_durations_read_at_a_glance():
    assert [readable_duration(h) for h in (0.0002, 0.5, 30, 24 * 90)] == ["0.72 s", "30 min", "30 h", "90 days"]


def test_plan_with_the_clusters_cpus_finds_the_stage_that_bounds_it(tmp_path: Path, make_spec):
    """--cpus gives the CPU workers `run` would choose beside the replicas (pipeline/layout.py)
    and the rows/s they feed at the measured cost; the slower of the two stages sets the pace."""
    image = write_image(tmp_path / "a.jpg", 1200, 900)
    manifest = write_manifest(tmp_path / "m.parquet", [{"id": f"r{i}", "uri": str(image)} for i in range(20)])
    spec = make_spec(manifest, preprocess={"workers": "auto"})
    common = {"sample": 20, "device": "h100", "model": "InternVL3-1B", "output_tokens": 32, "cpu_sample": 4}
    for cpus, workers in ((10, 1), (64, 55)):  # 8 replicas reserve 8 CPUs, the tasks 1: the workers get the rest
        result = plan_job(spec, gpus=8, cpus=cpus, **common)
        cluster = result.cluster
        assert cluster is not None and (cluster.cpus, cluster.cpu_workers) == (cpus, workers)
        cost = result.cpu_stage_core_seconds_per_row
        assert cost is not None and cluster.cpu_stage_rows_per_s == pytest.approx(workers / cost, rel=1e-3)
        gpu_rate = 8 * 1000 / result.replica_seconds_per_1000_rows
        assert cluster.rows_per_s == pytest.approx(min(gpu_rate, workers / cost), rel=1e-3)
        assert cluster.bound_by == ("cpu stage" if workers / cost < gpu_rate else "gpus")
        assert cluster.wall_hours == pytest.approx(20 / cluster.rows_per_s / 3600, rel=1e-3)
        assert f"with {cpus} CPUs" in format_plan(result)
    # No CPU workers (`preprocess.workers: 0`): each replica prepares a window, then answers it.
    result = plan_job(make_spec(manifest, preprocess={"workers": 0}), gpus=8, cpus=16, **common)
    cluster, cost = result.cluster, result.cpu_stage_core_seconds_per_row
    assert cluster is not None and cost is not None and cluster.cpu_workers == 0
    per_row = result.replica_seconds_per_1000_rows / 1000 + cost
    assert cluster.rows_per_s == cluster.cpu_stage_rows_per_s == pytest.approx(8 / per_row, rel=1e-3)
    assert "the replicas, preparing their own rows, feed" in format_plan(result)
    with pytest.raises(JobError, match="--cpu-sample must be above 0"):
        plan_job(spec, gpus=8, cpus=16, **{**common, "cpu_sample": 0})
    with pytest.raises(JobError, match="with --device cpu"):
        plan_job(spec, gpus=2, cpus=16, **{**common, "device": "cpu", "model": None})


def test_plan_on_s3_reads_headers_only_and_decodes_just_the_cpu_sample(s3, tmp_path: Path, make_spec):
    """A manifest and media on a real S3 API (moto, behind a proxy that counts the bytes it
    serves): tiles are predicted from ranged reads of the first bytes of each object, and
    only the rows of the CPU sample are fetched whole."""
    from s3 import FaultProxy

    from pipeline.actors.tiling import choose_grid
    from pipeline.planner import HEADER_BYTES

    bucket = s3.bucket("plan-media")
    big = jpeg_bytes(3000, 2000, seed=1)  # noise: several MB, far more than a header read
    assert len(big) > 4 * HEADER_BYTES
    s3.put(bucket, "photos/big.jpg", big)
    s3.put(bucket, "photos/small.jpg", jpeg_bytes(900, 600, seed=2))
    rows = [
        {"id": "big", "uri": f"s3://{bucket}/photos/big.jpg"},
        {"id": "small", "uri": f"s3://{bucket}/photos/small.jpg"},
        {"id": "gone", "uri": f"s3://{bucket}/photos/gone.jpg"},
    ]
    manifest = write_manifest(tmp_path / "m.parquet", rows)
    s3.put(bucket, "manifests/m.parquet", manifest.read_bytes())
    proxy = FaultProxy(s3.endpoint, lambda method, path: None).start()
    try:
        spec = make_spec(f"s3://{bucket}/manifests/m.parquet", storage={"endpoint_url": proxy.endpoint})
        result = plan_job(spec, sample=10, device="h100", model="InternVL3-8B", cpu_sample=0)
        predicted = {p.id: p for p in result.rows}
        assert predicted["big"].num_tiles == choose_grid(3000, 2000, 1, 12, 448, True).num_tiles
        assert predicted["small"].num_tiles == 7 and predicted["gone"].error_kind == "missing"
        assert 0 < proxy.body_bytes[f"{bucket}/photos/big.jpg"] <= HEADER_BYTES
        proxy.body_bytes.clear()
        decoded = plan_job(spec, sample=10, device="h100", model="InternVL3-8B", cpu_sample=3)
        assert decoded.cpu_stage_rows_measured == 3 and decoded.cpu_stage_core_seconds_per_row > 0
        assert proxy.body_bytes[f"{bucket}/photos/big.jpg"] >= len(big)
    finally:
        proxy.stop()
