"""A training loader built for zarr over HTTP: whole chunks, concurrent, shuffled, batched.

Why not `Dataset.__getitem__` + `DataLoader(shuffle=True)`: each sample would
download and decode the whole chunk it lives in (thousands of times slower, see
benchmarks/bench_loader.py in the template). Instead:

* **whole chunks**: one request per chunk per array (features, labels);
  `prefetch_chunks` chunks are in flight at once, fetched on zarr's I/O loop,
  then checksum-verified (CRC32C) and decoded (numcodecs, GIL released) by two
  decoder threads just ahead of use; a "batcher" thread assembles the
  batches, so the main thread only trains;
* **shuffling** by a random chunk order per epoch plus a shuffle buffer that
  mixes the samples of `shuffle_buffer_chunks` chunks, seeded by
  (seed, epoch, shard): same seed, same batches; each epoch a new order;
* **batches** are gathered with `np.take` straight into one array per batch
  and returned as tensors (each sample is copied once; no per-sample collate);
  a batch's memory is recycled once the training step has dropped it
  (`BatchMemory`): fresh pages per batch cost as much CPU as the copy;
* **workers and ranks**: with `num_workers=0` (the default) everything runs in
  this process with background I/O threads. With `num_workers > 0`, worker
  processes are *spawned* (fsspec/aiohttp are not fork-safe) and each opens
  its own filesystem; chunks are split into disjoint shards across
  `world_size` ranks x `num_workers` workers, fixed across epochs so each
  shard's chunk cache stays useful;
* **cache**: the store-level chunk cache (train/cache.py) makes the second
  epoch read nothing from the network;
* **reporting**: a tqdm bar and `LoaderStats` (samples/s, MB/s, seconds spent
  waiting for data).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import queue
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numcodecs
import numpy as np
import torch
import zarr.core.sync
from tqdm.auto import tqdm
from zarr.core.buffer import default_buffer_prototype

from ..errors import StudyError
from ..remote import (
    Credentials,
    RemoteSplit,
    connect,
    credentials_from,
    resolve_base_url,
    split_url,
)
from .cache import make_cache

if TYPE_CHECKING:
    from ..config import Config

# Names the ETL may give the label array; the features array is named after the dataset.
LABEL_NAMES = ("category", "label", "labels", "categories", "target", "drought_category")
SAMPLE_DIM = "samples"
READ_WINDOW = 2  # chunks downloaded ahead, in units of prefetch_chunks (see iterate_chunks)
DECODERS = 2  # threads verifying and decoding chunks, and chunks decoded ahead of the consumer
# Batches are handed from the batcher thread to the training loop in groups of
# HANDOFF (waking a thread per batch cost 25 us, 20 ms per 200k samples), at most
# HANDOFFS_AHEAD groups ahead: few batches alive at once keeps their memory small.
HANDOFF = 8
HANDOFFS_AHEAD = 2
Batch = tuple[torch.Tensor, torch.Tensor]


class LoaderError(StudyError):
    """The store does not have the layout the loader needs."""


@dataclass
class LoaderStats:
    """Throughput of one pass: what a slow epoch is waiting for.

    `wait_s` is the time the consumer spent blocked on data; if it is close to
    `elapsed_s` the network (or server) is the bottleneck, if it is small the
    model is.
    """

    samples: int = 0
    batches: int = 0
    chunks: int = 0
    elapsed_s: float = 0.0
    wait_s: float = 0.0
    network_bytes: int = 0
    requests: int = 0
    retries: int = 0
    cache_hits: int = 0
    cache_bytes: int = 0

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        """Network megabytes (stored, compressed bytes) per second."""
        return self.network_bytes / 1e6 / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        out: dict[str, float] = asdict(self)
        out.update(samples_per_s=self.samples_per_s, mb_per_s=self.mb_per_s)
        return out

    def __str__(self) -> str:
        return (
            f"{self.samples:,} samples in {self.elapsed_s:.1f} s ({self.samples_per_s:,.0f} samples/s), "
            f"{self.network_bytes / 1e6:.2f} MB over the network ({self.mb_per_s:.1f} MB/s, "
            f"{self.requests} requests, {self.cache_hits} cache hits), waiting {self.wait_s:.1f} s"
        )


@dataclass(frozen=True)
class SplitSource:
    """A picklable recipe to open one split store in any process (workers open their own).

    Build it with `SplitSource.from_config(cfg, split, url=...)`.
    """

    store_url: str
    credentials: Credentials | None = None
    timeout_s: float = 30.0
    retries: int = 4
    backoff_s: float = 0.5
    cache: str = "memory"
    cache_dir: str | None = None
    cache_max_mb: float = 4096
    features: str | None = None
    labels: str | None = None

    @classmethod
    def from_config(
        cls,
        cfg: Config,
        split: str,
        *,
        url: str | None = None,
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        cache: str | None = None,
    ) -> SplitSource:
        """The split's store as configured: URL from `url`/$DATA_URL/study.toml, [train] settings."""
        t = cfg.train
        return cls(
            store_url=split_url(resolve_base_url(url, cfg), cfg, split),
            credentials=credentials_from(token, user, password, prefer=cfg.server.auth),
            timeout_s=t.timeout_s,
            retries=t.retries,
            cache=cache or t.cache,
            cache_dir=str(cfg.path(t.cache_dir)),
            cache_max_mb=t.cache_max_mb,
            features=cfg.study.dataset_name,
        )

    def connect(self) -> RemoteSplit:
        """Open the store (manifest checked) with this process's own filesystem and cache."""
        chunk_cache = make_cache(self.cache, max_mb=self.cache_max_mb, cache_dir=self.cache_dir)
        creds = self.credentials
        return connect(
            store_url=self.store_url,
            token=creds.token if creds else None,
            user=creds.user if creds else None,
            password=creds.password if creds else None,
            timeout_s=self.timeout_s,
            retries=self.retries,
            backoff_s=self.backoff_s,
            cache=chunk_cache,
        )


