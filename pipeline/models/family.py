"""The InternVL3 family: the architecture of each -hf checkpoint, sizes counted on the meta
device, memory, and how many GPUs one replica needs.

Users plan capacity before downloading 150 GB of weights, so the numbers here must not be
typed in by hand: each member is described by its architecture (the values of its
`config.json`), and parameter counts come from instantiating that architecture on
PyTorch's meta device (shapes only, no memory, about a second for 78B). The published
sizes are kept only to test that the architectures are right.

Sources of the architecture values (checked against public copies of the configs):
- InternViT-300M-448px-V2_5: hidden 1024, 24 layers, 16 heads, MLP 4096, LayerNorm,
  qkv bias, no QK norm. InternViT-6B-448px-V2_5: hidden 3200, 45 layers (the last 3 of
  48 dropped: 5.54B params, per its model card), 25 heads, MLP 12800, RMSNorm, QK norm,
  no qkv bias. Both: layer scale 0.1, 448 px images, 14 px patches.
- Qwen2.5 language models (their config.json): 0.5B hidden 896 / MLP 4864 / 24 layers /
  14 heads / 2 KV heads; 1.5B 1536 / 8960 / 28 / 12 / 2; 7B 3584 / 18944 / 28 / 28 / 4;
  14B 5120 / 13824 / 48 / 40 / 8; 32B 5120 / 27648 / 64 / 40 / 8; 72B 8192 / 29568 / 80 /
  64 / 8. InternVL3 extends the vocabulary to 151674 (the -hf text_config) and unties
  the input and output embeddings (so 1B counts 0.94B, as published, not 0.80B).
- The projector: LayerNorm + Linear(4 x vision hidden -> LM hidden) + GELU + Linear
  (pixel shuffle 0.5 folds 2 x 2 patches into one token: 256 tokens per tile).
- Published sizes: the InternVL 3.0 quick-start table (internvl.readthedocs.io):
  0.9B, 2.1B, 7.9B, 15.1B, 38.4B, 78.4B.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import JobError
from pipeline.spec import JobSpec, ModelSpec

HUB_ORG = "OpenGVLab"
#: Share of each GPU's memory kept free of weights: the KV cache of a batch, the vision
#: tower's activations on a 12-tile image, the CUDA context and allocator fragmentation.
HEADROOM_FRACTION = 0.2
#: Bytes per weight for each dtype; quantised Linear weights take one byte.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
QUANTIZED_BYTES = 1
#: GPU sizes of the presets table in the README (A100/H100 80GB, H200 141GB).
TABLE_GPU_SIZES_GB = (80.0, 141.0)


@dataclass(frozen=True)
class VisionTower:
    """An InternViT encoder, as the -hf `vision_config` describes it."""

    name: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    attention_bias: bool
    use_qk_norm: bool
    norm_type: str

    def config(self, num_layers: int | None = None) -> dict[str, Any]:
        """The `vision_config` dict (optionally with fewer layers)."""
        return {
            "hidden_size": self.hidden_size,
            "num_hidden_layers": num_layers or self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "attention_bias": self.attention_bias,
            "use_qk_norm": self.use_qk_norm,
            "norm_type": self.norm_type,
            "layer_norm_eps": 1e-6,
            "layer_scale_init_value": 0.1,
            "image_size": [448, 448],
            "patch_size": [14, 14],
            "use_mean_pooling": True,
        }


@dataclass(frozen=True)
class LanguageModel:
    """A Qwen2.5 decoder, as the -hf `text_config` describes it."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int

    def config(self, num_layers: int | None = None) -> dict[str, Any]:
        """The `text_config` dict (optionally with fewer layers)."""
        return {
            "model_type": "qwen2",
            "vocab_size": 151674,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": num_layers or self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
            "hidden_act": "silu",
            "tie_word_embeddings": False,
            "eos_token_id": 151645,
        }


INTERNVIT_300M = VisionTower("InternViT-300M-448px-V2_5", 1024, 24, 16, 4096, True, False, "layer_norm")
INTERNVIT_6B = VisionTower("InternViT-6B-448px-V2_5", 3200, 45, 25, 12800, False, True, "rms_norm")
QWEN25_05B = LanguageModel("Qwen2.5-0.5B", 896, 4864, 24, 14, 2)
QWEN25_15B = LanguageModel("Qwen2.5-1.5B", 1536, 8960, 28, 12, 2)
QWEN25_7B = LanguageModel("Qwen2.5-7B", 3584, 18944, 28, 28, 4)
QWEN25_14B = LanguageModel("Qwen2.5-14B", 5120, 13824, 48, 40, 8)
QWEN25_32B = LanguageModel("Qwen2.5-32B", 5120, 27648, 64, 40, 8)
QWEN25_72B = LanguageModel("Qwen2.5-72B", 8192, 29568, 80, 64, 8)


