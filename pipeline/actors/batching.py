"""Token-budget micro-batching (pure).

A replica receives a window of rows (`model.batch_window`) and cuts it into generate
calls. Batched generation pads every prompt to the longest in its batch, so a 1-tile
image (~330 tokens) that shares a batch with a 13-tile one (~3,400) wastes 90% of its
prefill. We therefore sort the window by prompt length and cut it into contiguous
groups, choosing the cut points by dynamic programming:

1. as few generate calls as possible (each call pays the decoding steps once), where a
   call holds at most `batch_size` rows and at most `max_batch_tokens` padded prompt
   tokens (rows x longest prompt; a row longer than the budget runs alone);
2. among those, the fewest padded tokens.

The grouping only decides which rows share a call; each row's answer does not depend on
its neighbours (left padding, attention mask, positions from the mask), so answers are
unchanged - the batch-invariance tests check it, with a token budget too.
"""

from __future__ import annotations

from collections.abc import Sequence


def plan_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int | None = None) -> list[list[int]]:
    """Indices of rows per generate call, shortest prompts first, each call's rows in ascending length.

    Every index appears exactly once. A batch has at most `batch_size` rows, and its
    padded size (rows x longest prompt) stays within `max_batch_tokens` unless it is a
    single row longer than the budget.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if max_batch_tokens is not None and max_batch_tokens < 1:
        raise ValueError("max_batch_tokens must be >= 1")
    order = sorted(range(len(lengths)), key=lambda index: (lengths[index], index))
    sorted_lengths = [lengths[i] for i in order]
    count = len(order)
    prefix = [0]
    for length in sorted_lengths:
        prefix.append(prefix[-1] + length)
    # best[i]: (calls, padded tokens) for the first i sorted rows; start[i]: where its last call starts.
    best: list[tuple[int, int]] = [(0, 0)] + [(count + 1, 0)] * count
    start = [0] * (count + 1)
    for end in range(1, count + 1):
        widest = sorted_lengths[end - 1]  # sorted: the last row of a group is its longest
        for first in range(end - 1, max(0, end - batch_size) - 1, -1):
            rows = end - first
            if rows > 1 and max_batch_tokens is not None and rows * widest > max_batch_tokens:
                break  # more rows only make the group wider
            calls, padding = best[first]
            candidate = (calls + 1, padding + rows * widest - (prefix[end] - prefix[first]))
            if candidate < best[end]:
                best[end], start[end] = candidate, first
    batches: list[list[int]] = []
    end = count
    while end > 0:
        batches.append(order[start[end] : end])
        end = start[end]
    batches.reverse()
    return batches


def arrival_batches(count: int, batch_size: int) -> list[list[int]]:
    """Batches in arrival order (what a naive loop does), for comparison in benchmarks."""
    return [list(range(start, min(start + batch_size, count))) for start in range(0, count, batch_size)]


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of the token slots in these batches that are padding."""
    slots = padded_tokens(lengths, batches)
    real = sum(lengths[i] for batch in batches for i in batch)
    return 0.0 if slots == 0 else (slots - real) / slots


def padded_tokens(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> int:
    """Prompt token slots the batches occupy (rows x longest prompt, summed): prefill work."""
    return sum(max(lengths[i] for i in batch) * len(batch) for batch in batches if batch)


def windows(count: int, window: int) -> list[range]:
    """Consecutive windows of rows, as the model stage receives them (arrival order)."""
    if window < 1:
        raise ValueError("window must be >= 1")
    return [range(start, min(start + window, count)) for start in range(0, count, window)]


def plan_windowed(
    lengths: Sequence[int], window: int, batch_size: int, max_batch_tokens: int | None = None
) -> list[list[int]]:
    """The batches the model stage forms: `plan_batches` within each arrival window."""
    batches: list[list[int]] = []
    for rows in windows(len(lengths), window):
        planned = plan_batches([lengths[i] for i in rows], batch_size, max_batch_tokens)
        batches.extend([[rows[i] for i in batch] for batch in planned])
    return batches
