"""`python -m pipeline report OUTPUT --html report.html`: a job's output as one HTML page.

People would rather look than read Parquet: the page shows counts, throughput and tiles
charts, errors grouped by kind with examples, and a sample of rows with their image (or
video frames) next to the answer and labels. It is one self-contained file.

    output.py  reading an output (files, counts, samples, lookups; shared with `inspect`)
    media.py   thumbnails and video frame grids as data URIs
    charts.py  inline SVG charts
    html.py    the page
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline.errors import JobError
from pipeline.spec import StorageSpec

DEFAULT_SAMPLE = 24


def build_report(
    output: str, html_path: str | Path, sample: int = DEFAULT_SAMPLE, storage: StorageSpec | None = None
) -> dict[str, int]:
    """Write the report of `output` (local or s3://) to `html_path`; return what it holds."""
    from pipeline.report.html import ReportData, SampleRow, render_report
    from pipeline.report.media import row_thumbnail
    from pipeline.report.output import count_output, open_output, sample_rows

    job_output = open_output(output, storage)
    counts = count_output(job_output)
    rows = sample_rows(job_output, sample)
    # Fetching and decoding media is I/O bound (S3): a few threads keep a report quick.
    with ThreadPoolExecutor(max_workers=8) as pool:
        thumbnails = list(pool.map(lambda row: row_thumbnail(row, storage), rows))
    data = ReportData(
        output=output,
        generated_at=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        counts=counts,
        samples=[SampleRow(row, thumb) for row, thumb in zip(rows, thumbnails, strict=True)],
        summary=job_output.summary,
        job=job_output.job,
        files=len(job_output.files),
    )
    page = render_report(data)
    target = Path(html_path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(page, encoding="utf-8")
    except OSError as error:
        raise JobError(f"--html {html_path}: cannot write the report ({error.strerror or error})") from None
    return {
        "rows": counts.rows,
        "errors": counts.errors,
        "sampled": len(rows),
        "bytes": len(page.encode("utf-8")),
    }
