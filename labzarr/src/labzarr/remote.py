"""Open the served store over HTTP(S) or S3: the notebook's mapper code, made robust.

The notebook's recipe is four lines (HTTP filesystem -> mapper -> `xr.open_zarr(...,
consolidated=True)`); this module keeps that shape and adds what fsspec's HTTP
filesystem does not do by itself:

* **timeouts**: an aiohttp `ClientTimeout(sock_read=, sock_connect=, total=)` on a
  filesystem we build ourselves (passing it through `storage_options` breaks
  `xr.open_zarr`, which JSON-serialises them), so a stalled read fails instead
  of hanging for minutes, and a **deadline** per read (all its attempts) and per
  store open: a server that trickles a byte before each read timeout cannot keep
  a reader waiting past `read_deadline_s` (the larger of the timeout and the retry budget);
* **retries** for connection errors, timeouts, 429 and 5xx answers, with
  exponential backoff and full jitter (so many readers do not retry in step),
  honouring the server's `Retry-After`, within a time budget
  (`train.retry_budget_s`) rather than a fixed count; 401/403 fail at once with
  a message about credentials, and a host name that does not resolve fails at
  once too;
* **no silent fill values**: zarr turns a "not found" chunk into fill values,
  so `ResilientStore` treats any missing key other than metadata as an error,
  verifies each downloaded chunk against the ETL's `manifest.json` CRC32C, and
  `connect` checks shapes and chunk counts against the manifest at open;
* an optional **chunk cache** (memory or disk; fsspec's `simplecache::` is
  ignored by zarr 3), keyed by the manifest's sha256 so it can never serve a
  stale chunk of a rewritten store;
* **one I/O loop of our own**: every request of a store runs on a private asyncio
  loop in a daemon thread (`IOLoop`), whichever loop asks (zarr's, or a caller's).
  The aiohttp session lives and dies there, so closing it, or cancelling the
  requests still in flight after a failure, needs only public asyncio calls.

Credentials come from arguments or the environment (`DATA_TOKEN`, or
`DATA_USER` and `DATA_PASSWORD`), travel only in request headers, and never
appear in URLs, reprs, logs or error messages.

An `s3://bucket/prefix` URL takes the same path with fsspec's S3 filesystem (s3fs,
async like the HTTP one) in place of HTTP: the same timeouts, retry budget, checksums
and strictness about missing chunks. Its endpoint and keys come only from the AWS
variables (`location.py`); a refused key fails at once with one line naming them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import math
import os
import random
import socket
import threading
import time
import warnings
import weakref
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlsplit

import aiohttp
import google_crc32c
import xarray as xr
import zarr
from fsspec.implementations.http import HTTPFileSystem
from zarr.buffer import default_buffer_prototype
from zarr.storage import FsspecStore, WrapperStore

from .cache import make_cache
from .errors import StudyError
from .location import (
    CREDENTIALS_HINT,
    LocationError,
    check_s3_url,
    has_credentials,
    is_s3,
    s3_filesystem,
    s3_refused,
    s3_status,
)
from .store_format import MANIFEST, Manifest, is_metadata, store_name

if TYPE_CHECKING:
    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import Buffer, BufferPrototype

URL_ENV = "DATA_URL"
TOKEN_ENV = "DATA_TOKEN"
USER_ENV = "DATA_USER"
PASSWORD_ENV = "DATA_PASSWORD"
# HTTP answers worth another try: the server or a proxy is busy or restarting.
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
BACKOFF_CAP_S = 30.0  # the longest wait between two attempts (before the server's Retry-After)
# Chunks up to this size are checked on the I/O loop (CRC32C: ~0.03 ms per MB); larger ones in a thread.
INLINE_CHECK_BYTES = 8 * 2**20
# Host names reserved for documentation (RFC 2606), like the bake-time default: never a data server.
PLACEHOLDER_HOSTS = ("example.com", "example.net", "example.org", "example.edu")
T = TypeVar("T")


class RemoteError(StudyError):
    """Reading the served store failed in a way the user can act on."""


class RemoteAuthError(RemoteError):
    """The server refused the request (HTTP 401/403): credentials are missing or wrong."""


class RemoteReadError(RemoteError):
    """A read failed for good (after retries), or returned data that cannot be trusted."""


class MissingChunkError(RemoteReadError):
    """A chunk the store should hold is not there: data loss, never fill values."""


class ChecksumError(RemoteReadError):
    """A downloaded chunk does not match the checksum in the manifest."""


class ManifestError(RemoteError):
    """The store and its manifest disagree, or the manifest is missing or unreadable."""


class StoreNotFoundError(ManifestError):
    """No store (no manifest) at the URL: wrong URL, or the ETL has not written the store."""


@dataclass(frozen=True, repr=False)
class Credentials:
    """Bearer token or basic-auth pair. Its repr never shows the secret."""

    token: str | None = None
    user: str | None = None
    password: str | None = None

    @property
    def kind(self) -> str:
        return "token" if self.token else "basic"

    def headers(self) -> dict[str, str]:
        """The Authorization header nginx checks (bearer token or basic auth)."""
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        pair = f"{self.user}:{self.password or ''}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}

    def __repr__(self) -> str:
        return f"Credentials({self.kind}, secret hidden)"

    __str__ = __repr__


def credentials_from(
    token: str | None = None,
    user: str | None = None,
    password: str | None = None,
    *,
    prefer: str = "token",
    environ: dict[str, str] | os._Environ[str] | None = None,
) -> Credentials | None:
    """Credentials from the arguments, else from DATA_TOKEN or DATA_USER/DATA_PASSWORD.

    `prefer` ("token" or "basic", normally `cfg.server.auth`) decides which
    environment variables win when both kinds are set.
    """
    if token:
        return Credentials(token=token)
    if user:
        return Credentials(user=user, password=password)
    env = os.environ if environ is None else environ
    from_token = Credentials(token=env[TOKEN_ENV]) if env.get(TOKEN_ENV) else None
    from_basic = (
        Credentials(user=env[USER_ENV], password=env.get(PASSWORD_ENV, "")) if env.get(USER_ENV) else None
    )
    first, second = (from_basic, from_token) if prefer == "basic" else (from_token, from_basic)
    return first or second


def redact(url: str) -> str:
    """The URL without any user:password part, safe to print."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def _is_placeholder(host: str) -> bool:
    host = host.lower().rstrip(".")
    return any(host == h or host.endswith("." + h) for h in PLACEHOLDER_HOSTS) or host.endswith(".example")


