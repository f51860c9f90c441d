"""A cheap check, on the driver, that the model can be found before any actor starts.

It fetches at most the checkpoint's config.json, so a typo in model.name or an
unreachable hub fails in seconds with one message instead of inside every actor.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.errors import JobError
from pipeline.models.loading import DUMMY_PREFIX, NO_MODEL, TINY_RANDOM
from pipeline.spec import JobSpec


def preflight_model(spec: JobSpec) -> None:
    """Fail fast if `model.name` names nothing that can be loaded."""
    name = spec.model.name
    if name in (TINY_RANDOM, NO_MODEL) or name.startswith(DUMMY_PREFIX):
        return
    if name.startswith(("s3://", "s3a://")):
        from pipeline.models.s3_checkpoint import check_checkpoint_prefix

        check_checkpoint_prefix(name, spec.storage)
        return
    path = Path(os.path.expanduser(name))
    if path.exists() or name.startswith(("/", "./", "../", "~")):
        if not (path / "config.json").is_file():
            raise JobError(f"model.name: {name} is not a checkpoint directory (no config.json there)")
        return
    try:
        from transformers.utils import cached_file

        cached_file(name, "config.json", revision=spec.model.revision)
    except OSError as error:
        raise JobError(
            f"model.name: cannot find {name!r} on the model hub or in the local hub cache "
            f"({str(error).splitlines()[0]}). Check the id (e.g. OpenGVLab/InternVL3-2B-hf), the network, "
            "or point model.name at a local checkpoint directory"
        ) from None