def _dims(array: Any) -> tuple[str, ...] | None:
    names = getattr(array.metadata, "dimension_names", None)
    if names is None:
        names = array.attrs.get("_ARRAY_DIMENSIONS")
    return tuple(names) if names is not None else None


def find_arrays(group: Any, features: str | None = None, labels: str | None = None) -> tuple[str, str]:
    """Names of the features array (samples, time_lookback, features) and the label array.

    The features array is named after the dataset (`study.dataset_name`); the
    labels are an integer array along `samples` (codes 0..10, -1 = missing),
    found by name (see LABEL_NAMES) or as the only such array.
    """
    arrays = {name: array for name, array in group.arrays()}
    along = {n: a for n, a in arrays.items() if (_dims(a) or ("",))[0] == SAMPLE_DIM}
    if features is None or features not in arrays:
        candidates = [n for n, a in along.items() if a.ndim == 3 and a.dtype.kind == "f"]
        if features is not None or len(candidates) != 1:
            raise LoaderError(
                f"no features array {features!r} of dims (samples, time_lookback, features) in the store; "
                f"arrays: {sorted(arrays)}; is study.dataset_name the name the ETL used?"
            )
        features = candidates[0]
    if labels is None:
        named = [n for n in LABEL_NAMES if n in along]
        ints = [n for n, a in along.items() if a.ndim == 1 and a.dtype.kind in "iu"]
        if named:
            labels = named[0]
        elif len(ints) == 1:
            labels = ints[0]
        else:
            raise LoaderError(
                f"cannot tell the label array among {sorted(along)}: expected one of {LABEL_NAMES} "
                "or a single integer array along samples"
            )
    x, y = arrays[features], arrays.get(labels)
    if y is None:
        raise LoaderError(f"no label array {labels!r} in the store; arrays: {sorted(arrays)}")
    if x.ndim != 3 or y.ndim not in (1, 2) or x.shape[0] != y.shape[0]:
        raise LoaderError(
            f"expected {features}(samples, time_lookback, features) and {labels}(samples) with the same "
            f"number of samples; got shapes {x.shape} and {y.shape}"
        )
    return features, labels


