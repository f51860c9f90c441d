"""Run counters, progress lines, the summary table, and the report's pure helpers (no Ray)."""

from __future__ import annotations

import io
import json
import time

import pyarrow as pa
import pytest

from pipeline.actors.generate import GPU_PEAK_BYTES, REPLICA, with_replica_columns
from pipeline.actors.write import STATS_SCHEMA, gpu_peaks
from pipeline.progress import (
    ProgressReporter,
    RunTracker,
    StageRows,
    format_bytes,
    format_duration,
    print_summary,
    stage_of,
)
from pipeline.report.charts import column_chart, throughput_series
from pipeline.report.html import readable, short_prompt


def stats_row(shard: str, rows: int, todo: int, errors: dict[str, int] | None = None, **extra) -> dict:
    errors = errors or {}
    return {
        "shard": shard,
        "shard_todo": todo,
        "rows": rows,
        "errors": sum(errors.values()),
        "error_kinds": json.dumps(errors),
        "media_types": json.dumps({"image": rows}),
        "prompt_tokens": 100 * rows,
        "output_tokens": 10 * rows,
        "tiles": 3 * rows,
        "preprocess_s": 0.1 * rows,
        "generate_s": 0.5 * rows,
        "written_at": extra.pop("written_at", time.time()),
        "gpu_peak_bytes": json.dumps(extra.pop("peaks", {})),
    }


def stats(*rows: dict) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=STATS_SCHEMA)


def test_tracker_counts_rows_errors_and_completed_shards():
    tracker = RunTracker(total_rows=10, pending_rows=10)
    done = tracker.update(stats(stats_row("s1", 4, 6, {"missing": 1}), stats_row("s2", 4, 4)))
    assert done == ["s2"]
    assert tracker.update(stats(stats_row("s1", 2, 6))) == ["s1"]
    assert (tracker.rows, tracker.errors, dict(tracker.error_kinds)) == (10, 1, {"missing": 1})
    summary = tracker.summary("job", "/out", "tiny-random")
    assert summary["rows_ok"] == 9 and summary["mean_tiles_per_row"] == pytest.approx(30 / 9, abs=1e-3)
    assert summary["gpu_peak_memory_bytes"] is None  # no replica reported a GPU peak


def test_rate_follows_the_last_minute_and_eta_the_rate():
    tracker = RunTracker(total_rows=1000, pending_rows=1000, started=time.time() - 300)
    # 100 rows in the first minute, nothing for three minutes, then 60 rows in the last minute.
    tracker.throughput = [(60.0, 100), (250.0, 130), (290.0, 160)]
    tracker.rows = 160
    assert tracker.rate(now=300.0) == pytest.approx(60 / 60)  # the last minute only, not 160 / 300
    assert tracker.rate(now=30.0) == pytest.approx(160 / 30)  # young run: whole run
    eta = tracker.eta_s()
    assert eta is not None and eta == pytest.approx((1000 - 160) / tracker.rate(), rel=0.05)


def test_progress_line_before_and_after_writes():
    tracker = RunTracker(total_rows=50, pending_rows=40)
    line = tracker.progress_line()
    assert line.startswith("[pipeline] 0/40 rows (0.0%) | 0.00 rows/s | ETA ? | errors 0 | elapsed ")
    tracker.set_stage_rows(StageRows(rows_in={"write": 8}, rows_out={"read": 40, "preprocess": 20, "generate": 8}))
    tracker.update(stats(stats_row("s", 8, 40, {"decode_error": 2})))
    line = tracker.progress_line()
    assert line.startswith("[pipeline] 8/40 rows (20.0%) | ")
    assert "errors 2" in line and line.endswith("| read 40 > preprocess 20 > generate 8 > write 8")
    assert "ETA ?" not in line


def test_stage_names_from_ray_data_operators():
    assert stage_of("MapBatches(read_shards)") == "read"
    assert stage_of("MapBatches(PreprocessStage)") == "preprocess"
    assert stage_of("MapBatches(GenerateStage)") == "generate"
    assert stage_of("MapBatches(postprocess_batch)->MapBatches(write_batch)") == "write"
    assert stage_of("Input") is None


def test_summary_reports_gpu_peaks_per_replica():
    """The rows of a replica on CUDA carry its peak (here written into the stats as the write
    stage would; no GPU exists on this machine)."""
    tracker = RunTracker(total_rows=4, pending_rows=4)
    peaks = {"node1:gpu0": 7 * 2**30, "node1:gpu1": 6 * 2**30}
    tracker.update(stats(stats_row("s", 2, 4, peaks=peaks)))
    tracker.update(stats(stats_row("s", 2, 4, peaks={"node1:gpu0": 8 * 2**30})))
    summary = tracker.summary("job", "/out", "m")
    assert summary["gpu_peak_memory_bytes"] == {"node1:gpu0": 8 * 2**30, "node1:gpu1": 6 * 2**30}
    stream = io.StringIO()
    print_summary(summary, stream)
    assert "peak GPU memory       node1:gpu0 8.0 GiB, node1:gpu1 6.0 GiB" in stream.getvalue()