def resolve_base_url(url: str | None, default: str | None = None, default_origin: str = "server.url") -> str:
    """Base URL of the data server: the argument, then $DATA_URL, then `default` (the study's
    configured URL, named `default_origin` in messages). Checked once: a scheme we read, no
    credentials in it, not a documentation placeholder."""
    for candidate, origin in ((url, "the url argument"), (os.environ.get(URL_ENV), f"${URL_ENV}"),
                              (default, default_origin)):  # fmt: skip
        if candidate and is_s3(candidate):
            try:
                return check_s3_url(candidate, origin)
            except LocationError as exc:
                raise RemoteError(str(exc)) from None
        if candidate:
            parts = urlsplit(candidate)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise RemoteError(
                    f"{origin} = {redact(candidate)!r} is not an http(s) or s3 URL; "
                    "expected e.g. https://data.lab.example.edu/zarr or s3://bucket/prefix"
                )
            if has_credentials(candidate):  # a user:password or a query (where tokens travel)
                raise RemoteError(
                    f"{origin} contains credentials or a query ({redact(candidate).split('?')[0]}?...); "
                    f"remove them from the URL and set {TOKEN_ENV} (or {USER_ENV}/{PASSWORD_ENV}) instead"
                )
            if _is_placeholder(parts.hostname or ""):
                raise RemoteError(
                    f"{origin} = {candidate!r} is a placeholder (a documentation-only host name), not a data "
                    "server: "
                    f"set {URL_ENV} to your lab server's URL (in Colab: a secret), or pass --url / url=..."
                )
            return candidate.rstrip("/")
    raise RemoteError(f"no data URL: set ${URL_ENV}, pass --url / url=..., or set {default_origin}")


