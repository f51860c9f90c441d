"""Prefill a batch without padding: rows of equal prompt length together, then decode as one batch.

Why: a left-padded batch makes every attention call take an explicit mask. With sdpa, a
mask over a multi-thousand-token prompt is a dense (batch, 1, length, length) tensor that
is built, converted and read at every layer; on a CPU the padded prefill of 8 rows of 2,456
and 3,480 tokens took 4x the time per row of the same rows prefilled without padding. So
the rows are prefilled in groups of equal length (no padding, so no mask: causal attention
alone), each group's key/value cache is written into one left-padded cache for the whole
batch, and batched decoding continues from it with the usual attention mask - one token
per row per step, where a mask is cheap.

The answers are the ones a left-padded prefill gives (the padded positions are masked
either way, and every row's positions count from its first real token), and a batch of
one takes the same path, so batched answers still equal one-at-a-time answers. The last
prompt token is left out of the prefill so that `generate` has one token per row to start
from: it computes that token's logits with the cache, exactly as a decoding step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: Tiles the vision encoder takes at once on a CPU when model.vision_batch_tiles is null: batches
#: that fit the caches ran ~10% faster per tile than 40 or 80 at once (same results, bit for bit).
CPU_VISION_BATCH_TILES = 16


def length_groups(lengths: Sequence[int]) -> dict[int, list[int]]:
    """Row positions by prompt length, in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for position, length in enumerate(lengths):
        groups.setdefault(length, []).append(position)
    return groups


def tile_slices(tile_counts: Sequence[int]) -> list[slice]:
    """Each row's slice of the batch's stacked tiles."""
    ends = np.cumsum(tile_counts).tolist()
    return [slice(end - count, end) for count, end in zip(tile_counts, ends, strict=True)]


def has_sliding_layers(model: Any) -> bool:
    """Whether the language model has sliding-window layers (their caches keep only a window, which
    this module's cache joining does not handle; such models keep the padded prefill)."""
    text = model.config.get_text_config()
    layer_types = getattr(text, "layer_types", None) or []
    return any("sliding" in str(kind) for kind in layer_types) or bool(getattr(text, "use_sliding_window", False))


def forward_parameters(model: Any) -> set[str]:
    """The keyword parameters of `model.forward` (none for an object without one)."""
    import inspect

    forward = getattr(model, "forward", None)
    return set(inspect.signature(forward).parameters) if callable(forward) else set()


def cache_keyword(model: Any) -> str:
    """The keyword `model`'s forward (and so `generate`) takes its key/value cache under.

    Why: transformers 5.24 renamed `past_key_values` to `cache`; the old name still works but
    warns on every batch and goes in 5.40, while 5.18-5.23 know only the old one. Asking the
    signature keeps every supported version quiet and working."""
    return "cache" if "cache" in forward_parameters(model) else "past_key_values"


def can_prefill_by_length(model: Any) -> bool:
    """Whether this module can drive `model`: its inner model must take image features already
    computed (`mm_encoder_outputs`, transformers 5.18+). An original-format checkpoint's remote
    InternVLChatModel embeds the images inside its own `generate`, so it cannot."""
    return "mm_encoder_outputs" in forward_parameters(getattr(model, "model", None))


def image_features(model: Any, pixel_values: Any, vision_batch_tiles: int | None) -> Any:
    """The projected image features of `pixel_values`, the vision encoder taking at most
    `vision_batch_tiles` tiles at once (None: all)."""
    import torch

    step = vision_batch_tiles or len(pixel_values)
    config = model.config
    parts = [
        model.model.get_image_features(
            pixel_values=pixel_values[start : start + step],
            vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            return_dict=True,
        ).pooler_output
        for start in range(0, len(pixel_values), step)
    ]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def prefill_by_length(
    model: Any,
    input_ids: Any,
    pixel_values: Any | None,
    tile_counts: Sequence[int],
    lengths: Sequence[int],
    max_new_tokens: int,
    vision_batch_tiles: int | None,
    keyword: str,
) -> Any:
    """The key/value cache of every row's prompt but its last token, left-padded to the batch.

    `input_ids` is the left-padded (batch, width) prompt tensor, `lengths` each row's real
    length, `pixel_values` the batch's tiles stacked in row order, `keyword` the model's
    `cache_keyword` (its inner model's forward was renamed in the same release). Returns a transformers
    cache holding width - 1 positions per row (a static one, sized for the answer, so that
    decoding does not copy the whole cache at every step), ready for `generate`.
    """
    import torch
    from transformers import DynamicCache, StaticCache
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    batch, width = input_ids.shape
    slices = tile_slices(tile_counts)
    features = None
    if pixel_values is not None and len(pixel_values):
        # The whole batch's tiles in order, in slices that are views: no copy of the pixel values.
        features = image_features(model, pixel_values, vision_batch_tiles)
    keys: list[Any] = []
    values: list[Any] = []
    for length, rows in length_groups(lengths).items():
        extra: dict[str, Any] = {}
        tiles = [index for row in rows for index in range(slices[row].start, slices[row].stop)]
        if features is not None and tiles:
            group_features = features[torch.tensor(tiles, device=features.device)]
            extra["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=group_features)}
        output = model.model(
            input_ids=input_ids[rows, width - length : width - 1],
            use_cache=True,
            **{keyword: DynamicCache(config=model.config)},
            **extra,
        )
        for index, layer in enumerate(getattr(output, keyword).layers):
            if index == len(keys):
                shape = (batch, layer.keys.shape[1], width - 1)
                keys.append(layer.keys.new_zeros((*shape, layer.keys.shape[3])))
                values.append(layer.values.new_zeros((*shape, layer.values.shape[3])))
            keys[index][rows, :, width - length :] = layer.keys
            values[index][rows, :, width - length :] = layer.values
        del output
    cache = StaticCache(config=model.config, max_cache_len=width + max_new_tokens)
    for index, (layer_keys, layer_values) in enumerate(zip(keys, values, strict=True)):
        cache.update(layer_keys, layer_values, index)
    return cache
