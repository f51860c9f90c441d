"""The job spec: YAML in, validated pydantic models out.

Every field carries a description (it is the reference documentation: `python -m
pipeline spec` prints it), unknown keys are an error, and `--set a.b=value` overrides
apply before validation so that a typo in an override fails like a typo in the file.
Task-dependent defaults (tiles for OCR, answer length per task) are left as `None` here
and filled by `pipeline.prompts.tasks.resolve_spec`, so the user can see which values
came from the preset.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)


class SpecError(ValueError):
    """A job spec that cannot run; the message names the field and the fix."""


def _size(value: Any, least: int) -> int | Literal["auto"]:
    """A stage size as written: a whole number >= `least` (YAML or `--set` text), or 'auto'."""
    if value == "auto":
        return "auto"
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"expected a whole number >= {least}, or 'auto'")
    return value


def _count(value: Any) -> int | Literal["auto"]:
    """A size that cannot be 0: a job needs at least one model replica."""
    return _size(value, 1)


def _worker_count(value: Any) -> int | Literal["auto"]:
    """The CPU stage's size, which may be 0: the model replicas then prepare their own rows."""
    return _size(value, 0)


# A stage size: a number, or 'auto' - chosen by the driver from the cluster it joins
# (pipeline/layout.py).
Count = Annotated[int | Literal["auto"], PlainValidator(_count)]
# The CPU stage's size may also be 0: no CPU actors, each model replica prepares its own rows.
WorkerCount = Annotated[int | Literal["auto"], PlainValidator(_worker_count)]


