"""Token-budget micro-batching (pure).

Rows are grouped by prompt length so that a batch of 1-tile images does not pad itself up
to a 13-tile neighbour: the rows are sorted by length and cut greedily into batches of at
most `batch_size` rows whose padded size (rows x longest prompt) stays within
`max_batch_tokens`. The order only decides which rows share a generate call; each row's
answer does not depend on its neighbours (batch invariance), so answers are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence


def plan_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int | None = None) -> list[list[int]]:
    """Indices of rows per micro-batch, each batch's rows sorted by ascending length.

    A row longer than `max_batch_tokens` gets a batch of its own.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    order = sorted(range(len(lengths)), key=lambda index: (lengths[index], index))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        length = lengths[index]
        widest = max(longest, length)
        too_many = len(current) >= batch_size
        too_big = max_batch_tokens is not None and current and widest * (len(current) + 1) > max_batch_tokens
        if current and (too_many or too_big):
            batches.append(current)
            current, widest = [], length
        current.append(index)
        longest = widest
    if current:
        batches.append(current)
    return batches


def arrival_batches(count: int, batch_size: int) -> list[list[int]]:
    """Batches in arrival order (what a naive loop does), for comparison in benchmarks."""
    return [list(range(start, min(start + batch_size, count))) for start in range(0, count, batch_size)]


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of the token slots in these batches that are padding."""
    slots = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches if batch)
    real = sum(lengths[i] for batch in batches for i in batch)
    return 0.0 if slots == 0 else (slots - real) / slots
