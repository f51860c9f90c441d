"""One process of `bench pipeline`'s per-core contender:
`python -m benchmarks.per_core MANIFEST OUT WORKER WORKERS MAX_TILES MAX_NEW_TOKENS`.

`bench pipeline` starts one such process per core, all at once, without Ray. Each takes
its contiguous share of the manifest's rows (the WORKER-th of WORKERS; the benchmark's
rows cycle through its images, so every share has nearly the same mix - taking every
WORKERS-th row instead gave each process its own subset of the images, and the one with
the larger ones finished last) and, window after window (64 rows, as a replica is
handed them), runs this project's CPU-stage row work (`Preprocessor.prepare`) and then
its model stage (`Generator`: rows sorted by length, batches of 8, prefill by length)
with torch on one thread. Nothing crosses a process boundary and no scheduler runs
beside them: what the cores do with the pipeline's own stage code and no orchestration,
an estimate of the most any pipeline of these stages gets from this machine.

Each window's end is recorded (wall clock and this process's CPU time), so that the
benchmark can time the windows after the first (`benchmarks.pipeline.window_rate`; that
module's docstring says why the first is left out).
"""

from __future__ import annotations

import json
import sys
import time


def main(argv: list[str]) -> None:
    """Prepare and answer this worker's share of the manifest; write {ids, texts, wall_s} to OUT."""
    started = time.perf_counter()
    manifest, out = argv[0], argv[1]
    worker, workers, max_tiles, max_new_tokens = (int(value) for value in argv[2:6])
    import pyarrow.parquet as pq
    import torch

    from benchmarks.model_rows import caption_spec, prepare_window
    from pipeline.actors.generate import Generator
    from pipeline.actors.preprocess import Preprocessor
    from pipeline.heap import keep_freed_memory
    from pipeline.job import rows_per_model_call
    from pipeline.models.loading import load_engine

    torch.set_num_threads(1)  # one process per core, as a replica on one reserved CPU
    keep_freed_memory()  # as the pipeline's stage actors do
    table = pq.read_table(manifest, columns=["id", "uri"])
    rows = [
        {"id": row_id, "uri": uri}
        for row_id, uri in zip(table.column("id").to_pylist(), table.column("uri").to_pylist(), strict=True)
    ]
    records = rows[worker * len(rows) // workers : (worker + 1) * len(rows) // workers]
    spec = caption_spec(max_tiles, max_new_tokens)
    preprocessor = Preprocessor(spec)
    generator = Generator(spec, load_engine(spec.model.model_copy(update={"name": "tiny-random"})))
    window = rows_per_model_call(spec)
    ids: list[str] = []
    texts: list[str] = []
    windows: list[dict[str, float]] = []
    for start in range(0, len(records), window):
        answered = generator(prepare_window(preprocessor, records[start : start + window]))
        ids.extend(answered.column("id").to_pylist())
        texts.extend(answered.column("text").to_pylist())
        windows.append({"rows": answered.num_rows, "ended_at": time.time(), "cpu_s": time.process_time()})
    with open(out, "w", encoding="utf-8") as handle:
        json.dump({"ids": ids, "texts": texts, "wall_s": time.perf_counter() - started, "windows": windows}, handle)


if __name__ == "__main__":
    main(sys.argv[1:])