def chunk_decoder(array: Any) -> Callable[[Any], np.ndarray] | None:
    """A direct numcodecs decoder of one stored chunk, for the layouts the ETL writes.

    zarr's own read path decodes a chunk and then copies it into a new output
    array; for whole-chunk reads that copy is pure overhead (about as costly as
    the decompression itself). The fast path covers zarr 2 arrays with a single
    compressor (no filters, C order) and zarr 3 arrays with a little-endian
    `bytes` codec plus optional Zstd; anything else returns None and is read
    through zarr. tests/test_loader.py checks both paths give the same arrays.
    """
    md = array.metadata
    if sys.byteorder != "little" or any(
        c < s for c, s in zip(array.chunks[1:], array.shape[1:], strict=True)
    ):
        return None
    if md.zarr_format == 2:
        if md.filters or md.order != "C":
            return None
        codec = md.compressor
        dtype = md.dtype.to_native_dtype()
    else:
        from zarr.codecs import BytesCodec, ZstdCodec

        first, *rest = md.codecs
        endian = getattr(getattr(first, "endian", None), "value", None)
        if not isinstance(first, BytesCodec) or endian not in ("little", None) or len(rest) > 1:
            return None
        if rest and not isinstance(rest[0], ZstdCodec):
            return None
        codec = numcodecs.Zstd(level=rest[0].level, checksum=rest[0].checksum) if rest else None
        dtype = md.data_type.to_native_dtype()
    if np.dtype(dtype).byteorder == ">":
        return None
    shape = tuple(array.chunks)

    def decode(stored: Any, out: np.ndarray | None = None) -> np.ndarray:
        """The full (padded) chunk; decompressed into `out` when given (a recycled buffer)."""
        if codec is None:
            return np.frombuffer(stored, dtype=dtype).reshape(shape)
        if out is not None:
            codec.decode(stored, out=out)
            return out
        return np.frombuffer(codec.decode(stored), dtype=dtype).reshape(shape)

    return decode


