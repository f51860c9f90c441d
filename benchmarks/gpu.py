"""`bench gpu`: a family member's model stage on one device against the FLOP bound.

`dummy:InternVL3-1B` and `dummy:InternVL3-8B` (the real architectures with random weights;
every answer has exactly `task.max_new_tokens` tokens, so tokens/s mean something), on
rows of exactly 1 tile (a 448x448 photo) and exactly 7 tiles (a 3:2 photo: a 3x2 grid and
the thumbnail), max_tiles 12, the caption task, greedy. The rows are prepared once by the
CPU stage (its time is reported separately, as the CPU cores one replica needs to be fed)
and answered by the model stage's own logic (`Generator`: windows of `WINDOW` rows sorted
by length, cut into batches of `BATCH_SIZE`), one replica in this process, as a GPU
actor runs it: bfloat16, flash-attn when installed, sdpa otherwise.

Reported per (member, tiles): images/s (wall time of the timed windows, after one warm-up
window; `generate` returns tokens to the host, so the device is done when it returns), the
planner's FLOP bound for the same rows on this device (`pipeline.planner`: the member's
FLOPs per row, prefill and decode, over the device's peak dense BF16 rate), the fraction
of the bound reached, and the GPU's utilisation sampled by `nvidia-smi` during the timed
windows. Repetitions are interleaved across the tile counts; medians are reported.

Without CUDA the benchmark only runs with `--quick`: one-layer members on the CPU, float32,
one thread, no bound reported (a one-layer member's FLOPs are mostly its embedding table) -
a smoke run of the same code (what the tests check), not a figure.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import threading
import time
from typing import Any

from benchmarks.common import BenchOptions, machine, median, ratio, say, table
from benchmarks.corpus import ImageRecipe, build_corpus
from benchmarks.model_rows import prepare_window

MEMBERS = ["InternVL3-1B", "InternVL3-8B"]
TILE_RECIPES = {
    1: ImageRecipe("photo 1:1", "photo_448x448", 448, 448),
    7: ImageRecipe("photo 3:2", "photo_1344x896", 1344, 896),
}
MAX_TILES = 12
MAX_NEW_TOKENS = 64
BATCH_SIZE, WINDOW, TIMED_WINDOWS = 32, 128, 2
# --quick: one-layer members, few rows, short answers (on a CPU: a smoke run).
QUICK_MEMBERS, QUICK_BATCH_SIZE, QUICK_WINDOW, QUICK_NEW_TOKENS = ["InternVL3-1B"], 1, 1, 4

# Substrings of torch.cuda.get_device_name() -> the planner's device names, most specific first.
GPU_NAMES = [("H100 PCIe", "h100-pcie"), ("H200", "h200"), ("H100", "h100"), ("A100", "a100"), ("L40S", "l40s")]


def planner_device(gpu_name: str) -> str | None:
    """The planner's name for a CUDA device (None for one it has no peak rate for)."""
    for marker, device in GPU_NAMES:
        if marker.lower() in gpu_name.lower():
            return device
    if gpu_name.rstrip().endswith(" L4"):
        return "l4"
    return None


class UtilisationSampler:
    """Samples one GPU's utilisation with `nvidia-smi` in a thread while it is entered
    (nothing for `device_index` None: a CPU run).

    nvidia-smi rather than pynvml: it needs no extra package and is on every NVIDIA host.
    """

    def __init__(self, device_index: int | None, interval_s: float = 0.25) -> None:
        self.command = self._command(device_index) if device_index is not None else None
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _command(device_index: int) -> list[str] | None:
        if shutil.which("nvidia-smi") is None:
            return None
        command = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        try:
            import torch

            uuid = str(torch.cuda.get_device_properties(device_index).uuid)
            command.append(f"--id={uuid if uuid.startswith('GPU-') else 'GPU-' + uuid}")
        except (AttributeError, RuntimeError):  # no UUID from this torch: nvidia-smi's own numbering
            command.append(f"--id={device_index}")
        return command

    def _sample(self) -> None:
        assert self.command is not None
        while not self._stop.is_set():
            done = subprocess.run(self.command, capture_output=True, text=True, check=False, timeout=10)
            if done.returncode == 0 and done.stdout.strip():
                self.samples.append(float(done.stdout.strip().splitlines()[0]))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> UtilisationSampler:
        if self.command is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def mean_percent(self) -> float | None:
        """The mean of the samples (None without nvidia-smi or samples)."""
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def bench_spec(member: str, quick: bool, on_gpu: bool) -> Any:
    """The resolved spec of one member's runs."""
    from pipeline.prompts.tasks import resolve_spec
    from pipeline.spec import JobSpec

    model: dict[str, Any] = {
        "name": f"dummy:{member}",
        "batch_size": QUICK_BATCH_SIZE if quick else BATCH_SIZE,
        "device": "cuda" if on_gpu else "cpu",
    }
    if quick and not on_gpu:
        model["dummy_layers"] = 1
    return resolve_spec(
        JobSpec.model_validate(
            {
                "input": {"manifest": "unused.parquet"},
                "task": {"kind": "caption", "max_new_tokens": QUICK_NEW_TOKENS if quick else MAX_NEW_TOKENS},
                "preprocess": {"max_tiles": MAX_TILES},
                "model": model,
                "output": {"path": "unused"},
            }
        )
    )


