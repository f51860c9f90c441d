"""The sequential model-card script, as its own process: `python -m benchmarks.sequential MANIFEST OUT`.

Reads the manifest's uris, captions them one at a time with `benchmarks.reference`
(load_image, then `model.generate` with batch 1, greedy), and writes the answers with the
time each one was ready. Run as a subprocess so its wall time includes imports and the
model load, like the pipeline's.
"""

from __future__ import annotations

import json
import sys
import time


def main(argv: list[str]) -> None:
    """Caption the manifest's images one by one; write {texts, done_at, load_s, wall_s} to OUT."""
    started = time.perf_counter()
    manifest, out, max_num, max_new_tokens = argv[0], argv[1], int(argv[2]), int(argv[3])
    import pyarrow.parquet as pq

    from benchmarks.reference import run_sequential
    from pipeline.models.tiny_random import ensure_tiny_random
    from pipeline.prompts.tasks import CAPTION_SHORT
    from pipeline.prompts.template import DEFAULT_SYSTEM_MESSAGE

    table = pq.read_table(manifest, columns=["id", "uri"])
    checkpoint = str(ensure_tiny_random(None))
    before = time.perf_counter() - started
    result = run_sequential(
        checkpoint,
        table.column("uri").to_pylist(),
        max_num,
        max_new_tokens,
        CAPTION_SHORT.image_question,
        DEFAULT_SYSTEM_MESSAGE,
    )
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(
            {
                "ids": table.column("id").to_pylist(),
                "texts": result.texts,
                "done_at": [before + t for t in result.done_at],
                "load_s": result.load_s,
                "threads": result.threads,
                "wall_s": time.perf_counter() - started,
            },
            handle,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
