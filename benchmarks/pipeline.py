"""`bench pipeline`: the whole Ray pipeline against a sequential model-card script.

Same rows (generated photos, portrait shots and scans, max_tiles 12), same model
(tiny-random, float32 on CPU), same task (short captions, greedy, 64 new tokens):

- `sequential`: `benchmarks.sequential`, the model card's loop - load one image, tile and
  normalise it, `model.generate` with batch 1, next; torch with 1 thread or its default
  (one per core), whichever is faster on this machine at the time (timed on 3 images);
- `pipeline`: `python -m pipeline run` on a new local Ray instance, with its defaults
  (batch 8, window 64; on a machine without GPUs the 'auto' layout, `pipeline.layout`:
  a single-threaded replica per core, each preparing its own rows, no CPU worker);
- `pipeline, a CPU worker`: the same with one CPU actor preparing the rows for the replicas
  (`preprocess.workers: 1`: two replicas and a CPU worker on 2 cores, the 'auto' layout
  until the replicas began preparing their own rows): that layout choice, measured side by side;
- `no-model`: the same pipeline with `model.name: none` (an engine that answers nothing
  but still tokenizes): the pipeline's own ceiling on this machine;
- `per-core processes`: no Ray: one process per core (`benchmarks.per_core`), each
  preparing and answering its share of the rows with the pipeline's CPU-stage and
  model-stage code, torch on one thread: what the cores do with these stages and no
  orchestration, an estimate of how much of the 2x target this machine allows at all.

Steady state, the same rule for every contender: the rate at which a run's rows after its
first quarter are done, start-up excluded. For the script, its per-row times (rows N/4 to
N). The pipeline (and the per-core processes) answers rows in windows and its CPU stage
runs ahead of the model, so the times of its own output would flatter it (the last windows
run with nothing else competing for the cores); it is run twice, on the first N/4 rows and
on all N, and the steady rate is (N - N/4) / (difference of the wall times): start-up, the
first window's wait and the last window cancel out, and the CPU stage's work for the extra
rows is inside the difference. For them to cancel, both runs use the window the N-row run
picks (`model.batch_window` pinned; a shorter job would pick smaller ones). That window
gives each replica four windows of the N rows, so the short run is one window per replica:
the shortest run that starts every replica the way the long one does. Why a quarter and
not a half (until 2026-12-06): the difference is the measurement, and each wall time is a
few seconds uncertain; 3N/4 rows instead of N/2 make the difference half as long again,
and the short run shorter. Each contender is a fresh process; the repetitions are interleaved.
The per-core processes are timed inside the long run instead: each records the end of
every window, and their steady rate is the sum over processes of the rows after the first
window over the time those windows took (`window_rate`). Their first window carries the
start-up, and on this VM that start-up varies by several seconds from run to run (a fresh
process's first touch of each heap page is slow: 7 to 9 s of system time in a first
window, almost none in the next); the wall-time difference kept that noise, and with it the
per-core figure swung from 6.6 to 10.6 rows/s in one run while second windows took 18 to 23 s.
(Their differential rate is still recorded, as `differential_rows_per_s`.)
The answers of the pipeline are compared with the script's.

Where the cores went: while the pipeline, no-model and per-core contenders run, a
sampler (`benchmarks.cpu_shares`) reads every process's CPU time from /proc and adds it
to a role - model stage, CPU stage, driver, Ray's own processes, other - next to the
machine's idle time. The same difference of the two runs gives CPU milliseconds per
steady-state row by role: how much of a row's cost is the stages' work, how much Ray's,
how much the cores stood idle (Linux only; left out elsewhere).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import BenchOptions, machine, median, ratio, say, table
from benchmarks.corpus import PREPROCESS_RECIPES, build_corpus
from benchmarks.cpu_shares import PER_CORE, ROLES, CpuShares, available, per_row_ms

MAX_TILES = 12
MAX_NEW_TOKENS = 64
ROWS, QUICK_ROWS = 256, 32  # N; the short runs take the first quarter (`short_rows`)
CPU_WORKER = "pipeline, a CPU worker"  # the contender with the layout before the replicas prepared their own rows


def write_manifest(folder: Path, paths: list[str], rows: int) -> Path:
    """A manifest cycling through the corpus files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / f"manifest-{rows}.parquet"
    uris = [paths[i % len(paths)] for i in range(rows)]
    pq.write_table(pa.table({"id": [f"row-{i:06d}" for i in range(rows)], "uri": uris}), manifest)
    return manifest


