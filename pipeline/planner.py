"""Capacity planning: `python -m pipeline plan JOB.yaml`.

Before renting GPUs for a billion images, know what they will cost. The planner samples
the manifest (evenly spaced rows), reads only image headers (a ranged read of the first
bytes; no pixel is decoded) and video indexes (frame count and rate from the container),
and runs the CPU stage's own row logic on them - media type, grid choice, EXIF rotation,
multi-image budgets, frame sampling, the question - so its tiles per row are exactly the
run's. It builds each row's exact prompt and counts its tokens with the job's own
tokenizer, so prompt tokens are exact too (`plan --check OUTPUT` compares them with a
finished run, row by row).

Time comes from the FLOP model of design.md, per row:

    ViT FLOPs per tile x tiles  +  2 x LLM params x prompt tokens  +  2 x layers x tokens^2 x width
    (causal attention)  +  2 x LLM params x output tokens (decoding)

divided by the device's peak dense BF16 rate times a stated utilisation (a tensor-parallel
replica splits the language model over its devices and runs the vision tower whole on each,
so its vision FLOPs count once per device: see `make_plan`). It is a
compute bound: decoding is memory-bound on GPUs, and small models on CPUs are ruled by
overheads, so measured times are higher (BENCHMARKS.md reports the ratio on a CPU run).

The other half of a plan is whether the CPUs keep the GPUs fed. For that, and only for
that, the planner decodes a few sampled rows in full (`measure_cpu_stage`) and turns their
CPU seconds into cores per replica; given a cluster's GPUs and CPUs (`on_cluster`), it
finds the CPU workers `run` would start there and the stage that bounds the job.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.actors.decode import image_size
from pipeline.actors.preprocess import PreparedRow, Preprocessor
from pipeline.actors.tiling import TILE_SIZE
from pipeline.errors import JobError, RowError, error_text
from pipeline.readers.manifest import ID, ManifestPlan, read_shard
from pipeline.spec import JobSpec, ModelSpec

HEADER_BYTES = 512 * 1024  # enough for the headers (and EXIF) of nearly every image file
CPU_SAMPLE_ROWS = 16  # sampled rows the planner decodes in full to cost the CPU stage

# ---------------------------------------------------------------------------------------
# FLOP shapes: the InternVL3 family's configs (from `pipeline.models.family`) and tiny-random.


@dataclass(frozen=True)
class VisionShape:
    """An InternViT encoder: enough to count its FLOPs per 448 px tile."""

    hidden: int
    layers: int
    intermediate: int
    tokens: int = 1025  # (448/14)^2 patches + the class token

    @property
    def params(self) -> int:
        """Transformer-block parameters (attention 4 d^2, MLP 2 d i)."""
        return self.layers * (4 * self.hidden * self.hidden + 2 * self.hidden * self.intermediate)

    @property
    def flops_per_tile(self) -> float:
        """2 x params x tokens + attention (QK^T and AV, 4 x layers x tokens^2 x width)."""
        return 2.0 * self.params * self.tokens + 4.0 * self.layers * self.tokens**2 * self.hidden


@dataclass(frozen=True)
class LanguageShape:
    """A Qwen2.5 decoder: its parameters and what attention costs per token."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool

    @property
    def params(self) -> int:
        """All parameters (embeddings and head included), as model cards count them."""
        head_dim = self.hidden // self.heads
        attention = self.hidden * (self.heads * head_dim) * 2 + self.hidden * (self.kv_heads * head_dim) * 2
        mlp = 3 * self.hidden * self.intermediate
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * (attention + mlp) + embeddings

    def prefill_flops(self, tokens: int) -> float:
        """2 x params x tokens + causal attention (2 x layers x tokens^2 x width)."""
        return 2.0 * self.params * tokens + 2.0 * self.layers * tokens * tokens * self.hidden

    def decode_flops(self, prompt_tokens: int, new_tokens: int) -> float:
        """Each new token: 2 x params + attention over the context so far."""
        context = prompt_tokens * new_tokens + new_tokens * (new_tokens - 1) / 2
        return 2.0 * self.params * new_tokens + 4.0 * self.layers * context * self.hidden


@dataclass(frozen=True)
class ModelShape:
    """A family member: its encoder and decoder."""

    name: str
    vision: VisionShape
    language: LanguageShape
    gpus: int = 1  # devices one replica spans
    # The replica's devices hold consecutive layers and work in turn (`model.device_map: auto`,
    # quantised members) instead of splitting each layer (tensor parallel).
    layer_split: bool = False


