"""Rows per stage for the progress line, read from Ray Data's own operator counters.

A Ray Data execution callback: the streaming executor calls it at every scheduling step
on the driver; it copies each operator's row counts into the current run's tracker (at
most twice a second). The operator metrics it reads are not a public Ray API: if they
change, the per-stage part of the progress line disappears and the run goes on.

Imports Ray Data at module level, so only the runner imports it (lazily). The class is
defined at module level so that a DataContext holding it pickles it by reference.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from ray.data import DataContext
from ray.data._internal.execution.execution_callback import ExecutionCallback

from pipeline.progress import RunTracker, StageRows, stage_of


class StageProbe(ExecutionCallback):
    """Copies operator row counts into `StageProbe.target` (the driver's current run)."""

    target: ClassVar[RunTracker | None] = None
    every_s: ClassVar[float] = 0.5

    def __init__(self) -> None:
        self.last = 0.0

    def on_execution_step(self, executor: Any) -> None:
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self.sample(executor)

    def after_execution_succeeds(self, executor: Any) -> None:
        self.sample(executor)

    def sample(self, executor: Any) -> None:
        """Read every operator's rows in/out; skip silently if the executor looks different."""
        tracker = StageProbe.target
        if tracker is None:
            return
        stages = StageRows()
        try:
            for operator in getattr(executor, "_topology", None) or {}:
                stage = stage_of(operator.name)
                if stage is not None:
                    metrics = operator.metrics
                    stages.rows_in[stage] = int(metrics.num_row_inputs_received)
                    stages.rows_out[stage] = int(metrics.rows_task_outputs_generated)
        except (AttributeError, TypeError):
            return
        tracker.set_stage_rows(stages)


@contextmanager
def probing(tracker: RunTracker) -> Iterator[None]:
    """Feed `tracker` per-stage counts for the datasets executed inside the block."""
    context = DataContext.get_current()
    StageProbe.target = tracker
    context.custom_execution_callback_classes.append(StageProbe)
    try:
        yield
    finally:
        if StageProbe in context.custom_execution_callback_classes:
            context.custom_execution_callback_classes.remove(StageProbe)
        StageProbe.target = None
