"""`model.name: dummy:InternVL3-<size>`: a family member's real architecture with random
weights, for throughput benchmarks and capacity planning without downloading anything.

Weights are created directly on the target device (transformers materialises the
"missing" weights of an empty checkpoint where the device map or the tensor-parallel
plan puts them, each rank holding only its shard), so `dummy:InternVL3-78B` on four
80 GB GPUs starts in seconds and uses the same memory as the real model. Every answer has
exactly `task.max_new_tokens` tokens (the stop token is ignored: random weights would
stop at random places and make tokens/s meaningless). Prompts are tokenized with
tiny-random's small tokenizer, which carries InternVL's special tokens: image tokens -
most of a prompt - are exact, question text takes a few more tokens than with Qwen's
tokenizer. The answers are noise: a benchmarking tool, not a way to process data.
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import JobError
from pipeline.models.engine import Engine
from pipeline.models.family import FamilyMember, member_by_name, member_names
from pipeline.models.loading import DUMMY_PREFIX, load_kwargs, runtime_for
from pipeline.prompts.template import IM_END, IMG_CONTEXT
from pipeline.spec import ModelSpec

#: Same weights on every rank and every run (ranks must agree on the replicated vision tower).
DUMMY_SEED = 0


def dummy_member(name: str) -> FamilyMember:
    """The family member a `dummy:` name stands for; a JobError listing the members otherwise."""
    member = member_by_name(name[len(DUMMY_PREFIX) :]) if name.startswith(DUMMY_PREFIX) else None
    if member is None:
        raise JobError(
            f"model.name: {name!r} names no InternVL3 family member; use dummy:<member>, one of {member_names()}"
        )
    return member


def dummy_config(spec: ModelSpec, tokenizer: Any) -> Any:  # -> InternVLConfig
    """The member's -hf config (optionally reduced to model.dummy_layers), with the token ids of
    the tokenizer the dummy engine uses."""
    config = dummy_member(spec.name).config(spec.dummy_layers, tokenizer.convert_tokens_to_ids(IMG_CONTEXT))
    text = config.get_text_config()
    text.eos_token_id = tokenizer.convert_tokens_to_ids(IM_END)
    text.pad_token_id = tokenizer.pad_token_id
    return config


def load_dummy_model(spec: ModelSpec, load_kwargs: dict[str, Any], tokenizer: Any) -> Any:
    """Random weights on the target device: an empty checkpoint whose every weight is 'missing'
    gets initialised where `load_kwargs` (device_map, or a tensor-parallel plan) puts it."""
    import torch
    from transformers import GenerationConfig, InternVLForConditionalGeneration
    from transformers.utils import logging as hf_logging

    config = dummy_config(spec, tokenizer)
    torch.manual_seed(DUMMY_SEED)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized weights" report lists every weight: it is the point
    try:
        model = InternVLForConditionalGeneration.from_pretrained(None, config=config, state_dict={}, **load_kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    text = config.get_text_config()
    model.generation_config = GenerationConfig(
        eos_token_id=text.eos_token_id, pad_token_id=text.pad_token_id, do_sample=False
    )
    return model.eval()


def load_dummy_engine(spec: ModelSpec, tensor_parallel: int = 1) -> Engine:
    """A dummy replica in this process (one rank of a gang when tensor_parallel > 1)."""
    from pipeline.models.hf_engine import HFEngine
    from pipeline.models.tiny_random import build_tokenizer

    dummy_member(spec.name)
    runtime = runtime_for(spec)
    tokenizer = build_tokenizer()
    model = load_dummy_model(spec, load_kwargs(spec, runtime, tensor_parallel), tokenizer)
    return HFEngine(model, tokenizer, spec.name, spec.prefill, spec.vision_batch_tiles)