@dataclass(frozen=True)
class FamilyMember:
    """One InternVL3 checkpoint: its parts and its published size (used only by tests)."""

    size: str  # "8B"
    vision: VisionTower
    language: LanguageModel
    published_params_b: float

    @property
    def name(self) -> str:
        """E.g. InternVL3-8B."""
        return f"InternVL3-{self.size}"

    @property
    def hub_id(self) -> str:
        """The transformers-native checkpoint (no remote code)."""
        return f"{HUB_ORG}/{self.name}-hf"

    @property
    def original_id(self) -> str:
        """The original (remote-code) checkpoint."""
        return f"{HUB_ORG}/{self.name}"

    def config(self, num_layers: int | None = None, image_token_id: int = 151667) -> Any:  # -> InternVLConfig
        """The -hf `InternVLConfig` of this member (optionally with fewer layers)."""
        from transformers import InternVLConfig

        return InternVLConfig(
            vision_config=self.vision.config(num_layers),
            text_config=self.language.config(num_layers),
            image_token_id=image_token_id,
            downsample_ratio=0.5,
            projector_hidden_act="gelu",
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",
            tie_word_embeddings=False,
        )


FAMILY: dict[str, FamilyMember] = {
    member.size: member
    for member in (
        FamilyMember("1B", INTERNVIT_300M, QWEN25_05B, 0.9),
        FamilyMember("2B", INTERNVIT_300M, QWEN25_15B, 2.1),
        FamilyMember("8B", INTERNVIT_300M, QWEN25_7B, 7.9),
        FamilyMember("14B", INTERNVIT_300M, QWEN25_14B, 15.1),
        FamilyMember("38B", INTERNVIT_6B, QWEN25_32B, 38.4),
        FamilyMember("78B", INTERNVIT_6B, QWEN25_72B, 78.4),
    )
}

_MEMBER_NAME = re.compile(r"InternVL3-(\d+B)", re.IGNORECASE)
_HUB_MEMBER = re.compile(rf"^{HUB_ORG}/InternVL3-(\d+B)(-hf)?$", re.IGNORECASE)
_HUB_ORIGINAL = re.compile(rf"^{HUB_ORG}/InternVL[\w.\-]*$", re.IGNORECASE)


def member_names() -> str:
    """'InternVL3-1B, InternVL3-2B, ...' for messages."""
    return ", ".join(member.name for member in FAMILY.values())


def member_by_name(name: str) -> FamilyMember | None:
    """The member a name like 'InternVL3-8B' (any case) means, or None."""
    match = _MEMBER_NAME.fullmatch(name.strip())
    return FAMILY.get(match.group(1).upper()) if match else None


def member_for_hub_id(name: str) -> FamilyMember | None:
    """The member an official hub id (-hf or original) names, or None."""
    match = _HUB_MEMBER.match(name)
    return FAMILY.get(match.group(1).upper()) if match else None


def original_format_hint(name: str) -> str | None:
    """For an official original-format hub id (runs remote code), the message that names
    its -hf equivalent; None for -hf ids and for anything else."""
    if not _HUB_ORIGINAL.match(name) or name.lower().endswith("-hf"):
        return None
    member = member_for_hub_id(name)
    instead = member.hub_id if member else "its -hf conversion (e.g. OpenGVLab/InternVL3-8B-hf), if there is one"
    return (
        f"model.name: {name} is an original-format InternVL checkpoint, which runs code from the model "
        f"repository. Use {instead} instead (same weights, loaded by transformers without remote code), "
        "or set model.trust_remote_code: true if you trust that repository"
    )


# ----------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class ModelShape:
    """Parameter counts of an architecture, split the way memory is spent.

    Under tensor parallelism transformers shards only the language model (embeddings,
    attention, MLP, lm_head); the vision tower and the projector run whole on every rank.
    """

    name: str
    replicated: int  # vision tower + projector
    replicated_linear: int  # of which Linear weights (quantisable)
    sharded: int  # language model + lm_head
    sharded_linear: int  # of which Linear weights, lm_head excluded (quantisable)
    attention_heads: int
    kv_heads: int

    @property
    def params(self) -> int:
        """All parameters."""
        return self.replicated + self.sharded

    def weight_bytes(self, dtype: str = "bfloat16", quantization: str | None = None) -> tuple[float, float]:
        """(replicated, sharded) bytes of the weights; int8/fp8 store Linear weights in one byte
        (lm_head and embeddings stay in the model dtype, as transformers' quantisers leave them)."""
        full = DTYPE_BYTES[dtype]
        small = QUANTIZED_BYTES if quantization else full
        replicated = (self.replicated - self.replicated_linear) * full + self.replicated_linear * small
        sharded = (self.sharded - self.sharded_linear) * full + self.sharded_linear * small
        return float(replicated), float(sharded)

    def total_gb(self, dtype: str = "bfloat16", quantization: str | None = None) -> float:
        """Weights of one replica in GB (10^9 bytes)."""
        return sum(self.weight_bytes(dtype, quantization)) / 1e9

    def per_gpu_gb(self, tensor_parallel: int, dtype: str = "bfloat16", quantization: str | None = None) -> float:
        """Weights each rank of a tensor-parallel gang holds, in GB."""
        replicated, sharded = self.weight_bytes(dtype, quantization)
        return (replicated + sharded / tensor_parallel) / 1e9

    def tensor_parallel_sizes(self) -> list[int]:
        """Sizes the gang may have: each must divide the KV heads (and the attention heads)."""
        return [n for n in range(1, self.kv_heads + 1) if self.kv_heads % n == 0 and self.attention_heads % n == 0]