@dataclass(frozen=True)
class StoreSource:
    """Where a store is and how to read it, resolved once: the store's own URL (checked),
    the credentials, the name of its features array, timeouts, retry budget, requests in
    flight and the chunk cache. Picklable, so every process (a DDP rank, a worker) opens
    the store from the same recipe with a session of its own.

    Build it with `StoreSource.resolve(...)` (URL from an argument, $DATA_URL or a
    default; credentials from arguments or the environment).
    """

    url: str
    features: str = ""
    credentials: Credentials | None = None
    timeout_s: float = 30.0
    retry_budget_s: float = 60.0
    backoff_s: float = 0.5
    in_flight: int = 8
    cache: str = "none"
    cache_dir: str | None = None
    cache_max_mb: float = 4096

    @classmethod
    def resolve(
        cls,
        url: str | None = None,
        *,
        dataset_name: str,
        default_url: str | None = None,
        auth: str = "token",
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        default_origin: str = "server.url",
        **settings: Any,
    ) -> StoreSource:
        """The store `{base}/{dataset_name}.zarr`, base from `url`, then $DATA_URL, then
        `default_url`; credentials from the arguments, then $DATA_TOKEN or
        $DATA_USER/$DATA_PASSWORD (`auth` decides which wins when both are set);
        `settings` are the other fields (timeout_s, retry_budget_s, in_flight, cache, ...);
        `default_origin` is how messages name where `default_url` came from."""
        base = resolve_base_url(url, default_url, default_origin)
        return cls(
            url=f"{base}/{store_name(dataset_name)}",
            features=dataset_name,
            credentials=credentials_from(token, user, password, prefer=auth),
            **settings,
        )

    def connect(self, *, require_manifest: bool = True) -> RemoteStore:
        """Open the store (manifest checked) with this process's own session and cache."""
        return connect(self, require_manifest=require_manifest)

    def __repr__(self) -> str:
        creds = self.credentials
        return f"StoreSource(url={redact(self.url)!r}, features={self.features!r}, credentials={creds!r})"


