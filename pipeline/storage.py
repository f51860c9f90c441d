"""One filesystem layer for every path: manifests, media, checkpoints and output.

Everything goes through fsspec (local files and s3:// via s3fs), so there is exactly one
S3 client configuration. Endpoint and region come from the job spec or the standard AWS
environment variables; credentials only ever come from the standard AWS chain, and never
appear in a message we produce (see `redact`).
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from pipeline.spec import StorageSpec

REMOTE_PREFIXES = ("s3://", "s3a://")
SUPPORTED_SCHEMES = ("file", "s3", "s3a")
_SECRET_ENV_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")


class StorageError(OSError):
    """A path that cannot be reached, with the reason in words."""


def is_remote(uri: str) -> bool:
    """Whether the uri names an object store rather than a local path."""
    return uri.startswith(REMOTE_PREFIXES)


def uri_scheme(uri: str) -> str:
    """The scheme of a uri ('file' for plain local paths)."""
    match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", uri)
    return match.group(1).lower() if match else "file"


def strip_scheme(uri: str) -> str:
    """The path part of a uri, as fsspec filesystems expect it."""
    if uri.startswith("file://"):
        return uri[len("file://") :]
    for prefix in REMOTE_PREFIXES:
        if uri.startswith(prefix):
            return uri[len(prefix) :]
    return uri


def storage_options(storage: StorageSpec | None) -> dict[str, Any]:
    """s3fs options from the spec, falling back to the standard AWS environment variables."""
    endpoint = (
        (storage.endpoint_url if storage else None)
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    region = (
        (storage.region if storage else None) or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    )
    client_kwargs: dict[str, Any] = {}
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    if region:
        client_kwargs["region_name"] = region
    options: dict[str, Any] = {"client_kwargs": client_kwargs}
    if storage is not None and storage.anonymous:
        options["anon"] = True
    return options


@lru_cache(maxsize=8)
def _s3_filesystem(endpoint: str | None, region: str | None, anonymous: bool) -> AbstractFileSystem:
    import s3fs

    client_kwargs: dict[str, Any] = {}
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    if region:
        client_kwargs["region_name"] = region
    # No listings cache: resume decisions (done markers, written ids) must see what other
    # processes wrote a moment ago, not a listing this process made earlier.
    return s3fs.S3FileSystem(
        anon=anonymous,
        client_kwargs=client_kwargs,
        config_kwargs={"retries": {"max_attempts": 3}},
        use_listings_cache=False,
    )


def filesystem_for(uri: str, storage: StorageSpec | None = None) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem that serves `uri`, and the path to hand it."""
    scheme = uri_scheme(uri)
    if scheme in ("s3", "s3a"):
        options = storage_options(storage)
        kwargs = options["client_kwargs"]
        fs = _s3_filesystem(kwargs.get("endpoint_url"), kwargs.get("region_name"), bool(options.get("anon")))
        return fs, strip_scheme(uri)
    if scheme == "file":
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem(), os.path.abspath(os.path.expanduser(strip_scheme(uri)))
    raise StorageError(f"unsupported uri scheme {scheme!r} in {uri!r}; use a local path or s3://")


def join_uri(base: str, *parts: str) -> str:
    """Join path parts onto a local path or an s3:// uri."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def redact(text: str) -> str:
    """Remove any credential value present in the environment from a message."""
    for name in _SECRET_ENV_VARS:
        value = os.environ.get(name)
        if value and len(value) >= 8:
            text = text.replace(value, "***")
    return text
