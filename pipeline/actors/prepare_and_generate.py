"""The model stage of a job without CPU actors (`preprocess.workers: 0`): each replica prepares
its own window (fetch, decode, tile, as the CPU stage does) and then answers it.

Why: with the model on CPUs the replicas fill the cores, and a CPU actor beside them only
takes its share of those same cores, while every prepared row (~6 MB of tiles) crosses
Ray's object store from its process to a replica's, and the job keeps one more Ray
process busy. Preparing in the replica keeps a row in one process from manifest to
answer, as the per-core processes of `bench pipeline` do: on 2 cores this layout
answered faster than a CPU actor beside two replicas (BENCHMARKS.md, "The CPU stage in the
replicas, again"). With the model on GPUs a CPU pool stays the default: there it prepares the
next windows while the GPU answers, which a replica preparing its own cannot do.

The CPU stage's guard and watchdog come along unchanged, so a row that crashes or hangs a
decoder still becomes a `worker_died` error row after `preprocess.max_retries`; but the
process such a row kills is a replica, which loads its model again before the retry.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from pipeline.actors.generate import GenerateStage
from pipeline.actors.preprocess import PreprocessStage
from pipeline.spec import JobSpec


class PrepareAndGenerateStage:
    """Ray Data callable class for the model actor pool when it prepares its own rows.

    A window arrives as manifest rows and is prepared `preprocess.batch_size` rows at a time
    (the CPU stage's unit, so a crash is narrowed down within the same rows as there),
    then answered whole, so the model stage batches it exactly as it batches a window of
    rows a CPU actor prepared: the answers are the same.
    """

    def __init__(self, spec: JobSpec, ledger: Any | None = None) -> None:
        self.prepare = PreprocessStage(spec, ledger)
        self.generate = GenerateStage(spec, ledger)
        self.rows_per_prepare = spec.preprocess.batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        step = self.rows_per_prepare
        starts = range(0, max(batch.num_rows, 1), step)  # an empty batch still yields its (empty) output
        prepared = [self.prepare(batch.slice(start, step)) for start in starts]
        return self.generate(pa.concat_tables(prepared, promote_options="permissive"))