def _family_shapes() -> dict[str, ModelShape]:
    """The FLOP shapes of the InternVL3 family, from the presets in `pipeline.models.family`."""
    from pipeline.models.family import FAMILY as PRESETS

    shapes = {}
    for member in PRESETS.values():
        vision, language = member.vision, member.language
        shapes[member.name] = ModelShape(
            member.name,
            VisionShape(vision.hidden_size, vision.num_hidden_layers, vision.intermediate_size),
            LanguageShape(
                language.hidden_size,
                language.num_hidden_layers,
                language.intermediate_size,
                language.num_attention_heads,
                language.num_key_value_heads,
                int(language.config()["vocab_size"]),
                bool(language.config()["tie_word_embeddings"]),
            ),
        )
    return shapes


FAMILY: dict[str, ModelShape] = _family_shapes()


def tiny_random_shape() -> ModelShape:
    """tiny-random's own geometry (see `pipeline.models.tiny_random`)."""
    from pipeline.models import tiny_random as tiny

    vocab = ((tiny.BPE_VOCAB + len(tiny.SPECIAL_TOKENS) + 63) // 64) * 64
    return ModelShape(
        "tiny-random",
        VisionShape(hidden=tiny.HIDDEN, layers=tiny.LAYERS, intermediate=tiny.INTERMEDIATE),
        LanguageShape(tiny.HIDDEN, tiny.LAYERS, tiny.INTERMEDIATE, tiny.HEADS, tiny.KV_HEADS, vocab, False),
    )


def model_shape(name: str) -> ModelShape | None:
    """The family member a model name refers to (hub id, dummy:, local folder name), if any."""
    if name == "tiny-random":
        return tiny_random_shape()
    lowered = name.rstrip("/").lower()
    for member, shape in sorted(FAMILY.items(), key=lambda item: -len(item[0])):
        if member.lower() in lowered:
            return shape
    return None


def job_model_shape(model: ModelSpec) -> ModelShape | None:
    """The shape of the model a job runs: its family member, with `model.dummy_layers` layers
    in both towers when a dummy is reduced (as `pipeline.models.dummy` builds it)."""
    shape = model_shape(model.name)
    layers = model.dummy_layers
    if shape is None or not layers:
        return shape
    return replace(
        shape,
        name=f"{shape.name} ({layers} layers)",
        vision=replace(shape.vision, layers=layers),
        language=replace(shape.language, layers=layers),
    )


# Peak dense BF16 tensor throughput, TFLOP/s, from the vendors' data sheets ("cpu" is
# measured on this machine at plan time: one thread's float32 matmul rate).
DEVICES: dict[str, float] = {
    "h100": 989.0,  # H100 SXM
    "h100-pcie": 756.0,
    "h200": 989.0,
    "a100": 312.0,
    "l40s": 362.0,
    "l4": 121.0,
}
DEVICE_MEMORY_GB: dict[str, float] = {"h100": 80, "h100-pcie": 80, "h200": 141, "a100": 80, "l40s": 48, "l4": 24}


def devices_per_replica(shape: ModelShape, device: str, quantization: str | None) -> int:
    """GPUs one replica of a family member needs on this device (the family's own rule)."""
    from pipeline.models.family import gpus_needed, member_by_name, member_shape

    member = member_by_name(shape.name)
    if member is None or device not in DEVICE_MEMORY_GB:
        return 1
    needed = gpus_needed(member_shape(member.size), DEVICE_MEMORY_GB[device], "bfloat16", quantization)
    if needed is None:
        raise JobError(f"{shape.name} does not fit on {device} GPUs at any tensor-parallel size; pick a larger GPU")
    return needed


def measure_cpu_tflops(seconds: float = 1.0) -> float:
    """One thread's float32 matmul rate on this machine (what one model actor gets), in TFLOP/s."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = torch.randn(512, 512)
        b = torch.randn(512, 512)
        a @ b
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            a @ b
            count += 1
        elapsed = time.perf_counter() - started
    finally:
        torch.set_num_threads(previous)
    return 2.0 * 512**3 * count / elapsed / 1e12


# ---------------------------------------------------------------------------------------
# Per-row predictions: the CPU stage's logic on headers.


class HeaderPreprocessor(Preprocessor):
    """The CPU stage's row logic with header reads instead of decoding.

    Everything that decides tiles and the question (media type, grid choice, EXIF
    rotation, multi-image budgets, frame sampling, per-row prompts) is the stage's own
    code; only the three methods that touch pixels are replaced.
    """

    def __init__(self, spec: JobSpec) -> None:
        super().__init__(spec)
        self._prefix: tuple[str, bytes] | None = None  # the uri and first bytes last fetched

    def _fetch(self, uri: str) -> bytes:
        """The first bytes of a file (a ranged read), enough for its header."""
        from pipeline.storage import filesystem_for

        try:
            fs, path = filesystem_for(uri, self.spec.storage)
            data = bytes(fs.cat_file(path, start=0, end=HEADER_BYTES))
        except (OSError, ValueError):
            data = b""  # let the full read classify the problem (missing, denied, ...)
        if not data:
            data = super()._fetch(uri)
        self._prefix = (uri, data)
        return data

    def _full(self, data: bytes) -> bytes:
        """The whole file when `data` is the first bytes `_fetch` returned for a longer file."""
        if self._prefix is None or self._prefix[1] is not data or len(data) < HEADER_BYTES:
            return data
        return super()._fetch(self._prefix[0])

    def _header_size(self, data: bytes) -> tuple[int, int]:
        """An image's size as the tiler sees it (EXIF rotation included), checked against the pixel budget."""
        try:
            width, height = image_size(data, self.pre.exif_transpose)
        except RowError:
            width, height = image_size(self._full(data), self.pre.exif_transpose)
        if width * height > self.pre.max_image_pixels:
            raise RowError(
                "image_too_large",
                f"{width}x{height} = {width * height} pixels exceeds "
                f"preprocess.max_image_pixels={self.pre.max_image_pixels}",
            )
        return width, height

    def _add_grid(self, size: tuple[int, int], max_tiles: int, prepared: PreparedRow) -> None:
        grid = self._grid(size[0], size[1], max_tiles)
        prepared.tiles.append(np.empty((grid.num_tiles, 0, 0, 3), dtype=np.uint8))
        prepared.tiles_per_image.append(grid.num_tiles)

    def _tiles_for_image(self, data: bytes, max_tiles: int, prepared: PreparedRow) -> None:
        self._add_grid(self._header_size(data), max_tiles, prepared)

    def _multi_image(self, uris: list[str], prepared: PreparedRow) -> None:
        """As the stage does it, with the common tile limit chosen from header sizes."""
        from pipeline.actors.media_type import IMAGE
        from pipeline.actors.preprocess import _naming_the_image, multi_image_tile_limit

        if self.pre.max_tiles_total is None:
            super()._multi_image(uris, prepared)
            return
        prepared.media_type = IMAGE
        sizes = []
        for position, item in enumerate(uris, start=1):
            with _naming_the_image(position, item):
                sizes.append(self._header_size(self._image_bytes(item)))
        max_tiles = self.pre.max_tiles or 12
        limit = multi_image_tile_limit(
            sizes, self.pre.min_tiles, max_tiles, self.pre.max_tiles_total, self.pre.use_thumbnail
        )
        for size in sizes:
            self._add_grid(size, limit, prepared)

    def _video(self, row: dict[str, Any], source: str | bytes, prepared: PreparedRow) -> None:
        """Frame count and rate from the container's index; pixels only if a frame may take several tiles."""
        import io

        from pipeline.actors.frames import FrameRangeError, sample_frame_indices
        from pipeline.actors.preprocess import _bound
        from pipeline.actors.tiling import choose_grid
        from pipeline.actors.video import _decord, _short

        if isinstance(source, bytes):
            source = self._full(source)
        decord = _decord()
        try:
            handle = io.BytesIO(source) if isinstance(source, bytes) else str(source)
            reader = decord.VideoReader(handle, ctx=decord.cpu(0), num_threads=1)
            frame_count, fps = len(reader), float(reader.get_avg_fps())
        except Exception as error:  # decord's own errors on bad files (see pipeline.actors.video)
            raise RowError("bad_video", f"cannot open the video ({_short(error)})") from None
        if frame_count < 1:
            raise RowError("bad_video", "the video has no frames")
        try:
            indices = sample_frame_indices(
                fps, frame_count - 1, self.pre.num_frames, _bound(row.get("start_s"), row.get("end_s"))
            )
        except FrameRangeError as error:
            raise RowError("frame_range", str(error)) from None
        tiles = 1
        if self.pre.tiles_per_frame > 1:
            height, width = reader[indices[0]].shape[:2]
            tiles = choose_grid(width, height, 1, self.pre.tiles_per_frame, TILE_SIZE, self.pre.use_thumbnail).num_tiles
        for _ in indices:
            prepared.tiles.append(np.empty((tiles, 0, 0, 3), dtype=np.uint8))
            prepared.tiles_per_image.append(tiles)
        prepared.frame_indices = indices


@dataclass
class RowPrediction:
    """What the planner expects for one manifest row."""

    id: str
    media_type: str | None
    num_tiles: int
    prompt_tokens: int
    error_kind: str | None = None
    error: str | None = None
    cpu_stage_s: float | None = None  # CPU seconds of its CPU-stage work here, for the rows `measure_cpu_stage` ran


def load_tokenizer(spec: JobSpec) -> tuple[Any, str]:
    """The tokenizer the job's model uses, and a note on where it came from."""
    from transformers import AutoTokenizer

    from pipeline.models.loading import DUMMY_PREFIX, NO_MODEL, TINY_RANDOM, resolve_checkpoint
    from pipeline.models.tiny_random import ensure_tiny_random

    name = spec.model.name
    if name in (TINY_RANDOM, NO_MODEL) or name.startswith(DUMMY_PREFIX):
        return AutoTokenizer.from_pretrained(str(ensure_tiny_random(spec.model.cache_dir))), "tiny-random's tokenizer"
    checkpoint = resolve_checkpoint(spec.model, spec.storage)
    try:
        return AutoTokenizer.from_pretrained(checkpoint, revision=spec.model.revision), f"{name}'s tokenizer"
    except OSError as error:
        raise JobError(
            f"model.name: cannot load the tokenizer of {name!r} to count tokens ({str(error).splitlines()[0]}); "
            "the planner needs the tokenizer files (hub access, the local hub cache, or a checkpoint folder)"
        ) from None


def predict_rows(spec: JobSpec, rows: list[dict[str, Any]], tokenizer: Any) -> list[RowPrediction]:
    """Tiles and prompt tokens of each row, as the run will compute them."""
    from pipeline.actors.generate import system_message
    from pipeline.prompts.template import PromptError, build_prompt

    preprocessor = HeaderPreprocessor(spec)
    system = system_message(spec)
    assert spec.task.max_new_tokens is not None
    budget = int(getattr(tokenizer, "model_max_length", 32768) or 32768)
    predictions = []
    for row in rows:
        prepared = preprocessor.prepare(row)
        prediction = RowPrediction(
            id=str(row.get(ID)),
            media_type=prepared.media_type,
            num_tiles=sum(prepared.tiles_per_image),
            prompt_tokens=0,
            error_kind=prepared.error_kind,
            error=prepared.error,
        )
        if prepared.error_kind is None and prepared.query is not None:
            try:
                prompt = build_prompt(prepared.query, prepared.tiles_per_image, system)
            except PromptError as problem:
                prediction.error_kind, prediction.error = "prompt_error", error_text("prompt_error", str(problem))
            else:
                prediction.prompt_tokens = len(tokenizer([prompt], add_special_tokens=False)["input_ids"][0])
                if prediction.prompt_tokens > min(budget, 32768) - spec.task.max_new_tokens:
                    prediction.error_kind = "context_too_long"
        predictions.append(prediction)
    return predictions


def sample_rows(spec: JobSpec, plan: ManifestPlan, count: int) -> list[dict[str, Any]]:
    """Up to `count` manifest rows, evenly spaced over the whole manifest (reading only their shards)."""
    total = plan.total_rows
    if total == 0:
        return []
    wanted = sorted({int(i) for i in np.linspace(0, total - 1, num=min(count, total))})
    rows: list[dict[str, Any]] = []
    position, start = 0, 0
    for shard in plan.shards:
        end = start + shard.num_rows
        picks = []
        while position < len(wanted) and wanted[position] < end:
            picks.append(wanted[position] - start)
            position += 1
        if picks:
            table = read_shard(shard, plan.columns, plan.passthrough, spec.storage)
            rows.extend(table.take(picks).to_pylist())
        start = end
        if position >= len(wanted):
            break
    return rows


# ---------------------------------------------------------------------------------------
# From rows to GPU-hours.


@dataclass
class ClusterPlan:
    """The plan on a cluster of a given size (`on_cluster`)."""

    gpus: int  # devices (GPUs; cores with --device cpu)
    replicas: int  # whole replicas they hold; devices left over stay idle
    rows_per_s: float  # at the stated utilisation, and within what the CPU stage feeds when `cpus` is known
    wall_hours: float
    cpu_stage_cores: float | None  # cores the CPU stage needs to keep every replica fed (None: not measured)
    cpus: int | None = None  # the cluster's CPUs, when given (`plan --cpus`)
    cpu_workers: int | None = None  # the CPU workers 'auto' gives those CPUs (pipeline/layout.py)
    cpu_stage_rows_per_s: float | None = None  # what those workers feed, at the measured cost per row
    bound_by: str = "gpus"  # 'gpus' or 'cpu stage': the stage that sets rows_per_s


@dataclass
class CapacityPlan:
    """The planner's answer."""

    job: str
    manifest_rows: int
    sampled_rows: int
    model: str
    device: str
    peak_tflops: float
    utilisation: float
    output_tokens: int
    tokenizer: str
    mean_tiles: float
    mean_prompt_tokens: float
    tiles_histogram: dict[str, int]
    error_rows: int
    tflop_per_row: float
    tflop_per_row_prefill_only: float
    bound_rows_per_s: float
    device_seconds_per_1000_rows: float
    replica_seconds_per_1000_rows: float  # wall time of one replica; equal to the above with one device a replica
    device_hours_total: float
    gpus_per_replica: int
    replica_split: str  # how a replica's devices share a row: 'none' (one device), 'tensor_parallel' or 'layers'
    header_seconds: float
    rows: list[RowPrediction] = field(default_factory=list)
    # What feeding the replicas costs (`with_cpu_stage`): design.md's warning that CPU decoding,
    # not the GPU, starves real deployments, turned into a number of cores.
    cpu_stage_core_seconds_per_row: float | None = None  # measured here, one thread
    cpu_stage_rows_measured: int = 0
    cpu_cores_per_replica: float | None = None  # to keep one replica busy at the stated utilisation
    cluster: ClusterPlan | None = None  # `plan --gpus N`

    def to_json(self, with_rows: bool = False) -> dict[str, Any]:
        """A JSON-able dict (rows left out unless asked)."""
        data = asdict(self)
        if not with_rows:
            data.pop("rows")
        return data


def row_flops(shape: ModelShape, prediction: RowPrediction, output_tokens: int) -> tuple[float, float]:
    """(all FLOPs, prefill-only FLOPs) of one row under the FLOP model."""
    if prediction.error_kind is not None:
        return 0.0, 0.0
    prefill = shape.vision.flops_per_tile * prediction.num_tiles + shape.language.prefill_flops(
        prediction.prompt_tokens
    )
    return prefill + shape.language.decode_flops(prediction.prompt_tokens, output_tokens), prefill


def vision_flops(shape: ModelShape, prediction: RowPrediction) -> float:
    """The vision tower's share of a row's FLOPs (none for an error row)."""
    return 0.0 if prediction.error_kind is not None else shape.vision.flops_per_tile * prediction.num_tiles


def make_plan(
    spec: JobSpec,
    plan: ManifestPlan,
    predictions: list[RowPrediction],
    shape: ModelShape,
    device: str,
    peak_tflops: float,
    utilisation: float,
    output_tokens: int,
    tokenizer_note: str,
    header_seconds: float,
) -> CapacityPlan:
    """Scale the sample to the manifest and turn FLOPs into device time."""
    ok = [p for p in predictions if p.error_kind is None]
    flops = [row_flops(shape, p, output_tokens) for p in predictions]
    per_row = float(np.mean([f[0] for f in flops])) if flops else 0.0
    per_row_prefill = float(np.mean([f[1] for f in flops])) if flops else 0.0
    vision = float(np.mean([vision_flops(shape, p) for p in predictions])) if predictions else 0.0
    if shape.layer_split:
        # The devices work in turn: a row takes all its FLOPs at one device's rate, all g held.
        device_flops, replica_flops = shape.gpus * per_row, per_row
    else:
        # A tensor-parallel replica of g devices splits the language model over them, but every
        # rank runs the whole vision tower on the whole batch (pipeline/models/tensor_parallel.py):
        # a row's vision FLOPs are spent g times, its language FLOPs once, spread over g devices.
        device_flops = shape.gpus * vision + (per_row - vision)
        replica_flops = vision + (per_row - vision) / shape.gpus
    rate = peak_tflops * 1e12 * utilisation  # one device's
    seconds_per_row = device_flops / rate if rate else math.inf  # device-seconds
    histogram: dict[str, int] = {}
    for p in ok:
        histogram[str(p.num_tiles)] = histogram.get(str(p.num_tiles), 0) + 1
    return CapacityPlan(
        job=spec.name,
        manifest_rows=plan.total_rows,
        sampled_rows=len(predictions),
        model=shape.name,
        device=device,
        peak_tflops=round(peak_tflops, 4),
        utilisation=utilisation,
        output_tokens=output_tokens,
        tokenizer=tokenizer_note,
        mean_tiles=round(float(np.mean([p.num_tiles for p in ok])), 3) if ok else 0.0,
        mean_prompt_tokens=round(float(np.mean([p.prompt_tokens for p in ok])), 1) if ok else 0.0,
        tiles_histogram=dict(sorted(histogram.items(), key=lambda item: int(item[0]))),
        error_rows=len(predictions) - len(ok),
        tflop_per_row=round(per_row / 1e12, 6),
        tflop_per_row_prefill_only=round(per_row_prefill / 1e12, 6),
        bound_rows_per_s=round(peak_tflops * 1e12 / replica_flops, 3) if per_row else math.inf,
        device_seconds_per_1000_rows=round(seconds_per_row * 1000, 3),
        replica_seconds_per_1000_rows=round(replica_flops / rate * 1000, 3) if rate else math.inf,
        device_hours_total=float(f"{seconds_per_row * plan.total_rows / 3600:.6g}"),
        gpus_per_replica=shape.gpus,
        replica_split="none" if shape.gpus == 1 else "layers" if shape.layer_split else "tensor_parallel",
        header_seconds=round(header_seconds, 3),
        rows=predictions,
    )


def measure_cpu_stage(spec: JobSpec, rows: list[dict[str, Any]], predictions: list[RowPrediction], count: int) -> None:
    """Time the CPU stage's own work (fetch, decode, tile, sample frames) on up to `count` of
    the sampled rows (evenly spaced), here, on one thread: CPU seconds into their predictions.

    The tile and token predictions read headers only; this is the one place the planner
    decodes, because whether a cluster's CPUs keep its GPUs fed is the other half of a
    capacity plan. One row is prepared first and not counted: it pays for the lazy imports
    and the resampling kernels' compilation, which a long run pays once per CPU worker.
    """
    if count <= 0 or not rows:
        return
    picks = sorted({int(i) for i in np.linspace(0, len(rows) - 1, num=min(count, len(rows)))})
    preprocessor = Preprocessor(spec)
    preprocessor.prepare(rows[picks[0]])
    for index in picks:
        started = time.process_time()
        preprocessor.prepare(rows[index])
        predictions[index].cpu_stage_s = time.process_time() - started


def with_cpu_stage(result: CapacityPlan) -> CapacityPlan:
    """The plan with the CPU stage's cost: cores that keep one replica busy at the stated utilisation."""
    measured = [p.cpu_stage_s for p in result.rows if p.cpu_stage_s is not None]
    if not measured:
        return result
    core_seconds_per_row = float(np.mean(measured))
    replica_rows_per_s = 1000 / result.replica_seconds_per_1000_rows
    return replace(
        result,
        cpu_stage_core_seconds_per_row=round(core_seconds_per_row, 5),
        cpu_stage_rows_measured=len(measured),
        cpu_cores_per_replica=round(replica_rows_per_s * core_seconds_per_row, 3),
    )


def cpu_workers_on(spec: JobSpec, result: CapacityPlan, gpus: int, cpus: int) -> tuple[int, float]:
    """The CPU workers a GPU job gets on a cluster of `gpus` GPUs and `cpus` CPUs, and the CPUs
    each reserves: what `run` itself would choose there (`pipeline.layout.choose_layout`), for a
    replica of the planned member's size."""
    from pipeline.layout import Cluster, choose_layout

    span = result.gpus_per_replica
    split = {"device_map": "auto", "gpus_per_replica": span} if result.replica_split == "layers" else {}
    model = spec.model.model_copy(update={"replicas": "auto", "tensor_parallel": 1 if split else span, **split})
    layout = choose_layout(spec.model_copy(update={"model": model}), Cluster(cpus, gpus, 0.0), True, None)
    return layout.workers, layout.cpus_per_worker or spec.preprocess.cpus_per_worker


def on_cluster(result: CapacityPlan, gpus: int, cpus: int | None = None, spec: JobSpec | None = None) -> CapacityPlan:
    """The plan on a cluster of `gpus` devices: replicas, rows/s, wall-clock hours, CPU cores to
    feed them; with its `cpus` (and the job's `spec`), the CPU workers 'auto' gives it and
    whether they keep up."""
    replicas = gpus // result.gpus_per_replica
    if replicas == 0:
        raise JobError(
            f"--gpus {gpus} is fewer than the {result.gpus_per_replica} device(s) one replica of {result.model} "
            f"spans on {result.device}"
        )
    gpu_rows_per_s = replicas * 1000 / result.replica_seconds_per_1000_rows
    workers, fed = None, None
    if cpus is not None and spec is not None:
        if result.device == "cpu":
            raise JobError("--cpus sizes the CPU stage beside GPUs; with --device cpu, --gpus counts the cores")
        if not result.cpu_stage_core_seconds_per_row:
            raise JobError("--cpus needs the CPU stage's cost per row: --cpu-sample must be above 0")
        workers, per_worker = cpu_workers_on(spec, result, gpus, cpus)
        if workers == 0:
            # `preprocess.workers: 0`: each replica prepares a window, then answers it.
            replica_s_per_row = result.replica_seconds_per_1000_rows / 1000
            fed = replicas / (replica_s_per_row + result.cpu_stage_core_seconds_per_row)
        else:
            # A worker runs one thread: it does a core's work at most, less where it reserves less.
            fed = workers * min(1.0, per_worker) / result.cpu_stage_core_seconds_per_row
    rows_per_s = gpu_rows_per_s if fed is None else min(gpu_rows_per_s, fed)
    cores = result.cpu_cores_per_replica
    cluster = ClusterPlan(
        gpus=gpus,
        replicas=replicas,
        rows_per_s=round(rows_per_s, 3),
        wall_hours=float(f"{result.manifest_rows / rows_per_s / 3600:.6g}"),
        cpu_stage_cores=None if cores is None else round(replicas * cores, 2),
        cpus=cpus if fed is not None else None,
        cpu_workers=workers,
        cpu_stage_rows_per_s=None if fed is None else round(fed, 3),
        bound_by="cpu stage" if fed is not None and fed < gpu_rows_per_s else "gpus",
    )
    return replace(result, cluster=cluster)


def plan_job(
    spec: JobSpec,
    sample: int = 1000,
    device: str = "h100",
    utilisation: float = 0.5,
    model: str | None = None,
    peak_tflops: float | None = None,
    output_tokens: int | None = None,
    gpus: int | None = None,
    cpu_sample: int = CPU_SAMPLE_ROWS,
    cpus: int | None = None,
) -> CapacityPlan:
    """Sample, predict and cost a (raw) job spec; with `gpus` (and `cpus`), on a cluster of that size."""
    from pipeline.job import gpus_per_replica, splits_layers
    from pipeline.prompts.tasks import resolve_spec
    from pipeline.readers.manifest import plan_manifest
    from pipeline.runner import absolute_paths

    if not 0 < utilisation <= 1:
        raise JobError(f"--utilisation must be in (0, 1], got {utilisation}")
    spec = absolute_paths(resolve_spec(spec))
    shape = model_shape(model) if model else job_model_shape(spec.model)
    if shape is None:
        raise JobError(
            f"the planner does not know the size of {model or spec.model.name!r}; name a family member with "
            f"--model ({', '.join(FAMILY)}, or tiny-random)"
        )
    device = device.lower()
    if peak_tflops is None:
        if device == "cpu":
            peak_tflops = measure_cpu_tflops()
        elif device in DEVICES:
            peak_tflops = DEVICES[device]
        else:
            raise JobError(
                f"--device {device!r} is unknown; use one of {', '.join([*DEVICES, 'cpu'])} or --peak-tflops"
            )
    per_replica = devices_per_replica(shape, device, spec.model.quantization)
    if model is None:  # the job's own model: as many devices a replica as the spec gives it, if more
        per_replica = max(per_replica, gpus_per_replica(spec.model))
    shape = replace(shape, gpus=per_replica, layer_split=splits_layers(spec.model) and per_replica > 1)
    plan = plan_manifest(spec.input, spec.storage)
    tokenizer, note = load_tokenizer(spec)
    started = time.perf_counter()
    rows = sample_rows(spec, plan, sample)
    predictions = predict_rows(spec, rows, tokenizer)
    assert spec.task.max_new_tokens is not None
    new_tokens = spec.task.max_new_tokens if output_tokens is None else output_tokens
    header_seconds = time.perf_counter() - started
    measure_cpu_stage(spec, rows, predictions, cpu_sample)
    result = with_cpu_stage(
        make_plan(spec, plan, predictions, shape, device, peak_tflops, utilisation, new_tokens, note, header_seconds)
    )
    return on_cluster(result, gpus, cpus, spec) if gpus else result


def readable_duration(hours: float) -> str:
    """Hours in the unit a person reads at a glance (a sample job's seconds, an archive's days)."""
    seconds = hours * 3600
    if seconds < 120:
        return f"{seconds:.3g} s"
    if hours < 2:
        return f"{seconds / 60:.3g} min"
    return f"{hours:.3g} h" if hours < 48 else f"{hours / 24:.3g} days"


def format_plan(result: CapacityPlan) -> str:
    """The human-readable report."""
    hours = result.device_hours_total
    gpus = result.gpus_per_replica
    per_device = f" ({result.bound_rows_per_s / gpus:.4g} per device)" if gpus > 1 else ""
    split = {"none": "", "layers": ", layers split", "tensor_parallel": ", tensor parallel"}[result.replica_split]
    lines = [
        f"plan for {result.job}: {result.manifest_rows:,} manifest rows, {result.sampled_rows} sampled "
        f"(headers only, {result.header_seconds:.1f} s)",
        f"  tiles per row        mean {result.mean_tiles}  (histogram {result.tiles_histogram})",
        f"  prompt tokens / row  mean {result.mean_prompt_tokens}  ({result.tokenizer})",
        f"  rows with errors     {result.error_rows} of the sample",
        f"  model                {result.model} ({gpus} device(s) per replica{split})",
        f"  FLOPs per row        {result.tflop_per_row:.4g} TFLOP ({result.tflop_per_row_prefill_only:.4g} prefill, "
        f"the rest decoding {result.output_tokens} tokens)",
        f"  device               {result.device}, peak {result.peak_tflops:.4g} TFLOP/s, "
        f"utilisation {result.utilisation:.0%}",
        f"  bound at 100%        {result.bound_rows_per_s:.4g} rows/s per replica{per_device}",
        f"  device-seconds       {result.device_seconds_per_1000_rows:.4g} per 1,000 rows",
        f"  total                {hours:.4g} device-hours ({hours / 24:.3g} device-days)",
    ]
    if result.cpu_stage_core_seconds_per_row is not None:
        lines += [
            f"  CPU stage            {result.cpu_stage_core_seconds_per_row:.4g} core-s per row (fetch, decode, tile: "
            f"{result.cpu_stage_rows_measured} sampled rows on this machine, one thread)",
            f"  CPU to keep up       {result.cpu_cores_per_replica:.3g} cores per replica at "
            f"{result.utilisation:.0%} utilisation",
        ]
    cluster = result.cluster
    if cluster is not None:
        label = f"on {cluster.gpus} devices"
        cores = "" if cluster.cpu_stage_cores is None else f", CPU stage {cluster.cpu_stage_cores:.3g} cores"
        lines.append(
            f"  {label:<21}{cluster.replicas} replica(s), {cluster.rows_per_s:.4g} rows/s, "
            f"{readable_duration(cluster.wall_hours)} wall{cores}"
        )
        if cluster.cpus is not None:
            feeders = (
                "the replicas, preparing their own rows,"
                if cluster.cpu_workers == 0
                else f"{cluster.cpu_workers} CPU worker(s)"
            )
            lines.append(
                f"  {'with ' + str(cluster.cpus) + ' CPUs':<21}{feeders} feed "
                f"{cluster.cpu_stage_rows_per_s:.4g} rows/s: bound by the {cluster.bound_by}"
            )
    return "\n".join(lines)


def check_against_run(result: CapacityPlan, output: str) -> dict[str, Any]:
    """Compare the predictions with a finished run's output: tiles and tokens per row, and time."""
    import pyarrow.parquet as pq

    from pipeline.storage import filesystem_for

    fs, path = filesystem_for(output)
    if not fs.exists(path):
        raise JobError(f"--check: {output} does not exist; point it at a finished run's output.path")
    table = pq.read_table(output, columns=["id", "num_tiles", "prompt_tokens", "error_kind", "preprocess_s"])
    actual = {row["id"]: row for row in table.to_pylist()}
    compared = tiles_equal = tokens_equal = 0
    mismatches = []
    for prediction in result.rows:
        row = actual.get(prediction.id)
        if row is None or row["error_kind"] is not None or prediction.error_kind is not None:
            continue
        compared += 1
        tiles_equal += int(row["num_tiles"] == prediction.num_tiles)
        tokens_equal += int(row["prompt_tokens"] == prediction.prompt_tokens)
        if row["num_tiles"] != prediction.num_tiles or row["prompt_tokens"] != prediction.prompt_tokens:
            mismatches.append(
                {
                    "id": prediction.id,
                    "predicted": (prediction.num_tiles, prediction.prompt_tokens),
                    "actual": (row["num_tiles"], row["prompt_tokens"]),
                }
            )
    check: dict[str, Any] = {
        "rows_compared": compared,
        "tiles_exact": tiles_equal,
        "prompt_tokens_exact": tokens_equal,
        "mismatches": mismatches[:10],
    }
    # The CPU stage, row by row: the run's seconds in its CPU actor against the plan's here. The
    # median, because each CPU worker's first row also pays for its imports and kernel compilation.
    ratios = []
    for prediction in result.rows:
        row = actual.get(prediction.id)
        if not prediction.cpu_stage_s or prediction.error_kind is not None or row is None:
            continue
        if row["error_kind"] is None and row["preprocess_s"] is not None:
            ratios.append(row["preprocess_s"] / prediction.cpu_stage_s)
    if ratios:
        check["cpu_stage_rows_compared"] = len(ratios)
        check["cpu_stage_run_over_plan"] = round(float(np.median(ratios)), 2)
    summary_path = Path(output) / "_summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        measured = summary["stage_seconds"]["generate"]
        done = summary["rows_ok"]
        # `generate` sums each replica's time (a tensor-parallel gang's rank 0's), not each device's.
        predicted = result.replica_seconds_per_1000_rows / 1000 * done
        check.update(
            {
                "measured_model_seconds": measured,
                "predicted_model_seconds": round(predicted, 4),
                "measured_over_predicted": round(measured / predicted, 2) if predicted else None,
            }
        )
    return check
