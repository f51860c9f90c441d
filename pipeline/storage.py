"""One filesystem layer for every path: manifests, media, checkpoints and output.

Everything goes through fsspec (local files and s3:// via s3fs), so there is exactly one
S3 client configuration. Endpoint and region come from the job spec (`storage.*`) or the
standard AWS environment variables (AWS_ENDPOINT_URL, AWS_REGION); credentials only ever
come from the standard AWS chain (environment, profile, instance role) and never appear
in a message we produce (see `redact`).

S3 failures reach callers in two shapes: s3fs turns HTTP errors into OSError subclasses
(FileNotFoundError, PermissionError, EBUSY for throttling), while failures below HTTP
(connection refused, timeouts, missing credentials) stay botocore exceptions. `classify`
maps both to one small vocabulary so that callers decide once what is a row error, what
is worth a retry and what must stop the job.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from pipeline.spec import StorageSpec

REMOTE_PREFIXES = ("s3://", "s3a://")
SUPPORTED_SCHEMES = ("file", "s3", "s3a")
_SECRET_ENV_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ACCESS_KEY_ID")

# What went wrong, in the words callers act on.
MISSING, IS_DIRECTORY, ACCESS_DENIED, NO_CREDENTIALS = "missing", "is_directory", "access_denied", "no_credentials"
UNREACHABLE, TRANSIENT, INVALID, OTHER = "unreachable", "transient", "invalid", "other"
RETRYABLE = frozenset({UNREACHABLE, TRANSIENT})

_TRANSIENT_ERRNOS = frozenset(
    {errno.EBUSY, errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE}
    | ({errno.EREMOTEIO} if hasattr(errno, "EREMOTEIO") else set())
)


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


def with_scheme(like: str, path: str) -> str:
    """A path returned by a filesystem, turned back into a uri of the same kind as `like`."""
    return f"{uri_scheme(like)}://{path}" if is_remote(like) else path


def bucket_of(uri: str) -> str:
    """The bucket of an s3:// uri."""
    return strip_scheme(uri).split("/", 1)[0]


@dataclass(frozen=True)
class S3Settings:
    """The resolved S3 client settings: spec first, then the standard AWS environment variables."""

    endpoint_url: str | None
    region: str | None
    anonymous: bool
    connect_timeout_s: float
    read_timeout_s: float
    max_attempts: int

    @property
    def where(self) -> str:
        """The endpoint in words, for messages."""
        return self.endpoint_url or "the default AWS S3 endpoint"


def s3_settings(storage: StorageSpec | None) -> S3Settings:
    """Resolve endpoint, region and client behaviour for this process."""
    endpoint = (
        (storage.endpoint_url if storage else None)
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or None
    )
    region = (
        (storage.region if storage else None)
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or None
    )
    return S3Settings(
        endpoint_url=endpoint,
        region=region,
        anonymous=bool(storage.anonymous) if storage else False,
        connect_timeout_s=storage.connect_timeout_s if storage else 10.0,
        read_timeout_s=storage.read_timeout_s if storage else 60.0,
        max_attempts=storage.max_attempts if storage else 3,
    )


def resolved_storage(storage: StorageSpec) -> StorageSpec:
    """The spec's storage section with endpoint and region filled in from this process's
    environment. The driver ships the resolved section to every worker, so a job whose endpoint
    was given only as AWS_ENDPOINT_URL works on workers started without it (e.g. a cluster
    joined with ray.address). Credentials are not part of it: workers use their own chain."""
    settings = s3_settings(storage)
    return storage.model_copy(update={"endpoint_url": settings.endpoint_url, "region": settings.region})


def _options(settings: S3Settings) -> dict[str, Any]:
    client_kwargs: dict[str, Any] = {}
    if settings.endpoint_url:
        client_kwargs["endpoint_url"] = settings.endpoint_url
    if settings.region:
        client_kwargs["region_name"] = settings.region
    return {
        "anon": settings.anonymous,
        "client_kwargs": client_kwargs,
        "config_kwargs": {
            "connect_timeout": settings.connect_timeout_s,
            "read_timeout": settings.read_timeout_s,
            "retries": {"max_attempts": settings.max_attempts, "mode": "standard"},
        },
        # Listings must be fresh: markers and outputs are written by other processes.
        "use_listings_cache": False,
    }