class StrictModel(BaseModel):
    """Base for spec sections: unknown keys are rejected, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class InputSpec(StrictModel):
    """Where the manifest is and which of its columns mean what."""

    manifest: str = Field(
        description="Parquet manifest: a file, a directory of .parquet files, or a glob; local or s3://."
    )
    id_column: str = Field(default="id", description="Column with a unique, non-null string id per row.")
    uri_column: str = Field(
        default="uri",
        description="Column with the media uri (local path or s3://...). Null or empty means a text-only row.",
    )
    uris_column: str | None = Field(
        default="uris",
        description="Optional column holding a list of image uris for multi-image rows (ignored if absent).",
    )
    media_type_column: str | None = Field(
        default="media_type",
        description="Optional column with 'image' or 'video'; else the type comes from the extension, "
        "else from the file's bytes (ignored if absent).",
    )
    prompt_column: str | None = Field(
        default="prompt",
        description="Optional column with a per-row question that overrides the task's prompt (ignored if absent).",
    )
    bytes_column: str | None = Field(
        default="image_bytes",
        description="Optional column with inline image bytes, used instead of reading the uri (ignored if absent).",
    )
    start_column: str | None = Field(
        default="start_s", description="Optional column with a video start time in seconds (ignored if absent)."
    )
    end_column: str | None = Field(
        default="end_s", description="Optional column with a video end time in seconds (ignored if absent)."
    )
    passthrough_columns: list[str] = Field(
        default_factory=list, description="Manifest columns copied unchanged into the output."
    )
    rows_per_shard: int = Field(
        default=10_000,
        ge=1,
        description="Largest unit of resume bookkeeping: a Parquet row group is split into shards of at most "
        "this many rows; each shard's output lives in its own folder.",
    )
    check_duplicates: bool = Field(
        default=True,
        description="Scan every id for duplicates before the run (bounded memory, spills to local disk). "
        "Turn off only for manifests you already know to be clean.",
    )
    limit: int | None = Field(default=None, ge=1, description="Process only the first N manifest rows (for trials).")


class TaskSpec(StrictModel):
    """What to ask the model and how to generate."""

    kind: Literal["caption", "ocr", "moderation", "custom"] = Field(
        default="caption", description="Task preset: caption, ocr, moderation, or custom (your own template)."
    )
    prompt: str | None = Field(
        default=None,
        description="The question. For 'custom', a template that may name manifest columns as {column}. "
        "For other kinds it replaces the preset's question. A per-row prompt column wins over both.",
    )
    caption_style: Literal["short", "detailed"] = Field(
        default="short", description="Caption preset variant: 'short' (one sentence) or 'detailed' (a paragraph)."
    )
    categories: list[str] = Field(
        default_factory=lambda: ["sexual", "violence", "hate", "harassment", "self_harm", "illegal_activity"],
        description="Moderation categories the model may flag; the output's `categories` column holds a subset.",
    )
    system_message: str | None = Field(
        default=None,
        description="System message of the internvl2_5 template; null keeps InternVL's default, '' drops it.",
    )
    max_new_tokens: int | None = Field(
        default=None, ge=1, description="Longest answer in tokens; null takes the task preset's default."
    )
    temperature: float = Field(default=0.0, ge=0.0, description="0 means greedy decoding (deterministic).")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (when temperature > 0).")
    top_k: int = Field(default=0, ge=0, description="Top-k sampling (0 = off; when temperature > 0).")
    repetition_penalty: float = Field(default=1.0, gt=0.0, description="1.0 = off.")
    seed: int = Field(default=0, description="Seed for sampling when temperature > 0.")

    @field_validator("categories")
    @classmethod
    def _categories_unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value) or any(not c.strip() for c in value):
            raise ValueError("categories must be distinct, non-empty strings")
        return value


class PreprocessSpec(StrictModel):
    """The CPU stage: fetching, decoding, tiling, frame sampling."""

    max_tiles: int | None = Field(
        default=None, ge=1, le=64, description="Most tiles per image (grid only; null = the task preset's default)."
    )
    min_tiles: int = Field(default=1, ge=1, description="Fewest grid tiles per image.")
    use_thumbnail: bool = Field(
        default=True, description="Append a 448x448 thumbnail of the whole image when it has more than one tile."
    )
    max_tiles_total: int | None = Field(
        default=None, ge=1, description="Cap on the tiles of all images of a multi-image row together."
    )
    num_frames: int = Field(default=8, ge=1, le=128, description="Frames sampled per video.")
    tiles_per_frame: int = Field(default=1, ge=1, le=64, description="Most tiles per video frame.")
    workers: WorkerCount = Field(
        default="auto",
        description="CPU actors that fetch, decode and tile. 0: none, each model replica prepares its own rows "
        "(for models on CPUs, where the replicas and the CPU actors would share the same cores). 'auto': with the "
        "model on GPUs (or no model), every CPU the replicas leave; on CPUs, 0 when the replicas fill the cores, "
        "else one per 4 replicas (see pipeline/layout.py).",
    )
    cpus_per_worker: float = Field(default=1.0, gt=0, description="CPUs Ray reserves for each CPU actor.")
    batch_size: int = Field(
        default=8,
        ge=1,
        description="Rows per call of a CPU actor (with `workers: 0`, rows a replica prepares at a time).",
    )
    exif_transpose: bool = Field(
        default=True, description="Rotate photos as their EXIF orientation says before tiling (as a viewer shows them)."
    )
    max_image_pixels: int = Field(
        default=178_956_970,
        ge=1,
        description="Refuse images with more pixels than this (decompression bombs) with a row error.",
    )
    max_file_bytes: int = Field(
        default=512 * 1024 * 1024, ge=1, description="Refuse media files larger than this with a row error."
    )
    fast_decode: bool = Field(
        default=False,
        description="Let Pillow decode JPEGs at a reduced scale when that is still larger than the tiles "
        "(faster, not bit-exact with the reference).",
    )
    fetch_retries: int = Field(default=3, ge=0, description="Retries (with backoff) of a failed media read.")
    max_retries: int = Field(
        default=3,
        ge=0,
        description="Times a row is retried after a CPU worker (or, with `workers: 0`, a model replica) died "
        "preparing it (a decoder crash, the out-of-memory killer) before it gets a `worker_died` error.",
    )
    row_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="Longest a CPU worker may spend on one row (fetch, decode, tile); a row that hangs past it "
        "(a decoder stuck on a crafted file) has its worker stopped and is retried, then gets `worker_died`.",
    )


class ModelSpec(StrictModel):
    """Which model, where it runs, and how it batches."""

    name: str = Field(
        default="tiny-random",
        description="A hub id (OpenGVLab/InternVL3-2B-hf), a local checkpoint directory, an s3:// prefix, "
        "'tiny-random' (test model built locally), 'dummy:InternVL3-<size>' (random weights, benchmarking) "
        "or 'none' (no model; answers nothing, benchmarks the pipeline).",
    )
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Weights and activations; 'auto' is bfloat16 on GPU and float32 on CPU."
    )
    device: Literal["auto", "cuda", "cpu"] = Field(
        default="auto", description="'auto' uses GPUs when the cluster has them, else CPUs; 'cuda' requires GPUs."
    )
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = Field(
        default="auto", description="'auto' is flash_attention_2 when installed on CUDA, else sdpa."
    )
    batch_size: int = Field(default=8, ge=1, description="Most rows per generate call.")
    max_batch_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Most prompt tokens (padding included) per generate call; rows of similar length are "
        "grouped. Null means no token budget.",
    )
    batch_window: int | None = Field(
        default=None,
        ge=1,
        description="Rows handed to a replica per call, which it sorts by prompt length and cuts into generate "
        "calls; null = 8 x batch_size, or less for a job too small to give each replica 4 such windows. Larger "
        "windows pad less (mixed tile counts) but hold more tiles in memory.",
    )
    replicas: Count = Field(
        default="auto",
        description="Model replicas (one actor, or one gang for TP, each). 'auto': on GPUs, as many as the "
        "cluster's GPUs hold; on CPUs, one per model.cpus_per_replica CPUs, as many as memory holds (one if "
        "the model's size is unknown); one with model.name: none (see pipeline/layout.py).",
    )
    tensor_parallel: int = Field(default=1, ge=1, description="GPUs (ranks) per replica.")
    placement_strategy: Literal["PACK", "STRICT_PACK"] = Field(
        default="PACK", description="Placement group strategy of a tensor-parallel gang."
    )
    device_map: Literal["auto"] | None = Field(
        default=None,
        description="'auto' spreads one replica over its GPUs layer by layer (accelerate); slower than "
        "tensor_parallel, for setups without NCCL.",
    )
    quantization: Literal["int8", "fp8"] | None = Field(
        default=None, description="Quantised weights: 'int8' (bitsandbytes, CUDA) or 'fp8' (Hopper)."
    )
    gpus_per_replica: int | None = Field(
        default=None,
        ge=1,
        description="GPUs one replica spans with model.device_map: auto (its layers split across them). "
        "Null means model.tensor_parallel (1 without tensor parallel).",
    )
    gpu_memory_gb: float = Field(
        default=80.0,
        gt=0,
        description="Memory of one GPU in GB, for the GPUs-per-replica check at validate time "
        "(80 for A100/H100 80GB, 141 for H200). Each GPU keeps 20% of it for activations and the KV cache.",
    )
    dummy_layers: int | None = Field(
        default=None,
        ge=1,
        description="With a 'dummy:' model: build only this many vision and language layers (quick trials, "
        "tests); null keeps the family member's real depth.",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Allow original-format checkpoints that run code from the model repository. Off by default.",
    )
    cache_dir: str | None = Field(
        default=None,
        description="Where built and downloaded models are cached; default ~/.cache/internvl-pipeline.",
    )
    cpus_per_replica: float = Field(default=1.0, gt=0, description="CPUs Ray reserves for each model actor (rank).")
    prefill: Literal["auto", "by_length", "padded"] = Field(
        default="auto",
        description="How a batch's prompts are prefilled. 'padded': one left-padded batch, as batch_chat does; "
        "'by_length': rows of equal length together without padding, their caches then joined for batched "
        "decoding (a padded prefill makes sdpa build and read a dense attention mask at every layer); "
        "'auto': padded with flash_attention_2, which drops the padding itself, else by_length. Answers are "
        "the same either way. Language models with sliding-window layers and original-format checkpoints "
        "(trust_remote_code) are always prefilled padded.",
    )
    vision_batch_tiles: int | None = Field(
        default=None,
        ge=1,
        description="Most tiles the vision encoder takes at once; null = 16 on a CPU (about 10% faster per "
        "tile there than 40 or more at once; same results), all of them on a GPU. Lower it to bound the "
        "vision encoder's activation memory. Used with prefill by_length.",
    )
    max_retries: int = Field(
        default=3,
        ge=0,
        description="Times a row is retried after a model actor died on it (a crash, the out-of-memory killer) "
        "before it gets a `worker_died` error.",
    )

    @model_validator(mode="after")
    def _device_map_excludes_tp(self) -> ModelSpec:
        if self.device_map is not None and self.tensor_parallel > 1:
            raise ValueError("model.device_map and model.tensor_parallel > 1 exclude each other; pick one")
        return self


class OutputSpec(StrictModel):
    """Where the answers go."""

    path: str = Field(description="Output directory, local or s3://; one Parquet dataset.")
    mode: Literal["resume", "overwrite"] = Field(
        default="resume",
        description="'resume' does only the rows without output yet; 'overwrite' deletes the output first.",
    )
    include_prompt: bool = Field(
        default=False, description="Debug: write the exact prompt string into a `prompt` column."
    )
    rows_per_file: int = Field(
        default=1000, ge=1, description="Rows gathered before a Parquet file is written (per shard)."
    )
    compression: Literal["zstd", "snappy", "gzip", "none"] = Field(
        default="zstd", description="Parquet compression codec."
    )


class StorageSpec(StrictModel):
    """Object-store settings. Credentials never go here: they come from the standard AWS chain."""

    endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, Ceph, R2); default AWS_ENDPOINT_URL or AWS."
    )
    region: str | None = Field(default=None, description="S3 region; default AWS_REGION / AWS_DEFAULT_REGION.")
    anonymous: bool = Field(default=False, description="Read public buckets without credentials.")
    connect_timeout_s: float = Field(
        default=10.0, gt=0, description="Seconds to wait for a connection to the object store before a retry."
    )
    read_timeout_s: float = Field(
        default=60.0, gt=0, description="Seconds without data from the object store before a read is retried."
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        description="Attempts per object-store request (the S3 client's own retries, exponential backoff with "
        "jitter); a media read is then retried preprocess.fetch_retries more times.",
    )


class RuntimeEnvSpec(StrictModel):
    """What `pipeline submit` ships with the job (Ray runtime_env)."""

    pip: list[str] = Field(default_factory=list, description="Extra pip packages installed for the job.")
    env_vars: dict[str, str] = Field(default_factory=dict, description="Environment variables for the job.")


class RaySpec(StrictModel):
    """How the job meets Ray."""

    address: str | None = Field(
        default=None,
        description="Cluster to join (host:port or ray://...); default RAY_ADDRESS (set in `ray job submit` "
        "drivers), else a cluster `ray start` left running on this machine, else a new local instance. "
        "'local' always starts a new local instance.",
    )
    num_cpus: int | None = Field(default=None, ge=1, description="CPUs of a local cluster started by `run`.")
    runtime_env: RuntimeEnvSpec = Field(default_factory=RuntimeEnvSpec, description="Shipped by `submit`.")


class JobSpec(StrictModel):
    """A whole job: input, task, preprocessing, model, output."""

    name: str = Field(default="job", description="A name for logs and the summary.")
    input: InputSpec = Field(description="The manifest and its columns.")
    task: TaskSpec = Field(default_factory=TaskSpec, description="The task preset and generation settings.")
    preprocess: PreprocessSpec = Field(default_factory=PreprocessSpec, description="The CPU stage.")
    model: ModelSpec = Field(default_factory=ModelSpec, description="The model and its replicas.")
    output: OutputSpec = Field(description="Where the results go.")
    storage: StorageSpec = Field(default_factory=StorageSpec, description="Object-store settings.")
    ray: RaySpec = Field(default_factory=RaySpec, description="Cluster settings.")


# Keys that would put credentials into a job file. Credentials come only from the standard
# AWS chain (environment, profile, instance role), so such keys are refused by name, and the
# message never repeats their values.
_AWS_SECRET_NAMES = frozenset({"aws_access_key_id", "aws_secret_access_key", "aws_session_token"})
_STORAGE_SECRET_NAMES = frozenset(
    {"access_key_id", "secret_access_key", "session_token", "access_key", "secret_key", "secret", "token", "password"}
)


def _credential_keys(data: Any, path: str = "") -> list[str]:
    found: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            name = str(key).lower()
            where = f"{path}{key}"
            if name in _AWS_SECRET_NAMES or (path == "storage." and name in _STORAGE_SECRET_NAMES):
                found.append(where)
            found.extend(_credential_keys(value, f"{where}."))
    return found


def refuse_credentials(data: Any, source: str) -> None:
    """Fail, naming the keys (never the values), if a spec tries to carry credentials."""
    keys = _credential_keys(data)
    if keys:
        raise SpecError(
            f"{source}: {', '.join(keys)}: credentials never go in a job file (it is shipped, logged and kept "
            "with the output). Use the standard AWS chain instead: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in "
            "the environment, AWS_PROFILE, or an instance role on the cluster's nodes."
        )


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides (value parsed as YAML) to a raw spec dict."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set {item!r}: expected KEY=VALUE, e.g. --set model.batch_size=16")
        parts = key.strip().split(".")
        node: dict[str, Any] = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SpecError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return data


def _spec_keys(model: type[BaseModel] = JobSpec, prefix: str = "") -> list[str]:
    """Every dotted key of the spec (sections and their fields), in declaration order."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            keys.extend(_spec_keys(field.annotation, f"{prefix}{name}."))
    return keys


