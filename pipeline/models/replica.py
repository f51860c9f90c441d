"""One model replica for the GPU stage: a single engine, or a tensor-parallel gang."""

from __future__ import annotations

from pipeline.models.engine import Engine
from pipeline.spec import JobSpec


def load_replica(spec: JobSpec) -> Engine:
    """The engine a GPU-stage actor drives: in-process for tensor_parallel 1, else a gang of rank actors."""
    if spec.model.tensor_parallel > 1:
        from pipeline.models.tensor_parallel import TensorParallelEngine

        return TensorParallelEngine(spec)
    from pipeline.models.loading import load_engine

    return load_engine(spec.model, spec.storage)
