"""Where a store lives: a local folder or an `s3://bucket/prefix` on an S3-compatible object store.

The ETL writes and the reader reads both through fsspec (its local filesystem, or s3fs),
so one code path serves both. For S3 the endpoint and the credentials come only from the
standard AWS sources, read by botocore itself: `AWS_ENDPOINT_URL` (e.g. a lab's SeaweedFS
or MinIO), `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, or a profile (`AWS_PROFILE`,
`~/.aws`). Nothing of them is ever read from `study.toml`, put in a URL or printed.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .errors import StudyError

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

S3 = "s3"
ENDPOINT_ENV = "AWS_ENDPOINT_URL"
KEY_ENV = "AWS_ACCESS_KEY_ID"
SECRET_ENV = "AWS_SECRET_ACCESS_KEY"
AWS_ENV = (ENDPOINT_ENV, KEY_ENV, SECRET_ENV, "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION",
           "AWS_SHARED_CREDENTIALS_FILE")  # fmt: skip
CREDENTIALS_HINT = (
    f"set {KEY_ENV} and {SECRET_ENV} (or AWS_PROFILE) to a key pair the object store accepts, "
    f"and {ENDPOINT_ENV} to its endpoint (in Colab: as secrets)"
)


class LocationError(StudyError):
    """A store location that cannot be used (unsupported scheme, no bucket, s3fs missing)."""


def is_s3(location: str) -> bool:
    """Whether `location` is an `s3://` URL (other schemes are refused where a location is read)."""
    return urlsplit(location).scheme == S3


def has_credentials(url: str) -> bool:
    """Whether a URL carries a user, a password or a query (where tokens travel): a configured URL
    is printed and written into the store's attributes, so such a URL would publish them."""
    parts = urlsplit(url)
    return parts.username is not None or parts.password is not None or bool(parts.query)


def check_s3_url(url: str, origin: str) -> str:
    """`url` without a trailing slash, if it is `s3://bucket[/prefix]` without credentials in it.
    The messages never repeat a URL that carries credentials."""
    if has_credentials(url):
        raise LocationError(
            f"{origin} must not carry credentials or options; {CREDENTIALS_HINT}, never in the URL"
        )
    parts = urlsplit(url)
    if parts.scheme != S3 or not parts.hostname:
        raise LocationError(f"{origin} = {url!r} is not an s3://bucket/prefix URL")
    return url.rstrip("/")


def s3_status(exc: BaseException) -> int | None:
    """The HTTP status of the S3 answer behind an s3fs error, if any: s3fs keeps botocore's
    ClientError, which holds it, as the cause of the OSError it raises."""
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        seen = seen.__cause__ or seen.__context__
    return None


def s3_refused(exc: BaseException) -> bool:
    """Whether an s3fs (botocore) error means the keys are missing or were refused (HTTP 401/403)."""
    import botocore.exceptions as boto

    if isinstance(exc, PermissionError | boto.NoCredentialsError | boto.PartialCredentialsError):
        return True
    return s3_status(exc) in (401, 403)


def s3_filesystem(*, asynchronous: bool = False, timeout_s: float = 30.0, retries: int = 5) -> Any:
    """An s3fs filesystem configured from the environment only.

    `retries` bounds s3fs's own retries of dropped connections; the reader passes 1 and
    retries itself within `train.retry_budget_s`. botocore's retries are off: one policy.
    An asynchronous one is always new (the reader owns its client and closes it), made from one
    botocore session per set of AWS variables; a synchronous one (the ETL's) is shared while the
    variables stay the same. A new session or client costs a good part of a second of CPU
    (botocore parses its service model).
    """
    environment = tuple(os.environ.get(name) for name in AWS_ENV)
    if asynchronous:
        return _make_s3(True, timeout_s, retries, session=_aws_session(environment))
    return _shared_s3(timeout_s, retries, environment)


@functools.lru_cache(maxsize=4)
def _shared_s3(timeout_s: float, retries: int, environment: tuple[str | None, ...]) -> Any:
    """One synchronous filesystem per set of AWS variables (`environment` only keys the cache)."""
    return _make_s3(False, timeout_s, retries)


@functools.lru_cache(maxsize=4)
def _aws_session(environment: tuple[str | None, ...]) -> Any:
    """One botocore session per set of AWS variables, shared by the asynchronous filesystems: it
    keeps the parsed service model (0.5 s of JSON per new session) and the resolved keys."""
    _require_s3fs()
    from aiobotocore.session import AioSession

    return AioSession()


def _require_s3fs() -> None:
    try:
        import s3fs  # noqa: F401
    except ImportError:
        raise LocationError(
            "reading or writing s3:// stores needs s3fs: pip install s3fs (it is in the study's "
            "etl and train extras)"
        ) from None


def _make_s3(asynchronous: bool, timeout_s: float, retries: int, session: Any = None) -> Any:
    _require_s3fs()
    import s3fs

    for name in ("botocore", "aiobotocore"):  # "Found credentials in environment variables." on every client
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).level))
    fs = s3fs.S3FileSystem(
        asynchronous=asynchronous,
        session=session,
        skip_instance_cache=True,
        config_kwargs={
            "connect_timeout": timeout_s,
            "read_timeout": timeout_s,
            "retries": {"mode": "standard", "max_attempts": 1},
            # botocore's own body checksums (default since 1.36) only where S3 requires them: some
            # S3-compatible servers reject them, and every chunk is checked against the manifest.
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
        },
    )
    fs.retries = max(1, retries)
    return fs


@dataclass(frozen=True)
class StoreLocation:
    """A store's place: `url` is an absolute local path or `s3://bucket/prefix/name.zarr`."""

    url: str

    @classmethod
    def of(cls, location: str | os.PathLike[str]) -> StoreLocation:
        text = os.fspath(location)
        return cls(check_s3_url(text, "store location") if is_s3(text) else os.path.abspath(text))

    @property
    def remote(self) -> bool:
        return is_s3(self.url)

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def sibling(self, name: str) -> StoreLocation:
        """The location `name` in the same folder (prefix)."""
        return StoreLocation(self.url.rstrip("/").rsplit("/", 1)[0] + "/" + name)

    def fs(self) -> AbstractFileSystem:
        """A synchronous fsspec filesystem for this location (s3fs or the local one)."""
        if self.remote:
            return s3_filesystem()
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem()

    @property
    def path(self) -> str:
        """The filesystem path: `bucket/prefix/name.zarr` for S3, the local path otherwise."""
        return self.url.split("://", 1)[1] if self.remote else self.url

    def zarr_store(self, fs: AbstractFileSystem | None = None) -> Any:
        """What zarr and xarray write to: the local path as is, or an FsspecStore over `fs` (s3fs).

        The synchronous s3fs runs on fsspec's own I/O thread and closes its connections itself
        (at exit, for the shared one); zarr sees it through fsspec's async wrapper.
        """
        if not self.remote:
            return self.url
        from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper
        from zarr.storage import FsspecStore

        wrapped = AsyncFileSystemWrapper(fs or self.fs(), asynchronous=True)
        return FsspecStore(wrapped, path=self.path)

    def __str__(self) -> str:
        return self.url
