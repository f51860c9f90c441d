"""Progress, summary, Ray metrics, `report` and `inspect` on one real output.

One job (tiny-random on the session's local Ray) writes a small output once for the
module: images of several sizes, a real video, and inputs that fail (a missing file,
bytes that are no image). Every test reads that output. The report is rendered by a real
headless Chromium (Debian's `chromium`); only its absence skips that test.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import run_cli
from media import write_image, write_manifest
from PIL import Image

pytestmark = pytest.mark.slow

JOB_NAME = "report-test"
GOOD_IMAGES = 4
ERROR_ROWS = {"missing": "missing", "not_an_image": "decode_error"}


def write_video(path: Path, frames: int = 24, width: int = 96, height: int = 64, fps: int = 8) -> Path:
    """A real H.264 clip whose frames differ (a bar moving across a gradient)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            pixels = np.zeros((height, width, 3), dtype=np.uint8)
            pixels[..., 2] = np.linspace(40, 220, width, dtype=np.uint8)
            pixels[:, (index * 4) % width : (index * 4) % width + 8, 0] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def job_run(tmp_path_factory: pytest.TempPathFactory, ray_session) -> dict[str, Any]:
    """Run the module's job once (non-interactive: pytest captures stderr); keep its echo lines."""
    import pipeline.runner as runner
    from pipeline.spec import parse_spec

    root = tmp_path_factory.mktemp("report-job")
    media = root / "media"
    rows = [
        {"id": f"img{i}", "uri": str(write_image(media / f"img{i}.jpg", 300 + 250 * i, 280 + 60 * i, seed=i))}
        for i in range(GOOD_IMAGES)
    ]
    rows.append({"id": "clip", "uri": str(write_video(media / "clip.mp4"))})
    rows.append({"id": "missing", "uri": str(media / "gone.jpg")})
    (media / "not_an_image.png").write_bytes(b"plain text, not a PNG")
    rows.append({"id": "not_an_image", "uri": str(media / "not_an_image.png")})
    manifest = write_manifest(root / "manifest.parquet", rows)
    spec = parse_spec(
        {
            "name": JOB_NAME,
            "input": {"manifest": str(manifest)},
            "task": {"max_new_tokens": 8},
            "preprocess": {"workers": 1, "num_frames": 6},
            "model": {"batch_size": 4, "replicas": 1},
            "output": {"path": str(root / "out"), "rows_per_file": 3},
        }
    )
    lines: list[str] = []
    old_interval = runner.PROGRESS_INTERVAL_S
    runner.PROGRESS_INTERVAL_S = 0.5
    try:
        summary = runner.run(spec, echo=lines.append)
    finally:
        runner.PROGRESS_INTERVAL_S = old_interval
    return {"out": root / "out", "summary": summary, "lines": lines, "rows": rows, "root": root}


def test_progress_lines_in_a_non_interactive_run(job_run):
    from ray.data import DataContext

    assert DataContext.get_current().enable_progress_bars is False  # no bars in a captured (non-TTY) log
    total = len(job_run["rows"])
    progress = [line for line in job_run["lines"] if re.match(r"\[pipeline\] \d+/\d+ rows", line)]
    assert len(progress) >= 2, job_run["lines"]
    for line in progress:
        assert "rows/s" in line and "ETA" in line and "errors" in line
    last = progress[-1]
    assert last.startswith(f"[pipeline] {total}/{total} rows (100.0%)")
    assert f"errors {len(ERROR_ROWS)}" in last
    # Rows per stage, from Ray Data's own operator counters.
    assert f"read {total} > preprocess {total} > generate {total} > write {total}" in last