def pinned_window(spec: dict[str, Any], rows: int) -> int:
    """The model-stage window that a job of `rows` rows picks by itself (`rows_per_model_call`).

    Both runs of a differential pin the long run's window: left to choose, the short run
    would pick smaller windows (a small job gets four per replica), so its first window's
    wait and its last window would be shorter than the long run's, and they would no longer
    cancel in the difference."""
    from pipeline.job import rows_per_model_call
    from pipeline.layout import choose_layout, local_cluster, replica_host_bytes, with_layout
    from pipeline.spec import JobSpec

    job = JobSpec.model_validate(spec)
    # The layout `run` will choose on the local instance it starts here (no GPU in this benchmark).
    cluster = local_cluster(job, os.cpu_count() or 1, memory_bytes=available_memory())
    layout = choose_layout(job, cluster, False, replica_host_bytes(job.model), rows)
    return rows_per_model_call(with_layout(job, layout), rows)


def available_memory() -> float:
    """Bytes of memory free on this machine (Ray's actor memory is a share of it)."""
    return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def job_file(
    folder: Path, manifest: Path, model: str, overrides: dict[str, Any] | None = None, window_rows: int | None = None
) -> Path:
    """A job spec for the pipeline contenders; with `window_rows`, `model.batch_window` is
    pinned to the window of a `window_rows`-row job (see `pinned_window`)."""
    spec: dict[str, Any] = {
        "name": f"bench-{model}",
        "input": {"manifest": str(manifest)},
        "task": {"kind": "caption", "max_new_tokens": MAX_NEW_TOKENS},
        "preprocess": {"max_tiles": MAX_TILES},
        "model": {"name": model, "batch_size": 8},
        "output": {"path": str(folder / f"out-{model}"), "mode": "overwrite", "rows_per_file": 8},
        "ray": {"address": "local"},
    }
    for section, values in (overrides or {}).items():
        spec.setdefault(section, {}).update(values)
    if window_rows:
        spec["model"]["batch_window"] = pinned_window(spec, window_rows)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"job-{model}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def cpu_accounting() -> AbstractContextManager[CpuShares | None]:
    """CPU time by role while a contender runs (`benchmarks.cpu_shares`), where /proc exists."""
    return CpuShares() if available() else nullcontext(None)


def run_pipeline(job: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """One `python -m pipeline run` in its own process; its summary, wall time, CPU time by role
    and answers."""
    spec = yaml.safe_load(job.read_text())
    started = time.perf_counter()
    with cpu_accounting() as shares:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "run", str(job)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"pipeline run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    output = Path(spec["output"]["path"])
    summary = json.loads((output / "_summary.json").read_text())
    import pyarrow.parquet as pq

    table = pq.read_table(output, columns=["id", "text"])
    texts = dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist(), strict=True))
    return {
        "wall_s": wall,
        "rows": summary["rows_done"],
        "errors": summary["rows_with_errors"],
        "layout": summary["layout"],
        "cpu_s": shares.seconds if shares else None,
        "texts": texts,
    }


def run_sequential(manifest: Path, folder: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """The model-card script in its own process."""
    out = folder / "sequential.json"
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "benchmarks.sequential", str(manifest), str(out), str(MAX_TILES), str(MAX_NEW_TOKENS)],
        env=env,
        check=True,
        timeout=timeout,
        capture_output=True,
    )
    wall = time.perf_counter() - started
    data = json.loads(out.read_text())
    return {
        "wall_s": wall,
        "steady_rows_per_s": rate_after(data["done_at"], short_rows(len(data["done_at"]))),
        "rows": len(data["texts"]),
        "errors": 0,
        "torch_threads": data["threads"],
        "texts": dict(zip(data["ids"], data["texts"], strict=True)),
    }