def shape_of_config(config: Any, name: str) -> ModelShape:
    """Count an InternVL config's parameters on the meta device (no memory, no weights)."""
    import torch
    from transformers import InternVLForConditionalGeneration

    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config)
    counts = {"replicated": 0, "replicated_linear": 0, "sharded": 0, "sharded_linear": 0}
    linear_weights = {
        f"{module_name}.weight"
        for module_name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module_name != "lm_head"
    }
    for param_name, parameter in model.named_parameters():
        group = "sharded" if param_name.startswith(("model.language_model.", "lm_head.")) else "replicated"
        counts[group] += parameter.numel()
        if param_name in linear_weights:
            counts[f"{group}_linear"] += parameter.numel()
    text = config.get_text_config()
    return ModelShape(
        name=name,
        attention_heads=int(text.num_attention_heads),
        kv_heads=int(text.num_key_value_heads or text.num_attention_heads),
        **counts,
    )


@functools.lru_cache(maxsize=32)
def member_shape(size: str, num_layers: int | None = None) -> ModelShape:
    """The shape of a family member (optionally reduced to a few layers), counted once per process."""
    member = FAMILY[size]
    name = member.name if num_layers is None else f"{member.name} ({num_layers} layers)"
    return shape_of_config(member.config(num_layers), name)


def gpus_needed(shape: ModelShape, gpu_memory_gb: float, dtype: str, quantization: str | None) -> int | None:
    """Fewest tensor-parallel ranks whose weights fit each GPU with headroom; None if none does."""
    usable = gpu_memory_gb * (1 - HEADROOM_FRACTION)
    for size in shape.tensor_parallel_sizes():
        if shape.per_gpu_gb(size, dtype, quantization) <= usable:
            return size
    return None


def device_map_gpus_needed(shape: ModelShape, gpu_memory_gb: float, dtype: str, quantization: str | None) -> int:
    """GPUs a layer-split (device_map: auto) replica needs: the whole model spread over them."""
    usable = gpu_memory_gb * (1 - HEADROOM_FRACTION)
    return max(1, math.ceil(shape.total_gb(dtype, quantization) / usable))


# ----------------------------------------------------------------------------- the presets table


