"""`bench prefill`: the model stage alone, prefill by length against one left-padded prefill.

The rows of `bench pipeline` (the generated photos, portrait shots and scans, max_tiles
12, cycled), prepared once by the CPU stage, then answered by the model stage's own
logic (`Generator`: windows sorted by prompt length, cut into batches of 8) on tiny-random,
float32, greedy, 64 new tokens, torch on one thread (what a replica on one reserved CPU
gets). Contenders, interleaved, in one process, on the same batches:

- `padded`: `model.prefill: padded` - each batch prefilled left-padded, as batch_chat does;
- `by_length`: `model.prefill: by_length` (the default without flash-attn) - rows of equal
  length prefilled together without padding, their caches joined for batched decoding.

Reported: rows/s of CPU time for each (other processes on the machine do not distort it),
the share of padded prompt tokens in the batches, and whether the answers are identical.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.common import BenchOptions, machine, median, ratio, say, table
from benchmarks.corpus import PREPROCESS_RECIPES, build_corpus
from benchmarks.model_rows import caption_spec, prepare_window

MAX_TILES = 12
MAX_NEW_TOKENS = 64
ROWS, QUICK_ROWS = 64, 8  # one default window (8 x batch 8); --quick: one batch


def prepared_window(paths: list[str], rows: int) -> Any:
    """The spec and the model stage's input for `rows` rows cycling through `paths` (a pyarrow Table)."""
    from pipeline.actors.preprocess import Preprocessor

    spec = caption_spec(MAX_TILES, MAX_NEW_TOKENS)
    records = [{"id": f"row-{i:04d}", "uri": paths[i % len(paths)]} for i in range(rows)]
    return spec, prepare_window(Preprocessor(spec), records)


def run(options: BenchOptions) -> dict[str, Any]:
    """Answer the same window with each prefill, interleaved; print the table; return the result."""
    import torch

    from pipeline.actors.batching import padding_fraction, plan_batches
    from pipeline.actors.generate import Generator, system_message
    from pipeline.actors.preprocess import QUERY, TILES_PER_IMAGE
    from pipeline.models.loading import load_engine
    from pipeline.prompts.template import build_prompt

    recipes = PREPROCESS_RECIPES[:3] if options.quick else PREPROCESS_RECIPES
    corpus = build_corpus(options.workdir, recipes)
    rows = QUICK_ROWS if options.quick else ROWS
    reps = 1 if options.quick else max(1, options.reps)
    spec, window = prepared_window([image.path for image in corpus], rows)
    torch.set_num_threads(1)
    names = ["padded", "by_length"]
    generators = {
        name: Generator(spec, load_engine(spec.model.model_copy(update={"name": "tiny-random", "prefill": name})))
        for name in names
    }
    prompts = [
        build_prompt(query, per_image, system_message(spec))
        for query, per_image in zip(
            window.column(QUERY).to_pylist(), window.column(TILES_PER_IMAGE).to_pylist(), strict=True
        )
    ]
    lengths = [len(ids) for ids in generators["by_length"].engine.encode(prompts)]
    batches = plan_batches(lengths, spec.model.batch_size, spec.model.max_batch_tokens)
    say(f"{rows} rows in {len(batches)} batches of up to {spec.model.batch_size}; {reps} repetition(s), interleaved")
    seconds: dict[str, list[float]] = {name: [] for name in names}
    texts: dict[str, list[str]] = {}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            started = time.process_time()
            answered = generators[name](window)
            seconds[name].append(time.process_time() - started)
            texts[name] = answered.column("text").to_pylist()
            say(f"  rep {rep + 1}: {name}: {rows / seconds[name][-1]:.2f} rows/s of CPU time")
    rates = {name: rows / median(seconds[name]) for name in names}
    same = sum(1 for a, b in zip(texts["padded"], texts["by_length"], strict=True) if a == b)
    say(
        table(
            ["prefill", "rows/s (CPU time, 1 thread)", "vs padded"],
            [[name, rates[name], f"{rates[name] / rates['padded']:.2f}x"] for name in names],
        )
    )
    say(f"padding in the batches: {padding_fraction(lengths, batches):.1%}; answers identical: {same}/{rows} rows")
    return {
        "name": "prefill",
        "speedup": ratio(rates["by_length"], rates["padded"]),
        "rows_per_cpu_s": {name: round(rate, 3) for name, rate in rates.items()},
        "padding_fraction": round(padding_fraction(lengths, batches), 4),
        "answers_identical": f"{same}/{rows}",
        "rows": rows,
        "reps": reps,
        "torch_threads": 1,
        "machine": machine(),
    }
