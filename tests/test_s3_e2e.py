"""Whole jobs on S3 (a real S3 API on loopback): manifest, media, model and output all on s3://,
with the endpoint given only through AWS_ENDPOINT_URL; a listing as input; fail-fast checks
for a wrong endpoint and a missing output bucket; and no secret in anything a run writes."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import run_cli
from media import jpeg_bytes, noise_image
from s3 import free_port

from pipeline.models.tiny_random import ensure_tiny_random

# Distinctive credentials for the secret-scan test (moto accepts any).
SECRET = "SeCrEt/Key+For-Leak-Scan-2b7f9d41e0c3"
ACCESS_KEY = "AKIALEAKSCAN7F9D41E0"


def mp4_bytes(frames: int = 12, size: tuple[int, int] = (96, 64), seed: int = 0) -> bytes:
    """A real H.264 clip written with PyAV."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=6)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        rng = np.random.default_rng(seed)
        for _ in range(frames):
            array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def png_bytes(width: int, height: int, seed: int) -> bytes:
    buffer = io.BytesIO()
    noise_image(width, height, seed).save(buffer, format="PNG")
    return buffer.getvalue()


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any S3 endpoint, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "RAY_ADDRESS")}
    env.update(extra)
    return env


def write_job(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def read_output(s3, bucket: str, prefix: str) -> pa.Table:
    def data(key: str) -> bool:  # readers skip names starting with '_' or '.' (markers, listings)
        return key.endswith(".parquet") and not any(p.startswith(("_", ".")) for p in key[len(prefix) :].split("/"))

    keys = [k for k in s3.keys(bucket, prefix) if data(k)]
    return pa.concat_tables([pq.read_table(io.BytesIO(s3.get(bucket, key))) for key in keys])


def files_containing(root: Path, needle: bytes) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                hits.append(str(path))
        except OSError:  # sockets, files removed while scanning
            continue
    return hits


@pytest.mark.slow
def test_round_trip_on_s3_with_endpoint_from_environment_only(s3, tmp_path: Path):
    media, models, results = s3.bucket("e2e-media-in"), s3.bucket("e2e-models"), s3.bucket("e2e-results")
    images = {
        "cat": ("in put/ünï cödé/cat 1.jpg", jpeg_bytes(900, 600, seed=1)),
        "dog": ("in put/nested/deeper/still/dog (2).png", png_bytes(500, 700, seed=2)),
        "relative": ("manifests/v1/relative one.jpg", jpeg_bytes(640, 480, seed=3)),
    }
    for key, data in images.values():
        s3.put(media, key, data)
    s3.put(media, "in put/clips/walk 1.mp4", mp4_bytes())
    rows = [
        {"id": "cat", "uri": f"s3://{media}/{images['cat'][0]}"},
        {"id": "dog", "uri": f"s3://{media}/{images['dog'][0]}"},
        {"id": "relative", "uri": "relative one.jpg"},  # relative to the manifest's folder on S3
        {"id": "clip", "uri": f"s3://{media}/in put/clips/walk 1.mp4"},
        {"id": "gone", "uri": f"s3://{media}/in put/never uploaded.jpg"},
        {"id": "no-bucket", "uri": "s3://e2e-bucket-that-does-not-exist/x.jpg"},
    ]
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    s3.put(media, "manifests/v1/part 0.parquet", buffer.getvalue())
    model_uri = s3.upload_dir(ensure_tiny_random(), models, "checkpoints/tiny random")

    output = f"s3://{results}/runs/first run/"
    job = write_job(
        tmp_path / "job.yaml",
        {
            "name": "s3-round-trip",
            "input": {"manifest": f"s3://{media}/manifests/v1/"},
            "task": {"max_new_tokens": 6},
            "preprocess": {"workers": 1, "num_frames": 4},
            "model": {"name": model_uri, "batch_size": 4},
            "output": {"path": output},
        },
    )
    ray_tmp = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))  # short: Ray's socket paths must fit
    cache = tmp_path / "cache"
    env = clean_env(
        AWS_ENDPOINT_URL=s3.endpoint,
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET,
        RAY_TMPDIR=str(ray_tmp),
        PIPELINE_CACHE_DIR=str(cache),
    )
    try:
        result = run_cli("run", str(job), "--set", "ray.address=local", inherit=False, env=env)
        assert result.returncode == 0, result.stderr[-4000:]
        table = read_output(s3, results, "runs/first run/")
        by_id = {row["id"]: row for row in table.to_pylist()}
        assert sorted(by_id) == sorted(r["id"] for r in rows) and table.num_rows == len(rows)
        for row_id in ("cat", "dog", "relative", "clip"):
            assert by_id[row_id]["error"] is None, by_id[row_id]
            assert by_id[row_id]["text"] is not None and by_id[row_id]["output_tokens"] > 0
        assert by_id["clip"]["media_type"] == "video" and len(by_id["clip"]["frame_indices"]) == 4
        assert by_id["relative"]["uri"] == f"s3://{media}/manifests/v1/relative one.jpg"
        assert by_id["gone"]["error_kind"] == "missing" and "never uploaded.jpg" in by_id["gone"]["error"]
        assert by_id["no-bucket"]["error_kind"] == "missing" and "does not exist" in by_id["no-bucket"]["error"]
        assert by_id["cat"]["model"] == model_uri
        keys = s3.keys(results, "runs/first run/")
        assert "runs/first run/_job.json" in keys and "runs/first run/_summary.json" in keys
        assert list(cache.glob("s3/*/checkpoint/model.safetensors")), "the checkpoint was cached locally"

        # A second run resumes from S3: nothing redone, nothing duplicated.
        again = run_cli("run", str(job), "--set", "ray.address=local", inherit=False, env=env)
        assert again.returncode == 0, again.stderr[-4000:]
        assert "1 shard(s) already complete" in again.stderr
        assert read_output(s3, results, "runs/first run/").num_rows == len(rows)

        # The secret appears nowhere: not in the console, the output objects, the cache or Ray's logs.
        for text in (result.stdout, result.stderr, again.stdout, again.stderr):
            assert SECRET not in text and ACCESS_KEY not in text
        for bucket in (results, media):
            for key in s3.keys(bucket):
                body = s3.get(bucket, key)
                assert SECRET.encode() not in body and ACCESS_KEY.encode() not in body, key
        assert list(ray_tmp.rglob("*.log")) or list(ray_tmp.rglob("*.out")), "Ray's logs of this run were found"
        for root in (ray_tmp, cache, tmp_path):
            assert files_containing(root, SECRET.encode()) == []
            assert files_containing(root, ACCESS_KEY.encode()) == []
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
def test_listing_input_on_s3_then_resume_with_new_media(s3, make_spec, ray_session, monkeypatch):
    """Also: the endpoint is set only in the driver's environment (the session's Ray workers were
    started without it); the driver resolves it and ships it to the workers in the spec."""
    from pipeline.runner import run

    media, results = s3.bucket("e2e-listing-media"), s3.bucket("e2e-listing-out")
    keys = ["a/1 one.jpg", "a/b/2 ü.jpg", "c/3.png"]
    for index, key in enumerate(keys):
        s3.put(media, f"photos/{key}", jpeg_bytes(300 + 50 * index, 200, seed=index))
    s3.put(media, "photos/readme.txt", b"not media")
    spec = make_spec(
        f"s3://{media}/photos/**",
        output={"path": f"s3://{results}/listing run"},
        task={"max_new_tokens": 4},
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    run(spec)
    table = read_output(s3, results, "listing run/")
    assert sorted(table.column("id").to_pylist()) == sorted(keys)
    assert table.column("error").null_count == len(keys)
    # New media arrive; a resumed run does just those.
    s3.put(media, "photos/new/4 later.jpg", jpeg_bytes(320, 240, seed=9))
    summary = run(spec)
    table = read_output(s3, results, "listing run/")
    assert sorted(table.column("id").to_pylist()) == sorted([*keys, "new/4 later.jpg"])
    assert summary["rows_done"] == 1 and summary["manifest_rows"] == len(keys) + 1


def test_wrong_endpoint_fails_fast_before_any_work(s3, tmp_path: Path):
    closed = f"http://127.0.0.1:{free_port()}"
    job = write_job(
        tmp_path / "job.yaml",
        {"input": {"manifest": "s3://some-bucket/manifests/"}, "output": {"path": "s3://some-bucket/out"}},
    )
    result = run_cli(
        "run",
        str(job),
        "--set",
        "ray.address=local",
        inherit=False,
        env=clean_env(AWS_ENDPOINT_URL=closed),
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: input.manifest")
    assert "cannot reach the object store at" in lines[0] and closed in lines[0]
    assert "[pipeline] using" not in result.stderr  # no Ray was started


def test_missing_output_bucket_fails_fast_and_is_not_created(s3, tmp_path: Path):
    from media import write_image, write_manifest

    image = write_image(tmp_path / "a.jpg", 100, 100)
    manifest = write_manifest(tmp_path / "m.parquet", [{"id": "a", "uri": str(image)}])
    job = write_job(
        tmp_path / "job.yaml",
        {"input": {"manifest": str(manifest)}, "output": {"path": "s3://e2e-typo-in-bucket/out"}},
    )
    env = clean_env(AWS_ENDPOINT_URL=s3.endpoint)
    result = run_cli("run", str(job), "--set", "ray.address=local", inherit=False, env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: output.path: the bucket 'e2e-typo-in-bucket'")
    assert "does not exist" in result.stderr and "[pipeline] using" not in result.stderr
    assert "e2e-typo-in-bucket" not in s3.buckets()
    # The same check in `validate`.
    checked = run_cli("validate", str(job), inherit=False, env=env, timeout=120)
    assert checked.returncode == 2 and "e2e-typo-in-bucket" in checked.stderr


def test_unreachable_media_store_fails_fast(s3, tmp_path: Path):
    """A local manifest whose media live behind an endpoint that does not answer."""
    from media import write_manifest

    manifest = write_manifest(tmp_path / "m.parquet", [{"id": "a", "uri": "s3://media-bucket/a.jpg"}])
    job = write_job(tmp_path / "job.yaml", {"input": {"manifest": str(manifest)}, "output": {"path": str(tmp_path)}})
    closed = f"http://127.0.0.1:{free_port()}"
    result = run_cli("validate", str(job), inherit=False, env=clean_env(AWS_ENDPOINT_URL=closed), timeout=120)
    assert result.returncode == 2
    assert "the media of the manifest cannot be read" in result.stderr and "cannot reach" in result.stderr