def test_summary_table_and_json(job_run, capsys):
    from pipeline.progress import print_summary

    summary = job_run["summary"]
    assert summary["rows_done"] == len(job_run["rows"])
    assert summary["rows_with_errors"] == len(ERROR_ROWS)
    assert summary["errors_by_kind"] == {"missing": 1, "decode_error": 1}
    assert summary["rows_by_media_type"]["video"] == 1
    assert summary["mean_tiles_per_row"] > 1
    assert summary["stage_seconds"]["generate"] > 0
    assert summary["gpu_peak_memory_bytes"] is None  # CPU only: no replica reports a GPU peak
    assert summary["throughput"] and summary["throughput"][-1][1] == len(job_run["rows"])
    on_disk = (job_run["out"] / "_summary.json").read_text()
    assert '"rows_with_errors": 2' in on_disk
    print_summary(summary)
    table = capsys.readouterr().out
    for label in ("rows ok", "rows with errors", "missing", "decode_error", "rows/s", "tokens/s", "mean tiles/row"):
        assert label in table
    assert "peak GPU memory" not in table
    assert f"python -m pipeline inspect {job_run['out']} --errors" in table


def test_counters_are_exported_as_ray_metrics(job_run):
    import ray

    port = next(node["MetricsExportPort"] for node in ray.nodes() if node["Alive"])
    wanted = re.compile(r'^ray_pipeline_rows_done_total\{[^}]*job="' + JOB_NAME + r'"[^}]*\} (\S+)$', re.M)
    deadline = time.time() + 40  # Ray's metrics agent exports every ~10 s
    text = ""
    while time.time() < deadline:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        match = wanted.search(text)
        if match and float(match.group(1)) == len(job_run["rows"]):
            break
        time.sleep(2)
    else:
        exported = [line for line in text.splitlines() if "pipeline" in line][:20]
        pytest.fail(f"ray_pipeline_rows_done_total for {JOB_NAME} not exported: {exported}")
    assert re.search(r'ray_pipeline_row_errors_total\{[^}]*kind="missing"', text)
    assert re.search(r'ray_pipeline_stage_rows\{[^}]*stage="generate"', text)


def test_inspect_prints_counts_schema_and_rows(job_run):
    from pipeline.inspect import inspect_output

    out = str(job_run["out"])
    text = inspect_output(out, limit=100, width=100)
    assert re.search(rf"^{re.escape(out)}: {len(job_run['rows'])} rows in \d+ file\(s\)$", text, re.M)
    assert "with errors 2" in text and "decode_error" in text
    assert "schema (" in text and re.search(r"^  num_tiles\s+int32$", text, re.M)
    shown = re.findall(r"^--- (\S+) ", text, re.M)
    assert sorted(shown) == sorted(r["id"] for r in job_run["rows"])

    errors = inspect_output(out, errors_only=True, width=100)
    assert sorted(re.findall(r"^--- (\S+) ", errors, re.M)) == sorted(ERROR_ROWS)
    assert "missing: " in errors and "does not exist" in errors

    one = inspect_output(out, row_id="clip", width=100)
    assert re.findall(r"^--- (\S+) ", one, re.M) == ["clip"]
    assert re.search(r"^  media_type\s+video$", one, re.M) and "frame_indices" in one

    limited = inspect_output(out, limit=2, width=100)
    assert len(re.findall(r"^--- ", limited, re.M)) == 2


def test_read_only_commands_leave_without_the_interpreter_teardown(job_run, monkeypatch, capsys):
    """`python -m pipeline inspect` (and `report`) end with os._exit(0) once their output is
    flushed: Arrow's threads could abort the teardown after a complete answer (exit -6,
    apache/arrow#34314). A failing command exits normally, with its own status."""
    import sys

    from pipeline import cli

    exits: list[int] = []

    def leave(code: int) -> None:
        exits.append(code)
        raise SystemExit(code)  # os._exit itself would end pytest

    monkeypatch.setattr(cli.os, "_exit", leave)
    monkeypatch.setattr(sys, "argv", ["pipeline", "inspect", str(job_run["out"]), "--id", "img1", "--json"])
    with pytest.raises(SystemExit):
        cli.entry()
    assert exits == [0] and '"id": "img1"' in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["pipeline", "inspect", str(job_run["out"]), "--id", "nope"])
    with pytest.raises(SystemExit) as failed:
        cli.entry()
    assert failed.value.code == 2 and exits == [0]


