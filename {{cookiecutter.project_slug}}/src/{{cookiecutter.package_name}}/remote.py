"""Open a served split store over HTTP(S): the notebook's mapper code, made robust.

The notebook's recipe is three lines (HTTP filesystem -> zarr store ->
`xr.open_zarr(..., consolidated=True)`); this module keeps that shape and adds
what fsspec's HTTP filesystem does not do by itself:

* **timeouts**: an aiohttp `ClientTimeout(sock_read=, sock_connect=)` on a
  filesystem we build ourselves (passing it through `storage_options` breaks
  `xr.open_zarr`, which JSON-serialises them), so a stalled read fails instead
  of hanging for minutes;
* **retries** with exponential backoff for connection errors, timeouts, 429 and
  5xx answers; 401/403 fail at once with a message about credentials;
* **no silent fill values**: zarr turns a "not found" chunk into fill values,
  so `ResilientStore` treats any missing key other than metadata as an error,
  verifies each downloaded chunk against the ETL's `manifest.json` checksum
  (its CRC32C, the check zarr 3's crc32c codec makes; sha256 for manifests without one),
  and `connect` checks shapes and chunk counts against the manifest at open;
* an optional **chunk cache** (memory or disk; fsspec's `simplecache::` is
  ignored by zarr 3), keyed by the manifest's checksum so it can never serve a
  stale chunk of a rewritten store.

Credentials come from arguments or the environment (`DATA_TOKEN`, or
`DATA_USER` and `DATA_PASSWORD`), travel only in request headers, and never
appear in URLs, reprs, logs or error messages.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import math
import os
import threading
import warnings
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import google_crc32c
import xarray as xr
import zarr
import zarr.core.sync
from fsspec.implementations.http import HTTPFileSystem
from zarr.core.buffer import default_buffer_prototype
from zarr.storage import FsspecStore, WrapperStore

from .errors import StudyError

if TYPE_CHECKING:
    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import Buffer, BufferPrototype

    from .config import Config

SPLITS = ("train", "valid", "test")
MANIFEST = "manifest.json"
URL_ENV = "DATA_URL"
TOKEN_ENV = "DATA_TOKEN"
USER_ENV = "DATA_USER"
PASSWORD_ENV = "DATA_PASSWORD"
# Keys zarr (and xarray) may probe for and legitimately not find.
METADATA_NAMES = frozenset({".zarray", ".zattrs", ".zgroup", ".zmetadata", "zarr.json"})
# HTTP answers worth another try: the server or a proxy is busy or restarting.
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# Chunks up to this size are checked on the I/O loop (CRC32C: ~0.03 ms per MB, the sha256
# fallback ~0.6); larger ones in a thread.
INLINE_HASH_BYTES = 8 * 2**20


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
    """No store (no manifest) at the URL: wrong URL, or the ETL has not written this split."""


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


def resolve_base_url(url: str | None, cfg: Config | None) -> str:
    """Base URL of the data server: the argument, then $DATA_URL, then study.toml."""
    for candidate, origin in (
        (url, "the url argument"),
        (os.environ.get(URL_ENV), f"${URL_ENV}"),
        (cfg.server.url if cfg is not None else None, "server.url in study.toml"),
    ):
        if candidate:
            parts = urlsplit(candidate)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise RemoteError(
                    f"{origin} = {redact(candidate)!r} is not an http(s) URL; "
                    "expected e.g. https://data.lab.example.edu/zarr"
                )
            if parts.username or parts.password:
                raise RemoteError(
                    f"{origin} contains credentials ({redact(candidate)}); remove them from the URL and "
                    f"set {TOKEN_ENV} (or {USER_ENV}/{PASSWORD_ENV}) instead"
                )
            return candidate.rstrip("/")
    raise RemoteError(f"no data URL: pass url=..., set ${URL_ENV}, or set server.url in study.toml")


def split_url(base: str, cfg: Config, split: str) -> str:
    """URL of one split store: {base}/{store_name}/{split}.zarr."""
    if split not in SPLITS:
        raise RemoteError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    return f"{base.rstrip('/')}/{cfg.store_name}/{split}.zarr"


def make_filesystem(credentials: Credentials | None = None, *, timeout_s: float = 30.0) -> HTTPFileSystem:
    """An async fsspec HTTP filesystem with read/connect timeouts and auth headers.

    The timeout object goes straight to aiohttp here; passed through
    storage_options it would break `xr.open_zarr`, which JSON-serialises them. `total=None`
    lets a slow but steady transfer finish; `sock_read` stops a stalled one.
    """
    timeout = aiohttp.ClientTimeout(total=None, sock_read=timeout_s, sock_connect=timeout_s)
    headers = credentials.headers() if credentials else {}
    return HTTPFileSystem(
        asynchronous=True,
        client_kwargs={"timeout": timeout, "headers": headers},
        skip_instance_cache=True,
    )


class ChunkCache(Protocol):
    """Stored chunk bytes keyed by their sha256 (see train/cache.py); `put` gets a read-only
    bytes-like view (kept as is in memory, so caching costs no copy). `blocking` caches
    (disk) are called in a thread, others on the I/O loop."""

    blocking: bool

    def get(self, digest: str) -> Any: ...

    def put(self, digest: str, data: Any) -> None: ...


@dataclass
class TransferStats:
    """Counters of what the store fetched; thread-safe (updated on zarr's I/O loop)."""

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


def _is_metadata(key: str) -> bool:
    return key == MANIFEST or key.rsplit("/", 1)[-1] in METADATA_NAMES


def _describe(exc: BaseException) -> str:
    """A short, secret-free description of a transport error."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status} {exc.message}"
    if isinstance(exc, TimeoutError):
        return "no data within the read timeout"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


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
    reads are checked against the manifest's CRC32C (or sha256, for manifests
    without CRC32Cs) and cached under the sha256.
    """

    def __init__(
        self,
        store: Any,
        *,
        url: str = "",
        credentials: Credentials | None = None,
        retries: int = 4,
        backoff_s: float = 0.5,
        digests: dict[str, str] | None = None,
        crc32cs: dict[str, int] | None = None,
        cache: ChunkCache | None = None,
        stats: TransferStats | None = None,
    ) -> None:
        super().__init__(store)
        self.url = url
        self.retries = retries
        self.backoff_s = backoff_s
        self.digests = dict(digests or {})
        self.crc32cs = dict(crc32cs or {})
        self.cache = cache
        self.stats = stats if stats is not None else TransferStats()
        self._credentials = credentials

    def _with_store(self, store: Any) -> ResilientStore:
        return type(self)(
            store,
            url=self.url,
            credentials=self._credentials,
            retries=self.retries,
            backoff_s=self.backoff_s,
            digests=self.digests,
            crc32cs=self.crc32cs,
            cache=self.cache,
            stats=self.stats,
        )

    def __repr__(self) -> str:
        return f"ResilientStore({self.url!r})"

    def __str__(self) -> str:
        return self.url

    async def _fetch(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None) -> Any:
        """One read with bounded retries; auth and permanent errors raise at once."""
        where = f"{self.url}/{key}"
        attempt = 0
        while True:
            try:
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
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                self.stats.add(requests=1)
                error = exc
            if attempt >= self.retries:
                raise RemoteReadError(
                    f"reading {where} failed after {attempt + 1} attempts: {_describe(error)}; "
                    "check that the data server is up and reachable (timeouts and retries: "
                    "train.timeout_s and train.retries in study.toml)"
                ) from None
            self.stats.add(retries=1)
            await asyncio.sleep(min(self.backoff_s * 2**attempt, 30.0))
            attempt += 1

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        value, checked = await self.get_unchecked(key, prototype, byte_range)
        if value is not None and not checked:
            big = len(value) > INLINE_HASH_BYTES
            await self._maybe_in_thread(big or self._blocking_cache, self.verify, key, value)
        return value

    @property
    def _blocking_cache(self) -> bool:
        return self.cache is not None and self.cache.blocking

    async def get_unchecked(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> tuple[Buffer | None, bool]:
        """`(value, checked)`: the value read with retries, never a missing chunk, and whether
        it is already trusted (a cache hit, or no checksum to check). An unchecked value must
        go through `verify` before use: the training loader does that in its decoding thread,
        which keeps the hashing off the I/O loop (`get` does it here)."""
        digest = self.digests.get(key) if byte_range is None else None
        if digest is not None and self.cache is not None:
            cached = await self._maybe_in_thread(self.cache.blocking, self.cache.get, digest)
            if cached is not None:
                self.stats.add(cache_hits=1, cache_bytes=len(cached))
                return prototype.buffer.from_bytes(cached), True
        value = await self._fetch(key, prototype, byte_range)
        if value is None:
            if _is_metadata(key):
                return None, True
            raise MissingChunkError(
                f"chunk {key!r} of {self.url} is missing on the server (HTTP 404), but every chunk "
                "must exist; the store is incomplete: re-run the ETL on the server, or check that "
                "the server serves the right folder"
            )
        return value, digest is None

    def verify(self, key: str, value: Buffer) -> None:
        """Check a downloaded chunk against its manifest CRC32C, or sha256 if the manifest has no
        CRC32Cs (`ChecksumError` if it differs), then cache it. CRC32C detects corruption and a
        chunk of another store version alike, at about 20x the speed of sha256 (which remains
        the cache key). Blocking; safe in any thread."""
        digest = self.digests.get(key)
        if digest is None:
            return
        data = value.as_numpy_array()  # a view: no copy of the chunk for hashing
        crc = self.crc32cs.get(key)
        if crc is not None:
            ok = google_crc32c.value(data) == crc
        else:
            ok = hashlib.sha256(data).hexdigest() == digest
        if not ok:
            raise ChecksumError(
                f"chunk {key!r} of {self.url} does not match its manifest checksum (got "
                f"{len(data)} bytes); the store may have been rewritten while reading, or is "
                "corrupted: reopen it, or re-run the ETL"
            )
        if self.cache is not None:
            self.cache.put(digest, data)  # a view of immutable bytes: the memory cache keeps it as is

    @staticmethod
    async def _maybe_in_thread(blocking: bool, func: Any, *args: Any) -> Any:
        """Slow work (disk, hashing big chunks) in a thread; quick work inline, which spares
        two thread hand-offs per chunk (they showed up as system time in the benchmark)."""
        return await asyncio.to_thread(func, *args) if blocking else func(*args)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))