def run_per_core(manifest: Path, folder: Path, env: dict[str, str], timeout: float, cores: int) -> dict[str, Any]:
    """The per-core processes: `cores` processes of `benchmarks.per_core` at once; done when all are."""
    started = time.perf_counter()
    outs = [folder / f"per-core-{worker}.json" for worker in range(cores)]
    settings = [str(cores), str(MAX_TILES), str(MAX_NEW_TOKENS)]
    with cpu_accounting() as shares:
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "benchmarks.per_core", str(manifest), str(out), str(worker), *settings],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for worker, out in enumerate(outs)
        ]
        for process in processes:
            _, errors = process.communicate(timeout=timeout)
            if process.returncode != 0:
                raise RuntimeError(f"per-core process failed ({process.returncode}):\n{errors[-3000:]}")
    wall = time.perf_counter() - started
    texts: dict[str, str] = {}
    windows: list[list[dict[str, float]]] = []
    for out in outs:
        data = json.loads(out.read_text())
        texts.update(zip(data["ids"], data["texts"], strict=True))
        windows.append(data["windows"])
    cpu_s = shares.seconds if shares else None
    return {"wall_s": wall, "rows": len(texts), "errors": 0, "cpu_s": cpu_s, "texts": texts, "windows": windows}


def window_rate(processes: list[list[dict[str, float]]]) -> tuple[float, dict[str, float]] | None:
    """Steady rows/s of processes that recorded each window's end (`benchmarks.per_core`), and
    their CPU milliseconds per row: per process, the rows after its first window over the wall
    time from the end of its first window to the end of its last, summed over the processes
    (they run side by side); None unless every process has two windows or more.

    The first window carries the process's start-up and is left out; what is left is each
    process's steady speed while the others run too."""
    if not processes or any(len(windows) < 2 for windows in processes):
        return None
    rate, rows, cpu_s = 0.0, 0, 0.0
    for windows in processes:
        steady_rows = sum(int(window["rows"]) for window in windows[1:])
        span = windows[-1]["ended_at"] - windows[0]["ended_at"]
        if steady_rows < 1 or span <= 0:
            return None
        rate += steady_rows / span
        rows += steady_rows
        cpu_s += windows[-1]["cpu_s"] - windows[0]["cpu_s"]
    return rate, {PER_CORE: round(1000.0 * cpu_s / rows, 1)}


def differential_rate(short: dict[str, Any], long: dict[str, Any]) -> float:
    """Rows/s of the rows the long run has beyond the short one: start-up and tails cancel."""
    extra_rows = long["rows"] - short["rows"]
    extra_s = long["wall_s"] - short["wall_s"]
    return extra_rows / extra_s if extra_rows > 0 and extra_s > 0 else 0.0


def differential_cpu(short: dict[str, Any], long: dict[str, Any]) -> dict[str, float] | None:
    """CPU milliseconds by role per row of the rows the long run has beyond the short one (the
    machine's idle time as the role 'idle'): where the cores went in the steady state."""
    if not short.get("cpu_s") or not long.get("cpu_s"):
        return None
    return per_row_ms(short["cpu_s"], long["cpu_s"], long["rows"] - short["rows"])


def cpu_table(results: dict[str, list[dict[str, Any]]]) -> tuple[str, dict[str, dict[str, float]]] | None:
    """The table of core-milliseconds per row by role (medians over the repetitions) of the
    contenders that have them, and the same as a dict for the JSON."""
    medians: dict[str, dict[str, float]] = {}
    for name, runs in results.items():
        accounted = [run["cpu_ms_per_row"] for run in runs if run.get("cpu_ms_per_row")]
        if accounted:
            roles = sorted({role for run in accounted for role in run})
            medians[name] = {role: round(median([run.get(role, 0.0) for run in accounted]), 1) for role in roles}
    if not medians:
        return None
    present = {role for values in medians.values() for role in values}
    roles = [role for role in ROLES if role in present] + sorted(present - set(ROLES))
    rows = [
        [name, *(values.get(role, 0.0) for role in roles), sum(values.values())] for name, values in medians.items()
    ]
    return table(["contender", *roles, "all"], rows), medians


