"""`bench scaling`: rows/s with 1 and 2 CPU workers; driver memory for 10^4 and 10^6 rows.

Part 1 - CPU workers. The whole pipeline with the no-model engine (so the CPU stage is
the bottleneck) on the generated image corpus, with `preprocess.workers` 1 and 2,
interleaved; steady-state rows/s from runs of N/2 and N rows (the extra rows over the extra
wall time, as in `bench pipeline`). On a 2-core machine the
driver, Ray and the no-model replica share the cores with the workers, so 2 workers
cannot reach 2x here; the figure says how close they get.

Part 2 - driver memory. Pushing 10^6 image rows through this 2-core machine would take
hours, so the driver is measured on what it does that grows with the manifest, for real:
a manifest of N text rows (10^4 and 10^6) is run by the real driver (`pipeline run` in
its own process) in resume mode, with every shard but the last already marked complete.
So the driver plans all N rows (Parquet footers), checks all N ids for nulls and
duplicates, lists the completion markers of every shard, and then runs one shard of
10^4 rows through the whole pipeline. Its peak RSS is compared across N. The statistics
the driver consumes per written file (one small row per file) are measured apart: a
`RunTracker` fed the statistics of N rows, with Python's allocation peak (tracemalloc),
together with planning, id checks and the marker listing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import BenchOptions, machine, median, ratio, say, table
from benchmarks.corpus import PREPROCESS_RECIPES, build_corpus
from benchmarks.pipeline import differential_rate, job_file, run_pipeline, write_manifest

SIZES = (10_000, 1_000_000)
ROWS_PER_SHARD = 10_000


def text_manifest(folder: Path, rows: int) -> Path:
    """N text-only rows (a per-row prompt, no media): the CPU stage does almost nothing."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"text-{rows}.parquet"
    if not path.exists():
        ids = pa.array([f"id-{i:09d}" for i in range(rows)])
        prompts = pa.array(["Say something about the number seven."] * rows)
        table = pa.table({"id": ids, "uri": pa.nulls(rows, pa.string()), "prompt": prompts})
        # Row groups of one shard each, for every size: what the driver holds at a time is one
        # row group, so equal groups make the sizes differ only in their number of rows.
        pq.write_table(table, path, row_group_size=ROWS_PER_SHARD)
    return path


def memory_job(folder: Path, manifest: Path, rows: int) -> Path:
    """A resume job whose shards are all complete but the last.

    The markers are what a seal writes for a complete shard (`shard_marker_name` in the
    shard's folder); writing them directly spares filling 10^6 rows of output first.
    """
    from pipeline.prompts.tasks import resolve_spec
    from pipeline.readers.manifest import plan_manifest
    from pipeline.resume import prepare_output, shard_marker_name
    from pipeline.runner import absolute_paths
    from pipeline.spec import parse_spec

    output = folder / f"out-text-{rows}"
    shutil.rmtree(output, ignore_errors=True)
    data = {
        "name": f"scaling-{rows}",
        "input": {"manifest": str(manifest), "rows_per_shard": ROWS_PER_SHARD},
        "task": {"kind": "custom", "prompt": "unused {id}", "max_new_tokens": 8},
        "model": {"name": "none", "batch_size": 64},
        "preprocess": {"workers": 1, "batch_size": 256},
        "output": {"path": str(output), "mode": "resume", "rows_per_file": 1000},
        "ray": {"address": "local"},
    }
    spec = absolute_paths(resolve_spec(parse_spec(data)))
    plan = plan_manifest(spec.input, spec.storage)
    prepare_output(spec, plan)
    for shard in plan.shards[:-1]:
        folder_of_shard = output / shard.key
        folder_of_shard.mkdir(parents=True, exist_ok=True)
        (folder_of_shard / shard_marker_name(shard.num_rows)).touch()
    path = folder / f"job-text-{rows}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# The driver in its own process; its peak from `benchmarks.common.peak_rss_mb` (VmHWM).
DRIVER = """
import json, sys, time
from benchmarks.common import peak_rss_mb
from pipeline.runner import run
from pipeline.spec import load_spec

started = time.perf_counter()
summary = run(load_spec(sys.argv[1]), echo=lambda line: None)
print(json.dumps({"peak_rss_mb": peak_rss_mb(),
                  "rows": summary["rows_done"], "skipped": summary["rows_skipped_by_resume"],
                  "wall_s": time.perf_counter() - started}))
"""


