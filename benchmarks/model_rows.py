"""The model stage's input, built without Ray: the CPU stage's row work on manifest rows.

Shared by `bench prefill` (one window, prepared once) and the per-core processes of
`bench pipeline` (`benchmarks.per_core`, which prepares and answers window after window).
"""

from __future__ import annotations

from typing import Any


def caption_spec(max_tiles: int, max_new_tokens: int) -> Any:
    """The resolved job spec of the benchmarks' caption task (defaults otherwise: batch 8)."""
    from pipeline.prompts.tasks import resolve_spec
    from pipeline.spec import JobSpec

    return resolve_spec(
        JobSpec.model_validate(
            {
                "input": {"manifest": "unused.parquet"},
                "task": {"kind": "caption", "max_new_tokens": max_new_tokens},
                "preprocess": {"max_tiles": max_tiles},
                "output": {"path": "unused"},
            }
        )
    )


def prepare_window(preprocessor: Any, records: list[dict[str, str]]) -> Any:
    """The CPU stage's output for `records` ({id, uri} dicts): the table a replica is handed."""
    import pyarrow as pa

    from pipeline.actors.preprocess import prepared_columns

    prepared = [preprocessor.prepare(record) for record in records]
    window = pa.table({"id": [r["id"] for r in records], "uri": [r["uri"] for r in records]})
    for name, column in prepared_columns(prepared, [0.0] * len(records)).items():
        window = window.append_column(name, column)
    return window