class IOLoop:
    """A private asyncio loop in a daemon thread, shared by the stores of this process.

    Every request of a `ResilientStore` runs here, whichever loop awaits it, so the
    aiohttp sessions are created, used and closed on one loop we own. A forked child
    (which inherits no running thread) gets a loop of its own.
    """

    _instance: IOLoop | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="remote-io", daemon=True)
        self.thread.start()

    @classmethod
    def get(cls) -> IOLoop:
        with cls._lock:
            if cls._instance is None or cls._instance.pid != os.getpid():
                cls._instance = cls()
            return cls._instance

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` here and wait for it (from any thread but this loop's own)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await `coro` run here, from a coroutine on any other loop (or on this one)."""
        if asyncio.get_running_loop() is self.loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))


def read_deadline_s(timeout_s: float, retry_budget_s: float) -> float:
    """Longest time one read (every attempt and wait) or one store open may take: the retry
    budget, and at least one read timeout (a budget of 0 still allows one attempt)."""
    return max(timeout_s, retry_budget_s)


def make_filesystem(
    credentials: Credentials | None = None,
    *,
    timeout_s: float = 30.0,
    url: str = "",
    retry_budget_s: float | None = None,
) -> Any:
    """An async fsspec filesystem for `url`: HTTP with read/connect timeouts, a total
    deadline per request and auth headers, or S3 (s3fs) with the same timeouts and its own
    retries reduced to one attempt.

    The timeout object goes straight to aiohttp here; passed through
    storage_options it would break `xr.open_zarr`. `sock_read` stops a stalled
    transfer; `total` (`read_deadline_s`, from `retry_budget_s`) stops one that
    trickles a byte before each read timeout, so even a read made by fsspec alone
    (the plain xarray path) ends. Its session is created on the `IOLoop` at the
    first request.
    """
    if is_s3(url):
        return s3_filesystem(asynchronous=True, timeout_s=timeout_s, retries=1)
    total = read_deadline_s(timeout_s, timeout_s if retry_budget_s is None else retry_budget_s)
    timeout = aiohttp.ClientTimeout(total=total, sock_read=timeout_s, sock_connect=timeout_s)
    headers = credentials.headers() if credentials else {}
    return HTTPFileSystem(
        asynchronous=True,
        client_kwargs={"timeout": timeout, "headers": headers},
        skip_instance_cache=True,
    )


class ChunkCache(Protocol):
    """Stored chunk bytes keyed by their sha256 (see cache.py); `put` gets a read-only
    bytes-like view (kept as is in memory, so caching costs no copy). `blocking` caches
    (disk) are called in a thread, others on the I/O loop."""

    blocking: bool

    def get(self, digest: str) -> Any: ...

    def put(self, digest: str, data: Any) -> None: ...


@dataclass
class TransferStats:
    """Counters of what the store fetched; thread-safe (updated on the I/O loop)."""

    requests: int = 0
    bytes: int = 0
    retries: int = 0
    cache_hits: int = 0
    cache_bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "requests": self.requests,
                "bytes": self.bytes,
                "retries": self.retries,
                "cache_hits": self.cache_hits,
                "cache_bytes": self.cache_bytes,
            }


def _is_dns_failure(exc: BaseException) -> bool:
    """A host name that does not resolve: retrying cannot help."""
    return isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, socket.gaierror)


def _retry_after(exc: aiohttp.ClientResponseError) -> float:
    """The server's Retry-After (seconds, or an HTTP date), 0 when absent or unreadable."""
    value = (exc.headers or {}).get("Retry-After", "")
    if value.strip().isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    return 0.0


def _describe(exc: BaseException) -> str:
    """A short, secret-free description of a transport error."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status} {exc.message}"
    if isinstance(exc, TimeoutError):
        return "no data within the read timeout"
    if isinstance(
        exc, aiohttp.ClientPayloadError
    ):  # its str() starts with aiohttp's code 400: no HTTP status
        return "the connection closed before the whole answer arrived (fewer bytes than announced)"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _s3_failure(exc: Exception, where: str) -> RemoteError | None:
    """The error to raise at once for an S3 failure, or None when another attempt may help."""
    import botocore.exceptions as boto

    status = s3_status(exc)
    if s3_refused(exc):
        got = f"HTTP {status}" if status else type(exc).__name__
        return RemoteAuthError(f"the object store refused access to {where} ({got}): {CREDENTIALS_HINT}")
    if status in TRANSIENT_STATUS or isinstance(exc, boto.ConnectionError | boto.HTTPClientError):
        return None
    return RemoteReadError(f"reading {where} failed: {_describe(exc)}")


def _auth_message(url: str, status: int, credentials: Credentials | None) -> str:
    sent = f"sent {credentials.kind} credentials" if credentials else "sent no credentials"
    return (
        f"the data server refused access (HTTP {status}) to {url} ({sent}). Set {TOKEN_ENV} to the "
        f"server's token, or {USER_ENV} and {PASSWORD_ENV} for basic auth (in Colab: as secrets), "
        "or pass token=... / user=..., password=...; check that the URL points at this study's server"
    )


class ResilientStore(WrapperStore):
    """Read-only wrapper of an FsspecStore: retries, strict "missing", checksums, cache.

    Only metadata keys may be missing (zarr probes for them); any other
    missing key is a lost chunk and raises `MissingChunkError`. Whole-chunk
    reads are checked against the manifest's CRC32C and cached under its
    sha256. Requests run on the `IOLoop`, at most `in_flight` at a time.
    """

    def __init__(
        self,
        store: Any,
        *,
        url: str = "",
        credentials: Credentials | None = None,
        timeout_s: float = 30.0,
        retry_budget_s: float = 60.0,
        backoff_s: float = 0.5,
        in_flight: int = 8,
        manifest: Manifest | None = None,
        cache: ChunkCache | None = None,
        stats: TransferStats | None = None,
        io: IOLoop | None = None,
        sessions: list[aiohttp.ClientSession] | None = None,
        shared: _Shared | None = None,
    ) -> None:
        super().__init__(store)
        self.url = url
        self.timeout_s = timeout_s
        self.retry_budget_s = retry_budget_s
        self.backoff_s = backoff_s
        self.in_flight = in_flight
        self.cache = cache
        self.stats = stats if stats is not None else TransferStats()
        self.io = io or IOLoop.get()
        self._credentials = credentials
        self._sha256: dict[str, str] = {}
        self._crc32c: dict[str, int] = {}
        self._limit: asyncio.Semaphore | None = None  # made on the I/O loop, used only there
        self._tasks: set[asyncio.Task[Any]] = set()
        self._shared = shared if shared is not None else _Shared()
        if sessions is None:  # the filesystem's session, once made: closed by aclose, or with the filesystem
            sessions = []
            weakref.finalize(store.fs, _close_sessions, self.io, sessions)
        self._sessions = sessions
        self.use_manifest(manifest)

    def use_manifest(self, manifest: Manifest | None) -> None:
        """Check every chunk read from now on against `manifest` (None: no checks)."""
        self._sha256 = manifest.sha256 if manifest else {}
        self._crc32c = manifest.crc32c if manifest else {}

    def _with_store(self, store: Any) -> ResilientStore:  # WrapperStore's hook for its copies
        clone = type(self)(
            store,
            url=self.url,
            credentials=self._credentials,
            timeout_s=self.timeout_s,
            retry_budget_s=self.retry_budget_s,
            backoff_s=self.backoff_s,
            in_flight=self.in_flight,
            cache=self.cache,
            stats=self.stats,
            io=self.io,
            sessions=self._sessions,
            shared=self._shared,
        )
        clone._sha256, clone._crc32c = self._sha256, self._crc32c
        return clone

    def __repr__(self) -> str:
        return f"ResilientStore({self.url!r})"

    def __str__(self) -> str:
        return self.url

    # -- the public zarr Store methods that read ------------------------------------------
    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        if self._shared.failure is not None:  # settling after a failure: the selection's reads end at once
            raise self._abandoned()
        try:
            return await self.io.call(self._tracked(self._get(key, prototype, byte_range)))
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._shared.failure is not None and task is not None and not task.cancelling():
                raise self._abandoned() from None  # abandoned by `settle`, not this task cancelled
            raise

    def _abandoned(self) -> RemoteReadError:
        """What a read abandoned by `settle` raises: a new error (the failure itself goes on to the
        caller unchanged; raising that one object in every abandoned task would rewrite its cause
        and traceback)."""
        return RemoteReadError(f"a read of {self.url} was abandoned: {self._shared.failure}")

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

    async def exists(self, key: str) -> bool:
        return await self.io.call(self._tracked(self._store.exists(key)))

    # -- on the I/O loop -----------------------------------------------------------------
    async def _tracked(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` as a task that `aclose` can cancel (a read still in flight after a failure)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        try:
            return await task
        finally:
            self._tasks.discard(task)

    async def _get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None
    ) -> Buffer | None:
        digest = self._sha256.get(key) if byte_range is None else None
        if digest is not None and self.cache is not None:
            cached = await self._maybe_in_thread(self.cache.blocking, self.cache.get, digest)
            if cached is not None:
                self.stats.add(cache_hits=1, cache_bytes=len(cached))
                return prototype.buffer.from_bytes(cached)
        if self._limit is None:
            self._limit = asyncio.Semaphore(max(1, self.in_flight))
            if not self._sessions:  # clones share the list (and the filesystem)
                self._sessions.append(await self._store.fs.set_session())
        async with self._limit:
            value = await self._fetch(key, prototype, byte_range)
        if value is None:
            if is_metadata(key):
                return None
            raise MissingChunkError(
                f"chunk {key!r} of {self.url} is missing on the server (not found), but every chunk "
                "must exist; the store is incomplete: re-run the ETL on the server, or check that "
                "the server serves the right folder"
            )
        if digest is not None:
            blocking = len(value) > INLINE_CHECK_BYTES or (self.cache is not None and self.cache.blocking)
            await self._maybe_in_thread(blocking, self._verify, key, digest, value)
        return value

    async def _fetch(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None) -> Any:
        """One read, retried while the budget lasts; auth, DNS and permanent errors raise at once."""
        where = f"{self.url}/{key}"
        started = time.monotonic()
        deadline = started + read_deadline_s(self.timeout_s, self.retry_budget_s)
        if self._shared.open_deadline is not None:  # opening the store: one deadline for all its reads
            deadline = min(deadline, self._shared.open_deadline)
        attempt = 0
        last_error: BaseException | None = None
        while True:
            retry_after = 0.0
            limit = asyncio.timeout(max(0.0, deadline - time.monotonic()))
            try:
                async with limit:
                    value = await self._store.get(key, prototype, byte_range)
                self.stats.add(requests=1, bytes=len(value) if value is not None else 0)
                return value
            except aiohttp.ClientResponseError as exc:
                self.stats.add(requests=1)
                if exc.status in (401, 403):
                    raise RemoteAuthError(_auth_message(where, exc.status, self._credentials)) from None
                if exc.status not in TRANSIENT_STATUS:
                    raise RemoteReadError(f"reading {where} failed: {_describe(exc)}") from None
                error: BaseException = exc
                retry_after = _retry_after(exc)
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                self.stats.add(requests=1)
                if limit.expired():  # the read's deadline, not one attempt's timeout: no retry
                    raise self._failed(
                        where, started, attempt + 1, exc, deadline - started, last_error
                    ) from None
                if _is_dns_failure(exc):
                    host = urlsplit(self.url).hostname
                    raise RemoteReadError(
                        f"the data server's host name {host!r} does not resolve; check {URL_ENV} / --url"
                    ) from None
                error = exc
            except Exception as exc:  # s3fs: OSError subclasses and botocore errors
                if not is_s3(self.url):
                    raise
                self.stats.add(requests=1)
                failure = _s3_failure(exc, where)
                if failure is not None:
                    raise failure from None
                error = exc
            attempt += 1
            last_error = error
            delay = max(retry_after, random.uniform(0, min(BACKOFF_CAP_S, self.backoff_s * 2**attempt)))
            waited = time.monotonic() - started
            if waited + delay > self.retry_budget_s or started + waited + delay >= deadline:
                raise self._failed(where, started, attempt, error) from None
            self.stats.add(retries=1)
            await asyncio.sleep(delay)

    def _failed(
        self,
        where: str,
        started: float,
        attempts: int,
        error: BaseException,
        deadline_s: float | None = None,
        previous: BaseException | None = None,
    ) -> RemoteReadError:
        """The error of a read that used up its retry budget or (`deadline_s`) its deadline: a
        stalling or trickling server, whose last error is named too."""
        what = _describe(error)
        if deadline_s is not None:
            what = (
                f"no complete answer within {deadline_s:.0f} s (the server stalls or sends data too slowly)"
            )
            if previous is not None:
                what += f"; the attempt before: {_describe(previous)}"
        return RemoteReadError(
            f"reading {where} failed: {what}, {attempts} attempt(s) over {time.monotonic() - started:.0f} s; "
            "check that the data server is up and reachable. Each attempt waits up to "
            f"train.timeout_s = {self.timeout_s:g} s for data and a read, attempts and waits included, ends "
            f"after train.retry_budget_s = {self.retry_budget_s:g} s (study.toml; at least one timeout): "
            "lower them to fail sooner"
        )

    def _verify(self, key: str, digest: str, value: Buffer) -> None:
        """Check a downloaded chunk against its manifest CRC32C (`ChecksumError` if it differs),
        then cache it. CRC32C detects corruption and a chunk of another store version alike, at
        about 20x the speed of sha256 (which remains the cache key). Blocking; any thread."""
        data = value.as_numpy_array()  # a view: no copy of the chunk for hashing
        if google_crc32c.value(data) != self._crc32c[key]:
            raise ChecksumError(
                f"chunk {key!r} of {self.url} does not match its manifest checksum (got "
                f"{len(data)} bytes); the store may have been rewritten while reading, or is "
                "corrupted: reopen it, or re-run the ETL"
            )
        if self.cache is not None:
            self.cache.put(digest, data)  # a view of immutable bytes: the memory cache keeps it as is

    @staticmethod
    async def _maybe_in_thread(blocking: bool, func: Any, *args: Any) -> Any:
        """Slow work (disk, checking big chunks) in a thread; quick work inline."""
        return await asyncio.to_thread(func, *args) if blocking else func(*args)

    async def cancel_reads(self) -> None:
        """Cancel the reads still in flight (after a failure) and wait for them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel the reads still in flight (after a failure), wait for them, close the session."""
        await self.cancel_reads()
        for session in self._sessions:
            await session.close()