def storage_options(storage: StorageSpec | None) -> dict[str, Any]:
    """s3fs constructor options (also usable as pandas/pyarrow `storage_options=`)."""
    return _options(s3_settings(storage))


@lru_cache(maxsize=8)
def _s3_filesystem(settings: S3Settings) -> AbstractFileSystem:
    import s3fs

    return s3fs.S3FileSystem(**_options(settings))


def filesystem_for(uri: str, storage: StorageSpec | None = None) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem that serves `uri`, and the path to hand it."""
    scheme = uri_scheme(uri)
    if scheme in ("s3", "s3a"):
        # No trailing slash: callers join paths with '/', and 'prefix//key' is another key on S3.
        return _s3_filesystem(s3_settings(storage)), strip_scheme(uri).rstrip("/")
    if scheme == "file":
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem(), os.path.abspath(os.path.expanduser(strip_scheme(uri)))
    raise StorageError(f"unsupported uri scheme {scheme!r} in {uri!r}; use a local path or s3://")


def reset_filesystems() -> None:
    """Forget cached S3 clients (they hold the credentials found when they were made)."""
    _s3_filesystem.cache_clear()
    try:
        import s3fs
    except ImportError:  # pragma: no cover - s3fs is a dependency
        return
    s3fs.S3FileSystem.clear_instance_cache()


def make_dirs(uri: str, storage: StorageSpec | None = None) -> None:
    """Create a local folder. Object stores have no folders, and s3fs's makedirs would create a
    missing *bucket* - a typo in output.path must fail, not make a new bucket."""
    if is_remote(uri):
        return
    fs, path = filesystem_for(uri, storage)
    fs.makedirs(path, exist_ok=True)


def join_uri(base: str, *parts: str) -> str:
    """Join path parts onto a local path or an s3:// uri."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


@lru_cache(maxsize=1)
def _botocore_errors() -> dict[str, tuple[type[BaseException], ...]]:
    """botocore's exception classes, imported only when an error needs classifying."""
    try:
        from botocore import exceptions as bc
    except ImportError:  # pragma: no cover - botocore comes with s3fs
        return {"all": (), "credentials": (), "connect": (), "timeout": ()}
    credentials = (bc.NoCredentialsError, bc.PartialCredentialsError, bc.CredentialRetrievalError)
    connect = (bc.EndpointConnectionError, bc.ConnectionClosedError, bc.ProxyConnectionError)
    timeout = (bc.ConnectTimeoutError, bc.ReadTimeoutError)
    return {
        "all": (bc.BotoCoreError, bc.ClientError),
        "credentials": credentials,
        "connect": connect,
        "timeout": timeout,
        "invalid": (bc.ParamValidationError,),
    }


@lru_cache(maxsize=8)
def storage_exceptions(*also: type[BaseException]) -> tuple[type[BaseException], ...]:
    """The exception types a filesystem call may raise for reasons outside our code.

    Catch exactly these around storage calls (never a bare Exception): OSError for local
    files and translated S3 errors, botocore's own for failures below HTTP, aiohttp's for
    broken streams. `also` adds more types (e.g. ValueError where JSON is parsed).
    """
    extra: tuple[type[BaseException], ...] = _botocore_errors()["all"]
    try:
        import aiohttp

        extra = (*extra, aiohttp.ClientError)
    except ImportError:  # pragma: no cover - aiohttp comes with s3fs
        pass
    import asyncio

    return (OSError, asyncio.TimeoutError, *extra, *also)


def classify(error: BaseException) -> str:
    """One word for a storage failure: missing, is_directory, access_denied, no_credentials,
    unreachable, transient (worth another try), invalid or other."""
    bc = _botocore_errors()
    if isinstance(error, (FileNotFoundError, NotADirectoryError)):
        return MISSING
    if isinstance(error, IsADirectoryError):
        return IS_DIRECTORY
    if isinstance(error, PermissionError):
        return ACCESS_DENIED
    if bc["credentials"] and isinstance(error, bc["credentials"]):
        return NO_CREDENTIALS
    if bc["connect"] and isinstance(error, bc["connect"]):
        return UNREACHABLE
    if bc["timeout"] and isinstance(error, bc["timeout"]):
        return TRANSIENT
    if bc.get("invalid") and isinstance(error, bc["invalid"]):
        return INVALID
    if isinstance(error, (TimeoutError, ConnectionError)):
        return TRANSIENT
    if isinstance(error, OSError):
        return TRANSIENT if error.errno in _TRANSIENT_ERRNOS else OTHER
    if type(error).__module__.startswith("aiohttp"):
        return TRANSIENT
    import asyncio

    if isinstance(error, asyncio.TimeoutError):
        return TRANSIENT
    return OTHER