def test_replica_columns_reach_the_write_statistics():
    batch = pa.table({"id": ["a", "b"]})
    on_cpu = with_replica_columns(batch, "host:pid1", None)
    assert on_cpu.column(REPLICA).to_pylist() == ["host:pid1"] * 2
    assert gpu_peaks(on_cpu) == {}
    on_gpu = pa.concat_tables([with_replica_columns(batch, "h:gpu0", 5), with_replica_columns(batch, "h:gpu0", 9)])
    assert on_gpu.column(GPU_PEAK_BYTES).to_pylist() == [5, 5, 9, 9]
    assert gpu_peaks(on_gpu) == {"h:gpu0": 9}


def test_steady_rate_needs_a_real_span():
    tracker = RunTracker(total_rows=20, pending_rows=20, started=time.time() - 100)
    now = time.time()
    tracker.update(stats(stats_row("s", 10, 20, written_at=now - 0.01), stats_row("s", 10, 20, written_at=now)))
    assert tracker.steady_rate() is None  # one burst says nothing about the steady state
    tracker = RunTracker(total_rows=20, pending_rows=20, started=time.time() - 100)
    tracker.update(stats(stats_row("s", 10, 20, written_at=now - 50), stats_row("s", 10, 20, written_at=now)))
    assert tracker.steady_rate() == pytest.approx(10 / 50)


def test_reporter_prints_periodically_and_once_at_the_end():
    tracker = RunTracker(total_rows=3, pending_rows=3)
    lines: list[str] = []
    published: list[int] = []
    with ProgressReporter(tracker, lines.append, 0.05, lambda t: published.append(t.rows)):
        time.sleep(0.3)
        tracker.update(stats(stats_row("s", 3, 3)))
    assert len(lines) >= 3 and all(line.startswith("[pipeline] ") for line in lines)
    assert lines[-1].startswith("[pipeline] 3/3 rows (100.0%)") and published[-1] == 3


def test_formatting_helpers():
    assert [format_duration(s) for s in (5, 65, 3700, 2 * 86400 + 3600)] == ["5s", "1m05s", "1h01m", "2d01h"]
    assert format_bytes(512) == "512 B" and format_bytes(3 * 2**30) == "3.0 GiB"
    assert readable("ok\x1b[31mred\x00") == "ok\ufffd[31mred\ufffd"
    assert short_prompt("<img>" + "<IMG_CONTEXT>" * 256 + "</img>") == "<img><IMG_CONTEXT> x 256</img>"


def test_throughput_series_and_chart():
    seconds = {1000: 5, 1001: 5, 1009: 10}
    rates, labels, cumulative = throughput_series(seconds, start=990.0, buckets=4)
    assert len(rates) == len(labels) == 4 and cumulative[-1] == 20
    assert sum(r * 5 for r in rates) == pytest.approx(20)  # 20 s span in 4 buckets of 5 s
    svg = column_chart(rates, labels, title="t", y_label="rows/s", line=cumulative)
    assert svg.startswith("<svg") and svg.count("<rect") == 4 and "<polyline" in svg


def test_report_page_shows_moderation_labels_and_ocr_text():
    """Rendering is a pure function of the rows: moderation columns become badges, OCR text
    keeps its lines, and whatever a model says is escaped."""
    from pipeline.report.html import ReportData, SampleRow, render_report
    from pipeline.report.media import Thumbnail
    from pipeline.report.output import OutputCounts

    moderated = {
        "id": "m1",
        "uri": "s3://b/m1.jpg",
        "media_type": "image",
        "task": "moderation",
        "text": '{"flagged": true}',
        "flagged": True,
        "categories": ["violence"],
        "reason": "a <b>fight</b>",
    }
    ocr = {"id": "p1", "uri": "/p1.png", "media_type": "image", "task": "ocr", "text": "# Title\n| a | b |"}
    page = render_report(
        ReportData(
            output="s3://b/out",
            generated_at="now",
            counts=OutputCounts(rows=2, flagged=1),
            samples=[SampleRow(moderated, Thumbnail(None, "x")), SampleRow(ocr, Thumbnail(None, "y"))],
        )
    )
    assert '<span class="badge flagged">flagged</span><span class="badge">violence</span>' in page
    assert "a &lt;b&gt;fight&lt;/b&gt;" in page and "<b>fight</b>" not in page
    assert '<pre class="answer"># Title\n| a | b |</pre>' in page
    assert page.count('<article class="sample-row') == 2