def suggest_key(loc: Sequence[int | str]) -> str | None:
    """The valid key an unknown one most likely meant, or None when nothing is close.

    A key that exists under another section was misplaced (`model.num_frames` is
    `preprocess.num_frames`). Otherwise the closest spelling wins (difflib's ratio, as a
    reader would judge a typo), a key of the same section needing a looser match than one
    elsewhere, which must also be a typo and a wrong section at once.
    """
    parts = [str(p) for p in loc]
    section, name = ".".join(parts[:-1]), parts[-1]
    keys = _spec_keys()
    misplaced = [key for key in keys if key.rsplit(".", 1)[-1] == name]
    if misplaced:
        return misplaced[0]
    best, best_score = None, 0.0
    for key in keys:
        home, _, field = key.rpartition(".")
        ratio = difflib.SequenceMatcher(None, name, field).ratio()
        cutoff, score = (0.6, ratio + 0.05) if home == section else (0.75, ratio)
        if ratio >= cutoff and score > best_score:
            best, best_score = key, score
    return best


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"{source}: the job spec is invalid:"]
    for problem in error.errors():
        where = ".".join(str(p) for p in problem["loc"]) or "(top level)"
        kind = problem["type"]
        if kind == "extra_forbidden":
            suggestion = suggest_key(problem["loc"])
            if suggestion:
                lines.append(
                    f"  {where}: unknown key; did you mean `{suggestion}`? (`python -m pipeline spec` lists every key)"
                )
            else:
                lines.append(f"  {where}: unknown key (check the spelling; `python -m pipeline spec` lists every key)")
        elif kind == "missing":
            lines.append(f"  {where}: required, but missing")
        else:
            lines.append(f"  {where}: {problem['msg']} (got {problem.get('input')!r})")
    return "\n".join(lines)


def parse_spec(data: Any, source: str = "job spec", overrides: list[str] | None = None) -> JobSpec:
    """Validate a raw spec dict (after overrides) into a JobSpec, or raise SpecError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping of sections (input, task, ...), got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    refuse_credentials(data, source)
    try:
        return JobSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError(_format_validation_error(error, source)) from None


def load_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Read a YAML job spec from a file and validate it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SpecError(f"{path}: cannot read the job spec ({error.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: not valid YAML: {error}") from None
    return parse_spec(data, str(path), overrides)
