"""Column contracts between stages.

Each stage declares the columns it reads; `require_columns` fails with the missing and
the available names, so a wiring mistake reads as one line instead of a KeyError deep
inside a batch.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa


class StageInputError(KeyError):
    """A stage was handed a batch without the columns it needs."""

    def __str__(self) -> str:
        return str(self.args[0])


def require_columns(stage: str, batch: pa.Table, required: Iterable[str]) -> None:
    """Raise StageInputError naming the missing and available columns."""
    missing = [name for name in required if name not in batch.column_names]
    if missing:
        raise StageInputError(f"stage {stage!r} needs columns {missing} but the batch has {batch.column_names}")
