"""The GPU stage: a Ray Data callable class holding one model replica.

Per Ray batch: rows that arrive with an error pass through untouched; the others get their
exact prompt (internvl2_5 template, image runs expanded), are tokenized, grouped into
micro-batches of similar length within `model.batch_size` and `model.max_batch_tokens`,
and generated. A micro-batch that runs out of memory is split in halves and retried down
to single rows before a row gets an `oom` error; a row the model fails on gets a
`model_error` after the same splitting, and the job goes on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.actors.batching import plan_batches
from pipeline.actors.preprocess import ERROR, ERROR_KIND, QUERY, TILES, TILES_PER_IMAGE
from pipeline.actors.tiling import TILE_SIZE
from pipeline.errors import error_text
from pipeline.models.engine import EncodedRequest, Engine, GenerationOptions, GenerationResult, OutOfMemory
from pipeline.prompts.template import DEFAULT_SYSTEM_MESSAGE, PromptError, build_prompt
from pipeline.readers.manifest import ID
from pipeline.schema import require_columns
from pipeline.spec import JobSpec

TEXT, PROMPT, PROMPT_TOKENS, OUTPUT_TOKENS, FINISH_REASON, MODEL, TASK, GENERATE_S = (
    "text",
    "prompt",
    "prompt_tokens",
    "output_tokens",
    "finish_reason",
    "model",
    "task",
    "generate_s",
)

GENERATE_SCHEMA = pa.schema(
    [
        (TEXT, pa.string()),
        (PROMPT_TOKENS, pa.int32()),
        (OUTPUT_TOKENS, pa.int32()),
        (FINISH_REASON, pa.string()),
        (MODEL, pa.string()),
        (TASK, pa.string()),
        (GENERATE_S, pa.float64()),
    ]
)


def generation_options(spec: JobSpec) -> GenerationOptions:
    """Decoding settings of a (resolved) spec."""
    assert spec.task.max_new_tokens is not None, "resolve_spec() fills task.max_new_tokens"
    schema = None
    fixed_length = spec.model.name.startswith("dummy:")
    # A dummy model writes exactly max_new_tokens tokens, which a grammar that ends the JSON
    # with the stop token cannot allow: benchmarks of moderation run unconstrained.
    if spec.task.kind == "moderation" and not fixed_length:
        from pipeline.prompts.moderation import answer_schema

        schema = answer_schema(spec.task.categories, spec.task.max_new_tokens)
    return GenerationOptions(
        max_new_tokens=spec.task.max_new_tokens,
        temperature=spec.task.temperature,
        top_p=spec.task.top_p,
        top_k=spec.task.top_k,
        repetition_penalty=spec.task.repetition_penalty,
        seed=spec.task.seed,
        json_schema=schema,
        fixed_length=fixed_length,
    )


def system_message(spec: JobSpec) -> str | None:
    """The system turn: InternVL's default unless the spec sets one ('' drops it)."""
    message = spec.task.system_message
    return DEFAULT_SYSTEM_MESSAGE if message is None else (message or None)


def tiles_from_bytes(data: bytes | None) -> np.ndarray | None:
    """The uint8 tiles the CPU stage packed into one binary value."""
    if not data:
        return None
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, TILE_SIZE, TILE_SIZE, 3)


class RowOutcome:
    """Where one row stands in the stage: its answer or its error."""

    __slots__ = ("error", "error_kind", "result", "seconds")

    def __init__(self) -> None:
        self.result: GenerationResult | None = None
        self.error_kind: str | None = None
        self.error: str | None = None
        self.seconds = 0.0