class ChunkReader:
    """Reads sample-aligned chunks (features and labels) of one opened split store.

    One GET per chunk per array through the resilient store (retries,
    cache), checksum-verified and decoded in the calling (decoder) thread. Feature chunks
    are decompressed into recycled buffers (`release` hands one back): fresh
    multi-megabyte allocations per chunk cost page faults and allocator churn
    comparable to the decompression itself.
    """

    def __init__(self, remote: RemoteSplit, features: str | None = None, labels: str | None = None) -> None:
        self.remote = remote
        group = remote.open_group()
        self.features, self.labels = find_arrays(group, features, labels)
        self._x = group[self.features]
        self._y = group[self.labels]
        self.n_samples = int(self._x.shape[0])
        self.chunk_samples = int(self._x.chunks[0])
        if self._y.chunks[0] != self.chunk_samples:
            raise LoaderError(
                f"{self.features} and {self.labels} are chunked differently along samples "
                f"({self.chunk_samples} vs {self._y.chunks[0]}); re-run the ETL"
            )
        self.sample_shape = tuple(int(s) for s in self._x.shape[1:])
        self.n_chunks = math.ceil(self.n_samples / self.chunk_samples) if self.n_samples else 0
        decoders = (chunk_decoder(self._x), chunk_decoder(self._y))
        self._decoders = decoders if None not in decoders else None
        self._full_shape = tuple(int(c) for c in self._x.chunks)
        self._free: queue.SimpleQueue[np.ndarray] = queue.SimpleQueue()
        self.max_free = 8

    def release(self, x: np.ndarray) -> None:
        """Give back the buffer behind a chunk returned by `read` (no longer used)."""
        base = x if x.base is None else x.base
        if (
            isinstance(base, np.ndarray)
            and base.shape == self._full_shape
            and base.dtype == np.float32
            and base.flags.writeable
            and self._free.qsize() < self.max_free
        ):
            self._free.put(base)

    def _buffer(self) -> np.ndarray | None:
        if self._x.dtype != np.float32:
            return None
        try:
            return self._free.get_nowait()
        except queue.Empty:
            return np.empty(self._full_shape, dtype=np.float32)

    def _key(self, array: Any, chunk: int) -> str:
        return f"{array.path}/{array.metadata.encode_chunk_key((chunk,) + (0,) * (array.ndim - 1))}"

    def bounds(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_samples
        return start, min(start + self.chunk_samples, self.n_samples)

    def chunk_len(self, chunk: int) -> int:
        start, stop = self.bounds(chunk)
        return stop - start

    async def _read(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        region = (slice(*self.bounds(chunk)),)
        x, y = await asyncio.gather(self._x.async_array.getitem(region), self._y.async_array.getitem(region))
        return np.ascontiguousarray(x, dtype=np.float32), _codes(np.asarray(y))

    def read_labels(self) -> np.ndarray:
        """All labels of the split (small: one int per sample), e.g. for class weights."""
        return _codes(np.asarray(self._y[:]))

    async def _fetch(self, chunk: int, limit: asyncio.Semaphore | None = None) -> tuple[Any, Any]:
        """Stored bytes of the chunk's features and labels, not yet checked (see `finish`)."""
        proto = default_buffer_prototype()
        store = self.remote.store
        keys = (self._key(self._x, chunk), self._key(self._y, chunk))
        async with limit if limit is not None else contextlib.nullcontext():
            (x, x_ok), (y, y_ok) = await asyncio.gather(*(store.get_unchecked(k, proto) for k in keys))
        return (x, x_ok, keys[0]), (y, y_ok, keys[1])

    def start_fetch(self, chunk: int, limit: asyncio.Semaphore | None = None) -> Future[Any] | None:
        """Start downloading a chunk on zarr's I/O loop; `finish` it in any thread.

        No thread waits on the network: the requests run as tasks of the loop,
        at most `limit` chunks at once. None on the slow (zarr) path.
        """
        if self._decoders is None:
            return None
        return asyncio.run_coroutine_threadsafe(self._fetch(chunk, limit), zarr.core.sync._get_loop())

    def finish(self, chunk: int, fetch: Future[Any] | None) -> tuple[np.ndarray, np.ndarray]:
        """Features and labels of a chunk started with `start_fetch`: checksums verified (and
        cached) here, in the calling thread, then decoded. Blocking; raises what the read raised."""
        if fetch is None:
            return self.read(chunk, fast=False)
        stored = fetch.result()
        for value, checked, key in stored:
            if not checked:
                self.remote.store.verify(key, value)
        (x, _, _), (y, _, _) = stored
        n = self.chunk_len(chunk)
        assert self._decoders is not None
        xs = self._decoders[0](x.as_numpy_array(), out=self._buffer())[:n]
        ys = self._decoders[1](y.as_numpy_array())[:n]
        return np.asarray(xs, dtype=np.float32), _codes(ys)

    def read(self, chunk: int, *, fast: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Features (float32) and labels (int64, -1 = missing) of one chunk: one request each."""
        if not fast or self._decoders is None:
            return zarr.core.sync.sync(self._read(chunk))
        return self.finish(chunk, self.start_fetch(chunk))


def _codes(y: np.ndarray) -> np.ndarray:
    """Integer class codes; one-hot labels become codes, all-zero rows -1 (missing)."""
    if y.ndim == 2:
        codes = y.argmax(axis=1).astype(np.int64)
        codes[y.sum(axis=1) == 0] = -1
        return codes
    return y.astype(np.int64)


def shard_chunks(n_chunks: int, shard: int, n_shards: int) -> np.ndarray:
    """The chunks one shard (rank x worker) reads: every n_shards-th, disjoint across shards."""
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} is outside 0..{n_shards - 1}")
    return np.arange(shard, n_chunks, n_shards)


class BatchMemory:
    """Recycles the memory of batch arrays once nothing refers to a batch any more.

    A fresh array per batch costs one page fault per 4 kB page on first touch:
    as much CPU as copying the samples in (more in a VM). Instead each batch is a
    view of a pooled buffer; when the last reference to that view goes (the
    training step dropped the tensor made from it, and every view of it), a
    finalizer puts the buffer back. Memory is reused only when no Python
    object can still see it. At most `keep` idle buffers per shape are kept.
    Buffers are allocated one per batch: numpy advises huge pages for blocks
    of 4 MiB and more, and on a kernel that compacts memory for them on fault
    (THP defrag "madvise") that cost more system time than it saved
    (up to 45 ms per 200k-sample epoch of benchmarks/bench_loader.py).
    """

    def __init__(self, keep: int = 64) -> None:
        self.keep = keep
        self._free: dict[tuple[tuple[int, ...], str], queue.SimpleQueue[np.ndarray]] = {}

    def empty(self, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        """An uninitialised array, on recycled memory when some is idle."""
        key = (tuple(shape), np.dtype(dtype).str)
        free = self._free.get(key) or self._free.setdefault(key, queue.SimpleQueue())
        try:
            base = free.get_nowait()
        except queue.Empty:
            base = np.empty(shape, dtype=dtype)
        view = base[...]
        weakref.finalize(view, self._give_back, free, base).atexit = False
        return view

    def _give_back(self, free: queue.SimpleQueue[np.ndarray], base: np.ndarray) -> None:
        if free.qsize() < self.keep:
            free.put(base)


class ShuffleBuffer:
    """Mixes the samples of several chunks and hands them out as batches.

    Each chunk that comes in is split at random into `capacity` parts; every
    `add` (once `capacity` chunks are pooled) emits, shuffled together, part
    0 of the newest chunk, part 1 of the one before, ... and the last part of
    the oldest, which then leaves the buffer. So every batch mixes up to
    `capacity` chunks, and a chunk is held for `capacity` additions only (a
    pool that keeps random survivors instead holds on to nearly every chunk
    of the epoch, which costs memory and fresh pages). Batches are gathered
    by `np.take` straight into one array per batch (recycled memory from
    `memory`, if given); rows that do not fill a whole batch wait for the
    next emission.
    """

    def __init__(
        self,
        batch_size: int,
        capacity: int,
        rng: np.random.Generator,
        shuffle: bool = True,
        release: Callable[[np.ndarray], None] | None = None,
        memory: BatchMemory | None = None,
    ) -> None:
        self.release = release
        self.memory = memory
        self.batch_size = batch_size
        self.capacity = max(1, capacity)
        self.rng = rng
        self.shuffle = shuffle
        self._chunks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._left: dict[int, int] = {}
        self._parts: deque[tuple[int, list[np.ndarray]]] = deque()  # newest last; parts not yet emitted
        self._rows_c = np.empty(0, dtype=np.int64)  # rows waiting to fill a batch
        self._rows_r = np.empty(0, dtype=np.int64)
        self._next_id = 0

    def add(self, x: np.ndarray, y: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Add one chunk; yield the batches that became ready (exhaust before the next `add`)."""
        cid = self._next_id
        self._next_id += 1
        self._chunks[cid] = (x, y)
        self._left[cid] = len(y)
        if not self.shuffle:
            self._queue([(cid, np.arange(len(y), dtype=np.int64))])
            yield from self._emit(len(self._rows_c) // self.batch_size * self.batch_size)
            return
        self._parts.append((cid, np.array_split(self.rng.permutation(len(y)), self.capacity)[::-1]))
        if len(self._parts) >= self.capacity:
            due = []
            for age, (pid, parts) in enumerate(reversed(self._parts)):  # age 0: the newest chunk
                while len(parts) > self.capacity - 1 - age:  # parts 0..age are due by now
                    due.append((pid, parts.pop()))
            while self._parts and not self._parts[0][1]:
                self._parts.popleft()
            self._queue(due)
            yield from self._emit(len(self._rows_c) // self.batch_size * self.batch_size)

    def flush(self, drop_last: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield everything left (a last, smaller batch unless `drop_last`)."""
        self._queue([(pid, part) for pid, parts in self._parts for part in parts])
        self._parts.clear()
        n = len(self._rows_c)
        yield from self._emit(n if not drop_last else n // self.batch_size * self.batch_size)
        self._chunks.clear()
        self._left.clear()
        self._rows_c = self._rows_r = np.empty(0, dtype=np.int64)

    def _queue(self, rows: list[tuple[int, np.ndarray]]) -> None:
        """Append rows (chunk id, row indices) after the waiting ones; shuffled, if shuffling,
        with each other (the waiting rows are already in random order)."""
        if not rows:
            return
        new_c = np.concatenate([np.full(len(r), cid, dtype=np.int64) for cid, r in rows])
        new_r = np.concatenate([r for _, r in rows])
        if self.shuffle:
            order = self.rng.permutation(len(new_c))
            new_c, new_r = new_c[order], new_r[order]
        self._rows_c = np.concatenate([self._rows_c, new_c])
        self._rows_r = np.concatenate([self._rows_r, new_r])

    def _emit(self, n: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The next `n` waiting rows as batches, each sample copied once.

        Inside each batch the rows are grouped by chunk (their order inside a
        batch does not matter to the loss), so a batch is a few `np.take`s
        straight into its memory; the grouping is planned for all `n` rows at
        once, not batch by batch.
        """
        if n <= 0:
            return
        bs = self.batch_size
        position = np.arange(n)
        order = np.lexsort((self._rows_c[:n], position // bs))  # by batch, then chunk
        cs, rs = self._rows_c[:n][order], self._rows_r[:n][order]
        self._rows_c, self._rows_r = self._rows_c[n:], self._rows_r[n:]
        starts = np.flatnonzero(np.r_[True, (cs[1:] != cs[:-1]) | (position[1:] % bs == 0)])
        runs = list(zip(starts.tolist(), [*starts[1:].tolist(), n], cs[starts].tolist(), strict=True))
        labels = np.empty(n, dtype=np.int64)
        for start, stop, cid in runs:  # mode="clip": rows are valid by construction (no temporary)
            np.take(self._chunks[cid][1], rs[start:stop], out=labels[start:stop], mode="clip")
        run = 0
        for b0 in range(0, n, bs):
            b1 = min(b0 + bs, n)
            sample = self._chunks[runs[run][2]][0]
            shape = (b1 - b0, *sample.shape[1:])
            memory = self.memory if b1 - b0 == bs else None  # a short last batch: not pooled
            xb = memory.empty(shape, sample.dtype) if memory is not None else np.empty(shape, sample.dtype)
            while run < len(runs) and runs[run][0] < b1:
                start, stop, cid = runs[run]
                x = self._chunks[cid][0]
                np.take(x, rs[start:stop], axis=0, out=xb[start - b0 : stop - b0], mode="clip")
                run += 1
            yield xb, labels[b0:b1]
        for cid, used in zip(*np.unique(cs, return_counts=True), strict=True):
            self._left[int(cid)] -= int(used)
            if self._left[int(cid)] == 0:
                del self._left[int(cid)]
                x, _ = self._chunks.pop(int(cid))
                if self.release is not None:
                    self.release(x)


def iterate_chunks(
    reader: ChunkReader, order: np.ndarray, prefetch: int, stats: LoaderStats | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Chunks in `order`: `prefetch` downloading at once, a few decoded ahead of the consumer.

    Chunks are handed out in order (for reproducible batches). Downloads run
    on zarr's I/O loop, up to `READ_WINDOW * prefetch` chunks ahead (so a slow
    chunk at the head does not leave the connections idle); their checksums
    are verified and they are decoded by `DECODERS` threads, only
    `DECODERS` chunks ahead: decoded chunks are ~3x larger than the stored
    bytes, and touching fresh memory for them (page faults) cost as much as
    the decompression. A failed read raises here (after the store's retries):
    a chunk is never skipped or replaced by fill values.
    """
    prefetch = max(1, prefetch)
    limit = asyncio.Semaphore(prefetch)  # bound to zarr's loop at first use, used only there
    pool = ThreadPoolExecutor(max_workers=DECODERS, thread_name_prefix="chunk-decoder")
    fetching: deque[tuple[int, Future[Any] | None]] = deque()
    decoding: deque[Future[tuple[np.ndarray, np.ndarray]]] = deque()
    todo = iter(order.tolist())

    def refill() -> None:
        while len(fetching) + len(decoding) < READ_WINDOW * prefetch + DECODERS:
            chunk = next(todo, None)
            if chunk is None:
                break
            fetching.append((chunk, reader.start_fetch(chunk, limit)))
        while fetching and len(decoding) < DECODERS:
            decoding.append(pool.submit(reader.finish, *fetching.popleft()))

    try:
        refill()
        while decoding:
            x, y = decoding.popleft().result()
            refill()
            if stats is not None:
                stats.chunks += 1
            yield x, y
    finally:
        for future in [*decoding, *(f for _, f in fetching if f is not None)]:
            future.cancel()
        pool.shutdown(wait=False, cancel_futures=True)


_DONE = object()


def in_background(items: Iterator[Any], capacity: int) -> Iterator[Any]:
    """Run a generator in a daemon thread, `capacity` items ahead of the consumer.

    Batches are assembled (and chunks decoded) while the main thread trains;
    an exception in the producer is raised here, in the consumer. Stopping
    early (break, close) tells the producer to stop at its next item.
    """
    out: queue.Queue[Any] = queue.Queue(maxsize=max(1, capacity))
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="batcher", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


class ChunkLoader:
    """Iterable of `(x, y)` tensor batches over one split: x (batch, time, features) float32,
    y (batch,) int64 codes (-1 = missing label, to be ignored by the loss).

    Each `iter()` is one epoch; the epoch number (0, 1, ...) seeds the chunk order
    and the shuffle buffer, so the same seed gives the same batches. Use
    `start_epoch` to resume. `stats` describes the last pass.

    With `world_size > 1` (DistributedDataParallel), rank r reads chunks
    r, r + world_size, ...; ranks can differ by up to one chunk of samples, so
    stop each epoch at the smallest rank's `len()` (or pass `drop_last=True`
    and equal-sized chunks) to keep collective operations in step.
    """

    def __init__(
        self,
        source: SplitSource,
        *,
        batch_size: int = 256,
        shuffle: bool = True,
        seed: int = 0,
        prefetch_chunks: int = 4,
        shuffle_buffer_chunks: int = 3,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        progress: bool = False,
        desc: str = "",
        start_epoch: int = 0,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        self.source = source
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.prefetch_chunks = prefetch_chunks
        self.shuffle_buffer_chunks = shuffle_buffer_chunks
        self.num_workers = num_workers
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.progress = progress
        self.desc = desc
        self.epoch = start_epoch
        self.stats = LoaderStats()
        self._remote: RemoteSplit | None = None
        self._reader: ChunkReader | None = None
        self._worker_loader: torch.utils.data.DataLoader | None = None
        self._memory = BatchMemory()

    # -- the store, opened lazily in whichever process iterates -------------------------
    @property
    def reader(self) -> ChunkReader:
        if self._reader is None:
            self._remote = self.source.connect()
            try:
                self._reader = ChunkReader(self._remote, self.source.features, self.source.labels)
            except BaseException:
                self._remote.close()
                raise
        return self._reader

    @property
    def remote(self) -> RemoteSplit:
        _ = self.reader
        assert self._remote is not None
        return self._remote

    def close(self) -> None:
        """Close the HTTP session (and stop worker processes)."""
        if self._remote is not None:
            self._remote.close()
        self._worker_loader = None

    def __getstate__(self) -> dict[str, Any]:  # workers get the recipe, not the open store
        state = self.__dict__.copy()
        state.update(_remote=None, _reader=None, _worker_loader=None, _memory=BatchMemory(), progress=False)
        return state

    # -- sizes -----------------------------------------------------------------------
    @property
    def n_shards(self) -> int:
        return self.world_size * max(1, self.num_workers)

    def _shard_samples(self, shard: int) -> int:
        reader = self.reader
        return sum(reader.chunk_len(int(c)) for c in shard_chunks(reader.n_chunks, shard, self.n_shards))

    def _shard_batches(self, shard: int) -> int:
        n = self._shard_samples(shard)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def n_samples(self) -> int:
        """Samples this rank reads per epoch (all its workers together)."""
        workers = max(1, self.num_workers)
        return sum(self._shard_samples(self.rank * workers + w) for w in range(workers))

    def __len__(self) -> int:
        """Batches this rank yields per epoch."""
        workers = max(1, self.num_workers)
        return sum(self._shard_batches(self.rank * workers + w) for w in range(workers))

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch of the next pass (like DistributedSampler.set_epoch)."""
        if self._worker_loader is not None:
            raise StudyError("set_epoch must be called before the first pass when num_workers > 0")
        self.epoch = epoch

    # -- iteration ---------------------------------------------------------------------
    def chunk_order(self, epoch: int, shard: int) -> np.ndarray:
        """The chunks of `shard`, in the (seeded) order of `epoch`."""
        chunks = shard_chunks(self.reader.n_chunks, shard, self.n_shards)
        if not self.shuffle:
            return chunks
        return np.random.default_rng([self.seed, epoch, shard, 0]).permutation(chunks)

    def _batch_groups(self, epoch: int, shard: int, stats: LoaderStats | None) -> Iterator[list[Batch]]:
        """Tensor batches of one shard in one epoch, in groups of HANDOFF (run by the batcher thread)."""
        reader = self.reader
        rng = np.random.default_rng([self.seed, epoch, shard, 1])
        capacity = self.shuffle_buffer_chunks if self.shuffle else 1
        buffer = ShuffleBuffer(
            self.batch_size, capacity, rng, shuffle=self.shuffle, release=reader.release, memory=self._memory
        )
        reader.max_free = capacity + DECODERS + 2  # chunks alive at once: see iterate_chunks
        self._memory.keep = (HANDOFFS_AHEAD + 3) * HANDOFF  # batches alive: queued, being built, in use

        def numpy_batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for x, y in iterate_chunks(reader, self.chunk_order(epoch, shard), self.prefetch_chunks, stats):
                yield from buffer.add(x, y)
            yield from buffer.flush(self.drop_last)

        group: list[Batch] = []
        for xb, yb in numpy_batches():
            group.append((torch.from_numpy(xb), torch.from_numpy(yb)))
            if len(group) == HANDOFF:
                yield group
                group = []
        if group:
            yield group

    def iter_shard(self, epoch: int, shard: int, stats: LoaderStats | None = None) -> Iterator[Batch]:
        """Batches of one shard in one epoch, read and assembled by background threads."""
        _ = self.reader  # open the store here, so errors surface in the caller's thread
        for group in in_background(self._batch_groups(epoch, shard, stats), capacity=HANDOFFS_AHEAD):
            group.reverse()
            while group:  # popped, so a batch's memory is recycled once the caller drops it
                yield group.pop()

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        self.epoch += 1
        info = torch.utils.data.get_worker_info()
        if info is not None:  # inside a worker process: one shard of this rank
            shard = self.rank * info.num_workers + info.id
            yield from self.iter_shard(epoch, shard)
            return
        yield from self._main_pass(epoch)

    def _main_pass(self, epoch: int) -> Iterator[Batch]:
        stats = LoaderStats()
        self.stats = stats
        before = self.remote.stats.snapshot() if self.num_workers == 0 else None
        bar = tqdm(
            total=len(self),
            desc=self.desc or f"epoch {epoch}",
            unit="batch",
            disable=not self.progress,
            leave=False,
        )
        start = time.perf_counter()
        if self.num_workers == 0:
            batches: Iterator[Batch] = self.iter_shard(epoch, self.rank, stats)
        else:
            batches = self._from_workers(stats)
        try:
            while True:
                waited = time.perf_counter()
                try:
                    xb, yb = next(batches)
                except StopIteration:
                    break
                stats.wait_s += time.perf_counter() - waited
                stats.samples += len(yb)
                stats.batches += 1
                bar.update(1)
                yield xb, yb
        finally:
            stats.elapsed_s = time.perf_counter() - start
            if before is not None:
                after = self.remote.stats.snapshot()
                stats.network_bytes = after["bytes"] - before["bytes"]
                stats.requests = after["requests"] - before["requests"]
                stats.retries = after["retries"] - before["retries"]
                stats.cache_hits = after["cache_hits"] - before["cache_hits"]
                stats.cache_bytes = after["cache_bytes"] - before["cache_bytes"]
            bar.close()

    def _from_workers(self, stats: LoaderStats) -> Iterator[Batch]:
        """Batches from spawned worker processes, each reading its own shard."""
        if self._worker_loader is None:
            self._worker_loader = torch.utils.data.DataLoader(
                _WorkerDataset(self),
                batch_size=None,
                num_workers=self.num_workers,
                multiprocessing_context="spawn",
                persistent_workers=True,
                prefetch_factor=2,
            )
        yield from self._worker_loader


class _WorkerDataset(torch.utils.data.IterableDataset):
    """What DataLoader workers run: the loader's `__iter__` (which picks the worker's shard)."""

    def __init__(self, loader: ChunkLoader) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.loader)


def make_loader(
    cfg: Config,
    split: str,
    *,
    url: str | None = None,
    token: str | None = None,
    user: str | None = None,
    password: str | None = None,
    shuffle: bool | None = None,
    progress: bool = True,
    start_epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    cache: str | None = None,
) -> ChunkLoader:
    """The loader of one split as configured in [train] (training data shuffled, others not)."""
    t = cfg.train
    shuffle = split == "train" if shuffle is None else shuffle
    source = SplitSource.from_config(
        cfg, split, url=url, token=token, user=user, password=password, cache=cache
    )
    return ChunkLoader(
        source,
        batch_size=t.batch_size,
        shuffle=shuffle,
        seed=t.seed,
        prefetch_chunks=t.prefetch_chunks,
        shuffle_buffer_chunks=t.shuffle_buffer_chunks,
        num_workers=t.num_workers,
        rank=rank,
        world_size=world_size,
        progress=progress,
        desc=split,
        start_epoch=start_epoch,
    )
