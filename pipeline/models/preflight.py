"""A cheap check, on the driver, that the model can be found before any actor starts.

It fetches at most the checkpoint's config.json, so a typo in model.name or an
unreachable hub fails in seconds with one message instead of inside every actor. A local
checkpoint directory is checked further without loading a single weight: config.json must
parse, a tokenizer and weights must be there, and every safetensors file's header must
parse and fit in the file (a copy cut short is the commonest corrupt checkpoint).
"""

from __future__ import annotations

import json
import os
import struct
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
        check_checkpoint_dir(path, name, spec.model.trust_remote_code)
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


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


def check_checkpoint_dir(path: Path, name: str, trust_remote_code: bool = False) -> None:
    """Fail with one message if a local checkpoint directory cannot possibly load."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise JobError(
            f"model.name: {name}/config.json is not valid JSON ({error}); the checkpoint is corrupt"
        ) from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise JobError(f"model.name: {name}/config.json has no model_type; it is not a transformers checkpoint")
    if config["model_type"] == "internvl_chat" and not trust_remote_code:
        raise JobError(
            f"model.name: {name} is an original-format InternVL checkpoint, which runs code from the model "
            "repository. Use the -hf checkpoint instead (e.g. OpenGVLab/InternVL3-8B-hf), or set "
            "model.trust_remote_code: true if you trust it"
        )
    if not any((path / file).is_file() for file in TOKENIZER_FILES):
        raise JobError(f"model.name: {name} has no tokenizer ({', '.join(TOKENIZER_FILES)}); copy it with the weights")
    weights = sorted(path.glob("*.safetensors"))
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, AttributeError) as error:
            raise JobError(
                f"model.name: {index} is not a valid weight index ({error}); the checkpoint is corrupt: copy or "
                "download it again"
            ) from None
        absent = sorted(shard for shard in shards if not (path / shard).is_file())
        if absent:
            raise JobError(
                f"model.name: {name} lacks weight files named in its index: {', '.join(absent[:5])}; copy them "
                "beside the index, or download the checkpoint again"
            )
    if not weights and not list(path.glob("pytorch_model*.bin")):
        raise JobError(
            f"model.name: {name} has no weights (*.safetensors or pytorch_model*.bin); copy them beside its config.json"
        )
    for file in weights:
        check_safetensors(file)


def check_safetensors(file: Path) -> None:
    """The header parses and the tensors it declares fit in the file (reads the header only)."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > min(size - 8, MAX_SAFETENSORS_HEADER):
                raise ValueError(f"header length {length} does not fit in a file of {size} bytes")
            header = json.loads(handle.read(length).decode("utf-8"))
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, struct.error, ValueError, UnicodeDecodeError, KeyError, TypeError, IndexError) as error:
        raise JobError(
            f"model.name: {file} is not a valid safetensors file ({error}); the checkpoint is corrupt"
        ) from None
    if 8 + length + end > size:
        raise JobError(
            f"model.name: {file} is truncated: its header declares {8 + length + end} bytes, the file has {size}. "
            "Copy or download the checkpoint again"
        )
