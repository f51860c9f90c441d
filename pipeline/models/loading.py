"""From `model.*` settings to a loaded engine: resolve the source, pick device, dtype and
attention, load with transformers' native InternVL class (never remote code by default).

Sources, by the form of `model.name`:
- `tiny-random`: built locally on first use (see `pipeline.models.tiny_random`);
- `none`: no model (an engine that answers nothing; benchmarks the pipeline itself);
- `dummy:InternVL3-<size>`: a family member's architecture with random weights, built on
  the target device (see `pipeline.models.dummy`);
- a local directory: loaded as is;
- `s3://...`: downloaded once per node into the cache (see `pipeline.models.s3_checkpoint`);
- anything else: a hub id, loaded through the transformers hub client.

Original-format checkpoints (config `model_type: internvl_chat`, e.g. OpenGVLab/InternVL3-8B)
run code from their repository: they are refused, naming the -hf equivalent, unless
`model.trust_remote_code` is true (see `pipeline.models.original_format`).
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import JobError
from pipeline.models.engine import Engine
from pipeline.spec import ModelSpec, StorageSpec

TINY_RANDOM = "tiny-random"
NO_MODEL = "none"
DUMMY_PREFIX = "dummy:"


@dataclass(frozen=True)
class RuntimeChoice:
    """Where and how a replica runs."""

    device: str  # "cuda" or "cpu"
    dtype: str  # torch dtype name
    attn_implementation: str


def cuda_available() -> bool:
    """Whether this process sees a CUDA device (imports torch)."""
    import torch

    return torch.cuda.is_available()


def choose_runtime(spec: ModelSpec, has_cuda: bool) -> RuntimeChoice:
    """Resolve 'auto' settings for this process."""
    if spec.device == "cuda" and not has_cuda:
        raise JobError(
            "model.device is 'cuda' but this model actor sees no GPU; check the cluster's GPUs "
            "(`ray status`) or set model.device: auto"
        )
    device = "cuda" if spec.device == "cuda" or (spec.device == "auto" and has_cuda) else "cpu"
    dtype = spec.dtype if spec.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
    if device == "cpu" and dtype == "float16":
        raise JobError("model.dtype: float16 is not supported on CPU; use float32 or bfloat16")
    if device == "cpu" and spec.quantization:
        raise JobError(quantization_needs_cuda(spec.quantization))
    attn = spec.attn_implementation
    if attn == "auto":
        attn = "flash_attention_2" if device == "cuda" and importlib.util.find_spec("flash_attn") else "sdpa"
    if attn == "flash_attention_2" and (device != "cuda" or not importlib.util.find_spec("flash_attn")):
        raise JobError(
            "model.attn_implementation: flash_attention_2 needs CUDA and the flash-attn package "
            "(pip install '.[gpu]'); use auto or sdpa"
        )
    return RuntimeChoice(device=device, dtype=dtype, attn_implementation=attn)


def quantization_needs_cuda(quantization: str) -> str:
    """Why a quantised model cannot run on CPU, and what to do instead."""
    kernels = "bitsandbytes' 8-bit kernels" if quantization == "int8" else "FP8 matmuls (compute capability 8.9+)"
    return (
        f"model.quantization: {quantization} needs NVIDIA GPUs ({kernels}); this replica would run on CPU. "
        "Remove model.quantization for CPU runs, or run on GPU nodes with model.device: cuda"
    )


def runtime_for(spec: ModelSpec) -> RuntimeChoice:
    """The runtime of this process, with the checks that need its GPU (quantisation support)."""
    import torch

    runtime = choose_runtime(spec, torch.cuda.is_available())
    if spec.quantization == "int8" and not importlib.util.find_spec("bitsandbytes"):
        raise JobError(
            "model.quantization: int8 needs the bitsandbytes package on the GPU nodes: pip install '.[quant]'"
        )
    if spec.quantization == "fp8" and torch.cuda.get_device_capability() < (8, 9):
        major, minor = torch.cuda.get_device_capability()
        raise JobError(
            f"model.quantization: fp8 needs a GPU of compute capability 8.9 or newer (Ada, Hopper); this one is "
            f"{major}.{minor}. Use model.quantization: int8 or bfloat16 weights"
        )
    return runtime


def quantization_config(quantization: str | None) -> Any:
    """transformers' quantisation config for model.quantization (None for full precision)."""
    if quantization == "int8":
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization == "fp8":
        from transformers import FineGrainedFP8Config

        return FineGrainedFP8Config()
    return None


