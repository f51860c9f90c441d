"""The model stage on tiny-random (float32, CPU, greedy): batch invariance, sensitivity to
the image, the reference's decoding rules, and out-of-memory back-off."""

from __future__ import annotations

import pyarrow as pa
import pytest
from media import noise_image

from pipeline.actors.generate import Generator
from pipeline.actors.preprocess import Preprocessor, prepared_columns
from pipeline.models.hf_engine import FAULT_OOM_ENV
from pipeline.models.loading import load_engine
from pipeline.prompts.tasks import resolve_spec
from pipeline.spec import ModelSpec

# Sizes chosen to give 1 to 13 tiles, mixed in one batch.
SIZES = [
    (448, 448),
    (900, 300),
    (300, 900),
    (1600, 1200),
    (640, 480),
    (2000, 500),
    (500, 500),
    (1000, 1000),
    (2500, 400),
]


@pytest.fixture(scope="module")
def engine():
    return load_engine(ModelSpec(name="tiny-random"))


def prepared_batch(spec, images) -> pa.Table:
    import io

    rows = []
    for index, image in enumerate(images):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        rows.append({"id": f"r{index}", "uri": None, "inline_bytes": buffer.getvalue()})
    preprocessor = Preprocessor(spec)
    prepared = [preprocessor.prepare(row) for row in rows]
    table = pa.table({"id": [r["id"] for r in rows], "uri": pa.array([None] * len(rows), type=pa.string())})
    for name, array in prepared_columns(prepared, [0.0] * len(rows)).items():
        table = table.append_column(name, array)
    return table


def answers(spec, engine, batch: pa.Table, batch_size: int) -> pa.Table:
    spec = spec.model_copy(update={"model": spec.model.model_copy(update={"batch_size": batch_size})})
    return Generator(spec, engine)(batch)


def test_batched_answers_equal_one_at_a_time(make_spec, engine):
    spec = resolve_spec(make_spec("unused.parquet", task={"max_new_tokens": 12}))
    batch = prepared_batch(spec, [noise_image(w, h, seed=i) for i, (w, h) in enumerate(SIZES)])
    assert len(set(batch.column("num_tiles").to_pylist())) >= 5
    alone = answers(spec, engine, batch, 1)
    together = answers(spec, engine, batch, 8)
    assert alone.column("text").to_pylist() == together.column("text").to_pylist()
    assert alone.column("output_tokens").to_pylist() == together.column("output_tokens").to_pylist()
    assert alone.column("prompt_tokens").to_pylist() == together.column("prompt_tokens").to_pylist()


def test_same_text_different_images_give_different_answers(make_spec, engine):
    """tiny-random is a sensitive instrument: it looks at its image."""
    spec = resolve_spec(make_spec("unused.parquet", task={"max_new_tokens": 12}))
    batch = prepared_batch(spec, [noise_image(448, 448, seed=100 + i) for i in range(8)])
    texts = answers(spec, engine, batch, 8).column("text").to_pylist()
    assert len(set(texts)) == len(texts)


def test_prompt_tokens_count_image_runs(make_spec, engine):
    spec = resolve_spec(make_spec("unused.parquet", output={"path": "x", "include_prompt": True}))
    out = answers(spec, engine, prepared_batch(spec, [noise_image(1600, 1200)]), 4)
    prompt = out.column("prompt")[0].as_py()
    assert prompt.count("<IMG_CONTEXT>") == 256 * out.column("num_tiles")[0].as_py()
    assert out.column("prompt_tokens")[0].as_py() == len(engine.encode([prompt])[0])
    assert out.column("finish_reason")[0].as_py() in ("stop", "length")


def test_rows_with_errors_pass_through(make_spec, engine):
    spec = resolve_spec(make_spec("unused.parquet"))
    batch = prepared_batch(spec, [noise_image(300, 300)])
    broken = Preprocessor(spec).prepare({"id": "bad", "uri": None, "inline_bytes": b"junk"})
    extra = pa.table({"id": ["bad"], "uri": pa.array([None], type=pa.string())})
    for name, array in prepared_columns([broken], [0.0]).items():
        extra = extra.append_column(name, array)
    out = answers(spec, engine, pa.concat_tables([batch, extra]), 4)
    assert out.column("text").to_pylist()[1] is None
    assert out.column("error_kind").to_pylist() == [None, "decode_error"]
    assert out.column("finish_reason").to_pylist()[1] == "error"


def test_out_of_memory_backs_off_to_single_rows(make_spec, engine, monkeypatch):
    """The engine's test hook raises a real OutOfMemory for batches above 1 row."""
    spec = resolve_spec(make_spec("unused.parquet"))
    batch = prepared_batch(spec, [noise_image(448, 448, seed=i) for i in range(5)])
    expected = answers(spec, engine, batch, 8).column("text").to_pylist()
    monkeypatch.setenv(FAULT_OOM_ENV, "1")
    out = answers(spec, engine, batch, 8)
    assert out.column("text").to_pylist() == expected
    monkeypatch.setenv(FAULT_OOM_ENV, "0")
    out = answers(spec, engine, batch, 8)
    assert out.column("error_kind").to_pylist() == ["oom"] * 5
