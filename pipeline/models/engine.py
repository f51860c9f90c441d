"""The engine interface: what the GPU stage needs from a model replica.

An engine turns prompt strings into token ids (`encode`) and runs one batch of encoded
requests through batched generation (`generate`). The stage owns everything around it
(which rows, in which micro-batches, retries, out-of-memory back-off), so a new engine -
a tensor-parallel gang, a no-model engine for benchmarks - is one class with two methods.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class GenerationOptions:
    """Decoding settings shared by every row of a job."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int = 0
    json_schema: dict[str, Any] | None = None  # grammar-constrained decoding when set
    fixed_length: bool = False  # ignore the stop token (dummy models: meaningful throughput)


@dataclass
class EncodedRequest:
    """One row ready for the model: its token ids and its tiles (uint8, N x 448 x 448 x 3)."""

    input_ids: list[int]
    tiles: np.ndarray | None = None

    @property
    def num_tokens(self) -> int:
        """Prompt length in tokens."""
        return len(self.input_ids)


@dataclass
class GenerationResult:
    """The answer to one row."""

    text: str | None
    prompt_tokens: int
    output_tokens: int
    finish_reason: str  # "stop", "length", or "none" for the no-model engine
    token_ids: list[int] = field(default_factory=list)


class OutOfMemory(RuntimeError):
    """A batch did not fit in accelerator memory; the stage retries it in smaller pieces."""


class Engine(ABC):
    """One model replica."""

    #: Name recorded in the output's `model` column.
    name: str = "engine"
    #: Longest prompt + answer the model accepts, in tokens.
    max_context: int = 32768

    @abstractmethod
    def encode(self, prompts: list[str]) -> list[list[int]]:
        """Token ids of each prompt (no special tokens added: the prompt carries its own)."""

    @abstractmethod
    def generate(self, batch: list[EncodedRequest], options: GenerationOptions) -> list[GenerationResult]:
        """Answer a batch; raise OutOfMemory if it does not fit."""

    def peak_memory_bytes(self) -> int | None:
        """Most accelerator memory this replica has held (for the run summary); None off CUDA."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release the replica's resources (default: nothing to do)."""