def generate_with_backoff(
    run: Callable[[list[int]], list[GenerationResult]],
    indices: list[int],
    outcomes: dict[int, RowOutcome],
) -> None:
    """Run a micro-batch; on out-of-memory or a model failure split it and retry, down to single rows."""
    started = time.perf_counter()
    try:
        results = run(indices)
    except OutOfMemory as error:
        if len(indices) == 1:
            outcome = outcomes[indices[0]]
            outcome.error_kind, outcome.error = "oom", error_text("oom", f"out of memory for this row alone: {error}")
            return
        _split(run, indices, outcomes)
        return
    except (RuntimeError, ValueError, IndexError) as error:  # a model failure on some row of this batch
        if len(indices) == 1:
            outcome = outcomes[indices[0]]
            message = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            outcome.error_kind, outcome.error = "model_error", error_text("model_error", message)
            return
        _split(run, indices, outcomes)
        return
    share = (time.perf_counter() - started) / len(indices)
    for index, result in zip(indices, results, strict=True):
        outcomes[index].result = result
        outcomes[index].seconds = share


def _split(
    run: Callable[[list[int]], list[GenerationResult]], indices: list[int], outcomes: dict[int, RowOutcome]
) -> None:
    middle = len(indices) // 2
    generate_with_backoff(run, indices[:middle], outcomes)
    generate_with_backoff(run, indices[middle:], outcomes)


class Generator:
    """The stage's logic around an engine, usable without Ray (tests, benchmarks)."""

    REQUIRED_COLUMNS = (ID, QUERY, TILES, TILES_PER_IMAGE, ERROR_KIND, ERROR)

    def __init__(self, spec: JobSpec, engine: Engine) -> None:
        self.spec = spec
        self.engine = engine
        self.options = generation_options(spec)
        self.system_message = system_message(spec)

    def __call__(self, batch: pa.Table) -> pa.Table:
        require_columns("generate", batch, self.REQUIRED_COLUMNS)
        outcomes = {index: RowOutcome() for index in range(batch.num_rows)}
        prompts: list[str | None] = []
        for index, (query, per_image, error) in enumerate(
            zip(
                batch.column(QUERY).to_pylist(),
                batch.column(TILES_PER_IMAGE).to_pylist(),
                batch.column(ERROR_KIND).to_pylist(),
                strict=True,
            )
        ):
            prompt = None
            if not error and query is not None:
                try:
                    prompt = build_prompt(query, per_image or [], self.system_message)
                except PromptError as problem:
                    outcomes[index].error_kind = "prompt_error"
                    outcomes[index].error = error_text("prompt_error", str(problem))
            prompts.append(prompt)
        todo = [i for i, p in enumerate(prompts) if p is not None]
        requests: dict[int, EncodedRequest] = {}
        if todo:
            tile_column = batch.column(TILES)
            encoded = self.engine.encode([prompts[i] for i in todo])  # type: ignore[misc]
            budget = self.engine.max_context - self.options.max_new_tokens
            for index, ids in zip(todo, encoded, strict=True):
                if len(ids) > budget:
                    outcomes[index].error_kind = "context_too_long"
                    outcomes[index].error = error_text(
                        "context_too_long",
                        f"the prompt has {len(ids)} tokens; with task.max_new_tokens={self.options.max_new_tokens} "
                        f"the model's context of {self.engine.max_context} allows {budget}; lower preprocess.max_tiles",
                    )
                    continue
                requests[index] = EncodedRequest(ids, tiles_from_bytes(tile_column[index].as_py()))
        ready = sorted(requests)
        lengths = [requests[i].num_tokens for i in ready]

        def run(indices: list[int]) -> list[GenerationResult]:
            return self.engine.generate([requests[i] for i in indices], self.options)

        for micro in plan_batches(lengths, self.spec.model.batch_size, self.spec.model.max_batch_tokens):
            generate_with_backoff(run, [ready[i] for i in micro], outcomes)
        return self._columns(batch, outcomes, prompts)

    def _columns(self, batch: pa.Table, outcomes: dict[int, RowOutcome], prompts: list[str | None]) -> pa.Table:
        rows = [outcomes[i] for i in range(batch.num_rows)]
        kinds = batch.column(ERROR_KIND).to_pylist()
        errors = batch.column(ERROR).to_pylist()
        for index, outcome in enumerate(rows):
            if outcome.error_kind and not kinds[index]:
                kinds[index], errors[index] = outcome.error_kind, outcome.error
        columns: dict[str, list[Any]] = {
            TEXT: [o.result.text if o.result else None for o in rows],
            PROMPT_TOKENS: [o.result.prompt_tokens if o.result else None for o in rows],
            OUTPUT_TOKENS: [o.result.output_tokens if o.result else None for o in rows],
            FINISH_REASON: [
                o.result.finish_reason if o.result else ("error" if kinds[i] else None) for i, o in enumerate(rows)
            ],
            MODEL: [self.engine.name] * batch.num_rows,
            TASK: [self.spec.task.kind] * batch.num_rows,
            GENERATE_S: [o.seconds for o in rows],
        }
        out = batch.drop_columns([TILES, ERROR_KIND, ERROR])
        for name, values in columns.items():
            out = out.append_column(name, pa.array(values, type=GENERATE_SCHEMA.field(name).type))
        out = out.append_column(ERROR_KIND, pa.array(kinds, type=pa.string()))
        out = out.append_column(ERROR, pa.array(errors, type=pa.string()))
        if self.spec.output.include_prompt:
            out = out.append_column(PROMPT, pa.array(prompts, type=pa.string()))
        return out