@dataclass(frozen=True)
class ArrayManifest:
    """What the ETL recorded about one array: shape, chunk shape, every chunk's sha256 and CRC32C."""

    shape: tuple[int, ...]
    chunk_shape: tuple[int, ...]
    dtype: str
    chunk_count: int
    checksums: dict[str, str]
    crc32c: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """The ETL's `manifest.json` of one split store."""

    zarr_format: int | None
    arrays: dict[str, ArrayManifest]

    @property
    def digests(self) -> dict[str, str]:
        """Chunk key (relative to the store) -> sha256 of its stored bytes."""
        return {key: digest for entry in self.arrays.values() for key, digest in entry.checksums.items()}

    @property
    def crc32cs(self) -> dict[str, int]:
        """Chunk key -> CRC32C of its stored bytes (empty for manifests written without them)."""
        return {key: crc for entry in self.arrays.values() for key, crc in entry.crc32c.items()}


def parse_manifest(raw: bytes, where: str) -> Manifest:
    """Parse and sanity-check `manifest.json`.

    The chunk shape may be given as `chunk_shape` or as a list under `chunks`;
    the checksums as a mapping under `checksums` or under `chunks`; CRC32Cs (8 hex digits)
    under `crc32c`, optional.
    """
    try:
        data = json.loads(raw)
        if data.get("format") != 1:
            raise ValueError(f"unsupported manifest format {data.get('format')!r} (expected 1)")
        arrays = {}
        for name, entry in data["arrays"].items():
            chunk_shape = entry.get("chunk_shape")
            checksums = entry.get("checksums")
            if isinstance(entry.get("chunks"), list):
                chunk_shape = entry["chunks"]
            elif isinstance(entry.get("chunks"), dict):
                checksums = entry["chunks"]
            if chunk_shape is None or checksums is None:
                raise ValueError(f"array {name!r} lacks its chunk shape or its checksums")
            arrays[name] = ArrayManifest(
                shape=tuple(int(s) for s in entry["shape"]),
                chunk_shape=tuple(int(c) for c in chunk_shape),
                dtype=str(entry.get("dtype", "")),
                chunk_count=int(entry["chunk_count"]),
                checksums={str(k): str(v) for k, v in checksums.items()},
                crc32c={str(k): int(v, 16) for k, v in entry.get("crc32c", {}).items()},
            )
        fmt = data.get("zarr_format")
        return Manifest(zarr_format=int(fmt) if fmt is not None else None, arrays=arrays)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ManifestError(f"{where}: not a valid manifest ({exc}); re-run the ETL to rewrite it") from None


