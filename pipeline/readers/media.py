"""Bytes from any fsspec uri, with retries for transient failures.

Permanent failures (missing object, access denied, a directory, too large) are reported
at once as row errors; transient ones (connection resets, timeouts, throttling) are
retried with exponential backoff first.
"""

from __future__ import annotations

import errno
import time

from pipeline.errors import RowError
from pipeline.spec import StorageSpec
from pipeline.storage import SUPPORTED_SCHEMES, StorageError, filesystem_for, uri_scheme

_PERMANENT = (FileNotFoundError, IsADirectoryError, PermissionError, NotADirectoryError)


def _classify(error: OSError, uri: str) -> RowError:
    if isinstance(error, (FileNotFoundError, NotADirectoryError)):
        return RowError("missing", f"{uri} does not exist")
    if error.errno == errno.ELOOP:
        return RowError("missing", f"{uri} does not exist (a loop of symbolic links)")
    if isinstance(error, IsADirectoryError):
        return RowError("is_directory", f"{uri} is a directory, not a file")
    if isinstance(error, PermissionError):
        return RowError("access_denied", f"{uri} may not be read ({error})")
    if isinstance(error, TimeoutError):
        return RowError("fetch_error", f"{uri}: timed out ({error})")
    return RowError("fetch_error", f"{uri}: {type(error).__name__}: {error}")


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
    attempt = 0
    while True:
        try:
            info = fs.info(path)
            if info.get("type") == "directory":
                raise IsADirectoryError(path)
            if info.get("type") not in ("file", None):  # a pipe or a device: reading could block or never end
                raise RowError("not_a_file", f"{uri} is not a regular file (a pipe, socket or device)")
            size = info.get("size")
            if size is not None and size > max_bytes:
                raise RowError("too_large", f"{uri} has {size} bytes, more than preprocess.max_file_bytes={max_bytes}")
            with fs.open(path, "rb") as handle:
                data = handle.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise RowError("too_large", f"{uri} has more than preprocess.max_file_bytes={max_bytes} bytes")
            if not data:
                raise RowError("empty_file", f"{uri} is empty (0 bytes)")
            return data
        except RowError:
            raise
        except _PERMANENT as error:
            raise _classify(error, uri) from None
        except OSError as error:  # network errors, throttling, timeouts: worth another try
            if error.errno == errno.ELOOP:  # ...but a symlink loop stays a loop
                raise _classify(error, uri) from None
            if attempt >= retries:
                raise _classify(error, uri) from None
            time.sleep(backoff_s * (2**attempt))
            attempt += 1
