"""`model.name: none`: an engine that answers nothing, to measure the pipeline's own ceiling.

It still tokenizes every prompt (with tiny-random's tokenizer, which has InternVL's
special tokens), so the measured rate includes all the work the GPU stage does around
the model; only the forward passes are missing. Its rows have an empty `text` and
`finish_reason` 'none'. A benchmarking tool, not a way to process data.
"""

from __future__ import annotations

from pipeline.models.engine import EncodedRequest, Engine, GenerationOptions, GenerationResult
from pipeline.spec import ModelSpec


class NoModelEngine(Engine):
    """Answers every row with nothing, instantly."""

    name = "none"

    def __init__(self, spec: ModelSpec) -> None:
        from transformers import AutoTokenizer

        from pipeline.models.tiny_random import ensure_tiny_random

        self.tokenizer = AutoTokenizer.from_pretrained(str(ensure_tiny_random(spec.cache_dir)))

    def encode(self, prompts: list[str]) -> list[list[int]]:
        """Token ids, as a real replica would compute them."""
        return [list(ids) for ids in self.tokenizer(prompts, add_special_tokens=False)["input_ids"]]

    def generate(self, batch: list[EncodedRequest], options: GenerationOptions) -> list[GenerationResult]:
        """An empty answer per row."""
        return [
            GenerationResult(text="", prompt_tokens=r.num_tokens, output_tokens=0, finish_reason="none") for r in batch
        ]