def bound_images_per_s(spec: Any, tiles: int, prompt_tokens: int, peak_tflops: float) -> float:
    """The FLOP model's images/s for rows of `tiles` tiles and `prompt_tokens` tokens at `peak_tflops`."""
    from pipeline.planner import RowPrediction, job_model_shape, row_flops

    shape = job_model_shape(spec.model)  # a reduced member's FLOPs are those of its layers
    assert shape is not None, spec.model.name
    row = RowPrediction(id="row", media_type="image", num_tiles=tiles, prompt_tokens=prompt_tokens)
    flops, _ = row_flops(shape, row, spec.task.max_new_tokens)
    return peak_tflops * 1e12 / flops


def prepared(preprocessor: Any, path: str, rows: int) -> tuple[Any, float]:
    """The model stage's input for `rows` copies of one image, and the CPU stage's CPU seconds a row."""
    prepare_window(preprocessor, [{"id": "warm-up", "uri": path}])  # compiled kernels, caches
    started = time.process_time()
    window = prepare_window(preprocessor, [{"id": f"row-{i:05d}", "uri": path} for i in range(rows)])
    return window, (time.process_time() - started) / rows


@dataclasses.dataclass(frozen=True)
class Setting:
    """What one run measures and where: full or quick, the device and its peak rate."""

    quick: bool
    on_gpu: bool
    gpu_name: str | None
    device: str | None
    peak_tflops: float | None
    reps: int

    @property
    def window_rows(self) -> int:
        """Rows per `Generator` call."""
        return QUICK_WINDOW if self.quick else WINDOW

    @property
    def timed_rows(self) -> int:
        """Rows per timed repetition."""
        return self.window_rows * (1 if self.quick else TIMED_WINDOWS)


def device_setting(options: BenchOptions) -> Setting:
    """The device this run measures; a full run without CUDA is refused before anything loads."""
    import torch

    from pipeline.planner import DEVICES

    reps = 1 if options.quick else max(1, options.reps)
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        device = planner_device(name)
        return Setting(options.quick, True, name, device, DEVICES.get(device or ""), reps)
    if not options.quick:
        raise SystemExit("bench gpu needs a CUDA device (without one, --quick runs a one-layer smoke test on the CPU)")
    torch.set_num_threads(1)
    # No peak rate, so no bound: a one-layer member's FLOPs are mostly its embedding table (a
    # lookup that the FLOP model counts as 2 x params x tokens).
    return Setting(True, False, None, "cpu", None, reps)