def short_rows(rows: int) -> int:
    """The rows of a differential's short run, and of the start-up the script's rate leaves out:
    one pinned window per replica, since a job's windows shrink until each replica gets
    `WINDOWS_PER_REPLICA` of them (a quarter; see the module's docstring)."""
    from pipeline.job import WINDOWS_PER_REPLICA

    return rows // WINDOWS_PER_REPLICA


def rate_after(done_at: list[float], skip: int) -> float:
    """Rows/s over the rows after the first `skip` of a run that reports each row's time."""
    if skip < 1 or len(done_at) <= skip or done_at[-1] <= done_at[skip - 1]:
        return 0.0
    return (len(done_at) - skip) / (done_at[-1] - done_at[skip - 1])


def run(options: BenchOptions) -> dict[str, Any]:
    """Run the contenders interleaved; print the table; return the result."""
    from pipeline.models.tiny_random import ensure_tiny_random

    folder = options.workdir / "pipeline-bench"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    recipes = PREPROCESS_RECIPES[:3] if options.quick else PREPROCESS_RECIPES
    corpus = build_corpus(options.workdir, recipes)
    rows = QUICK_ROWS if options.quick else ROWS
    reps = 1 if options.quick else max(1, options.reps)
    paths = [image.path for image in corpus]
    short = short_rows(rows)
    manifests = {size: write_manifest(folder, paths, size) for size in (short, rows)}
    ensure_tiny_random(None)  # built once, outside the timed runs
    env = dict(os.environ)
    checkout = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = checkout + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PIPELINE_PROGRESS_INTERVAL_S", "30")
    timeout = 3600.0
    cores = int(machine()["cpus"] or 1)
    settings: dict[str, tuple[str, dict[str, Any] | None]] = {
        "pipeline": ("tiny-random", None),
        CPU_WORKER: ("tiny-random", {"preprocess": {"workers": 1}}),
        "no-model": ("none", None),
    }
    per_core = "per-core processes (no Ray)"
    names = ["sequential", *settings, per_core]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    say(
        f"{rows} rows ({len(corpus)} distinct images; the pipeline also runs the first {short}), "
        f"{reps} repetition(s) of {', '.join(names)}, interleaved"
    )
    for rep in range(reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            say(f"  rep {rep + 1}: {name} ...")
            if name == "sequential":
                result = run_sequential(manifests[rows], folder, env, timeout)
            else:
                runs = {}
                for size, manifest in manifests.items():
                    if name == per_core:
                        runs[size] = run_per_core(manifest, folder, env, timeout, cores)
                        continue
                    model, overrides = settings[name]
                    place = folder / name.replace(", ", "-").replace(" ", "-") / str(size)
                    job = job_file(place, manifest, model, overrides, window_rows=rows)
                    runs[size] = run_pipeline(job, env, timeout)
                result = {**runs[rows], "short_wall_s": runs[short]["wall_s"]}
                steady = differential_rate(runs[short], runs[rows])
                cpu_ms = differential_cpu(runs[short], runs[rows])
                timed = window_rate(runs[rows]["windows"]) if name == per_core else None
                if timed is not None:  # see the module's docstring: their start-up is too noisy to subtract
                    result["differential_rows_per_s"], result["differential_cpu_ms_per_row"] = steady, cpu_ms
                    steady, cpu_ms = timed
                result["steady_rows_per_s"], result["cpu_ms_per_row"] = steady, cpu_ms
            results[name].append(result)
            threads = f", torch threads {result['torch_threads']}" if "torch_threads" in result else ""
            if "layout" in result:
                layout = result["layout"]
                threads += f", {layout['replicas']} replica(s), {layout['cpu_workers']} CPU worker(s)"
            say(f"    wall {result['wall_s']:.1f} s, steady {result['steady_rows_per_s']:.2f} rows/s{threads}")

    def med(name: str, key: str) -> float:
        return median([r[key] for r in results[name]])

    def identical(reference: str, other: str) -> int:
        """Rows whose answer in `other`'s first run equals `reference`'s."""
        expected, got = results[reference][0]["texts"], results[other][0]["texts"]
        return sum(1 for key, text in expected.items() if got.get(key) == text)

    sequential_texts = results["sequential"][0]["texts"]
    pipeline_texts = results["pipeline"][0]["texts"]
    same = identical("sequential", "pipeline")
    same_with_worker = identical("pipeline", CPU_WORKER)
    same_per_core = identical("sequential", per_core)
    base_rate, base_wall = med("sequential", "steady_rows_per_s"), med("sequential", "wall_s")
    table_rows = [
        [
            name,
            med(name, "steady_rows_per_s"),
            f"{med(name, 'steady_rows_per_s') / base_rate:.2f}x",
            med(name, "wall_s"),
            rows / med(name, "wall_s"),
            f"{base_wall / med(name, 'wall_s'):.2f}x",
        ]
        for name in names
    ]
    say(
        table(
            ["contender", "steady rows/s", "vs sequential", f"wall s ({rows} rows)", "rows/s (wall)", "vs sequential"],
            table_rows,
        )
    )
    say(
        f"answers identical to the sequential script: pipeline {same}/{len(sequential_texts)} rows, "
        f"per-core processes {same_per_core}/{len(sequential_texts)}; "
        f"the pipeline with a CPU worker identical to it on {same_with_worker}/{len(pipeline_texts)} rows"
    )
    cpu = cpu_table({name: results[name] for name in names if name != "sequential"})
    if cpu:
        say(
            f"\nwhere the {cores} cores went, per row of the steady state (CPU ms by role; 'all' = {cores} / rows/s, "
            "but for the per-core processes, timed by window: their own CPU only):"
        )
        say(cpu[0])
    return {
        "name": "pipeline",
        "speedup": ratio(med("pipeline", "steady_rows_per_s"), base_rate),
        "speedup_per_core_processes": ratio(med(per_core, "steady_rows_per_s"), base_rate),
        "pipeline_vs_per_core_processes": ratio(
            med("pipeline", "steady_rows_per_s"), med(per_core, "steady_rows_per_s")
        ),
        "pipeline_vs_cpu_worker": ratio(med("pipeline", "steady_rows_per_s"), med(CPU_WORKER, "steady_rows_per_s")),
        "speedup_wall": ratio(base_wall, med("pipeline", "wall_s")),
        "pipeline_layout": results["pipeline"][0]["layout"],
        "steady_rows_per_s": {name: round(med(name, "steady_rows_per_s"), 3) for name in names},
        "wall_s": {name: round(med(name, "wall_s"), 2) for name in names},
        "no_model_ceiling_vs_pipeline": ratio(
            med("no-model", "steady_rows_per_s"), med("pipeline", "steady_rows_per_s")
        ),
        "cpu_ms_per_row": cpu[1] if cpu else None,
        "answers_identical": f"{same}/{len(sequential_texts)}",
        "answers_identical_per_core_processes": f"{same_per_core}/{len(sequential_texts)}",
        "answers_identical_cpu_worker_vs_pipeline": f"{same_with_worker}/{len(pipeline_texts)}",
        "rows": rows,
        "reps": reps,
        "max_new_tokens": MAX_NEW_TOKENS,
        "steady_state": (
            "rows after the first quarter: the script's row times; the pipeline's and no-model's wall(N) - wall(N/4); "
            "the per-core processes' windows after each one's first"
        ),
        "runs": {name: [{k: v for k, v in r.items() if k != "texts"} for r in results[name]] for name in names},
        "machine": machine(),
    }
