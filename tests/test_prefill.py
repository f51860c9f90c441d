"""Prefill by length (pipeline/models/prefill.py) on tiny-random, float32 on CPU: the same
answers as one left-padded prefill, whatever the vision encoder's tile batches."""

from __future__ import annotations

import warnings

import pytest
from media import noise_image
from test_generate import SIZES, answers, prepared_batch

from pipeline.models.hf_engine import choose_prefill
from pipeline.models.loading import load_engine
from pipeline.models.original_format import OriginalFormatModel
from pipeline.models.prefill import cache_keyword, length_groups, tile_slices
from pipeline.prompts.tasks import resolve_spec
from pipeline.spec import ModelSpec


def test_length_groups_keep_first_appearance_order():
    assert length_groups([5, 3, 5, 7, 3]) == {5: [0, 2], 3: [1, 4], 7: [3]}


def test_tile_slices_cover_each_row():
    assert tile_slices([2, 0, 3]) == [slice(0, 2), slice(2, 2), slice(2, 5)]


@pytest.fixture(scope="module")
def engines():
    return {
        "padded": load_engine(ModelSpec(name="tiny-random", prefill="padded")),
        "by_length": load_engine(ModelSpec(name="tiny-random", prefill="by_length")),
        "by_length, 3 tiles at a time": load_engine(
            ModelSpec(name="tiny-random", prefill="by_length", vision_batch_tiles=3)
        ),
    }


def test_by_length_answers_equal_the_padded_prefill(make_spec, engines):
    spec = resolve_spec(make_spec("unused.parquet", task={"max_new_tokens": 12}))
    images = [noise_image(w, h, seed=40 + i) for i, (w, h) in enumerate(SIZES)]
    images += [noise_image(w, h, seed=60 + i) for i, (w, h) in enumerate(SIZES[:3])]  # equal lengths share a group
    batch = prepared_batch(spec, images)
    assert engines["padded"].prefill_by_length is False
    assert engines["by_length"].prefill_by_length is True
    results = {name: answers(spec, engine, batch, 8) for name, engine in engines.items()}
    reference = results.pop("padded")
    for name, result in results.items():
        for column in ("text", "output_tokens", "prompt_tokens", "finish_reason"):
            assert result.column(column).to_pylist() == reference.column(column).to_pylist(), (name, column)
    assert len(set(reference.column("text").to_pylist())) > len(SIZES) // 2  # answers that depend on the image


def test_auto_is_padded_where_flash_attention_drops_padding(engines):
    model = engines["padded"].model
    before = model.config._attn_implementation
    try:
        assert choose_prefill("auto", model) == "by_length"  # sdpa on CPU
        model.config._attn_implementation = "flash_attention_2"
        assert choose_prefill("auto", model) == "padded"
        assert choose_prefill("by_length", model) == "by_length"
    finally:
        model.config._attn_implementation = before


def test_sliding_window_models_keep_the_padded_prefill(engines):
    text = engines["padded"].model.config.get_text_config()
    before = getattr(text, "use_sliding_window", False)
    try:
        text.use_sliding_window = True
        assert choose_prefill("by_length", engines["padded"].model) == "padded"
    finally:
        text.use_sliding_window = before


def test_cache_keyword_follows_the_forward_signature():
    class Renamed:  # transformers 5.24 and later
        def forward(self, input_ids=None, cache=None): ...

    class Original:  # transformers 5.18-5.23
        def forward(self, input_ids=None, past_key_values=None): ...

    assert cache_keyword(Renamed()) == "cache"
    assert cache_keyword(Original()) == "past_key_values"


def test_original_format_models_keep_the_padded_prefill(engines):
    """The remote InternVLChatModel (its code cannot run here: a stand-in with its forward's
    parameters) embeds images inside its own generate: it cannot take features computed apart."""
    hf_config = engines["padded"].model.config

    class RemoteConfig:
        llm_config = hf_config.get_text_config()

    class RemoteChatModel:
        config = RemoteConfig()

        def forward(
            self, pixel_values=None, input_ids=None, attention_mask=None, image_flags=None, past_key_values=None
        ):
            raise AssertionError("never called by choose_prefill")

    remote = OriginalFormatModel(RemoteChatModel(), img_context_token_id=7)
    assert choose_prefill("auto", remote) == "padded"
    assert choose_prefill("by_length", remote) == "padded"
    assert choose_prefill("by_length", engines["padded"].model) == "by_length"


def test_by_length_uses_the_installed_transformers_name_for_the_cache(make_spec, engines):
    """A deprecated keyword would warn at every batch and break when transformers drops it."""
    spec = resolve_spec(make_spec("unused.parquet", task={"max_new_tokens": 3}))
    batch = prepared_batch(spec, [noise_image(w, h, seed=80 + i) for i, (w, h) in enumerate(SIZES[:2])])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*")
        result = answers(spec, engines["by_length"], batch, 2)
    assert result.column("error").to_pylist() == [None, None]
