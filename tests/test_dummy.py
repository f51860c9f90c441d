"""`dummy:InternVL3-<size>` on CPU: a reduced family member (one layer each side, the real
widths and vocabulary), built without any checkpoint, answers with exactly
task.max_new_tokens tokens whatever its random weights predict."""

from __future__ import annotations

import pytest
from media import noise_image
from test_generate import answers, prepared_batch

from pipeline.models.loading import load_engine
from pipeline.prompts.tasks import resolve_spec


@pytest.fixture(scope="module")
def dummy_engine():
    from pipeline.spec import ModelSpec

    return load_engine(ModelSpec(name="dummy:InternVL3-1B", dummy_layers=1, dtype="bfloat16"))


def test_dummy_member_has_the_real_architecture(dummy_engine):
    text = dummy_engine.model.config.get_text_config()
    vision = dummy_engine.model.config.vision_config
    assert (text.hidden_size, text.intermediate_size, text.num_key_value_heads, text.vocab_size) == (
        896,
        4864,
        2,
        151674,
    )
    assert (vision.hidden_size, vision.intermediate_size) == (1024, 4096)
    assert text.num_hidden_layers == vision.num_hidden_layers == 1
    assert dummy_engine.name == "dummy:InternVL3-1B"


def test_dummy_outputs_have_the_fixed_length(make_spec, dummy_engine):
    spec = resolve_spec(make_spec("unused.parquet", model={"name": "dummy:InternVL3-1B"}, task={"max_new_tokens": 6}))
    batch = prepared_batch(spec, [noise_image(448, 448, seed=1), noise_image(900, 300, seed=2)])
    out = answers(spec, dummy_engine, batch, 4)
    assert out.column("error").to_pylist() == [None, None]
    assert out.column("output_tokens").to_pylist() == [6, 6]
    assert out.column("finish_reason").to_pylist() == ["length", "length"]
    assert out.column("model").to_pylist() == ["dummy:InternVL3-1B"] * 2