def test_inspect_cli(job_run):
    def cli(*args: str):
        return run_cli("inspect", *args, timeout=120)

    found = cli(str(job_run["out"]), "--id", "img1", "--json")
    assert found.returncode == 0, found.stderr
    assert '"id": "img1"' in found.stdout and found.stdout.count("\n") == 1
    missing = cli(str(job_run["out"]), "--id", "nope")
    assert missing.returncode == 2
    expected = f"error: {job_run['out']}: no row has id 'nope' (ids are compared as strings, exactly)"
    assert missing.stderr.strip() == expected


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def chromium(browser: str, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium with everything that could reach the network switched off."""
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        return subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                f"--user-data-dir={profile}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_report_renders_in_headless_chromium(job_run, tmp_path):
    from pipeline.report import build_report

    browser = find_chromium()
    if browser is None:
        pytest.skip("chromium not found on PATH (Debian: apt-get install -y chromium)")
    page = tmp_path / "report.html"
    built = build_report(str(job_run["out"]), page, sample=5)
    assert built == {"rows": 7, "errors": 2, "sampled": 5, "bytes": built["bytes"]}
    html = page.read_text()
    # Self-contained: no script, no stylesheet link, every image inline.
    assert "<script" not in html and "<link" not in html
    assert not re.search(r'(src|href)="(?!data:|#)', html)

    dom = chromium(browser, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert len(re.findall(r'<article class="sample-row', dom.stdout)) == 5
    assert len(re.findall(r'<details class="kind"', dom.stdout)) == 2
    assert 'class="chart throughput"' in dom.stdout and 'class="chart tiles"' in dom.stdout
    assert len(re.findall(r'<img src="data:image/jpeg;base64,', dom.stdout)) >= 3

    shot = tmp_path / "report.png"
    result = chromium(browser, f"--screenshot={shot}", "--window-size=1280,1600", page.as_uri())
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (1600, 1280)
    assert pixels.std() > 10  # not a blank page
    assert (pixels < 100).mean() > 0.01  # dark text, thumbnails and bars drawn


def test_report_shows_every_row_video_frames_and_errors(job_run, tmp_path):
    from pipeline.report import build_report

    page = tmp_path / "all.html"
    build_report(str(job_run["out"]), page, sample=100)
    html = page.read_text()
    assert html.count('<article class="sample-row') == len(job_run["rows"])
    clip = html[html.index('data-id="clip"') :].split("</article>")[0]
    frames = pq.read_table(job_run["out"], filters=[("id", "=", "clip")]).column("frame_indices")[0].as_py()
    assert len(frames) == 6
    assert "frames " in clip and 'src="data:image/jpeg;base64,' in clip
    missing = html[html.index('data-id="missing"') :].split("</article>")[0]
    assert "sample-row failed" in html and "no preview" in missing and "does not exist" in missing
    assert "not a readable image" in html  # the decode error's example message


def test_report_and_inspect_read_s3(job_run, tmp_path, s3):
    """The same output copied to a real S3 API (moto server on loopback)."""
    from pipeline.errors import JobError
    from pipeline.inspect import inspect_output
    from pipeline.report import build_report
    from pipeline.spec import StorageSpec

    bucket = s3.bucket("report-results")
    s3.upload_dir(job_run["out"], bucket, "run")
    storage = StorageSpec(endpoint_url=s3.endpoint)
    built = build_report(f"s3://{bucket}/run", tmp_path / "s3.html", sample=7, storage=storage)
    assert built["rows"] == 7 and built["errors"] == 2
    assert (tmp_path / "s3.html").read_text().count('<article class="sample-row') == 7
    text = inspect_output(f"s3://{bucket}/run", row_id="img2", storage=storage, width=100)
    assert re.findall(r"^--- (\S+) ", text, re.M) == ["img2"]
    with pytest.raises(JobError, match="no such output folder"):
        inspect_output(f"s3://{bucket}/elsewhere", storage=storage)
