"""Tensor parallel on CPU: tiny-random split over a gang of two rank actors (gloo, one
placement group on the local Ray) answers exactly as one process does - through the real
pipeline job and through the engine - and a gang whose rank dies (a real process exit
in the middle of a batch, or a killed actor) is rebuilt and the batch answered once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from media import write_image, write_manifest

from pipeline.models.engine import EncodedRequest, GenerationOptions
from pipeline.models.tensor_parallel import FAULT_RANK_EXIT_ENV, TensorParallelEngine, device_layout
from pipeline.prompts.template import build_prompt

TP_MODEL = {"batch_size": 4, "cpus_per_replica": 0.5}


def test_device_layout_shows_each_rank_the_gangs_gpus_on_its_node():
    placements = [("10.0.0.1", ["3"]), ("10.0.0.1", ["1"]), ("10.0.0.2", ["0"]), ("10.0.0.1", ["10"])]
    assert device_layout(placements) == [("1,3,10", 1), ("1,3,10", 0), ("0", 0), ("1,3,10", 2)]


def test_model_stage_resources_for_gangs_and_layer_split_replicas(make_spec):
    from pipeline.job import stage_resources
    from pipeline.models.tensor_parallel import gang_bundles

    gang = make_spec("m.parquet", model={"tensor_parallel": 4, "cpus_per_replica": 2})
    assert stage_resources(gang, use_gpu=True).gpus_per_model_actor == 0  # the ranks hold the GPUs
    assert gang_bundles(gang.model, use_gpu=True) == [{"CPU": 2.1, "GPU": 1.0}] + [{"CPU": 2.0, "GPU": 1.0}] * 3
    split = make_spec("m.parquet", model={"device_map": "auto", "gpus_per_replica": 3})
    assert stage_resources(split, use_gpu=True).gpus_per_model_actor == 3
    assert stage_resources(split, use_gpu=False).gpus_per_model_actor == 0


def texts_by_id(path: str) -> dict[str, tuple[str | None, int | None, str | None]]:
    table = pq.read_table(path)
    rows = table.to_pylist()
    assert len({row["id"] for row in rows}) == len(rows), "an id was written twice"
    return {row["id"]: (row["text"], row["output_tokens"], row["error"]) for row in rows}


@pytest.mark.slow
def test_tensor_parallel_job_answers_exactly_as_single_process(tmp_path: Path, make_spec, ray_session):
    from pipeline.runner import run

    sizes = [(448, 448), (900, 300), (640, 480), (1200, 900), (300, 700)]
    rows = [
        {"id": f"img{i}", "uri": str(write_image(tmp_path / f"{i}.png", w, h, seed=40 + i)), "prompt": None}
        for i, (w, h) in enumerate(sizes)
    ]
    rows.append({"id": "text-only", "uri": None, "prompt": "Write one sentence about the sea."})
    manifest = write_manifest(tmp_path / "manifest.parquet", rows)
    outputs = {}
    for tp in (1, 2):
        spec = make_spec(
            manifest,
            model={**TP_MODEL, "tensor_parallel": tp},
            task={"max_new_tokens": 12},
            output={"path": str(tmp_path / f"out-tp{tp}")},
        )
        summary = run(spec)
        assert summary["rows_done"] == summary["rows_ok"] == len(rows)
        outputs[tp] = texts_by_id(spec.output.path)
    assert sorted(outputs[2]) == sorted(row["id"] for row in rows)
    assert all(error is None for _, _, error in outputs[2].values())
    assert len({text for text, _, _ in outputs[1].values()}) == len(rows)  # the model looks at its input
    assert outputs[2] == outputs[1]
    assert gangs_released(ray_session)


def gangs_released(ray, timeout_s: float = 60.0) -> bool:
    """Every placement group a gang reserved is gone once its job ends (its owner actor exited)."""
    import time

    from ray.util import placement_group_table

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(group["state"] == "REMOVED" for group in placement_group_table().values()):
            return True
        time.sleep(0.5)
    return False


@pytest.fixture(scope="module")
def engine_spec(model_cache):
    from pipeline.spec import parse_spec

    return parse_spec(
        {"input": {"manifest": "unused"}, "output": {"path": "unused"}, "model": {**TP_MODEL, "tensor_parallel": 2}}
    )


def a_batch(encode) -> list[EncodedRequest]:
    rng = np.random.default_rng(5)
    prompts = [
        build_prompt("<image>\nDescribe the image.", [1], None),
        build_prompt("<image>\nWhat is in it?", [3], None),
        build_prompt("Say something.", [], None),
    ]
    tiles = [rng.integers(0, 256, (n, 448, 448, 3), dtype=np.uint8) for n in (1, 3)] + [None]
    return [EncodedRequest(ids, t) for ids, t in zip(encode(prompts), tiles, strict=True)]


@pytest.mark.slow
def test_gang_is_rebuilt_when_a_rank_dies_and_the_batch_answered_once(engine_spec, ray_session, tmp_path, monkeypatch):
    import ray

    from pipeline.models.loading import load_engine

    single = load_engine(engine_spec.model)
    batch = a_batch(single.encode)
    options = GenerationOptions(max_new_tokens=10)
    expected = [r.token_ids for r in single.generate(batch, options)]
    # Rank 1's process exits in the middle of its first generate call (forwarded to the ranks at start).
    monkeypatch.setenv(FAULT_RANK_EXIT_ENV, f"1:{tmp_path / 'rank1-exited'}")
    engine = TensorParallelEngine(engine_spec)
    try:
        assert engine.encode(["Say something."]) == single.encode(["Say something."])
        first = engine.generate(batch, options)
        assert (tmp_path / "rank1-exited").exists() and engine.rebuilds == 1
        assert [r.token_ids for r in first] == expected  # one answer per row, equal to one process
        # A rank actor killed between batches (a lost node): the next batch rebuilds the gang.
        ray.kill(engine.ranks[0])
        second = engine.generate(batch, options)
        assert engine.rebuilds == 2
        assert [r.token_ids for r in second] == expected
    finally:
        engine.close()
