"""Bytes from any fsspec uri, with retries for transient failures.

One request per object on the happy path: a ranged read of at most `max_bytes + 1`
bytes both fetches the object and enforces the size limit (no HEAD first; on S3 that
halves the requests for millions of small images). Only when the read fails do we look
closer (one `info` call) to tell a missing object from a folder or an empty file.

Permanent failures (missing object, access denied, a folder, too large, empty) become row
errors at once; transient ones (connection refused or reset, timeouts, throttling, 5xx)
are retried with exponential backoff and jitter - on top of the S3 client's own retries
(`storage.max_attempts`) - and become a `fetch_error` naming the attempts if they persist.
"""

from __future__ import annotations

import errno
import os
import random
import stat
import time
from typing import TYPE_CHECKING

from pipeline.errors import JobError, RowError
from pipeline.readers.manifest import URI, ManifestPlan, manifest_base, open_parquet, resolve_uri
from pipeline.spec import JobSpec, StorageSpec
from pipeline.storage import (
    ACCESS_DENIED,
    IS_DIRECTORY,
    MISSING,
    NO_CREDENTIALS,
    RETRYABLE,
    SUPPORTED_SCHEMES,
    StorageError,
    check_bucket,
    classify,
    describe,
    filesystem_for,
    is_missing_bucket,
    is_remote,
    probe,
    storage_exceptions,
    uri_scheme,
)

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem


def _row_error(error: BaseException, uri: str, storage: StorageSpec | None, attempts: int) -> RowError:
    if isinstance(error, OSError) and error.errno == errno.ELOOP:
        return RowError("missing", f"{uri} does not exist (a loop of symbolic links)")
    kind = classify(error)
    if kind == MISSING:
        return RowError(
            "missing", describe(error, uri, storage) if is_missing_bucket(error) else f"{uri} does not exist"
        )
    if kind == IS_DIRECTORY:
        return RowError("is_directory", f"{uri} is a directory, not a file")
    if kind in (ACCESS_DENIED, NO_CREDENTIALS):
        return RowError("access_denied", describe(error, uri, storage))
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    return RowError("fetch_error", f"{describe(error, uri, storage)}{tries}")


def _explain_failed_read(fs: AbstractFileSystem, path: str, uri: str, error: BaseException) -> RowError | None:
    """After a failed read, one `info` call tells an empty file or a folder from other failures."""
    try:
        info = fs.info(path)
    except storage_exceptions():
        return None
    if info.get("type") == "directory":
        return RowError("is_directory", f"{uri} is a directory, not a file")
    if info.get("size") == 0:  # S3 refuses a ranged read of an empty object
        return RowError("empty_file", f"{uri} is empty (0 bytes)")
    return None


def read_limited(fs: AbstractFileSystem, path: str, uri: str, max_bytes: int) -> bytes:
    """One read of at most max_bytes (+1 to detect larger files); raises RowError for too large or empty."""
    data = fs.cat_file(path, start=0, end=max_bytes + 1)
    if len(data) > max_bytes:
        raise RowError("too_large", f"{uri} has more than preprocess.max_file_bytes={max_bytes} bytes")
    if not data:
        raise RowError("empty_file", f"{uri} is empty (0 bytes)")
    return bytes(data)


def _check_local_file_type(path: str, uri: str) -> None:
    """A pipe, socket or device behind a local path would block or never end: refuse it."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing, a symlink loop...: the read reports it
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise RowError("not_a_file", f"{uri} is not a regular file (a pipe, socket or device)")


def fetch_bytes(
    uri: str,
    storage: StorageSpec | None = None,
    max_bytes: int = 512 * 1024 * 1024,
    retries: int = 3,
    backoff_s: float = 0.2,
) -> bytes:
    """Read a whole file or object, or raise a RowError saying why not."""
    if not uri or not uri.strip():
        raise RowError("empty_uri", "the uri is empty")
    if "\x00" in uri:
        raise RowError("bad_row", f"the uri {uri!r} contains a NUL character")
    scheme = uri_scheme(uri)
    if scheme not in SUPPORTED_SCHEMES:
        raise RowError("unsupported_uri", f"scheme {scheme!r} of {uri!r} is not supported (use a path or s3://)")
    try:
        fs, path = filesystem_for(uri, storage)
    except StorageError as error:
        raise RowError("unsupported_uri", str(error)) from None
    if not is_remote(uri):
        _check_local_file_type(path, uri)
    attempt = 0
    while True:
        try:
            return read_limited(fs, path, uri, max_bytes)
        except RowError:
            raise
        except storage_exceptions() as error:
            kind = classify(error)
            if kind in RETRYABLE and attempt < retries:
                # Exponential backoff with jitter, so that many workers do not retry in step.
                time.sleep(backoff_s * (2**attempt) * random.uniform(0.5, 1.5))
                attempt += 1
                continue
            if kind not in RETRYABLE:
                explained = _explain_failed_read(fs, path, uri, error)
                if explained is not None:
                    raise explained from None
            raise _row_error(error, uri, storage, attempt + 1) from None


def first_media_uri(plan: ManifestPlan, storage: StorageSpec | None) -> str | None:
    """The first non-empty uri of the manifest (one column of one row group is read)."""
    if not plan.shards or URI not in plan.columns:
        return None
    shard = plan.shards[0]
    column = plan.columns[URI]
    table = open_parquet(shard.file, storage).read_row_group(shard.row_group, columns=[column])
    for value in table.column(column).to_pylist():
        if isinstance(value, str) and value.strip():
            return resolve_uri(value.strip(), manifest_base(shard.file))
    return None


def check_stores(spec: JobSpec, plan: ManifestPlan, probe_media: bool = True) -> None:
    """Fail before any work starts when the output's bucket is missing or unreachable, or when the
    store holding the media cannot be used at all (unreachable endpoint, no credentials, missing
    bucket). One or two requests; a missing object is left to its row."""
    try:
        check_bucket(spec.output.path, spec.storage)
    except StorageError as error:
        raise JobError(f"output.path: {error}") from None
    if not probe_media:
        return
    uri = first_media_uri(plan, spec.storage)
    if uri is None or not is_remote(uri):
        return
    try:
        probe(uri, spec.storage)
    except StorageError as error:
        raise JobError(f"input: the media of the manifest cannot be read: {error}") from None
