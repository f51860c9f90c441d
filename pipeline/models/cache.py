"""The local model cache and the lock that keeps actors on one node from building or
downloading the same model twice."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


def cache_root(cache_dir: str | None = None) -> Path:
    """The cache directory: model.cache_dir, else $PIPELINE_CACHE_DIR, else ~/.cache/internvl-pipeline."""
    root = (
        cache_dir
        or os.environ.get("PIPELINE_CACHE_DIR")
        or os.path.join(os.path.expanduser("~"), ".cache", "internvl-pipeline")
    )
    return Path(root)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path`, held for the block (released if the holder dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
