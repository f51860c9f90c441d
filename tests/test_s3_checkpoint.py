"""Model checkpoints on S3: tiny-random saved to a loopback S3 API, loaded from s3://, downloaded
once per node under a lock, reused while unchanged, partly refreshed when partly changed."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from pipeline.errors import JobError
from pipeline.models.s3_checkpoint import check_checkpoint_prefix, download_checkpoint
from pipeline.models.tiny_random import ensure_tiny_random
from pipeline.spec import StorageSpec

PREFIX = "models/tiny random ü/v1"


@pytest.fixture
def checkpoint(s3, request, model_cache: Path) -> tuple[str, StorageSpec, Path]:
    """tiny-random uploaded under a prefix with a space and unicode; returns (uri, storage, local source)."""
    bucket = "ck-" + request.node.name.replace("_", "-")[:40].lower().strip("-")
    s3.bucket(bucket)
    source = ensure_tiny_random()
    uri = s3.upload_dir(source, bucket, PREFIX)
    s3.put(bucket, "models/tiny random ü/v1-other/config.json", b"{}")  # a sibling prefix must not leak in
    return uri, StorageSpec(endpoint_url=s3.endpoint), source


def inodes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_ino for p in folder.rglob("*") if p.is_file()}


def test_download_then_reuse_then_partial_refresh(s3, checkpoint, tmp_path: Path, caplog):
    uri, storage, source = checkpoint
    caplog.set_level(logging.INFO, logger="pipeline.models.s3_checkpoint")
    copy = download_checkpoint(uri, storage, str(tmp_path / "cache"))
    expected = {p.name: p.read_bytes() for p in source.iterdir() if p.is_file()}
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == expected
    first = inodes(copy)
    # Unchanged: the same files, nothing downloaded.
    caplog.clear()
    assert download_checkpoint(uri, storage, str(tmp_path / "cache")) == copy
    assert inodes(copy) == first and "reusing the cached copy" in caplog.text and "downloading" not in caplog.text
    # One file changed upstream: only it is fetched again; the others are the same files.
    bucket, _, key = uri[len("s3://") :].partition("/")
    s3.put(bucket, f"{key}/tokenizer_config.json", b'{"changed": true}')
    caplog.clear()
    download_checkpoint(uri, storage, str(tmp_path / "cache"))
    assert "downloading 1 of 6 checkpoint files" in caplog.text
    now = inodes(copy)
    assert (copy / "tokenizer_config.json").read_bytes() == b'{"changed": true}'
    assert now["tokenizer_config.json"] != first["tokenizer_config.json"]
    assert {k: v for k, v in now.items() if k != "tokenizer_config.json"} == {
        k: v for k, v in first.items() if k != "tokenizer_config.json"
    }
    # A damaged cache (a file deleted) is repaired.
    (copy / "config.json").unlink()
    download_checkpoint(uri, storage, str(tmp_path / "cache"))
    assert (copy / "config.json").read_bytes() == (source / "config.json").read_bytes()


def test_concurrent_callers_download_once(checkpoint, tmp_path: Path, caplog):
    uri, storage, _ = checkpoint
    caplog.set_level(logging.INFO, logger="pipeline.models.s3_checkpoint")
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(download_checkpoint(uri, storage, str(tmp_path / "c"))))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3 and len(set(results)) == 1
    assert caplog.text.count("downloading ") == 1 and caplog.text.count("reusing the cached copy") == 2


def test_checks_on_the_driver(s3, checkpoint):
    uri, storage, _ = checkpoint
    check_checkpoint_prefix(uri, storage)
    check_checkpoint_prefix(uri + "/", storage)
    bucket = uri[len("s3://") :].split("/")[0]
    with pytest.raises(JobError, match="nothing found under"):
        check_checkpoint_prefix(f"s3://{bucket}/models/typo", storage)
    with pytest.raises(JobError, match=r"no config\.json at its top level"):
        check_checkpoint_prefix(f"s3://{bucket}/models", storage)
    s3.put(bucket, "configs-only/config.json", b"{}")
    with pytest.raises(JobError, match="no weights"):
        check_checkpoint_prefix(f"s3://{bucket}/configs-only", storage)
    with pytest.raises(JobError, match=r"does not exist|nothing found"):
        check_checkpoint_prefix("s3://no-such-model-bucket/m", storage)


def test_loads_from_s3_with_the_same_weights(checkpoint, tmp_path: Path, monkeypatch):
    import torch

    from pipeline.models.loading import load_engine
    from pipeline.spec import ModelSpec

    uri, storage, _ = checkpoint
    from_s3 = load_engine(ModelSpec(name=uri, cache_dir=str(tmp_path / "cache")), storage)
    local = load_engine(ModelSpec(name="tiny-random"))
    s3_state, local_state = from_s3.model.state_dict(), local.model.state_dict()
    assert s3_state.keys() == local_state.keys()
    assert all(torch.equal(s3_state[name], local_state[name]) for name in s3_state)