def driver_peak(job: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run the real driver in its own process; its peak RSS and what it did."""
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(job)], env=env, capture_output=True, text=True, timeout=3600, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"driver failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def driver_work_peak(manifest: Path, rows: int, folder: Path) -> dict[str, float]:
    """Python allocation peak of the driver's manifest-sized work, in this process (tracemalloc)."""
    import pyarrow as pa

    from pipeline.progress import RunTracker
    from pipeline.readers.duplicates import hash_ids
    from pipeline.readers.manifest import check_ids, plan_manifest
    from pipeline.resume import done_shards
    from pipeline.spec import InputSpec

    output = folder / f"out-text-{rows}"
    hash_ids(pa.array(["warm-up"]))  # imports (pandas) are not the manifest's cost
    tracemalloc.start()
    started = time.perf_counter()
    plan = plan_manifest(InputSpec(manifest=str(manifest), rows_per_shard=ROWS_PER_SHARD))
    check_ids(plan, None, check_duplicates=True)
    done = done_shards(str(output), None)
    tracker = RunTracker(total_rows=plan.total_rows, pending_rows=plan.total_rows)
    per_file = 1000
    for shard in plan.shards:  # the statistics rows of every file the run would write
        for offset in range(0, shard.num_rows, per_file):
            count = min(per_file, shard.num_rows - offset)
            stats = pa.Table.from_pylist(
                [
                    {
                        "shard": shard.key,
                        "shard_todo": shard.num_rows,
                        "rows": count,
                        "errors": 0,
                        "error_kinds": "{}",
                        "media_types": json.dumps({"text": count}),
                        "prompt_tokens": 20 * count,
                        "output_tokens": 0,
                        "tiles": 0,
                        "preprocess_s": 0.0,
                        "generate_s": 0.0,
                        "written_at": time.time(),
                    }
                ]
            )
            tracker.update(stats)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert tracker.rows == rows and len(done) == len(plan.shards) - 1
    return {"python_peak_mb": peak / 2**20, "seconds": elapsed}


def run(options: BenchOptions) -> dict[str, Any]:
    """Both parts; print the tables; return the result."""
    folder = options.workdir / "scaling-bench"
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PIPELINE_PROGRESS_INTERVAL_S", "30")
    reps = 1 if options.quick else max(1, options.reps)

    # Part 1: CPU workers.
    corpus = build_corpus(options.workdir, PREPROCESS_RECIPES[:3] if options.quick else PREPROCESS_RECIPES)
    rows = 48 if options.quick else 384
    paths = [image.path for image in corpus]
    manifests = {size: write_manifest(folder, paths, size) for size in (rows // 2, rows)}
    jobs = {
        (workers, size): job_file(
            folder / f"workers-{workers}" / str(size),
            manifest,
            "none",
            {"preprocess": {"workers": workers}},
            window_rows=rows,
        )
        for workers in (1, 2)
        for size, manifest in manifests.items()
    }
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    say(
        f"part 1: {rows} image rows (and the first {rows // 2}: steady rate from the difference, as in "
        f"`bench pipeline`), no-model engine, 1 and 2 CPU workers, {reps} interleaved repetition(s)"
    )
    for rep in range(reps):
        for workers in (1, 2) if rep % 2 == 0 else (2, 1):
            short = run_pipeline(jobs[workers, rows // 2], env, 3600)
            result = run_pipeline(jobs[workers, rows], env, 3600)
            result.pop("texts")
            result["short_wall_s"] = short["wall_s"]
            result["steady_rows_per_s"] = differential_rate(short, result)
            runs[workers].append(result)
            say(f"  rep {rep + 1}, {workers} worker(s): steady {result['steady_rows_per_s']:.2f} rows/s")
    rates = {w: median([r["steady_rows_per_s"] for r in runs[w]]) for w in (1, 2)}
    walls = {w: median([r["wall_s"] for r in runs[w]]) for w in (1, 2)}
    say(
        table(
            ["CPU workers", "steady rows/s", "vs 1 worker", "wall s"],
            [[w, rates[w], f"{ratio(rates[w], rates[1])}x", walls[w]] for w in (1, 2)],
        )
    )

    # Part 2: driver memory.
    sizes = (1_000, 100_000) if options.quick else SIZES
    memory: dict[int, dict[str, Any]] = {}
    say(f"\npart 2: driver memory for manifests of {' and '.join(f'{n:,}' for n in sizes)} rows")
    for size in sizes:
        text = text_manifest(folder, size)
        peaks = []
        for _ in range(1 if options.quick else 2):
            job = memory_job(folder, text, size)  # a fresh output each time: the last shard to do
            peaks.append(driver_peak(job, env))
        memory_job(folder, text, size)  # the same state for the in-process measurement
        work = driver_work_peak(text, size, folder)
        memory[size] = {
            "driver_peak_rss_mb": round(median([p["peak_rss_mb"] for p in peaks]), 1),
            "rows_run": peaks[0]["rows"],
            "rows_skipped_by_resume": peaks[0]["skipped"],
            "driver_wall_s": round(median([p["wall_s"] for p in peaks]), 2),
            "driver_work_python_peak_mb": round(work["python_peak_mb"], 2),
            "driver_work_seconds": round(work["seconds"], 2),
        }
        say(f"  {size:,} rows: {memory[size]}")
    small, large = sizes
    say(
        table(
            ["manifest rows", "driver peak RSS MB", "rows run", "planning+ids+markers+stats peak MB", "seconds"],
            [
                [
                    f"{n:,}",
                    memory[n]["driver_peak_rss_mb"],
                    memory[n]["rows_run"],
                    memory[n]["driver_work_python_peak_mb"],
                    memory[n]["driver_work_seconds"],
                ]
                for n in sizes
            ],
        )
    )
    return {
        "name": "scaling",
        "speedup": ratio(rates[2], rates[1]),
        "rows_per_s": {f"{w}_workers": round(rates[w], 3) for w in (1, 2)},
        "driver_peak_rss_mb": {str(n): memory[n]["driver_peak_rss_mb"] for n in sizes},
        "driver_rss_growth_ratio": ratio(memory[large]["driver_peak_rss_mb"], memory[small]["driver_peak_rss_mb"]),
        "driver_work_python_peak_mb": {str(n): memory[n]["driver_work_python_peak_mb"] for n in sizes},
        "memory": {str(n): memory[n] for n in sizes},
        "worker_runs": {str(w): runs[w] for w in (1, 2)},
        "reps": reps,
        "machine": machine(),
    }