def load_kwargs(spec: ModelSpec, runtime: RuntimeChoice, tensor_parallel: int = 1) -> dict[str, Any]:
    """`from_pretrained` arguments for the runtime: dtype, attention, placement, quantisation.

    Placement is one of: the whole model on this process's device; `device_map: auto`
    (accelerate spreads the layers over the GPUs this actor sees); or, for a rank of a
    tensor-parallel gang, transformers' tensor-parallel plan over the process group the
    gang set up (each rank loads only its shard).
    """
    import torch

    kwargs: dict[str, Any] = {
        "dtype": getattr(torch, runtime.dtype),
        "attn_implementation": runtime.attn_implementation,
    }
    if tensor_parallel > 1:
        from transformers.distributed import DistributedConfig

        kwargs["distributed_config"] = DistributedConfig(tp_size=tensor_parallel)
    else:
        kwargs["device_map"] = "auto" if spec.device_map == "auto" else runtime.device
    quantization = quantization_config(spec.quantization)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    return kwargs


def is_original_format(checkpoint: Path) -> bool:
    """Whether a checkpoint directory is the original (remote-code) InternVL format."""
    config = checkpoint / "config.json"
    if not config.exists():
        return False
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, json.JSONDecodeError):
        return False
    return model_type == "internvl_chat"


def resolve_checkpoint(spec: ModelSpec, storage: StorageSpec | None) -> str:
    """A local directory (or hub id) to load `model.name` from, fetching or building it if needed."""
    name = spec.name
    if name == TINY_RANDOM:
        from pipeline.models.tiny_random import ensure_tiny_random

        return str(ensure_tiny_random(spec.cache_dir))
    if name.startswith(("s3://", "s3a://")):
        from pipeline.models.s3_checkpoint import download_checkpoint

        return str(download_checkpoint(name, storage, spec.cache_dir))
    path = Path(os.path.expanduser(name))
    if path.is_dir():
        if not (path / "config.json").exists():
            raise JobError(f"model.name: {name} is a directory without config.json; point it at a checkpoint")
        return str(path)
    if name.startswith(("/", "./", "../", "~")):
        raise JobError(
            f"model.name: the directory {name} does not exist; check the path, or give a hub id such as "
            "OpenGVLab/InternVL3-2B-hf"
        )
    return name


def load_engine(spec: ModelSpec, storage: StorageSpec | None = None, tensor_parallel: int = 1) -> Engine:
    """Load the replica `model.*` describes in this process (or, with tensor_parallel > 1, this
    process's rank of it: the gang has set up torch.distributed already)."""
    if spec.name == NO_MODEL:
        from pipeline.models.no_model import NoModelEngine

        return NoModelEngine(spec)
    if spec.name.startswith(DUMMY_PREFIX):
        from pipeline.models.dummy import load_dummy_engine

        return load_dummy_engine(spec, tensor_parallel)
    from transformers import AutoTokenizer, InternVLForConditionalGeneration

    from pipeline.models.family import original_format_hint
    from pipeline.models.hf_engine import HFEngine

    runtime = runtime_for(spec)
    hint = original_format_hint(spec.name)
    if hint and not spec.trust_remote_code:
        raise JobError(hint)
    checkpoint = resolve_checkpoint(spec, storage)
    original = hint is not None or (Path(checkpoint).is_dir() and is_original_format(Path(checkpoint)))
    if original and not spec.trust_remote_code:
        raise JobError(
            f"model.name: {spec.name} is an original-format InternVL checkpoint, which runs code from the model "
            "repository. Use the -hf checkpoint instead (e.g. OpenGVLab/InternVL3-8B-hf), or set "
            "model.trust_remote_code: true if you trust it"
        )
    kwargs = load_kwargs(spec, runtime, tensor_parallel)
    model: Any
    kwargs.update(revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    try:
        if original:
            from pipeline.models.original_format import load_original_format

            model, tokenizer = load_original_format(checkpoint, kwargs)
        else:
            tokenizer = AutoTokenizer.from_pretrained(
                checkpoint, revision=spec.revision, trust_remote_code=spec.trust_remote_code
            )
            model = InternVLForConditionalGeneration.from_pretrained(checkpoint, **kwargs)
    except OSError as error:
        raise JobError(
            f"model.name: cannot load {spec.name!r}: {str(error).splitlines()[0]}. A hub id needs network access "
            "to the hub (or HF_HUB_OFFLINE=1 with the model in the local hub cache); a directory needs config.json "
            "and the weights"
        ) from None
    tokenizer.padding_side = "left"
    return HFEngine(model.eval(), tokenizer, spec.name, spec.prefill, spec.vision_batch_tiles)