def measure_member(member: str, setting: Setting, images: dict[int, str]) -> list[dict[str, Any]]:
    """One member on each tile count (repetitions interleaved): a result per tile count."""
    from pipeline.actors.generate import PROMPT_TOKENS, Generator
    from pipeline.actors.preprocess import ERROR, TILES_PER_IMAGE, Preprocessor
    from pipeline.models.loading import load_engine

    spec = bench_spec(member, setting.quick, setting.on_gpu)
    engine = load_engine(spec.model)
    generator = Generator(spec, engine)
    preprocessor = Preprocessor(spec)
    inputs = {}
    for tiles, path in images.items():
        window, cpu_s = prepared(preprocessor, path, setting.window_rows)
        counts = {sum(per_image) for per_image in window.column(TILES_PER_IMAGE).to_pylist()}
        if counts != {tiles}:
            raise RuntimeError(f"{path} gave {sorted(counts)} tiles, expected {tiles}")
        warm_up = generator(window)  # kernels, allocator, caches; its rows tell the prompt's length
        inputs[tiles] = (window, cpu_s, warm_up.column(PROMPT_TOKENS)[0].as_py())
    seconds: dict[int, list[float]] = {tiles: [] for tiles in inputs}
    utilisation: dict[int, list[float]] = {tiles: [] for tiles in inputs}
    for rep in range(setting.reps):
        for tiles in sorted(inputs, reverse=rep % 2 == 1):
            window = inputs[tiles][0]
            with UtilisationSampler(0 if setting.on_gpu else None) as sampler:
                started = time.perf_counter()
                answered = [generator(window) for _ in range(setting.timed_rows // setting.window_rows)]
                seconds[tiles].append(time.perf_counter() - started)
            if sampler.mean_percent is not None:
                utilisation[tiles].append(sampler.mean_percent)
            errors = [e for table in answered for e in table.column(ERROR).to_pylist() if e]
            if errors:
                raise RuntimeError(f"{member}, {tiles} tiles: {errors[0]}")
            say(f"  rep {rep + 1}: {member}, {tiles} tile(s): {setting.timed_rows / seconds[tiles][-1]:.2f} images/s")
    cases = []
    label = spec.model.name + (f" ({spec.model.dummy_layers} layer)" if spec.model.dummy_layers else "")
    for tiles, (_, cpu_s, prompt_tokens) in inputs.items():
        rate = setting.timed_rows / median(seconds[tiles])
        bound = bound_images_per_s(spec, tiles, prompt_tokens, setting.peak_tflops) if setting.peak_tflops else None
        cases.append(
            {
                "model": label,
                "tiles": tiles,
                "prompt_tokens": prompt_tokens,
                "images_per_s": round(rate, 3),
                "bound_images_per_s": round(bound, 3) if bound else None,
                "fraction_of_bound": ratio(rate, bound) if bound else None,
                "gpu_utilisation_percent": median(utilisation[tiles]) if utilisation[tiles] else None,
                "cpu_stage_s_per_image": round(cpu_s, 4),
                "cpu_cores_to_feed": round(rate * cpu_s, 3),
            }
        )
    return cases


def cases_table(cases: list[dict[str, Any]]) -> str:
    """The printed table: one line per (member, tiles)."""

    def shown(value: Any, fmt: str = "{}") -> str:
        return "?" if value is None else fmt.format(value)

    return table(
        ["model", "tiles", "images/s", "FLOP bound", "of bound", "GPU util %", "CPU cores to feed"],
        [
            [
                c["model"],
                c["tiles"],
                c["images_per_s"],
                shown(c["bound_images_per_s"]),
                shown(c["fraction_of_bound"], "{:.0%}"),
                shown(c["gpu_utilisation_percent"]),
                c["cpu_cores_to_feed"],
            ]
            for c in cases
        ],
    )


def run(options: BenchOptions) -> dict[str, Any]:
    """Each member on each tile count; print the table; return the result."""
    import torch

    setting = device_setting(options)
    images = {tiles: build_corpus(options.workdir, [recipe])[0].path for tiles, recipe in TILE_RECIPES.items()}
    peak = f"{setting.peak_tflops:.4g}" if setting.peak_tflops else "?"
    say(f"device: {setting.gpu_name or 'CPU, one thread (a smoke run)'}; peak {peak} TFLOP/s ({setting.device})")
    members = QUICK_MEMBERS if setting.quick else MEMBERS
    sizes = bench_spec(members[0], setting.quick, setting.on_gpu)  # batch and answer sizes, as every member's
    cases: list[dict[str, Any]] = []
    for member in members:
        cases.extend(measure_member(member, setting, images))
        if setting.on_gpu:
            torch.cuda.empty_cache()
    say(cases_table(cases))
    fractions = [c["fraction_of_bound"] for c in cases if c["fraction_of_bound"] is not None]
    return {
        "name": "gpu",
        "device": setting.gpu_name or "cpu",
        "planner_device": setting.device,
        "peak_tflops": round(setting.peak_tflops, 4) if setting.peak_tflops else None,
        "min_fraction_of_bound": min(fractions) if fractions else None,
        "cases": cases,
        "batch_size": sizes.model.batch_size,
        "rows_per_case": setting.timed_rows,
        "max_new_tokens": sizes.task.max_new_tokens,
        "reps": setting.reps,
        "smoke_run": not setting.on_gpu,
        "machine": machine(),
    }
