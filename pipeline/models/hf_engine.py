"""A transformers `InternVLForConditionalGeneration` replica, run the way `batch_chat` runs.

Prompts are padded on the left, tiles are normalised on the model's device (they travel
as uint8), generation stops at `<|im_end|>`, and answers are cut at the first stop token,
decoded without special tokens and stripped - as the reference does. Unless flash-attn
handles the padding, the prompts are prefilled by length without padding first (see
`pipeline.models.prefill`); the answers are the same.
"""

from __future__ import annotations

import os
from typing import Any

from pipeline.models.engine import EncodedRequest, Engine, GenerationOptions, GenerationResult, OutOfMemory
from pipeline.models.normalise import PixelBuffer, normalise_tiles
from pipeline.models.prefill import (
    CPU_VISION_BATCH_TILES,
    cache_keyword,
    can_prefill_by_length,
    has_sliding_layers,
    prefill_by_length,
)
from pipeline.prompts.template import STOP_TOKEN

# Test hook (not a mock): raise a real OutOfMemory for batches of more rows than this, so
# the stage's back-off can be exercised on a CPU.
FAULT_OOM_ENV = "PIPELINE_FAULT_OOM_ABOVE_ROWS"


class HFEngine(Engine):
    """One InternVL replica in this process (a whole model on one device)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        name: str,
        prefill: str = "auto",
        vision_batch_tiles: int | None = None,
    ) -> None:
        import torch

        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.stop_id = tokenizer.convert_tokens_to_ids(STOP_TOKEN)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_id
        text_config = model.config.get_text_config()
        self.max_context = int(getattr(text_config, "max_position_embeddings", 32768))
        self.vocab_size = int(text_config.vocab_size)
        self._torch = torch
        self._grammars: dict[str, Any] = {}
        self.prefill_by_length = choose_prefill(prefill, model) == "by_length"
        self.cache_keyword = cache_keyword(model)  # asked once: a signature is not per-batch work
        on_cpu = self.device.type == "cpu"
        self.vision_batch_tiles = vision_batch_tiles or (CPU_VISION_BATCH_TILES if on_cpu else None)
        # Reused by every batch (the model runs one batch at a time here): see PixelBuffer.
        self._pixels = PixelBuffer() if on_cpu else None

    def encode(self, prompts: list[str]) -> list[list[int]]:
        """Token ids of each full prompt string."""
        return [list(ids) for ids in self.tokenizer(prompts, add_special_tokens=False)["input_ids"]]

    def _inputs(self, batch: list[EncodedRequest]) -> dict[str, Any]:
        torch = self._torch
        width = max(r.num_tokens for r in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, request in enumerate(batch):
            length = request.num_tokens
            input_ids[row, width - length :] = torch.tensor(request.input_ids, dtype=torch.long)
            attention_mask[row, width - length :] = 1
        inputs: dict[str, Any] = {
            "input_ids": input_ids.to(self.device),
            "attention_mask": attention_mask.to(self.device),
        }
        tiles = [r.tiles for r in batch if r.tiles is not None and len(r.tiles)]
        if tiles:
            inputs["pixel_values"] = normalise_tiles(tiles, self.device, self.dtype, self._pixels)
        return inputs

    def _generation_kwargs(self, options: GenerationOptions, batch_size: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": options.max_new_tokens,
            "eos_token_id": self.stop_id,
            "pad_token_id": self.pad_id,
            "do_sample": options.temperature > 0,
        }
        if options.temperature > 0:
            kwargs.update(temperature=options.temperature, top_p=options.top_p, top_k=options.top_k or None)
            self._torch.manual_seed(options.seed)
        if options.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = options.repetition_penalty
        if options.fixed_length:
            kwargs["min_new_tokens"] = options.max_new_tokens
        if options.json_schema is not None:
            from pipeline.models.grammar import json_logits_processor

            kwargs["logits_processor"] = [
                json_logits_processor(self.tokenizer, self.vocab_size, options.json_schema, self._grammars)
            ]
        return kwargs

    def generate(self, batch: list[EncodedRequest], options: GenerationOptions) -> list[GenerationResult]:
        """Batched greedy (or sampled) generation for a batch of rows."""
        torch = self._torch
        limit = os.environ.get(FAULT_OOM_ENV)
        if limit is not None and len(batch) > int(limit):
            raise OutOfMemory(f"test hook {FAULT_OOM_ENV}={limit}: batch of {len(batch)} rows refused")
        inputs = self._inputs(batch)
        kwargs = self._generation_kwargs(options, len(batch))
        try:
            with torch.inference_mode():
                if self.prefill_by_length and min(r.num_tokens for r in batch) > 1:
                    kwargs[self.cache_keyword] = prefill_by_length(
                        self.model,
                        inputs["input_ids"],
                        inputs.pop("pixel_values", None),
                        [0 if r.tiles is None else len(r.tiles) for r in batch],
                        [r.num_tokens for r in batch],
                        options.max_new_tokens,
                        self.vision_batch_tiles,
                        self.cache_keyword,
                    )
                output = self.model.generate(**inputs, **kwargs)
        except torch.OutOfMemoryError as error:
            del inputs, kwargs
            torch.cuda.empty_cache()
            raise OutOfMemory(str(error).splitlines()[0]) from None
        new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
        return [self._result(request, tokens, options) for request, tokens in zip(batch, new_tokens, strict=True)]

    def _result(self, request: EncodedRequest, tokens: list[int], options: GenerationOptions) -> GenerationResult:
        if not options.fixed_length and self.stop_id in tokens:
            end = tokens.index(self.stop_id)
            answer, count, reason = tokens[:end], end + 1, "stop"
        else:
            answer, count, reason = tokens, len(tokens), "length"
        text = self.tokenizer.decode(answer, skip_special_tokens=True).strip()
        return GenerationResult(
            text=text, prompt_tokens=request.num_tokens, output_tokens=count, finish_reason=reason, token_ids=answer
        )

    def peak_memory_bytes(self) -> int | None:
        """torch's high-water mark of allocated memory on this replica's GPU; None on CPU."""
        if self.device.type != "cuda":
            return None
        return int(self._torch.cuda.max_memory_allocated(self.device))

    def close(self) -> None:
        """Drop the model so its memory can be reclaimed."""
        self.model = None
        if self._torch.cuda.is_available():
            self._torch.cuda.empty_cache()


def choose_prefill(prefill: str, model: Any) -> str:
    """'by_length' or 'padded' for model.prefill: 'auto' is padded where flash_attention_2 drops the
    padding itself, by_length otherwise; language models with sliding-window layers are always
    prefilled padded (their caches keep only a window, which joining caches does not handle), and so
    are models whose forward cannot take image features already computed (original-format ones)."""
    if has_sliding_layers(model) or not can_prefill_by_length(model):
        return "padded"
    if prefill != "auto":
        return prefill
    attention = str(getattr(model.config, "_attn_implementation", "") or "")
    return "padded" if attention.startswith("flash_attention") else "by_length"