@dataclass
class _Shared:
    """State a store shares with its clones: the deadline of an open in progress, and the
    failure being settled (the other reads of a failed selection raise it at once)."""

    open_deadline: float | None = None
    failure: BaseException | None = None


async def _wait_for_other_tasks(timeout_s: float) -> None:
    """On zarr's loop: wait (bounded) until every other task there has ended."""
    me = asyncio.current_task()
    deadline = time.monotonic() + timeout_s
    while (others := [t for t in asyncio.all_tasks() if t is not me]) and time.monotonic() < deadline:
        await asyncio.wait(others, timeout=max(0.0, deadline - time.monotonic()))


def _close_sessions(io: IOLoop, sessions: list[Any]) -> None:
    """Close a collected filesystem's session (aiohttp's, or s3fs's client) on the I/O loop
    (without waiting: this may run anywhere)."""
    for session in sessions:
        if not getattr(session, "closed", False) and io.loop.is_running():
            asyncio.run_coroutine_threadsafe(session.close(), io.loop)


def check_manifest(group: Any, manifest: Manifest, url: str) -> None:
    """Compare the store's metadata with the manifest: every array, shape, chunk shape, count.

    A chunk count below the expected number means the ETL did not write every
    chunk; zarr would read the missing ones as fill values.
    """
    problems = []
    arrays = {name: node for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array)}
    for name in sorted(set(arrays) - set(manifest.arrays)):
        problems.append(f"array {name!r} is in the store but not in the manifest")
    for name, entry in manifest.arrays.items():
        array = arrays.get(name)
        if array is None:
            problems.append(f"array {name!r} is in the manifest but not in the store")
            continue
        if tuple(array.shape) != entry.shape:
            problems.append(f"{name}: shape {tuple(array.shape)} != manifest {entry.shape}")
        if tuple(array.chunks) != entry.chunks:
            problems.append(f"{name}: chunks {tuple(array.chunks)} != manifest {entry.chunks}")
        expected = math.prod(math.ceil(s / c) for s, c in zip(array.shape, array.chunks, strict=True))
        if entry.chunk_count != expected:
            problems.append(f"{name}: {entry.chunk_count} chunks recorded, expected {expected}")
    if problems:
        raise ManifestError(
            f"{url} does not match its manifest: " + "; ".join(problems) + ". Re-run the ETL (--overwrite)."
        )