def presets_table(gpu_sizes_gb: tuple[float, ...] = TABLE_GPU_SIZES_GB) -> str:
    """The README's presets table, computed (a test checks the README still matches it)."""
    gpu_headers = [f"GPUs/replica {size:g} GB" for size in gpu_sizes_gb]
    lines = [
        "| model | vision | language | params (meta) | bf16 weights | int8/fp8 weights | "
        + " | ".join(gpu_headers)
        + " | -hf checkpoint |",
        "|---" * (7 + len(gpu_sizes_gb)) + "|",
    ]
    for member in FAMILY.values():
        shape = member_shape(member.size)
        gpus = []
        for size_gb in gpu_sizes_gb:
            tensor_parallel = gpus_needed(shape, size_gb, "bfloat16", None)
            quantized = device_map_gpus_needed(shape, size_gb, "bfloat16", "int8")
            gpus.append(f"TP {tensor_parallel or '-'}; int8/fp8: {quantized}")
        lines.append(
            f"| {member.name} | {member.vision.name} | {member.language.name} | {shape.params / 1e9:.2f}B | "
            f"{shape.total_gb():.1f} GB | {shape.total_gb(quantization='int8'):.1f} GB | "
            + " | ".join(gpus)
            + f" | `{member.hub_id}` |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- validate-time rules


def _local_config(name: str, revision: str | None) -> dict[str, Any] | None:
    """config.json of a local checkpoint directory, or of a hub id already in the local hub
    cache (never the network: validation must work offline and fast)."""
    path = Path(name).expanduser()
    if path.is_dir():
        config = path / "config.json"
        return _read_json(config) if config.is_file() else None
    if "/" not in name or name.startswith(("s3://", "s3a://", "/", ".", "~")):
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json", revision=revision)
    return _read_json(Path(cached)) if isinstance(cached, str) else None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def checkpoint_config(model: ModelSpec) -> dict[str, Any] | None:
    """The config.json `model.name` resolves to without downloading anything, if known."""
    return _local_config(model.name, model.revision)


def shape_for(model: ModelSpec) -> ModelShape | None:
    """The architecture `model.name` runs, when it can be known without downloading weights."""
    from pipeline.models.loading import DUMMY_PREFIX, NO_MODEL, TINY_RANDOM

    name = model.name
    if name == NO_MODEL:
        return None
    if name == TINY_RANDOM:
        from pipeline.models import tiny_random

        return ModelShape(name, 0, 0, 0, 0, attention_heads=tiny_random.HEADS, kv_heads=tiny_random.KV_HEADS)
    if name.startswith(DUMMY_PREFIX):
        from pipeline.models.dummy import dummy_member

        return member_shape(dummy_member(name).size, model.dummy_layers)
    member = member_for_hub_id(name)
    if member is not None:
        return member_shape(member.size)
    config = checkpoint_config(model)
    if config is None or config.get("model_type") != "internvl":
        return None
    from transformers import InternVLConfig

    return shape_of_config(InternVLConfig.from_dict(config), name)


def _dtype_on_gpu(model: ModelSpec) -> str:
    return "bfloat16" if model.dtype == "auto" else model.dtype


def check_tensor_parallel_divides(model: ModelSpec, shape: ModelShape) -> None:
    """transformers shards attention by heads: the gang size must divide the KV heads."""
    tp = model.tensor_parallel
    if tp in shape.tensor_parallel_sizes():
        return
    sizes = ", ".join(str(n) for n in shape.tensor_parallel_sizes())
    raise JobError(
        f"model.tensor_parallel={tp} does not divide the {shape.kv_heads} key-value heads (and "
        f"{shape.attention_heads} attention heads) of {shape.name}; use one of {sizes}"
    )


def check_gpus_per_replica(model: ModelSpec, shape: ModelShape) -> None:
    """Refuse a replica whose weights cannot fit the GPUs it is given, naming the count it needs."""
    dtype = _dtype_on_gpu(model)
    memory = model.gpu_memory_gb
    quant = model.quantization
    weights = f"{shape.total_gb(dtype, quant):.1f} GB of {quant or dtype} weights"
    headroom = f"each GPU keeps {HEADROOM_FRACTION:.0%} for activations and the KV cache"
    from pipeline.job import splits_layers

    if splits_layers(model):
        given = (model.gpus_per_replica or 1) if model.device_map == "auto" else 1
        needed_split = device_map_gpus_needed(shape, memory, dtype, quant)
        if given >= needed_split:
            return
        if model.device_map == "auto":
            raise JobError(
                f"model.gpus_per_replica={given} but {shape.name} needs {needed_split} GPUs of {memory:g} GB per "
                f"replica with model.device_map: auto ({weights}; {headroom}); set model.gpus_per_replica: "
                f"{needed_split}"
            )
        raise JobError(
            f"{shape.name} with model.quantization: {quant} needs {needed_split} GPUs of {memory:g} GB per replica "
            f"({weights}; {headroom}) and quantised weights cannot be tensor-parallel; set model.device_map: auto "
            f"and model.gpus_per_replica: {needed_split}"
        )
    needed = gpus_needed(shape, memory, dtype, quant)
    tp = model.tensor_parallel
    if needed is not None and tp >= needed:
        return
    replicated, _ = shape.weight_bytes(dtype, quant)
    detail = (
        f"{weights}, of which {replicated / 1e9:.1f} GB (vision tower and projector) sit whole on every rank; "
        f"{headroom}"
    )
    if needed is None:
        largest = shape.tensor_parallel_sizes()[-1]
        raise JobError(
            f"{shape.name} does not fit GPUs of {memory:g} GB even with model.tensor_parallel: {largest} ({detail}); "
            "use larger GPUs (model.gpu_memory_gb), or model.quantization: int8 or fp8 with model.device_map: auto "
            "and model.gpus_per_replica"
        )
    raise JobError(
        f"model.tensor_parallel={tp} but {shape.name} needs {needed} GPUs of {memory:g} GB per replica; "
        f"set model.tensor_parallel: {needed} ({detail}). On GPUs with more memory set model.gpu_memory_gb "
        "(e.g. 141 for H200)"
    )


def check_family_requirements(spec: JobSpec) -> None:
    """Refuse, before any model loads, a gang size the architecture cannot be split into and
    a replica too small for its weights (for architectures known without a download)."""
    model = spec.model
    shape = shape_for(model)
    if shape is None:
        return
    check_tensor_parallel_divides(model, shape)
    if model.device != "cpu" and shape.params > 0:
        check_gpus_per_replica(model, shape)
