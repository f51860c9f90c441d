"""`tiny-random`: a small, deterministic InternVL3 model built locally, for tests and the quickstart.

It has the real geometry (448 px tiles, 14 px patches, pixel shuffle 0.5, so 256 tokens
per tile), the real module structure of `InternVLForConditionalGeneration`, and a small
byte-level BPE tokenizer carrying InternVL's special tokens, but only 2 vision and 2 text
layers of width 64. Weights are drawn with a large scale (std 0.3): at the usual 0.02 a
small random InternVL ignores its image and repeats one token for every row, and tests
built on it would prove nothing. Every tensor is drawn from a generator seeded by its
own name, so the weights are the same on every machine and for every build order.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from pipeline.models.cache import cache_root, file_lock
from pipeline.prompts.template import (
    DEFAULT_SYSTEM_MESSAGE,
    IM_END,
    IM_START,
    IMG_CONTEXT,
    IMG_END,
    IMG_START,
)

VERSION = "v1"
NAME = "tiny-random"
WEIGHT_STD = 0.3
HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
INTERMEDIATE = 128
PAD_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = [
    PAD_TOKEN,
    IM_START,
    IM_END,
    IMG_START,
    IMG_END,
    IMG_CONTEXT,
    "<quad>",
    "</quad>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
]
BPE_VOCAB = 512
# Text the BPE merges are learned from: English caption and moderation vocabulary.
CORPUS = [
    "Please describe the image shortly. Please describe the image in detail. What is happening in this video?",
    "A photo of a dog running on the beach. Two people are walking down a street in the city at night.",
    "The image shows a red car parked next to a building, with trees and a blue sky in the background.",
    "A document page with a title, several paragraphs of text, a table and a figure with a caption.",
    '{"flagged": false, "categories": [], "reason": "the image is safe"}',
    '{"flagged": true, "categories": ["violence"], "reason": "the image shows a fight"}',
    "the of and to in is it that for on with as this are was be at by an or from has have there",
    "Image-1: Image-2: Frame1: Frame2: Frame3: Frame4: text page table heading list markdown",
]


def tiny_random_dir(cache_dir: str | None = None) -> Path:
    """Where the model lives once built."""
    return cache_root(cache_dir) / f"{NAME}-{VERSION}"


def build_tokenizer():  # -> transformers.PreTrainedTokenizerFast
    """The tiny byte-level BPE tokenizer with InternVL's special tokens (deterministic)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    backend.train_from_iterator([*CORPUS, DEFAULT_SYSTEM_MESSAGE], trainer=trainer)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        unk_token=None,
        padding_side="left",
        model_max_length=32768,
    )


def build_config(vocab_size: int, image_token_id: int, eos_token_id: int, pad_token_id: int):
    """InternVL config with the real vision geometry and tiny widths."""
    from transformers import InternVLConfig

    padded_vocab = ((vocab_size + 63) // 64) * 64  # divisible for tensor-parallel sharding
    return InternVLConfig(
        vision_config={
            "hidden_size": HIDDEN,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "intermediate_size": INTERMEDIATE,
            "image_size": [448, 448],
            "patch_size": [14, 14],
        },
        text_config={
            "model_type": "qwen2",
            "vocab_size": padded_vocab,
            "hidden_size": HIDDEN,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "num_key_value_heads": KV_HEADS,
            "intermediate_size": INTERMEDIATE,
            "max_position_embeddings": 32768,
            "eos_token_id": eos_token_id,
            "pad_token_id": pad_token_id,
            "tie_word_embeddings": False,
        },
        image_token_id=image_token_id,
        downsample_ratio=0.5,
        tie_word_embeddings=False,
    )


def _generator_for(name: str):
    import torch

    seed = int.from_bytes(hashlib.sha256(f"{NAME}-{VERSION}:{name}".encode()).digest()[:8], "little")
    return torch.Generator().manual_seed(seed & 0x7FFF_FFFF_FFFF_FFFF)


def initialise(model) -> None:
    """Deterministic, large-scale weights: norms at 1/0, everything else N(0, 0.3)."""
    import torch

    with torch.no_grad():
        for name, parameter in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            is_norm = "norm" in name.split(".")[-2] if "." in name else False
            if is_norm and leaf == "weight":
                parameter.fill_(1.0)
            elif is_norm and leaf == "bias":
                parameter.zero_()
            elif leaf.startswith("lambda"):
                parameter.fill_(1.0)
            else:
                values = torch.randn(parameter.shape, generator=_generator_for(name), dtype=torch.float32)
                parameter.copy_(values * WEIGHT_STD)


def build(target: Path) -> None:
    """Build the model and tokenizer into `target` (a fresh directory)."""
    import torch
    from transformers import GenerationConfig, InternVLForConditionalGeneration

    tokenizer = build_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    config = build_config(len(tokenizer), image_token_id, eos_id, pad_id)
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(config).eval()  # float32 by default
    initialise(model)
    model.generation_config = GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id, do_sample=False)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    (target / "pipeline_model.json").write_text(
        json.dumps({"name": NAME, "version": VERSION, "weight_std": WEIGHT_STD}, indent=2) + "\n", encoding="utf-8"
    )


def ensure_tiny_random(cache_dir: str | None = None) -> Path:
    """Build tiny-random on first use (once per machine, under a lock) and return its directory."""
    target = tiny_random_dir(cache_dir)
    marker = target / "pipeline_model.json"
    if marker.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{target.name}.lock"):
        if marker.exists():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            build(staging)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return target
