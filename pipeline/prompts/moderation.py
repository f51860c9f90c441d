"""Moderation answers: the JSON schema the model is held to, and its parsing into columns.

The model answers `{"flagged": bool, "categories": [...], "reason": "..."}`. Generation
is constrained to `answer_schema` (see `pipeline.models.grammar`), so even a random
model's answer parses; `parse_answer` still checks every answer, and a row whose answer
fails keeps its raw `text` and gets the error kind `invalid_output`.

Why the schema looks the way it does:
- `categories` is an array of the configured names (an enum) with at most one entry per
  name. xgrammar ignores `uniqueItems`, so repeats are possible and parsing drops them.
- `reason` is printable ASCII without `"` and `\\`, up to a length computed from
  `task.max_new_tokens`: xgrammar's JSON strings would otherwise admit raw control
  characters and invalid UTF-8, and nothing in a grammar forces the JSON to close before
  the token budget runs out. Every token the grammar allows is at least one byte, so an
  answer of at most `max_new_tokens - 1` bytes always ends, with its stop token, inside
  the budget.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.errors import error_text
from pipeline.spec import SpecError

FLAGGED, CATEGORIES, REASON = "flagged", "categories", "reason"
LABEL_SCHEMA = pa.schema([(FLAGGED, pa.bool_()), (CATEGORIES, pa.list_(pa.string())), (REASON, pa.string())])

# Columns of the model stage this module reads (named here to keep prompts/ free of the actors).
TEXT_COLUMN, ERROR_KIND_COLUMN, ERROR_COLUMN = "text", "error_kind", "error"
INVALID_OUTPUT = "invalid_output"

REASON_MAX_CHARS = 200  # one or two sentences; more only costs tokens
REASON_MIN_CHARS = 16  # below this a reason says nothing: ask for a bigger task.max_new_tokens
# Printable ASCII except '"' (0x22) and '\' (0x5C): no escapes, no control characters.
REASON_CHARACTERS = r"[ !#-\[\]-~]"
# xgrammar 0.2 fails to compile a counted repetition above 128 ({0,129} and up), and
# ignores maxLength next to a pattern; a run of {0,128} pieces admits the same strings.
REPEAT_LIMIT = 128
_EMPTY_ANSWER = '{"flagged":false,"categories":[],"reason":""}'
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


class InvalidAnswer(ValueError):
    """A moderation answer that does not fit the schema."""


@dataclass(frozen=True)
class ModerationLabels:
    """One row's validated labels."""

    flagged: bool
    categories: list[str]
    reason: str


def _json_bytes(value: str) -> int:
    """Bytes a string takes in the answer, escaped either way a grammar may write it."""
    return max(len(json.dumps(value).encode()), len(json.dumps(value, ensure_ascii=False).encode()))


def longest_answer_bytes(categories: list[str], reason_chars: int) -> int:
    """Bytes of the longest answer the schema admits (every category slot at its longest name)."""
    slots = len(categories)
    items = slots * max(_json_bytes(c) for c in categories) + max(0, slots - 1)
    return len(_EMPTY_ANSWER) + items + reason_chars


def reason_limit(categories: list[str], max_new_tokens: int) -> int:
    """Longest `reason` that lets every schema-valid answer end within `max_new_tokens`."""
    if not categories:
        raise SpecError("task.categories: moderation needs at least one category")
    room = max_new_tokens - 1 - longest_answer_bytes(categories, 0)  # 1: the stop token
    if room < REASON_MIN_CHARS:
        needed = longest_answer_bytes(categories, REASON_MIN_CHARS) + 1
        raise SpecError(
            f"task.max_new_tokens={max_new_tokens} is too small for a moderation answer with "
            f"{len(categories)} categories: it needs at least {needed} (the JSON with every category and a "
            f"{REASON_MIN_CHARS}-character reason); {longest_answer_bytes(categories, REASON_MAX_CHARS) + 1} "
            f"allows the full {REASON_MAX_CHARS}-character reason"
        )
    return min(REASON_MAX_CHARS, room)