# Internal columns (dropped by the writer) that carry each replica's peak GPU memory to
# the driver's summary along with the rows; the peak is None off CUDA.
REPLICA, GPU_PEAK_BYTES = "_replica", "_gpu_peak_bytes"


def replica_name() -> str:
    """'host:gpu0' (or 'host:pid123' without a GPU): which replica answered, for the summary."""
    import socket

    import ray

    gpus = ray.get_runtime_context().get_accelerator_ids().get("GPU") or []
    where = f"gpu{','.join(str(g) for g in gpus)}" if gpus else f"pid{os.getpid()}"
    return f"{socket.gethostname()}:{where}"


def with_replica_columns(batch: pa.Table, replica: str, peak_bytes: int | None) -> pa.Table:
    """Tag every row of a batch with the replica and its current peak memory."""
    batch = batch.append_column(REPLICA, pa.array([replica] * batch.num_rows, type=pa.string()))
    return batch.append_column(GPU_PEAK_BYTES, pa.array([peak_bytes] * batch.num_rows, type=pa.int64()))


class GenerateStage:
    """Ray Data callable class for the model actor pool: one replica per actor.

    Calls go through a `StageGuard` (see `pipeline.actors.guard`): a row that kills the
    replica's process every time, or raises something unforeseen, becomes an error row.
    """

    def __init__(self, spec: JobSpec, ledger: Any | None = None) -> None:
        from pipeline.actors.guard import StageGuard
        from pipeline.heap import keep_freed_memory
        from pipeline.models.replica import load_replica

        keep_freed_memory()  # each row's large buffers reuse the last row's pages
        self.generator = Generator(spec, load_replica(spec))
        self.replica = replica_name()
        self.guard = StageGuard("generate", self.generator, self.failed, ledger, spec.model.max_retries)

    def __call__(self, batch: pa.Table) -> pa.Table:
        answered = self.guard(batch)
        return with_replica_columns(answered, self.replica, self.generator.engine.peak_memory_bytes())

    def failed(self, batch: pa.Table, kind: str, message: str) -> pa.Table:
        """The stage's output for rows that get an error without reaching the model."""
        rows = batch.num_rows
        marked = batch.set_column(
            batch.schema.get_field_index(ERROR_KIND), ERROR_KIND, pa.array([kind] * rows, type=pa.string())
        )
        marked = marked.set_column(
            marked.schema.get_field_index(ERROR),
            ERROR,
            pa.array([error_text(kind, message)] * rows, type=pa.string()),
        )
        return self.generator(marked)  # rows with an error pass through without the model
