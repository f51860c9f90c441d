"""Listings of media as manifests: S3 prefixes and globs, local folders, the `manifest` command,
and `input.manifest` pointing straight at media."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import run_cli

from pipeline.errors import JobError
from pipeline.readers.listing import LISTING_FOLDER, list_media, plan_input, store_listing
from pipeline.spec import StorageSpec, parse_spec

MEDIA_KEYS = [
    "top.jpg",
    "2024/cats/tabby 1.jpg",
    "2024/cats/ünïcödé 猫.png",
    "2024/clips/walk (1).mp4",
    "deep/er/still/deeper.webp",
]
OTHER_KEYS = ["notes.txt", "2024/cats/.thumbs/tabby 1.jpg", "2024/manifest.json", "audio/song.mp3"]


@pytest.fixture
def media_bucket(s3, request) -> str:
    name = "ls-" + request.node.name.replace("_", "-")[:40].lower().strip("-")
    s3.bucket(name)
    for key in MEDIA_KEYS + OTHER_KEYS:
        s3.put(name, f"data/set one/{key}", f"content of {key}".encode())
    return name


def test_lists_a_prefix_with_ids_from_keys(s3, media_bucket):
    storage = StorageSpec(endpoint_url=s3.endpoint)
    media = list_media(f"s3://{media_bucket}/data/set one/", storage)
    assert [m.id for m in media] == sorted(MEDIA_KEYS)
    by_id = {m.id: m for m in media}
    assert by_id["2024/clips/walk (1).mp4"].media_type == "video"
    assert by_id["2024/cats/ünïcödé 猫.png"].uri == f"s3://{media_bucket}/data/set one/2024/cats/ünïcödé 猫.png"
    assert by_id["top.jpg"].size == len(b"content of top.jpg")
    # Stable: the same root lists to the same ids, with or without the trailing slash.
    assert [m.id for m in list_media(f"s3://{media_bucket}/data/set one", storage)] == sorted(MEDIA_KEYS)


def test_lists_a_glob(s3, media_bucket):
    storage = StorageSpec(endpoint_url=s3.endpoint)
    media = list_media(f"s3://{media_bucket}/data/set one/**/*.jpg", storage)
    assert [m.id for m in media] == ["2024/cats/tabby 1.jpg", "top.jpg"]
    media = list_media(f"s3://{media_bucket}/data/set one/2024/*/*", storage)
    assert [m.id for m in media] == ["cats/tabby 1.jpg", "cats/ünïcödé 猫.png", "clips/walk (1).mp4"]


def test_lists_a_local_folder(tmp_path: Path):
    for key in MEDIA_KEYS + OTHER_KEYS:
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(b"x")
    media = list_media(str(tmp_path))
    assert [m.id for m in media] == sorted(MEDIA_KEYS)
    assert all(Path(m.uri).is_file() for m in media)
    with pytest.raises(JobError, match="does not exist"):
        list_media(str(tmp_path / "nope"))


def test_manifest_command_on_s3_with_endpoint_from_environment(s3, media_bucket):
    target = f"s3://{media_bucket}/manifests/nested/listing.parquet"
    result = run_cli(
        "manifest", f"s3://{media_bucket}/data/set one/", "-o", target, env={"AWS_ENDPOINT_URL": s3.endpoint}
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 5 rows (4 images, 1 videos)" in result.stdout
    table = pq.read_table(io.BytesIO(s3.get(media_bucket, "manifests/nested/listing.parquet")))
    assert table.column_names == ["id", "uri", "media_type", "size_bytes"]
    assert table.column("id").to_pylist() == sorted(MEDIA_KEYS)
    # Nothing to list: a clear error, exit 2.
    empty = run_cli(
        "manifest", f"s3://{media_bucket}/nothing/", "-o", "x.parquet", env={"AWS_ENDPOINT_URL": s3.endpoint}
    )
    assert empty.returncode == 2 and empty.stderr.startswith("error: ") and "does not exist" in empty.stderr


def test_manifest_command_on_a_local_folder(tmp_path: Path):
    folder = tmp_path / "photos"
    for key in MEDIA_KEYS:
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        (folder / key).write_bytes(b"x")
    result = run_cli("manifest", str(folder), "-o", str(tmp_path / "m.parquet"))
    assert result.returncode == 0, result.stderr
    table = pq.read_table(tmp_path / "m.parquet")
    assert table.column("id").to_pylist() == sorted(MEDIA_KEYS)
    assert table.column("uri").to_pylist() == [str(folder / key) for key in sorted(MEDIA_KEYS)]


def job(manifest: str, output: str, endpoint: str, mode: str = "resume"):
    return parse_spec(
        {
            "input": {"manifest": manifest, "rows_per_shard": 2},
            "output": {"path": output, "mode": mode},
            "storage": {"endpoint_url": endpoint},
        }
    )


def test_input_manifest_may_be_a_prefix_or_glob_of_media(s3, media_bucket):
    storage = StorageSpec(endpoint_url=s3.endpoint)
    output = f"s3://{media_bucket}/out/run one"
    spec = job(f"s3://{media_bucket}/data/set one/**", output, s3.endpoint)
    planned = plan_input(spec)
    assert planned.listed and planned.plan.total_rows == len(MEDIA_KEYS) and len(planned.plan.shards) == 3
    assert planned.plan.columns["id"] == "id" and planned.plan.columns["media_type_hint"] == "media_type"
    (part,) = planned.uploads
    assert part.startswith(f"{output}/{LISTING_FOLDER}/listing-")
    assert s3.keys(media_bucket, "out/") == []  # planning (and so `validate`) writes nothing
    # Planned again: the same part, the same shards (resume depends on it).
    again = plan_input(spec)
    assert again.uploads == planned.uploads and again.plan.shards == planned.plan.shards
    # Stored, then a new image arrives: a resumed run adds a part with just the new key.
    store_listing(planned.uploads, storage)
    s3.put(media_bucket, "data/set one/2025/new arrival.jpg", b"new")
    resumed = plan_input(spec)
    assert [s.key for s in resumed.plan.shards[:3]] == [s.key for s in planned.plan.shards]
    (new_part,) = resumed.uploads
    new_ids = pq.ParquetFile(io.BytesIO(resumed.uploads[new_part])).read().column("id").to_pylist()
    assert new_ids == ["2025/new arrival.jpg"] and resumed.plan.total_rows == len(MEDIA_KEYS) + 1
    # Overwrite lists from scratch.
    fresh = plan_input(job(spec.input.manifest, output, s3.endpoint, mode="overwrite"))
    assert fresh.plan.total_rows == len(MEDIA_KEYS) + 1 and len(fresh.plan.files) == 1


def test_parquet_manifests_and_mixed_globs(s3, media_bucket, tmp_path: Path):
    from media import write_manifest

    local = write_manifest(tmp_path / "m.parquet", [{"id": "a", "uri": "s3://x/a.jpg"}])
    s3.put(media_bucket, "data/set one/manifest/part-0.parquet", local.read_bytes())
    output = f"s3://{media_bucket}/out"
    planned = plan_input(job(f"s3://{media_bucket}/data/set one/manifest/", output, s3.endpoint))
    assert not planned.listed and planned.plan.total_rows == 1
    # The same manifest named as a file and as a glob.
    expected = [f"s3://{media_bucket}/data/set one/manifest/part-0.parquet"]
    for form in ("data/set one/manifest/part-0.parquet", "data/*/manifest/*.parquet"):
        planned = plan_input(job(f"s3://{media_bucket}/{form}", output, s3.endpoint))
        assert not planned.listed and planned.plan.files == expected
    # A folder holding both: Parquet wins (a manifest next to its media is common).
    assert not plan_input(job(f"s3://{media_bucket}/data/set one/", output, s3.endpoint)).listed
    with pytest.raises(JobError, match="matches both Parquet files and media"):
        plan_input(job(f"s3://{media_bucket}/data/set one/**", output, s3.endpoint))
    with pytest.raises(JobError, match="matches no Parquet files and no images or videos"):
        plan_input(job(f"s3://{media_bucket}/data/set one/**/*.gif", output, s3.endpoint))