def _s3_error_code(error: BaseException) -> str | None:
    """The S3 error code (SlowDown, AccessDenied, ...) behind an error s3fs translated."""
    cause = error.__cause__
    response = getattr(cause, "response", None) or getattr(error, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code else None
    return None


def is_missing_bucket(error: BaseException) -> bool:
    """Whether a 'not found' is about the bucket rather than the object."""
    return _s3_error_code(error) == "NoSuchBucket" or "specified bucket does not exist" in str(error).lower()


def describe(error: BaseException, uri: str, storage: StorageSpec | None = None) -> str:
    """A one-line explanation of a storage failure that says what to check (no credentials in it)."""
    kind = classify(error)
    detail = str(error.strerror if isinstance(error, OSError) and error.strerror else error).strip()
    code = _s3_error_code(error)
    if code and code not in detail:
        detail = f"{code}: {detail}" if detail else code
    detail = redact(detail or type(error).__name__)
    if not is_remote(uri):
        return f"{uri}: {detail}"
    settings = s3_settings(storage)
    if kind == NO_CREDENTIALS:
        return (
            f"no AWS credentials found for {uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, "
            "or run with an instance role (storage.anonymous: true reads public buckets)"
        )
    if kind == UNREACHABLE:
        return (
            f"cannot reach the object store at {settings.where} ({type(error).__name__}: {detail}). Check "
            "storage.endpoint_url (or AWS_ENDPOINT_URL) and the network"
        )
    if kind == TRANSIENT and not isinstance(error, OSError):
        return f"{uri}: the S3 endpoint {settings.where} did not answer in time ({type(error).__name__}: {detail})"
    if kind == ACCESS_DENIED:
        return f"{uri}: access denied ({detail}); check the credentials' permissions for bucket {bucket_of(uri)!r}"
    if kind == MISSING and is_missing_bucket(error):
        return f"{uri}: the bucket {bucket_of(uri)!r} does not exist at {settings.where}"
    return f"{uri}: {detail}"


def _check_bucket(uri: str, storage: StorageSpec | None, if_missing: str, listing_required: bool) -> None:
    """One HEAD request on the bucket of `uri`; StorageError saying why it cannot be used.

    `if_missing` is the advice for a bucket that does not exist; a bucket we may not list
    passes unless `listing_required`."""
    if not is_remote(uri):
        return
    bucket = bucket_of(uri)
    if not bucket:
        raise StorageError(f"{uri} names no bucket; write s3://BUCKET/PATH")
    fs, _ = filesystem_for(uri, storage)
    try:
        fs.info(bucket)
    except FileNotFoundError:
        raise StorageError(
            f"the bucket {bucket!r} of {uri} does not exist at {s3_settings(storage).where}; {if_missing}"
        ) from None
    except storage_exceptions() as error:
        if listing_required or classify(error) != ACCESS_DENIED:
            raise StorageError(describe(error, uri, storage)) from None


def check_bucket(uri: str, storage: StorageSpec | None = None) -> None:
    """For an s3:// uri, make sure its bucket exists, answers and may be listed; raise StorageError
    saying why not. One request; local paths pass (their folders are made when needed)."""
    _check_bucket(uri, storage, "create it first (the pipeline never creates buckets)", listing_required=True)


def probe(uri: str, storage: StorageSpec | None = None) -> None:
    """Raise StorageError when the store behind `uri` cannot be used at all (unreachable endpoint,
    no credentials, missing bucket). A bucket we may not list passes: reading its objects may
    still be allowed, and a forbidden or missing object is a problem of one row, not of the job."""
    _check_bucket(
        uri, storage, "check the bucket's name and storage.endpoint_url (or AWS_ENDPOINT_URL)", listing_required=False
    )


_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s:]+:[^/@\s]+@")


def redact(text: str) -> str:
    """Remove credentials from a message: any credential value in the environment, and
    user:password parts of urls."""
    for name in _SECRET_ENV_VARS:
        value = os.environ.get(name)
        if value and len(value) >= 8:
            text = text.replace(value, "***")
    return _USERINFO.sub(r"\g<scheme>***@", text)
