"""Moderation: the answer schema and its token budget, parsing into label columns, and
grammar-constrained generation with tiny-random (every answer valid, batched == alone)."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from pipeline.actors.generate import Generator
from pipeline.models.grammar import compiled_json_grammar, stop_token_id
from pipeline.models.loading import load_engine
from pipeline.prompts.moderation import (
    REASON_MAX_CHARS,
    InvalidAnswer,
    add_label_columns,
    answer_schema,
    longest_answer_bytes,
    parse_answer,
    reason_limit,
)
from pipeline.prompts.tasks import resolve_spec
from pipeline.spec import ModelSpec, SpecError

CATEGORIES = ["violence", "hate"]


# --- schema and budget (pure) ------------------------------------------------------------


def longest_answer(categories: list[str], reason_chars: int) -> str:
    longest = max(categories, key=lambda c: len(json.dumps(c, ensure_ascii=False).encode()))
    value = {"flagged": False, "categories": [longest] * len(categories), "reason": "x" * reason_chars}
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize("categories", [["a"], CATEGORIES, ["violence", "self_harm", "illegal_activity", "spam"]])
@pytest.mark.parametrize("max_new_tokens", [150, 200, 384, 1000])
def test_longest_valid_answer_plus_stop_fits_the_budget(categories, max_new_tokens):
    limit = reason_limit(categories, max_new_tokens)
    assert limit <= REASON_MAX_CHARS
    answer = longest_answer(categories, limit)
    assert len(answer.encode()) == longest_answer_bytes(categories, limit)
    assert len(answer.encode()) + 1 <= max_new_tokens  # every token is at least one byte, plus the stop token
    assert limit == REASON_MAX_CHARS or len(answer.encode()) + 1 == max_new_tokens  # no budget wasted


def test_too_small_budget_names_the_field_and_the_fix():
    with pytest.raises(SpecError, match=r"task\.max_new_tokens=40 is too small .* at least 83"):
        reason_limit(CATEGORIES, 40)
    with pytest.raises(SpecError, match="at least one category"):
        reason_limit([], 400)


def test_schema_shape():
    schema = answer_schema(CATEGORIES, 200)
    assert schema["required"] == ["flagged", "categories", "reason"] and schema["additionalProperties"] is False
    assert schema["properties"]["categories"]["items"]["enum"] == CATEGORIES
    assert schema["properties"]["categories"]["maxItems"] == 2
    assert schema["properties"]["reason"]["pattern"].startswith("^[")


# --- parsing ---------------------------------------------------------------------------------


def test_parse_valid_answers():
    labels = parse_answer('{"flagged":true,"categories":["hate","violence","hate"],"reason":"A fight."}', CATEGORIES)
    assert labels.flagged is True and labels.categories == ["hate", "violence"] and labels.reason == "A fight."
    fenced = parse_answer('```json\n{"flagged": false, "categories": [], "reason": ""}\n```', CATEGORIES)
    assert fenced.flagged is False and fenced.categories == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("I think it is fine.", "not a JSON object"),
        ('{"flagged":true,"categories":[],"reason":"cut', "not a JSON object"),
        ("[1, 2]", "expected a JSON object"),
        ('{"flagged":true,"categories":[]}', "missing reason"),
        ('{"flagged":true,"categories":[],"reason":"","extra":1}', "unexpected extra"),
        ('{"flagged":"yes","categories":[],"reason":""}', "'flagged' must be true or false"),
        ('{"flagged":true,"categories":"hate","reason":""}', "'categories' must be a list"),
        ('{"flagged":true,"categories":["spam"],"reason":""}', "not among the configured"),
        ('{"flagged":true,"categories":[],"reason":3}', "'reason' must be a string"),
    ],
)
def test_parse_rejects_with_a_reason(text: str, message: str):
    with pytest.raises(InvalidAnswer, match=message):
        parse_answer(text, CATEGORIES)


def test_label_columns_keep_raw_text_on_invalid_output():
    batch = pa.table(
        {
            "id": ["ok", "bad", "failed", "none"],
            "text": ['{"flagged":true,"categories":["hate"],"reason":"r"}', "not json", None, None],
            "error_kind": [None, None, "decode_error", None],
            "error": [None, None, "decode_error: broken", None],
        }
    )
    out = add_label_columns(batch, CATEGORIES)
    assert out.column_names == ["id", "text", "error_kind", "error", "flagged", "categories", "reason"]
    assert out.schema.field("flagged").type == pa.bool_()
    assert out.schema.field("categories").type == pa.list_(pa.string())
    rows = out.to_pylist()
    assert rows[0]["flagged"] is True and rows[0]["categories"] == ["hate"] and rows[0]["error"] is None
    assert rows[1]["text"] == "not json" and rows[1]["error_kind"] == "invalid_output"
    assert rows[1]["error"].startswith("invalid_output: not a JSON object") and rows[1]["flagged"] is None
    assert rows[2]["error_kind"] == "decode_error" and rows[2]["flagged"] is None
    assert rows[3]["error_kind"] is None and rows[3]["flagged"] is None  # no model ('none'): nothing to label


# --- the grammar on the tiny-random tokenizer ------------------------------------------------


@pytest.fixture(scope="module")
def engine():
    return load_engine(ModelSpec(name="tiny-random"))


def allowed_after(engine, compiled, prefix: str) -> set[int]:
    import torch
    import xgrammar as xgr

    matcher = xgr.GrammarMatcher(compiled)
    for token in engine.tokenizer.encode(prefix, add_special_tokens=False):
        assert matcher.accept_token(token), prefix
    mask = xgr.allocate_token_bitmask(1, engine.vocab_size)
    matcher.fill_next_token_bitmask(mask)
    logits = torch.zeros(1, engine.vocab_size)
    xgr.apply_token_bitmask_inplace(logits, mask)
    return set((logits[0] > -1e9).nonzero().flatten().tolist())


def test_added_tokens_are_never_text_and_the_stop_comes_last(engine):
    compiled = compiled_json_grammar(engine.tokenizer, engine.vocab_size, answer_schema(CATEGORIES, 120), {})
    added = set(engine.tokenizer.added_tokens_decoder)
    stop = stop_token_id(engine.tokenizer)
    inside = allowed_after(engine, compiled, '{"flagged":true,"categories":[],"reason":"')
    assert len(inside) > 50 and not inside & added  # <img>, <|endoftext|>, ... and the stop itself
    assert not inside & set(range(len(engine.tokenizer), engine.vocab_size))  # padding rows of the vocabulary
    assert allowed_after(engine, compiled, '{"flagged":true,"categories":[],"reason":"ok"}') == {stop}


@pytest.mark.parametrize(
    "categories",
    [["a"], CATEGORIES, ["暴力", "仇恨"], ['say "hi"', "back\\slash"], [f"category_{i}" for i in range(30)]],
    ids=["one", "two", "unicode", "escapes", "thirty"],
)
def test_the_longest_answer_compiles_and_one_more_character_does_not_fit(engine, categories):
    import xgrammar as xgr

    budget = longest_answer_bytes(categories, 150) + 1
    schema = answer_schema(categories, budget)
    compiled = compiled_json_grammar(engine.tokenizer, engine.vocab_size, schema, {})
    limit = reason_limit(categories, budget)
    for reason_chars, accepted in ((limit, True), (limit + 1, False)):
        matcher = xgr.GrammarMatcher(compiled)
        tokens = engine.tokenizer.encode(longest_answer(categories, reason_chars), add_special_tokens=False)
        ok = all(matcher.accept_token(token) for token in tokens) and matcher.accept_token(matcher.stop_token_ids[0])
        assert ok is accepted


def moderation_spec(make_spec, batch_size: int, **task):
    return resolve_spec(
        make_spec(
            "unused.parquet",
            task={"kind": "moderation", "categories": CATEGORIES, "max_new_tokens": 96, **task},
            model={"batch_size": batch_size},
            preprocess={"max_tiles": 1},
        )
    )


def test_tiny_random_answers_are_always_valid_and_batch_invariant(make_spec, engine):
    from media import noise_image
    from test_generate import prepared_batch

    spec = moderation_spec(make_spec, 6)
    batch = prepared_batch(spec, [noise_image(448, 448, seed=300 + i) for i in range(6)])
    together = add_label_columns(Generator(spec, engine)(batch), CATEGORIES)
    alone = add_label_columns(Generator(moderation_spec(make_spec, 1), engine)(batch), CATEGORIES)
    assert together.column("text").to_pylist() == alone.column("text").to_pylist()
    for row in together.to_pylist():
        assert row["error"] is None and row["finish_reason"] == "stop", row
        assert isinstance(row["flagged"], bool) and set(row["categories"]) <= set(CATEGORIES)
        assert isinstance(row["reason"], str) and row["output_tokens"] <= 96
    assert len(set(together.column("text").to_pylist())) > 1  # the answers depend on the image
