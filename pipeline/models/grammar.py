"""Grammar-constrained decoding with xgrammar: answers that always match a JSON schema.

`json_logits_processor` gives a transformers logits processor that masks, at every step
of every row of a batch, the tokens that cannot continue a schema-valid answer, and
allows the stop token only once the JSON is complete. It works on CPU and GPU and with
left-padded batches whose rows finish at different steps.

Two details decide whether "always valid" holds:
- The token table. `xgr.TokenizerInfo.from_huggingface` takes added tokens such as
  `<img>` or `<|endoftext|>` for their literal text, so the model could "write" `<img>`
  inside a JSON string; decoding with `skip_special_tokens` would then drop it and the
  answer would differ from what the grammar accepted. We give xgrammar the decoded bytes
  of every ordinary token and an empty entry for every added token except the stop
  token: xgrammar never allows an empty entry, and the model can still spell any text
  with ordinary tokens. Entries past the tokenizer (a model vocabulary padded for
  tensor-parallel sharding) are empty too.
- The stop token. It must be the id generation stops at (`<|im_end|>`, as the engine
  uses), else the grammar would wait for one token while `generate` stops at another.

A processor is stateful (one matcher per row) and serves a single `generate` call; the
tokenizer table, the compiler and the compiled grammars are cached in a dict the caller
keeps for the life of the replica. xgrammar is imported lazily.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.prompts.template import STOP_TOKEN

_INFO_KEY = "tokenizer_info"
_COMPILER_KEY = "compiler"
_SCHEMA_PREFIX = "json_schema:"


def stop_token_id(tokenizer: Any) -> int:
    """The id generation stops at; the grammar must end on the same id."""
    stop = tokenizer.convert_tokens_to_ids(STOP_TOKEN)
    if stop is None or stop == getattr(tokenizer, "unk_token_id", None):
        raise ValueError(f"the tokenizer has no {STOP_TOKEN} token; constrained decoding needs it as its stop token")
    return int(stop)


def decoded_token_table(tokenizer: Any, vocab_size: int, stop_id: int) -> list[bytes]:
    """The bytes each token id stands for, with b'' for ids the grammar must never allow."""
    import xgrammar as xgr

    detected = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=[stop_id])
    table = [bytes(token) for token in detected.decoded_vocab]
    table.extend([b""] * (vocab_size - len(table)))
    del table[vocab_size:]
    for token_id in tokenizer.added_tokens_decoder:
        if token_id != stop_id and 0 <= token_id < vocab_size:
            table[token_id] = b""
    table[stop_id] = b""  # xgrammar knows it as the stop token, never as text
    return table


def tokenizer_info(tokenizer: Any, vocab_size: int) -> Any:  # -> xgrammar.TokenizerInfo
    """xgrammar's view of the tokenizer: decoded bytes per id, added tokens barred, our stop token."""
    import xgrammar as xgr

    stop_id = stop_token_id(tokenizer)
    table = decoded_token_table(tokenizer, vocab_size, stop_id)
    return xgr.TokenizerInfo(
        table, vocab_type=xgr.VocabType.RAW, vocab_size=vocab_size, stop_token_ids=[stop_id], add_prefix_space=False
    )


def compiled_json_grammar(tokenizer: Any, vocab_size: int, schema: dict[str, Any], cache: dict[str, Any]) -> Any:
    """The compiled grammar of a JSON schema (compact separators, no free whitespace), cached."""
    import xgrammar as xgr

    key = _SCHEMA_PREFIX + json.dumps(schema, sort_keys=True, separators=(",", ":"))
    if key not in cache:
        if _COMPILER_KEY not in cache:
            cache[_INFO_KEY] = tokenizer_info(tokenizer, vocab_size)
            cache[_COMPILER_KEY] = xgr.GrammarCompiler(cache[_INFO_KEY], max_threads=1)
        # No free whitespace: every byte the model spends goes to content, which is what
        # lets `pipeline.prompts.moderation` bound the answer's length in tokens.
        cache[key] = cache[_COMPILER_KEY].compile_json_schema(
            json.dumps(schema), any_whitespace=False, separators=(",", ":"), strict_mode=True
        )
    return cache[key]


def json_logits_processor(tokenizer: Any, vocab_size: int, schema: dict[str, Any], cache: dict[str, Any]) -> Any:
    """A fresh logits processor for one `generate` call that keeps every row inside `schema`."""
    import xgrammar as xgr

    return xgr.contrib.hf.LogitsProcessor(compiled_json_grammar(tokenizer, vocab_size, schema, cache))
