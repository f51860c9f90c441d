"""Row errors as data: a short kind for grouping plus a message for people.

A row whose input is bad is never an exception that escapes a stage: the stage catches
the narrow failure it expects, turns it into a `RowError`, and the row flows on with the
`error_kind` and `error` columns set. Job-level problems are `JobError`s and stop the
run before any model loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.storage import redact

# Python object reprs such as `<_io.BytesIO object at 0x7f...>`, which some libraries put in
# their messages (Pillow's "cannot identify image file <_io.BytesIO object at 0x...>"). They
# mean nothing to a reader of the output and differ on every run, so they never reach a row.
_OBJECT_REPR = re.compile(r"\s*<[^<>\s]+ object at 0x[0-9a-fA-F]+>")


class JobError(RuntimeError):
    """A problem with the job as a whole (spec, manifest, cluster, model): fail fast."""


class RunFailed(JobError):
    """A run that started but could not finish (the cluster failed under it, a bug, shards left
    incomplete). What was written is kept; re-running the same command resumes. The CLI exits
    with 1 for these, 2 for problems found before any work started."""


@dataclass
class RowError(Exception):
    """A problem with one row; `kind` is a short stable identifier, `message` says what and why."""

    kind: str
    message: str

    def __str__(self) -> str:
        return error_text(self.kind, self.message)


# The kinds a row error can have, with what each means; the README's table is built from it.
ERROR_KINDS: dict[str, str] = {
    "empty_uri": "the row has neither a uri, inline bytes nor a prompt",
    "unsupported_uri": "the uri's scheme is not a local path or s3://",
    "missing": "the file or object does not exist",
    "is_directory": "the uri names a directory",
    "not_a_file": "the uri names a pipe, socket or device, which could block or never end",
    "access_denied": "the file or object exists but may not be read",
    "fetch_error": "reading the bytes failed after retries",
    "too_large": "the file is larger than preprocess.max_file_bytes",
    "empty_file": "the file has zero bytes",
    "decode_error": "the bytes are not an image or video that can be decoded",
    "image_too_large": "the image has more pixels than preprocess.max_image_pixels (decompression bomb)",
    "bad_video": "the video has no frames, no video stream, or cannot be decoded",
    "frame_range": "the row's start/end window lies outside the clip",
    "unknown_media": "the media type is neither image nor video",
    "bad_row": "a manifest value has the wrong type or form",
    "prompt_error": "the prompt does not fit the row (placeholders vs images)",
    "context_too_long": "the prompt is longer than the model's context window",
    "oom": "out of memory even for this row alone",
    "model_error": "the model failed on this row after retries",
    "worker_died": "the worker process died (crash, out-of-memory kill, row_timeout_s) every time it took this row",
    "internal_error": "an unexpected exception in the pipeline's own code on this row (a bug: please report it)",
    "invalid_output": "the answer did not validate against the task's schema (raw text kept)",
}


def clean_message(text: str) -> str:
    """A message fit for the output: credentials and Python object reprs removed."""
    return _OBJECT_REPR.sub("", redact(text))


def describe_exception(error: BaseException) -> str:
    """'TypeName: message' for an exception raised by a library on untrusted input, cleaned
    (see `clean_message`) so that the row's error says what failed and nothing run-specific."""
    text = clean_message(str(error)).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def error_text(kind: str, message: str) -> str:
    """The `error` column's value: 'kind: message', with credentials and object reprs removed."""
    return f"{kind}: {clean_message(message)}"
