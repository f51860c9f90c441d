"""End to end: the quickstart through the CLI, through `ray job submit` to a real local
head, and a job full of bad files."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import REPO, run_cli
from media import (
    jpeg_bytes,
    truncated_copy,
    write_animated_gif,
    write_image,
    write_manifest,
    write_palette_with_transparency,
    write_png_16bit,
    write_png_header_only,
)
from PIL import Image

from pipeline.actors.tiling import choose_grid

pytestmark = pytest.mark.slow


def expected_tiles(path: Path, max_tiles: int = 12) -> int:
    with Image.open(path) as image:
        return choose_grid(image.width, image.height, 1, max_tiles).num_tiles


def check_quickstart_output(out: Path) -> None:
    table = pq.read_table(out)
    manifest = pq.read_table(REPO / "samples" / "manifest.parquet")
    assert sorted(table.column("id").to_pylist()) == sorted(manifest.column("id").to_pylist())
    rows = {row["id"]: row for row in table.to_pylist()}
    for entry in manifest.to_pylist():
        row = rows[entry["id"]]
        assert row["error"] is None
        assert row["text"] is not None and row["output_tokens"] > 0
        assert row["num_tiles"] == expected_tiles(REPO / "samples" / entry["uri"])
        assert row["model"] == "tiny-random" and row["task"] == "caption"
    assert (out / "_summary.json").exists()


def test_quickstart_via_cli(tmp_path: Path):
    out = tmp_path / "out"
    local = ("--set", "ray.address=local")  # never join another Ray that happens to run on this machine
    result = run_cli("run", "jobs/quickstart.yaml", "--set", f"output.path={out}", *local)
    assert result.returncode == 0, result.stderr[-3000:]
    check_quickstart_output(out)
    assert "rows/s" in result.stdout
    # The default layout on a CPU-only machine: a replica per core (the job has two batches
    # of 4 rows, so no more than two); where they fill the cores, each prepares its own rows,
    # else one CPU worker prepares for them.
    layout = json.loads((out / "_summary.json").read_text())["layout"]
    replicas = min(2, os.cpu_count() or 1)
    workers = 0 if replicas >= (os.cpu_count() or 1) else 1
    assert (layout["replicas"], layout["cpu_workers"]) == (replicas, workers)
    assert f"{replicas} replica(s), {workers} CPU worker(s)" in result.stderr
    # A second run resumes: nothing left to do, nothing written twice.
    again = run_cli("run", "jobs/quickstart.yaml", "--set", f"output.path={out}", *local)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 shard(s) already complete" in again.stderr
    check_quickstart_output(out)


def test_quickstart_via_ray_job_submit(tmp_path: Path):
    """Submitted to a head of 2 logical CPUs, what `ray start --head` gives on a 2-core
    machine: there a replica and a CPU worker of one CPU each left no room for the read
    task and the job waited forever; the 'auto' CPU worker now reserves what is left."""
    from cluster import RAY, start_head

    head = start_head(num_cpus=2)
    try:
        out = tmp_path / "submitted"
        result = subprocess.run(
            [
                RAY,
                "job",
                "submit",
                "--address",
                head.dashboard_url,
                "--working-dir",
                ".",
                "--",
                "python",
                "-m",
                "pipeline",
                "run",
                "jobs/quickstart.yaml",
                "--set",
                f"output.path={out}",
            ],
            cwd=REPO,
            env=head.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
        assert "succeeded" in result.stdout + result.stderr
        check_quickstart_output(out)
        layout = json.loads((out / "_summary.json").read_text())["layout"]
        assert (layout["replicas"], layout["cpu_workers"]) == (1, 1) and "0.75 CPU" in layout["reason"]
        assert "[pipeline] warning" not in result.stdout
    finally:
        head.stop()


def test_bad_inputs_become_error_rows(tmp_path: Path, make_spec, ray_session):
    from pipeline.runner import run

    media = tmp_path / "media"
    media.mkdir()
    good = [write_image(media / f"good{i}.jpg", 500 + 100 * i, 400, seed=i) for i in range(3)]
    truncated_copy(good[0], media / "truncated.jpg", 0.4)
    (media / "zero.jpg").write_bytes(b"")
    (media / "text.png").write_bytes(b"this is not an image at all")
    cmyk = write_image(media / "cmyk.jpg", 300, 200, seed=7, mode="CMYK")
    sixteen = write_png_16bit(media / "sixteen.png")
    palette = write_palette_with_transparency(media / "palette.png")
    gif = write_animated_gif(media / "animated.gif")
    write_png_header_only(media / "bomb.png", 200_000, 200_000)
    (media / "inline.jpg").write_bytes(jpeg_bytes(10, 10))
    rows = [
        {"id": "good0", "uri": str(good[0])},
        {"id": "good1", "uri": str(good[1])},
        {"id": "good2", "uri": str(good[2])},
        {"id": "truncated", "uri": str(media / "truncated.jpg")},
        {"id": "zero", "uri": str(media / "zero.jpg")},
        {"id": "text", "uri": str(media / "text.png")},
        {"id": "missing", "uri": str(media / "does-not-exist.jpg")},
        {"id": "cmyk", "uri": str(cmyk)},
        {"id": "sixteen", "uri": str(sixteen)},
        {"id": "palette", "uri": str(palette)},
        {"id": "gif", "uri": str(gif)},
        {"id": "bomb", "uri": str(media / "bomb.png")},
    ]
    manifest = write_manifest(tmp_path / "manifest.parquet", rows)
    spec = make_spec(manifest, model={"batch_size": 4})
    summary = run(spec)
    table = pq.read_table(spec.output.path)
    by_id = {row["id"]: row for row in table.to_pylist()}
    assert sorted(by_id) == sorted(r["id"] for r in rows) and table.num_rows == len(rows)
    expected_errors = {
        "truncated": "decode_error",
        "zero": "empty_file",
        "text": "decode_error",
        "missing": "missing",
        "bomb": "image_too_large",
    }
    for row_id, row in by_id.items():
        if row_id in expected_errors:
            assert row["error_kind"] == expected_errors[row_id], row
            assert row["error"].startswith(expected_errors[row_id] + ": ")
            assert row["text"] is None
        else:
            assert row["error"] is None, row
            assert row["text"] is not None
    assert summary["rows_with_errors"] == len(expected_errors)