def reason_pattern(max_chars: int) -> str:
    """A regular expression for 0 to `max_chars` reason characters, in pieces xgrammar compiles."""
    pieces = [REPEAT_LIMIT] * (max_chars // REPEAT_LIMIT) + (
        [max_chars % REPEAT_LIMIT] if max_chars % REPEAT_LIMIT else []
    )
    return "^" + "".join(f"{REASON_CHARACTERS}{{0,{count}}}" for count in pieces) + "$"


def answer_schema(categories: list[str], max_new_tokens: int) -> dict[str, Any]:
    """The JSON schema generation is constrained to."""
    return {
        "type": "object",
        "properties": {
            FLAGGED: {"type": "boolean"},
            CATEGORIES: {
                "type": "array",
                "items": {"type": "string", "enum": list(categories)},
                "maxItems": len(categories),
            },
            REASON: {"type": "string", "pattern": reason_pattern(reason_limit(categories, max_new_tokens))},
        },
        "required": [FLAGGED, CATEGORIES, REASON],
        "additionalProperties": False,
    }


def parse_answer(text: str, categories: list[str]) -> ModerationLabels:
    """Validate one answer into labels, or raise InvalidAnswer saying what is wrong.

    Accepts the JSON object alone or inside one Markdown code fence (what an
    unconstrained model tends to write); repeated categories are dropped, order kept.
    """
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    try:
        value = json.loads(body)
    except json.JSONDecodeError as error:
        raise InvalidAnswer(f"not a JSON object ({error.msg} at character {error.pos})") from None
    if not isinstance(value, dict):
        raise InvalidAnswer(f"expected a JSON object, got {type(value).__name__}")
    keys = {FLAGGED, CATEGORIES, REASON}
    if set(value) != keys:
        missing, extra = sorted(keys - set(value)), sorted(set(value) - keys)
        raise InvalidAnswer(
            "expected exactly the keys flagged, categories, reason"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unexpected {', '.join(extra)}" if extra else "")
        )
    flagged, found, reason = value[FLAGGED], value[CATEGORIES], value[REASON]
    if not isinstance(flagged, bool):
        raise InvalidAnswer(f"'flagged' must be true or false, got {flagged!r}")
    if not isinstance(found, list) or not all(isinstance(c, str) for c in found):
        raise InvalidAnswer(f"'categories' must be a list of strings, got {found!r}")
    unknown = [c for c in found if c not in categories]
    if unknown:
        raise InvalidAnswer(f"'categories' has {unknown!r}, not among the configured {categories!r}")
    if not isinstance(reason, str):
        raise InvalidAnswer(f"'reason' must be a string, got {reason!r}")
    return ModerationLabels(flagged=flagged, categories=list(dict.fromkeys(found)), reason=reason)


def add_label_columns(batch: pa.Table, categories: list[str]) -> pa.Table:
    """Append `flagged`, `categories`, `reason`; a row whose answer fails keeps its text and gets
    `invalid_output`. Rows with an error or without an answer get null labels."""
    texts = batch.column(TEXT_COLUMN).to_pylist()
    kinds = batch.column(ERROR_KIND_COLUMN).to_pylist()
    errors = batch.column(ERROR_COLUMN).to_pylist()
    labels: list[ModerationLabels | None] = []
    for index, text in enumerate(texts):
        if text is None or kinds[index]:
            labels.append(None)
            continue
        try:
            labels.append(parse_answer(text, categories))
        except InvalidAnswer as problem:
            labels.append(None)
            kinds[index], errors[index] = INVALID_OUTPUT, error_text(INVALID_OUTPUT, str(problem))
    columns = {
        FLAGGED: [label.flagged if label else None for label in labels],
        CATEGORIES: [label.categories if label else None for label in labels],
        REASON: [label.reason if label else None for label in labels],
    }
    out = batch
    for name in (ERROR_KIND_COLUMN, ERROR_COLUMN):
        values = kinds if name == ERROR_KIND_COLUMN else errors
        out = out.set_column(out.column_names.index(name), name, pa.array(values, type=pa.string()))
    for name, values in columns.items():
        out = out.append_column(name, pa.array(values, type=LABEL_SCHEMA.field(name).type))
    return out
