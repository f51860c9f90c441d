"""Token-budget micro-batching: every row once, limits respected, similar lengths grouped,
little padding on mixed tile counts, and answers unchanged (batch invariance with a budget)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from media import noise_image, write_image, write_manifest
from plans import logical_operators

from pipeline.actors.batching import (
    arrival_batches,
    padded_tokens,
    padding_fraction,
    plan_batches,
    plan_windowed,
    windows,
)
from pipeline.actors.generate import Generator
from pipeline.actors.preprocess import Preprocessor, prepared_columns
from pipeline.job import rows_per_model_call
from pipeline.prompts.tasks import resolve_spec


def mixed_lengths(count: int, seed: int = 0) -> list[int]:
    """Prompt lengths of 1 to 13 tile images (256 tokens a tile plus ~80 of text)."""
    rng = np.random.default_rng(seed)
    tiles = rng.choice([1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], size=count)
    return [int(256 * t + 80 + rng.integers(0, 8)) for t in tiles]


def check_plan(lengths: list[int], batches: list[list[int]], batch_size: int, budget: int | None) -> None:
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert 1 <= len(batch) <= batch_size
        assert [lengths[i] for i in batch] == sorted(lengths[i] for i in batch)
        if budget is not None and len(batch) > 1:
            assert len(batch) * max(lengths[i] for i in batch) <= budget


@pytest.mark.parametrize("budget", [None, 4096, 10_000, 30_000])
@pytest.mark.parametrize("batch_size", [1, 3, 8, 16])
def test_every_row_once_within_limits(batch_size: int, budget: int | None):
    lengths = mixed_lengths(61, seed=batch_size)
    batches = plan_batches(lengths, batch_size, budget)
    check_plan(lengths, batches, batch_size, budget)
    if budget is None:  # as few generate calls as the batch size allows
        assert len(batches) == math.ceil(len(lengths) / batch_size)


def test_a_row_longer_than_the_budget_runs_alone():
    batches = plan_batches([100, 5000, 120, 90], batch_size=4, max_batch_tokens=1000)
    assert [1] in batches
    check_plan([100, 5000, 120, 90], batches, 4, 1000)


def test_similar_lengths_share_a_call():
    lengths = [3400, 330, 3410, 340, 3390, 335, 3405, 338]
    batches = plan_batches(lengths, batch_size=4)
    assert sorted(sorted(b) for b in batches) == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert padding_fraction(lengths, batches) < 0.01
    assert padding_fraction(lengths, arrival_batches(len(lengths), 4)) > 0.4


def test_least_padding_among_plans_with_the_fewest_calls():
    """Brute force over all cut points of a small sorted window."""
    from itertools import combinations, pairwise

    lengths = [10, 11, 30, 31, 32, 60, 61]
    planned = plan_batches(lengths, batch_size=3, max_batch_tokens=100)
    check_plan(lengths, planned, 3, 100)
    best = None
    for cuts in range(1, len(lengths)):
        for points in combinations(range(1, len(lengths)), cuts):
            bounds = [0, *points, len(lengths)]
            groups = [list(range(a, b)) for a, b in pairwise(bounds)]
            if any(len(g) > 3 or (len(g) > 1 and len(g) * lengths[g[-1]] > 100) for g in groups):
                continue
            score = (len(groups), padded_tokens(lengths, groups))
            best = score if best is None or score < best else best
    assert (len(planned), padded_tokens(lengths, planned)) == best


def test_default_window_keeps_padding_under_ten_percent(make_spec):
    spec = make_spec("unused.parquet", model={"batch_size": 8})
    window = rows_per_model_call(spec)
    assert window == 64
    lengths = mixed_lengths(4000, seed=3)
    assert padding_fraction(lengths, plan_windowed(lengths, window, 8)) <= 0.10
    assert padding_fraction(lengths, arrival_batches(len(lengths), 8)) > 0.25
    assert rows_per_model_call(make_spec("unused.parquet", model={"batch_size": 8, "batch_window": 100})) == 100


def test_small_jobs_get_windows_small_enough_for_four_per_replica(make_spec):
    two = make_spec("unused.parquet", model={"batch_size": 8, "replicas": 2})
    assert rows_per_model_call(two, pending_rows=10**6) == 64  # a big job: the default window
    assert rows_per_model_call(two, pending_rows=512) == 64  # 4 windows of 64 each
    assert rows_per_model_call(two, pending_rows=256) == 32  # 4 windows of 32 each
    assert rows_per_model_call(two, pending_rows=250) == 32  # rounded up to whole batches
    assert rows_per_model_call(two, pending_rows=20) == 8  # never less than one batch
    fixed = make_spec("unused.parquet", model={"batch_size": 8, "replicas": 2, "batch_window": 48})
    assert rows_per_model_call(fixed, pending_rows=20) == 48  # an explicit window is kept


def test_windows_cover_the_rows():
    assert [list(w) for w in windows(7, 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(ValueError):
        windows(3, 0)
    with pytest.raises(ValueError):
        plan_batches([1], 0)


@pytest.fixture(scope="module")
def engine():
    from pipeline.models.loading import load_engine
    from pipeline.spec import ModelSpec

    return load_engine(ModelSpec(name="tiny-random"))


def prepared_table(spec, sizes: list[tuple[int, int]]) -> pa.Table:
    preprocessor = Preprocessor(spec)
    prepared = []
    for index, (width, height) in enumerate(sizes):
        buffer = io.BytesIO()
        noise_image(width, height, seed=50 + index).save(buffer, format="PNG")
        prepared.append(preprocessor.prepare({"id": f"r{index}", "uri": None, "inline_bytes": buffer.getvalue()}))
    table = pa.table({"id": [f"r{i}" for i in range(len(sizes))], "uri": pa.array([None] * len(sizes), pa.string())})
    for name, array in prepared_columns(prepared, [0.0] * len(sizes)).items():
        table = table.append_column(name, array)
    return table


def test_answers_unchanged_under_a_token_budget(make_spec, engine):
    """One at a time vs batches cut by a token budget (mixed 1-6 tile rows): same answers."""
    base = resolve_spec(make_spec("unused.parquet", task={"max_new_tokens": 10}, preprocess={"max_tiles": 6}))
    sizes = [(448, 448), (1400, 500), (300, 900), (900, 700), (500, 500), (1500, 400), (640, 480)]
    batch = prepared_table(base, sizes)
    assert len(set(batch.column("num_tiles").to_pylist())) >= 4

    def run(batch_size: int, budget: int | None) -> pa.Table:
        model = base.model.model_copy(update={"batch_size": batch_size, "max_batch_tokens": budget})
        return Generator(base.model_copy(update={"model": model}), engine)(batch)

    alone = run(1, None)
    lengths = alone.column("prompt_tokens").to_pylist()
    budget = 3 * max(lengths)  # several rows per call, and calls split by the budget
    planned = plan_batches(lengths, 8, budget)
    assert 1 < len(planned) < len(lengths)
    budgeted = run(8, budget)
    for column in ("text", "output_tokens", "prompt_tokens", "finish_reason"):
        assert budgeted.column(column).to_pylist() == alone.column(column).to_pylist(), column


def test_cpu_stage_blocks_are_one_batch_each_so_windows_come_out_exact(tmp_path: Path, make_spec, ray_session):
    """Each CPU batch is its own block, also with one worker and one shard: Ray Data used to
    merge a task's batches into bigger blocks, which the model stage's windows took whole."""
    from pipeline.job import prepared_rows
    from pipeline.runner import check_job

    rows = [{"id": f"r{i:02d}", "uri": str(write_image(tmp_path / f"{i}.jpg", 64, 64, seed=i))} for i in range(20)]
    spec = make_spec(write_manifest(tmp_path / "manifest.parquet", rows), preprocess={"workers": 1, "batch_size": 8})
    checked = check_job(spec)
    assert len(checked.plan.shards) == 1
    blocks = prepared_rows(checked.spec, checked.plan, checked.plan.shards).map_batches(
        lambda block: {"rows": [block.num_rows]}, batch_size=None, batch_format="pyarrow"
    )
    assert sorted(row["rows"] for row in blocks.take_all()) == [4, 8, 8]
    # the cut runs inside the read tasks (0.25 CPU), not as tasks of its own asking for a CPU
    assert "MapBatches(read_shards)->StreamingRepartition" in blocks.stats()


def model_stage_operator(dataset):
    """The logical operator of the model stage in a built dataset (Ray Data's internal plan)."""
    stages = [operator for operator in logical_operators(dataset) if "GenerateStage" in operator.name]
    assert stages, "no model stage in the plan"
    return stages[0]


@pytest.mark.parametrize(("use_gpu", "in_flight"), [(False, 1), (True, 2)])
def test_cpu_replicas_take_one_window_at_a_time(tmp_path: Path, make_spec, ray_session, use_gpu, in_flight):
    """With Ray Data's default of two windows per replica, the first CPU replica to load took
    both windows of a small job and the other sat idle (a 64-row job on two replicas: 26-29 s,
    or 32-34 s when that happened). GPU replicas keep two: they pull the next window while they
    answer one. The plan is only built here, nothing runs, so no GPU is needed."""
    from pipeline.job import StageResources, build_dataset
    from pipeline.runner import check_job

    rows = [{"id": f"r{i}", "uri": str(write_image(tmp_path / f"{i}.jpg", 64, 64, seed=i))} for i in range(4)]
    spec = make_spec(write_manifest(tmp_path / "manifest.parquet", rows), model={"name": "tiny-random", "replicas": 2})
    checked = check_job(spec)
    resources = StageResources(use_gpu=use_gpu, gpus_per_model_actor=1.0 if use_gpu else 0.0, cpus_per_model_actor=1.0)
    dataset = build_dataset(checked.spec, checked.plan, checked.plan.shards, resources)
    compute = model_stage_operator(dataset).compute
    assert compute.max_tasks_in_flight_per_actor == in_flight
    assert compute.min_size == compute.max_size == 2