def check_manifest(group: Any, manifest: Manifest, url: str) -> None:
    """Compare the store's metadata with the manifest: shapes, chunk shapes, chunk counts.

    A chunk count below the expected number means the ETL did not write every
    chunk; zarr would read the missing ones as fill values.
    """
    problems = []
    for name, entry in manifest.arrays.items():
        try:
            array = group[name]
        except KeyError:
            problems.append(f"array {name!r} is in the manifest but not in the store")
            continue
        if tuple(array.shape) != entry.shape:
            problems.append(f"{name}: shape {tuple(array.shape)} != manifest {entry.shape}")
        if tuple(array.chunks) != entry.chunk_shape:
            problems.append(f"{name}: chunks {tuple(array.chunks)} != manifest {entry.chunk_shape}")
        expected = math.prod(math.ceil(s / c) for s, c in zip(array.shape, array.chunks, strict=True))
        if entry.chunk_count != expected or len(entry.checksums) != expected:
            problems.append(
                f"{name}: {entry.chunk_count} chunks recorded and {len(entry.checksums)} checksums, "
                f"expected {expected}"
            )
    if problems:
        raise ManifestError(
            f"{url} does not match its manifest: " + "; ".join(problems) + ". Re-run the ETL (--overwrite)."
        )


@dataclass
class RemoteSplit:
    """One opened split store: the resilient zarr store, its manifest and its counters.

    `store` goes to `xr.open_zarr` or `zarr.open_group`; `stats` counts
    requests, bytes and cache hits of every read made through it.
    """

    url: str
    store: Any
    manifest: Manifest | None
    stats: TransferStats
    fs: Any = field(repr=False)

    def open_dataset(self) -> xr.Dataset:
        """The split as a lazy xarray Dataset (the notebook's `xr.open_zarr` call)."""
        with warnings.catch_warnings():
            # zarr 3 notes that consolidated metadata is not part of the v3 spec: known and wanted.
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            return xr.open_zarr(self.store, consolidated=True)

    def open_group(self) -> Any:
        """The split as a zarr Group (consolidated metadata: no extra requests per array)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            return zarr.open_group(store=self.store, mode="r", use_consolidated=True)

    def close(self) -> None:
        """Close the aiohttp session (on zarr's I/O loop, where it was created)."""
        session = getattr(self.fs, "_session", None)
        if session is not None and not session.closed:
            with contextlib.suppress(Exception):  # best effort (e.g. at interpreter exit)
                zarr.core.sync.sync(session.close())
            self.fs._session = None

    def __enter__(self) -> RemoteSplit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_session_of(fs_state: dict[str, Any]) -> None:
    """Close a filesystem's aiohttp session when the filesystem is collected.

    fsspec does not do it for asynchronous filesystems, which would leave
    "Unclosed client session" warnings behind every dataset opened.
    """
    session = fs_state.get("_session")
    loop = zarr.core.sync.loop[0]
    if session is not None and not session.closed:
        HTTPFileSystem.close_session(loop, session)


def connect(
    url: str | None = None,
    *,
    split: str = "train",
    cfg: Config | None = None,
    token: str | None = None,
    user: str | None = None,
    password: str | None = None,
    timeout_s: float | None = None,
    retries: int | None = None,
    backoff_s: float = 0.5,
    cache: ChunkCache | None = None,
    require_manifest: bool = True,
    store_url: str | None = None,
) -> RemoteSplit:
    """Open one split store and check it against its manifest (the lower-level `open_remote`).

    `store_url` (a full `.../<split>.zarr` URL) bypasses the URL resolution.
    Timeouts and retries default to `train.timeout_s` and `train.retries`.
    """
    if store_url is None:
        if cfg is None:
            from .config import load_config

            cfg = load_config()
        store_url = split_url(resolve_base_url(url, cfg), cfg, split)
    else:
        store_url = resolve_base_url(store_url, None)
    prefer = cfg.server.auth if cfg is not None else "token"
    credentials = credentials_from(token, user, password, prefer=prefer)
    timeout_s = timeout_s if timeout_s is not None else (cfg.train.timeout_s if cfg else 30.0)
    retries = retries if retries is not None else (cfg.train.retries if cfg else 4)

    fs = make_filesystem(credentials, timeout_s=timeout_s)
    inner = FsspecStore(fs, path=store_url, read_only=True)
    stats = TransferStats()
    store = ResilientStore(
        inner, url=store_url, credentials=credentials, retries=retries, backoff_s=backoff_s, stats=stats
    )
    split_handle = RemoteSplit(url=store_url, store=store, manifest=None, stats=stats, fs=fs)
    weakref.finalize(fs, _close_session_of, fs.__dict__)
    try:
        raw = zarr.core.sync.sync(store.get(MANIFEST, default_buffer_prototype()))
        if raw is None:
            if require_manifest:
                raise StoreNotFoundError(
                    f"{store_url}/{MANIFEST} not found: the URL is wrong, the store is incomplete, or "
                    "it was not written by this study's ETL; check the URL (and server folder), or re-run "
                    "the ETL"
                )
        else:
            manifest = parse_manifest(raw.to_bytes(), f"{store_url}/{MANIFEST}")
            check_manifest(split_handle.open_group(), manifest, store_url)
            store.digests = manifest.digests
            store.crc32cs = manifest.crc32cs
            store.cache = cache
            split_handle.manifest = manifest
    except BaseException:
        split_handle.close()
        raise
    return split_handle


def open_remote(
    url: str | None = None,
    *,
    split: str = "train",
    cfg: Config | None = None,
    token: str | None = None,
    user: str | None = None,
    password: str | None = None,
    timeout_s: float | None = None,
    retries: int | None = None,
    cache: ChunkCache | None = None,
    require_manifest: bool = True,
) -> xr.Dataset:
    """Open a served split as a lazy xarray Dataset, the way the notebook does.

    URL: `url`, then $DATA_URL, then `server.url` of study.toml; the store is
    `{url}/{store_name}/{split}.zarr`. Credentials: arguments, then
    $DATA_TOKEN (bearer) or $DATA_USER/$DATA_PASSWORD (basic). Every chunk read
    later through the dataset is retried, checksum-verified and never filled in.
    """
    remote = connect(
        url,
        split=split,
        cfg=cfg,
        token=token,
        user=user,
        password=password,
        timeout_s=timeout_s,
        retries=retries,
        cache=cache,
        require_manifest=require_manifest,
    )
    ds = remote.open_dataset()
    ds.attrs.setdefault("source_url", remote.url)
    return ds


def check_access(
    store_url: str, *, token: str | None = None, user: str | None = None, password: str | None = None,
    timeout_s: float = 30.0,
) -> None:  # fmt: skip
    """Fail early, with a clear message, if the store cannot be read with these credentials.

    Reads the store's zarr metadata once: 401/403 raise `RemoteAuthError`
    (about credentials), a missing store a `RemoteError` naming the URL.
    """
    store_url = resolve_base_url(store_url, None)
    credentials = credentials_from(token, user, password)
    fs = make_filesystem(credentials, timeout_s=timeout_s)
    store = ResilientStore(
        FsspecStore(fs, path=store_url, read_only=True), url=store_url, credentials=credentials, retries=1
    )
    handle = RemoteSplit(url=store_url, store=store, manifest=None, stats=store.stats, fs=fs)
    try:
        for key in (".zmetadata", "zarr.json"):
            if zarr.core.sync.sync(store.get(key, default_buffer_prototype())) is not None:
                return
        raise RemoteError(
            f"no zarr store at {store_url} (neither .zmetadata nor zarr.json found); check the URL, "
            "the dataset name and that the ETL has written this split"
        )
    finally:
        handle.close()


def measure_throughput(
    url: str | None = None,
    *,
    cfg: Config | None = None,
    split: str = "train",
    max_chunks: int = 8,
    token: str | None = None,
    user: str | None = None,
    password: str | None = None,
) -> dict[str, float]:
    """Read up to `max_chunks` whole chunks the way the training loader does; report the speed.

    Returns `chunks`, `samples`, `seconds`, `bytes`, `mb_per_s` and `samples_per_s`
    (no cache: this measures the link).
    """
    import time

    import numpy as np

    from .train.loader import ChunkReader, LoaderStats, iterate_chunks

    if cfg is None:
        from .config import load_config

        cfg = load_config()
    with connect(url, split=split, cfg=cfg, token=token, user=user, password=password) as remote:
        reader = ChunkReader(remote, cfg.study.dataset_name)
        order = np.arange(min(max_chunks, reader.n_chunks))
        before = remote.stats.snapshot()["bytes"]
        start = time.perf_counter()
        samples = sum(
            len(y) for _, y in iterate_chunks(reader, order, cfg.train.prefetch_chunks, LoaderStats())
        )
        seconds = time.perf_counter() - start
        nbytes = remote.stats.snapshot()["bytes"] - before
    return {
        "chunks": len(order),
        "samples": samples,
        "seconds": seconds,
        "bytes": nbytes,
        "mb_per_s": nbytes / 1e6 / seconds if seconds else 0.0,
        "samples_per_s": samples / seconds if seconds else 0.0,
    }
