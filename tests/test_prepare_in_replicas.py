"""A job without CPU actors (`preprocess.workers: 0`, what 'auto' picks where CPU replicas fill
the cores): each model replica prepares its own rows. It must answer exactly as the CPU actor
pool does, bad files included, with every row once."""

from __future__ import annotations

from pathlib import Path

import pytest
from media import truncated_copy, write_image, write_manifest
from plans import logical_operators
from reliability import assert_exactly_once

pytestmark = pytest.mark.slow


def mixed_manifest(folder: Path) -> tuple[Path, list[str]]:
    """10 rows: images of 1 to 6 tiles, a truncated JPEG and a missing file."""
    sizes = [(64, 64), (900, 450), (448, 1344), (1000, 700), (500, 500), (1400, 900), (320, 200), (800, 800)]
    uris = [str(write_image(folder / f"img{i}.jpg", w, h, seed=i)) for i, (w, h) in enumerate(sizes)]
    uris.append(str(truncated_copy(Path(uris[1]), folder / "truncated.jpg")))
    uris.append(str(folder / "missing.jpg"))
    ids = [f"row-{i:02d}" for i in range(len(uris))]
    rows = [{"id": row_id, "uri": uri} for row_id, uri in zip(ids, uris, strict=True)]
    return write_manifest(folder / "manifest.parquet", rows), ids


def test_the_plan_has_no_cpu_pool_and_feeds_the_replicas_whole_windows(tmp_path: Path, make_spec, ray_session):
    """The plan only: the model actors take manifest rows, cut into blocks of one window."""
    from pipeline.job import StageResources, build_dataset, manifest_rows, rows_per_model_call
    from pipeline.runner import check_job

    manifest, ids = mixed_manifest(tmp_path)
    spec = make_spec(manifest, preprocess={"workers": 0}, model={"name": "tiny-random", "replicas": 2})
    checked = check_job(spec)
    resources = StageResources(use_gpu=False, gpus_per_model_actor=0.0, cpus_per_model_actor=1.0)
    dataset = build_dataset(checked.spec, checked.plan, checked.plan.shards, resources)
    names = [operator.name for operator in logical_operators(dataset)]
    assert not any("PreprocessStage" in name for name in names)
    model_stage = next(name for name in names if "GenerateStage" in name)
    assert "PrepareAndGenerateStage" in model_stage
    window = rows_per_model_call(checked.spec, len(ids))
    assert window == 4  # 10 rows on 2 replicas, at least 4 windows each: one batch of 4
    blocks = manifest_rows(checked.spec, checked.plan, checked.plan.shards, window).map_batches(
        lambda block: {"rows": [block.num_rows]}, batch_size=None, batch_format="pyarrow"
    )
    assert sorted(row["rows"] for row in blocks.take_all()) == [2, 4, 4]


def test_answers_and_errors_equal_the_cpu_pool(tmp_path: Path, make_spec, ray_session):
    """Same rows, same spec but for the CPU stage's size: identical answers, tile counts and
    errors, each row once in both outputs."""
    from pipeline.runner import run

    manifest, ids = mixed_manifest(tmp_path / "media")
    outputs = {}
    for workers in (1, 0):
        output = tmp_path / f"out-{workers}"
        summary = run(
            make_spec(
                manifest,
                preprocess={"workers": workers, "max_tiles": 6},
                model={"name": "tiny-random", "batch_size": 2},
                output={"path": str(output)},
            )
        )
        assert summary["complete"] and summary["layout"]["cpu_workers"] == workers
        outputs[workers] = {row["id"]: row for row in assert_exactly_once(output, ids).to_pylist()}
    pool, in_replicas = outputs[1], outputs[0]
    for row_id in ids:
        for column in ("text", "num_tiles", "prompt_tokens", "output_tokens", "error_kind", "error"):
            assert in_replicas[row_id][column] == pool[row_id][column], (row_id, column)
    kinds = {row["error_kind"] for row in in_replicas.values()}
    assert None in kinds and len(kinds) >= 2  # good rows answered, bad files became error rows
    assert in_replicas["row-00"]["num_tiles"] == 1 and in_replicas["row-05"]["num_tiles"] > 1
