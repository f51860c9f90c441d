"""`bench batching`: padded prompt tokens of arrival-order batches vs the model stage's batching.

The corpus: images of realistic sizes (log-uniform widths and heights from 200 to 4500
px, so every grid from 1 to 13 tiles occurs at max_tiles 12), captioned with the
caption preset. Prompt lengths are exact: the internvl2_5 prompt of each row, tokenized
by the same tokenizer the no-model engine uses. Rows reach a replica in arrival order,
in windows of `model.batch_window` rows (default 8 x batch_size), as Ray Data hands them.

Contenders (batch_size 8): a naive loop (arrival order, 8 rows per call), and the model
stage's `plan_windowed` with its default window, with the former default window (4 x),
and with a token budget. The figure of merit is the share of prompt-token slots that are
padding - prefill compute spent on nothing - and the padded tokens relative to the naive
loop (`speedup`: how much less prefill work the same rows need). This is counting, not
timing: the result is exact and the same on any machine.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from benchmarks.common import BenchOptions, machine, ratio, say, table

BATCH_SIZE = 8
BUDGET = 16_384


def corpus_lengths(count: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """(tiles, exact prompt tokens) per row of a mixed corpus."""
    from transformers import AutoTokenizer

    from pipeline.actors.tiling import choose_grid
    from pipeline.models.tiny_random import ensure_tiny_random
    from pipeline.prompts.tasks import CAPTION_SHORT
    from pipeline.prompts.template import DEFAULT_SYSTEM_MESSAGE, build_prompt, single_image_query

    rng = np.random.default_rng(seed)
    widths = np.exp(rng.uniform(np.log(200), np.log(4500), count)).astype(int)
    heights = np.exp(rng.uniform(np.log(200), np.log(4500), count)).astype(int)
    tiles = [choose_grid(int(w), int(h), 1, 12).num_tiles for w, h in zip(widths, heights, strict=True)]
    tokenizer = AutoTokenizer.from_pretrained(str(ensure_tiny_random(None)))
    query = single_image_query(CAPTION_SHORT.image_question)
    by_tiles = {
        t: len(tokenizer(build_prompt(query, [t], DEFAULT_SYSTEM_MESSAGE), add_special_tokens=False)["input_ids"])
        for t in sorted(set(tiles))
    }
    return tiles, [by_tiles[t] for t in tiles]


def run(options: BenchOptions) -> dict[str, Any]:
    """Count padding for each contender; print the table; return the result."""
    from pipeline.actors.batching import arrival_batches, padded_tokens, padding_fraction, plan_windowed

    count = 1000 if options.quick else 20_000
    tiles, lengths = corpus_lengths(count)
    histogram = Counter(tiles)
    say(f"{count} rows; tiles per row: " + ", ".join(f"{t}: {histogram[t]}" for t in sorted(histogram)))
    say(f"prompt tokens per row: {min(lengths)} to {max(lengths)} (mean {np.mean(lengths):.0f})")
    contenders = {
        "arrival order (naive loop)": arrival_batches(count, BATCH_SIZE),
        "ours, window 4 x batch (former default)": plan_windowed(lengths, 4 * BATCH_SIZE, BATCH_SIZE),
        "ours, window 8 x batch (default)": plan_windowed(lengths, 8 * BATCH_SIZE, BATCH_SIZE),
        f"ours, default window, max_batch_tokens {BUDGET}": plan_windowed(lengths, 8 * BATCH_SIZE, BATCH_SIZE, BUDGET),
    }
    naive_slots = padded_tokens(lengths, contenders["arrival order (naive loop)"])
    rows = []
    for name, batches in contenders.items():
        slots = padded_tokens(lengths, batches)
        rows.append(
            [
                name,
                f"{100 * padding_fraction(lengths, batches):.1f}%",
                len(batches),
                count / len(batches),
                slots,
                f"{naive_slots / slots:.2f}x",
            ]
        )
    say(table(["batching", "padding", "generate calls", "rows/call", "prompt slots", "less prefill"], rows))
    ours = contenders["ours, window 8 x batch (default)"]
    budgeted = contenders[f"ours, default window, max_batch_tokens {BUDGET}"]
    return {
        "name": "batching",
        "padding_fraction": round(padding_fraction(lengths, ours), 4),
        "padding_fraction_arrival": round(padding_fraction(lengths, contenders["arrival order (naive loop)"]), 4),
        "padding_fraction_window_4x": round(
            padding_fraction(lengths, contenders["ours, window 4 x batch (former default)"]), 4
        ),
        "padding_fraction_with_budget": round(padding_fraction(lengths, budgeted), 4),
        "speedup": ratio(naive_slots, padded_tokens(lengths, ours)),
        "generate_calls": {"arrival": len(contenders["arrival order (naive loop)"]), "ours": len(ours)},
        "rows": count,
        "batch_size": BATCH_SIZE,
        "window": 8 * BATCH_SIZE,
        "max_batch_tokens": BUDGET,
        "tiles_histogram": {str(t): histogram[t] for t in sorted(histogram)},
        "machine": machine(),
    }
