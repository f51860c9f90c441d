"""Model checkpoints on S3: downloaded once per node into the local cache, reused while unchanged.

`model.name: s3://bucket/models/InternVL3-8B-hf/` names a prefix holding a checkpoint
directory (config.json, weights, tokenizer files). Every model actor calls
`download_checkpoint`; the first one on a node downloads while holding a file lock, the
others wait on the lock and then find the copy ready. Beside the copy we keep
`download.json`: the listing (relative path, size, ETag) it was made from. A later run
lists the prefix again (one request per 1,000 files) and reuses the copy when the listing
is the same; when only some files changed (a new tokenizer, one re-uploaded shard), only
those are downloaded and the unchanged ones are hard-linked from the old copy. A copy is
built in a staging folder and swapped in with a rename, so a crash never leaves a
half-written checkpoint where a loader would find it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import JobError
from pipeline.models.cache import cache_root, file_lock
from pipeline.spec import StorageSpec
from pipeline.storage import RETRYABLE, classify, describe, filesystem_for, s3_settings, storage_exceptions

logger = logging.getLogger(__name__)

RECORD_FILE = "download.json"
COPY_DIR = "checkpoint"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
DOWNLOAD_THREADS = 8
DOWNLOAD_RETRIES = 3


@dataclass(frozen=True)
class RemoteFile:
    """One object of the checkpoint prefix, as the listing describes it."""

    size: int
    etag: str


def list_checkpoint(uri: str, storage: StorageSpec | None) -> dict[str, RemoteFile]:
    """The files under the prefix, by path relative to it (folder markers left out)."""
    fs, root = filesystem_for(uri.rstrip("/"), storage)
    try:
        found: dict[str, dict[str, Any]] = fs.find(root, detail=True)
    except storage_exceptions() as error:
        raise JobError(f"model.name: cannot list {uri}: {describe(error, uri, storage)}") from None
    files: dict[str, RemoteFile] = {}
    for key, info in found.items():
        if info.get("type") != "file" or key.endswith("/"):
            continue
        relative = key[len(root) :].lstrip("/")
        if not relative:
            raise JobError(f"model.name: {uri} is a single object; point it at the prefix holding the checkpoint")
        if any(part in ("", ".", "..") for part in relative.split("/")):
            raise JobError(f"model.name: {uri} holds an object with an unsafe name ({relative!r}); rename it")
        etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
        files[relative] = RemoteFile(size=int(info.get("size") or 0), etag=etag)
    return files


def _check_listing(uri: str, files: dict[str, RemoteFile]) -> None:
    if not files:
        raise JobError(
            f"model.name: nothing found under {uri}; check the bucket and prefix (a checkpoint directory with "
            "config.json and the weights)"
        )
    if "config.json" not in files:
        sample = ", ".join(sorted(files)[:8])
        raise JobError(
            f"model.name: {uri} holds no config.json at its top level (found: {sample}); point it at the folder "
            "that holds the checkpoint"
        )
    if not any(name.endswith(WEIGHT_SUFFIXES) for name in files):
        raise JobError(
            f"model.name: {uri} has a config.json but no weights (*.safetensors or *.bin); upload them beside "
            "its config.json"
        )


def check_checkpoint_prefix(uri: str, storage: StorageSpec | None) -> None:
    """On the driver, before any actor starts: the prefix can be listed and holds a checkpoint."""
    _check_listing(uri, list_checkpoint(uri, storage))


def cache_folder(uri: str, storage: StorageSpec | None, cache_dir: str | None) -> Path:
    """Where the copy of `uri` lives: readable tail plus a digest of endpoint and uri."""
    endpoint = s3_settings(storage).endpoint_url or "aws"
    normalised = uri.rstrip("/").replace("s3a://", "s3://", 1)
    digest = hashlib.sha1(f"{endpoint}|{normalised}".encode()).hexdigest()[:16]
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", normalised.rsplit("/", 1)[-1])[:60] or "checkpoint"
    return cache_root(cache_dir) / "s3" / f"{tail}-{digest}"


def _read_record(path: Path) -> dict[str, RemoteFile] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {name: RemoteFile(**entry) for name, entry in data["files"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_record(path: Path, uri: str, files: dict[str, RemoteFile]) -> None:
    data = {
        "uri": uri,
        "downloaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": {name: asdict(entry) for name, entry in sorted(files.items())},
    }
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    temporary.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _copy_is_complete(copy: Path, files: dict[str, RemoteFile]) -> bool:
    for name, entry in files.items():
        try:
            if (copy / name).stat().st_size != entry.size:
                return False
        except OSError:
            return False
    return True


class _IncompleteDownload(OSError):
    """A download that ended with fewer (or more) bytes than the listing promised."""


def _download_one(fs: Any, remote: str, local: Path, size: int, uri: str, storage: StorageSpec | None) -> None:
    local.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(DOWNLOAD_RETRIES + 1):
        try:
            fs.get_file(remote, str(local))
            actual = local.stat().st_size
            if actual != size:
                raise _IncompleteDownload(f"downloaded {actual} bytes of {size}")
            return
        except storage_exceptions() as error:
            retryable = isinstance(error, _IncompleteDownload) or classify(error) in RETRYABLE
            if not retryable or attempt == DOWNLOAD_RETRIES:
                raise JobError(f"model.name: cannot download {remote}: {describe(error, uri, storage)}") from None
            time.sleep(0.5 * 2**attempt)


def _sync(
    uri: str,
    storage: StorageSpec | None,
    folder: Path,
    remote: dict[str, RemoteFile],
    previous: dict[str, RemoteFile] | None,
) -> Path:
    """Build a fresh copy in a staging folder (linking unchanged files) and swap it in."""
    fs, root = filesystem_for(uri.rstrip("/"), storage)
    copy, record = folder / COPY_DIR, folder / RECORD_FILE
    staging = folder / f".staging-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        todo: list[str] = []
        for name, entry in remote.items():
            old = copy / name
            unchanged = previous is not None and previous.get(name) == entry
            if unchanged and old.is_file() and old.stat().st_size == entry.size:
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                os.link(old, staging / name)
            else:
                todo.append(name)
        total = sum(remote[name].size for name in todo)
        logger.warning(
            "downloading %d of %d checkpoint files (%.1f MB) from %s to %s",
            len(todo),
            len(remote),
            total / 1e6,
            uri,
            copy,
        )
        with ThreadPoolExecutor(max_workers=DOWNLOAD_THREADS) as pool:
            jobs = [
                pool.submit(_download_one, fs, f"{root}/{name}", staging / name, remote[name].size, uri, storage)
                for name in todo
            ]
            for job in jobs:
                job.result()
        # The record goes first: a crash between the two renames must not leave an old
        # record describing a new copy.
        record.unlink(missing_ok=True)
        retired = folder / f".retired-{uuid.uuid4().hex}"
        if copy.exists():
            os.rename(copy, retired)
        os.rename(staging, copy)
        _write_record(record, uri, remote)
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return copy


def download_checkpoint(uri: str, storage: StorageSpec | None, cache_dir: str | None = None) -> Path:
    """A local directory holding the checkpoint at `uri`: the cached copy if unchanged, else a fresh one.

    Safe to call from many processes on one node at once: one downloads, the others wait
    and reuse its copy.
    """
    folder = cache_folder(uri, storage, cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder.with_name(folder.name + ".lock")):
        remote = list_checkpoint(uri, storage)
        _check_listing(uri, remote)
        previous = _read_record(folder / RECORD_FILE)
        copy = folder / COPY_DIR
        if previous == remote and _copy_is_complete(copy, remote):
            logger.info("reusing the cached copy of %s in %s", uri, copy)
            return copy
        return _sync(uri, storage, folder, remote, previous)