@dataclass
class RemoteStore:
    """The opened store: the resilient zarr store, its manifest and its counters.

    `store` goes to `xr.open_zarr` or `zarr.open_group`; `stats` counts
    requests, bytes and cache hits of every read made through it.
    """

    url: str
    store: ResilientStore
    manifest: Manifest | None
    stats: TransferStats

    def open_dataset(self, group: str | None = None) -> xr.Dataset:
        """The store (or one of its groups) as a lazy xarray Dataset (the notebook's `xr.open_zarr`)."""
        with warnings.catch_warnings():
            # zarr 3 notes that consolidated metadata is not part of the v3 spec: known and wanted.
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            return xr.open_zarr(self.store, group=group, consolidated=True)

    def open_group(self) -> zarr.Group:
        """The store as a zarr Group (consolidated metadata: no extra requests per array)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            return zarr.open_group(store=self.store, mode="r", use_consolidated=True)

    def settle(self, failure: BaseException | None = None) -> None:
        """After a failed read: end the other reads of the same selection before the error goes on.

        zarr reads the chunks of a selection as tasks on its own event loop and returns at the
        first failure, leaving the others pending; a process that then exits has asyncio log
        "Task was destroyed but it is pending!" after its error line. This cancels our reads in
        flight, makes the abandoned ones (and any not yet started) raise at once, and
        waits (at most one read timeout) until zarr's loop has no task left.
        """
        from zarr.core.sync import sync

        shared = self.store._shared
        shared.failure = failure or RemoteReadError(f"a read of {self.url} failed")
        try:
            with contextlib.suppress(RuntimeError):  # a loop is gone (interpreter exit)
                self.store.io.run(self.store.cancel_reads())
                sync(_wait_for_other_tasks(self.store.timeout_s))
        finally:
            shared.failure = None

    def close(self) -> None:
        """Cancel reads in flight and close the HTTP session (idempotent)."""
        with contextlib.suppress(RuntimeError):  # the I/O loop is gone (interpreter exit)
            self.store.io.run(self.store.aclose())

    def __enter__(self) -> RemoteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_store(
    url: str,
    *,
    credentials: Credentials | None = None,
    timeout_s: float = 30.0,
    retry_budget_s: float = 60.0,
    backoff_s: float = 0.5,
    in_flight: int = 8,
) -> RemoteStore:
    """A `RemoteStore` on `url` without the manifest checks (see `connect`)."""
    fs = make_filesystem(credentials, timeout_s=timeout_s, url=url, retry_budget_s=retry_budget_s)
    path = url.split("://", 1)[1] if is_s3(url) else url  # s3fs paths are bucket/key
    store = ResilientStore(
        FsspecStore(fs, path=path, read_only=True),
        url=url,
        credentials=credentials,
        timeout_s=timeout_s,
        retry_budget_s=retry_budget_s,
        backoff_s=backoff_s,
        in_flight=in_flight,
    )
    return RemoteStore(url=url, store=store, manifest=None, stats=store.stats)


def connect(source: StoreSource, *, require_manifest: bool = True) -> RemoteStore:
    """Open the store of `source` and check it against its manifest (shapes, chunk counts),
    so a chunk that should exist can never be read as fill values."""
    full_url = source.url
    remote = open_store(
        full_url,
        credentials=source.credentials,
        timeout_s=source.timeout_s,
        retry_budget_s=source.retry_budget_s,
        backoff_s=source.backoff_s,
        in_flight=source.in_flight,
    )
    # Opening reads the manifest and the metadata: together, they get one read's deadline.
    remote.store._shared.open_deadline = time.monotonic() + read_deadline_s(
        source.timeout_s, source.retry_budget_s
    )
    try:
        raw = remote.store.io.run(remote.store.get(MANIFEST, default_buffer_prototype()))
        if raw is None:
            if require_manifest:
                raise StoreNotFoundError(
                    f"{redact(full_url)}/{MANIFEST} not found: the URL is wrong, the store is incomplete, "
                    "or it was not written by this study's ETL; check the URL (and server folder), or re-run "
                    "the ETL"
                )
        else:
            try:
                manifest = Manifest.from_json(raw.to_bytes())
            except ValueError as exc:
                raise ManifestError(
                    f"{redact(full_url)}/{MANIFEST}: not a valid manifest ({exc}); re-run the ETL to "
                    "rewrite it"
                ) from None
            check_manifest(remote.open_group(), manifest, redact(full_url))
            remote.store.use_manifest(manifest)
            remote.store.cache = make_cache(
                source.cache, max_mb=source.cache_max_mb, cache_dir=source.cache_dir
            )
            remote.manifest = manifest
    except BaseException:
        remote.close()
        raise
    finally:
        remote.store._shared.open_deadline = None
    return remote


def open_remote(
    source: StoreSource, group: str | None = None, *, require_manifest: bool = True
) -> xr.Dataset:
    """Open the store (or its `climatology` group) as a lazy xarray Dataset, as the notebook does.

    Every chunk read later through the dataset is retried, checksum-verified and
    never filled in.
    """
    remote = connect(source, require_manifest=require_manifest)
    ds = remote.open_dataset(group)
    ds.attrs.setdefault("source_url", redact(remote.url))
    return ds


def check_access(source: StoreSource) -> None:
    """Fail early, with a clear message, if the store cannot be read with these credentials.

    Reads the store's zarr metadata once, without retries: 401/403 raise
    `RemoteAuthError` (about credentials), a missing store a `RemoteError` naming the URL.
    """
    with open_store(
        source.url, credentials=source.credentials, timeout_s=source.timeout_s, retry_budget_s=0
    ) as remote:
        for key in (".zmetadata", "zarr.json"):
            if remote.store.io.run(remote.store.get(key, default_buffer_prototype())) is not None:
                return
        raise RemoteError(
            f"no zarr store at {redact(source.url)} (neither .zmetadata nor zarr.json found); check the URL, "
            "the dataset name and that the ETL has written the store"
        )
