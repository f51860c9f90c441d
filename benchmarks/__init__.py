"""Benchmarks of the pipeline, run by `python -m pipeline bench NAME` (see BENCHMARKS.md).

Each prints a table and, as its last line, one JSON object with its results: `name`;
`speedup` (this project's rate / the comparison's) where there is a comparison;
`bytes_ratio` (preprocess); `padding_fraction` (batching).
"""

from __future__ import annotations

import importlib
from typing import Any

from benchmarks.common import BenchOptions, emit

BENCHMARKS = {
    "preprocess": "CPU stage vs the model card's preprocessing: images/s per core, bytes per row, exactness",
    "pipeline": "whole Ray pipeline vs a sequential model-card script on tiny-random; no-model; per-core processes",
    "prefill": "the model stage alone: prefill by length vs one left-padded prefill, same batches",
    "batching": "padding of arrival-order batches vs the token-budget batching on mixed 1-13 tile rows",
    "scaling": "rows/s with 1 and 2 CPU workers; driver peak memory for 10^4 and 10^6 row manifests",
    "gpu": "dummy:InternVL3-1B/-8B images/s at 1 and 7 tiles against the FLOP bound, GPU utilisation (needs CUDA)",
}


def run_benchmark(name: str, options: BenchOptions) -> dict[str, Any]:
    """Run one benchmark by name (its module's `run`), print and save its JSON line."""
    if name not in BENCHMARKS:
        raise KeyError(name)
    module = importlib.import_module(f"benchmarks.{name}")
    result: dict[str, Any] = module.run(options)
    emit(result, options.workdir)
    return result
