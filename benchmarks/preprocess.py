"""`bench preprocess`: the CPU stage against the model card's preprocessing, per CPU core.

Contenders, on the same generated corpus (photos 4:3 and 16:9, portrait phone shots,
A4/letter scans; max_tiles 12), one image at a time in one process:

- `model card`: `load_image` of the InternVL3 model card (decode, `dynamic_preprocess`
  with Pillow crops, per-tile ToTensor/Normalize in float32, `torch.stack`);
- `ours`: `Preprocessor.prepare` + `prepared_columns` - fetch, decode, exact tiling,
  uint8 tiles packed into the Arrow column handed to the model stage;
- `ours, Pillow resize`: the same with the numba resampler off (to attribute the gain);
- `ours, fast_decode`: with `preprocess.fast_decode: true` (JPEG draft mode; not exact).

Speed is CPU time (`time.process_time`) per image, so "images/s per core" does not
depend on other processes competing for the cores; torch runs one thread (as in a
DataLoader worker). Repetitions are interleaved and rotated; medians are reported.
Exactness: our tiles must equal the model card's uint8 tiles, and our tiles normalised
as the model stage does it must equal the model card's pixel_values, bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.common import BenchOptions, machine, median, ratio, say, table
from benchmarks.corpus import PREPROCESS_RECIPES, CorpusImage, build_corpus

MAX_TILES = 12


def _spec(fast_decode: bool):
    from pipeline.prompts.tasks import resolve_spec
    from pipeline.spec import parse_spec

    return resolve_spec(
        parse_spec(
            {
                "input": {"manifest": "unused.parquet"},
                "output": {"path": "unused"},
                "preprocess": {"max_tiles": MAX_TILES, "fast_decode": fast_decode},
            }
        )
    )


def _ours(fast_decode: bool) -> Callable[[str], Any]:
    from pipeline.actors.preprocess import Preprocessor, prepared_columns

    preprocessor = Preprocessor(_spec(fast_decode))

    def run(path: str) -> Any:
        started = time.perf_counter()
        prepared = preprocessor.prepare({"id": "x", "uri": path})
        if prepared.error:
            raise RuntimeError(prepared.error)
        return prepared_columns([prepared], [time.perf_counter() - started])

    return run


def _with_pillow_resize(run: Callable[[str], Any]) -> Callable[[str], Any]:
    from pipeline.actors import resample

    def wrapped(path: str) -> Any:
        saved = resample._kernels
        resample._kernels = False
        try:
            return run(path)
        finally:
            resample._kernels = saved

    return wrapped


def _model_card(path: str) -> Any:
    from benchmarks.reference import load_image

    return load_image(path, max_num=MAX_TILES)


def _tiles(columns: dict) -> np.ndarray:
    return np.frombuffer(columns["tiles"][0].as_py(), dtype=np.uint8).reshape(-1, 448, 448, 3)


def _row_bytes(columns: dict) -> int:
    import pyarrow as pa

    return pa.table(columns).nbytes


def check_exact(image: CorpusImage, ours: dict, pixel_values: Any) -> tuple[bool, bool]:
    """(uint8 tiles equal the model card's, normalised tiles equal its pixel_values)."""
    import torch

    from benchmarks.reference import reference_tiles
    from pipeline.models.normalise import normalise_tiles

    tiles = _tiles(ours)
    same_tiles = np.array_equal(tiles, reference_tiles(image.path, MAX_TILES))
    normalised = normalise_tiles(tiles, torch.device("cpu"), torch.float32)
    return same_tiles, bool(torch.equal(normalised, pixel_values))


def fast_decode_difference(image: CorpusImage, fast: dict) -> tuple[float, int, float]:
    """(mean |diff|, max |diff|, PSNR dB) of fast-decode tiles against the model card's tiles."""
    from benchmarks.reference import reference_tiles

    reference = reference_tiles(image.path, MAX_TILES).astype(np.int16)
    tiles = _tiles(fast).astype(np.int16)
    diff = np.abs(tiles - reference)
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
    return float(diff.mean()), int(diff.max()), psnr


def run(options: BenchOptions) -> dict[str, Any]:
    """Run the benchmark; print the table; return the result (the JSON line)."""
    import torch

    torch.set_num_threads(1)  # one core, as a DataLoader worker runs it
    say("building the corpus (once) ...")
    recipes = PREPROCESS_RECIPES[::3] if options.quick else PREPROCESS_RECIPES
    corpus = build_corpus(options.workdir, recipes)
    contenders: dict[str, Callable[[str], Any]] = {
        "model card": _model_card,
        "ours": _ours(False),
        "ours, Pillow resize": _with_pillow_resize(_ours(False)),
        "ours, fast_decode": _ours(True),
    }
    names = list(contenders)
    outputs: dict[tuple[str, str], Any] = {}
    for image in corpus:  # warm-up: compile the resampler, fill caches; keep outputs for the checks
        for name in names:
            outputs[(name, image.path)] = contenders[name](image.path)
    cpu: dict[tuple[str, str], list[float]] = {(n, i.path): [] for n in names for i in corpus}
    wall: dict[tuple[str, str], list[float]] = {(n, i.path): [] for n in names for i in corpus}
    reps = max(1, options.reps if not options.quick else min(options.reps, 2))
    say(f"timing {len(corpus)} images x {len(names)} contenders x {reps} repetitions (interleaved) ...")
    for rep in range(reps):
        for position, image in enumerate(corpus):
            shift = (rep + position) % len(names)
            for name in names[shift:] + names[:shift]:  # rotate who goes first
                started_cpu, started_wall = time.process_time(), time.perf_counter()
                contenders[name](image.path)
                cpu[(name, image.path)].append(time.process_time() - started_cpu)
                wall[(name, image.path)].append(time.perf_counter() - started_wall)

    rows = []
    exact_tiles = exact_pixels = True
    ours_bytes = card_bytes = 0
    diffs = []
    for image in corpus:
        ours_columns = outputs[("ours", image.path)]
        pixel_values = outputs[("model card", image.path)]
        same_tiles, same_pixels = check_exact(image, ours_columns, pixel_values)
        exact_tiles &= same_tiles
        exact_pixels &= same_pixels
        ours_bytes += _row_bytes(ours_columns)
        card_bytes += pixel_values.numel() * pixel_values.element_size()
        mean_diff, max_diff, psnr = fast_decode_difference(image, outputs[("ours, fast_decode", image.path)])
        diffs.append((mean_diff, max_diff, psnr))
        card_ms = 1000 * median(cpu[("model card", image.path)])
        ours_ms = 1000 * median(cpu[("ours", image.path)])
        rows.append(
            [
                image.kind,
                f"{image.width}x{image.height}",
                len(pixel_values),
                card_ms,
                ours_ms,
                1000 * median(cpu[("ours, Pillow resize", image.path)]),
                1000 * median(cpu[("ours, fast_decode", image.path)]),
                f"{card_ms / ours_ms:.2f}x",
                "yes" if same_tiles and same_pixels else "NO",
                f"{mean_diff:.2f}/{max_diff}",
            ]
        )
    say(
        table(
            [
                "kind",
                "size",
                "tiles",
                "card ms",
                "ours ms",
                "ours+PIL ms",
                "fast ms",
                "speedup",
                "exact",
                "fast diff mean/max",
            ],
            rows,
        )
    )

    def rate(name: str, clock: dict) -> float:
        return len(corpus) / sum(median(clock[(name, i.path)]) for i in corpus)

    rates = {name: rate(name, cpu) for name in names}
    wall_rates = {name: rate(name, wall) for name in names}
    say("")
    say(
        table(
            ["contender", "images/s per core (CPU time)", "images/s (wall, 1 thread)", "vs model card"],
            [[name, rates[name], wall_rates[name], f"{rates[name] / rates['model card']:.2f}x"] for name in names],
        )
    )
    say(
        f"\nbytes per row handed to the model stage: ours {ours_bytes / len(corpus) / 1e6:.2f} MB "
        f"(uint8 tiles + row columns), model card {card_bytes / len(corpus) / 1e6:.2f} MB (float32 pixel_values)"
    )
    say(f"bit-exact: tiles {exact_tiles}, normalised pixel values {exact_pixels}")
    return {
        "name": "preprocess",
        "speedup": ratio(rates["ours"], rates["model card"]),
        "bytes_ratio": round(ours_bytes / card_bytes, 4),
        "bit_exact_tiles": exact_tiles,
        "bit_exact_pixel_values": exact_pixels,
        "images_per_cpu_second": {name: round(value, 3) for name, value in rates.items()},
        "images_per_second_wall": {name: round(value, 3) for name, value in wall_rates.items()},
        "speedup_pillow_resize": ratio(rates["ours, Pillow resize"], rates["model card"]),
        "speedup_fast_decode": ratio(rates["ours, fast_decode"], rates["model card"]),
        "fast_decode_mean_abs_diff": round(float(np.mean([d[0] for d in diffs])), 3),
        "fast_decode_max_abs_diff": int(max(d[1] for d in diffs)),
        "fast_decode_min_psnr_db": round(float(min(d[2] for d in diffs)), 2),
        "images": len(corpus),
        "reps": reps,
        "max_tiles": MAX_TILES,
        "machine": machine(),
    }
