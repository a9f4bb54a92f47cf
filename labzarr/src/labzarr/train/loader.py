"""The training loader: lookback windows cut on read from the served series, in uniform batches.

The store holds each cell's whole series once (`store_format.py`); a sample is
the window of `lookback` days ending on a labelled day. Why this shape:

* **the data are read once**: `Series` fetches whole chunks (cell blocks, all of
  time), several in flight, each verified against the manifest, and keeps the
  decoded series **resident on the training device** (the GPU when there is
  one) when it fits in `train.resident_max_mb`: later epochs, and the
  validation and test splits, read nothing from the network. A stored window
  would be a shifted copy of its neighbours (`lookback` times the bytes to
  fetch and decode per epoch);
* **uniform batches**: each epoch draws a seeded permutation of all usable
  windows of the split (`windows.WindowIndex`), so a batch mixes cells as a
  uniform draw does; with `world_size > 1` (DDP) rank r takes every
  world_size-th window of that permutation: disjoint shares that together cover
  the epoch once. `windows_per_epoch` keeps the first N of each epoch's
  permutation: a different uniform subset every epoch (neighbouring windows of a
  cell share all but one day, so an epoch rarely needs them all);
* **memory bounded by the budget**: the windows of a split cost ~8 bytes per
  cell (2 more per window in cells with gaps), the permutation is a keyed
  Feistel map evaluated per block of batches (`windows.Permutation`), labels
  stay int8 until a batch, and `train.resident_max_mb` counts the features,
  labels, the `complete` mask and that index;
* **one gather per batch**: the windows of a batch are one `index_select` of a
  strided view of the series (`store_format.window_rows`), on the device: no
  per-sample Python, no collate, and only the index pairs live on the host;
* **when the series do not fit**, the loader streams rounds of chunks that fit
  in half the budget (the next round downloads while the current one trains)
  and draws uniform batches within the round: a batch then mixes the cells of
  one round (`Series.round_chunks` chunks x `chunk_cells` cells) instead of all;
* **failures are loud**: a missing, corrupt or unreachable chunk raises (after
  the store's retries); nothing is ever replaced by fill values.

No worker processes: the gather runs at millions of windows per second in this
process, and each worker would hold its own copy of the series.
"""

from __future__ import annotations

import functools
import math
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import StudyError
from ..remote import StoreSource, TransferStats
from ..store_format import (
    COMPLETE,
    LABELS,
    SPLIT_GAP,
    SplitBlock,
    blocks_from_attrs,
    window_ends,
    window_rows,
)
from .windows import Permutation, WindowIndex

Batch = tuple[torch.Tensor, torch.Tensor]
BLOCK_BATCHES = 64  # batches whose window positions are computed at once (amortises numpy calls)


class LoaderError(StudyError):
    """The store does not have the layout the loader needs, or the settings do not fit it."""


@dataclass
class LoaderStats:
    """Throughput of one pass: what a slow epoch is waiting for.

    `wait_s` is the time the training loop spent waiting for batches (downloads
    and the gather); if it is close to `elapsed_s` data loading is the
    bottleneck, if it is small the model is. Network figures count what this
    pass fetched (the first pass of a resident series fetches it all).
    """

    samples: int = 0
    batches: int = 0
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
            f"{self.network_bytes / 1e6:.2f} MB over the network ({self.requests} requests, "
            f"{self.cache_hits} cache hits), waiting {self.wait_s:.1f} s"
        )


class Series:
    """The store's series, opened once and shared by the loaders of every split.

    At open it reads the metadata, the labels and the `complete` mask (one byte
    per cell-day each: what the usable windows of every split are computed
    from). The features are fetched when first needed: all at once into a
    resident tensor on `device` when they fit in `resident_max_mb` beside the
    labels, the mask and the window index, else round by round (`read_chunks`).
    `Series.from_arrays` wraps series already in memory (no store).
    """

    def __init__(
        self, source: StoreSource, *, device: torch.device | str = "cpu", resident_max_mb: float = 4096,
        progress: bool = False,
    ) -> None:  # fmt: skip
        self.source = source
        self.device = torch.device(device)
        self.budget_bytes = int(resident_max_mb * 2**20)
        self.progress = progress
        self.remote = source.connect()
        try:
            group = self.remote.open_group()
            if source.features not in group or LABELS not in group or COMPLETE not in group:
                raise LoaderError(
                    f"{self.remote.url} has no {source.features!r}, {LABELS!r} and {COMPLETE!r} arrays "
                    f"(it has {sorted(group.array_keys())}); is study.dataset_name the ETL's, and was the "
                    "store written by this study's ETL?"
                )
            self._x = group[source.features]
            self.n_cells, self.n_time, self.n_features = (int(s) for s in self._x.shape)
            self.chunk_cells = int(self._x.chunks[0])
            self.attrs = dict(group.attrs)
            if SPLIT_GAP not in self.attrs:
                raise LoaderError(
                    f"{self.remote.url} has no {SPLIT_GAP!r} attribute: it was written by an older ETL; "
                    "re-run the ETL (etl --overwrite) on the lab machine"
                )
            self.blocks = blocks_from_attrs(self.attrs)
            self.gap = int(self.attrs[SPLIT_GAP])
            self.lookback = int(self.attrs["time_lookback"])
            self.features = [str(f) for f in self.attrs["features"]]
            self.labels = np.asarray(group[LABELS][:])  # (cells, T) int8 codes
            self.complete = np.asarray(group[COMPLETE][:]) == 1  # (cells, T) bool: 1 yes; 0 or a fill no
        except BaseException:
            self.remote.close()
            raise
        self._resident: torch.Tensor | None = None
        self._labels_on_device: torch.Tensor | None = None
        self._lock = threading.Lock()
        self._indices: dict[tuple[str, int, int], WindowIndex] = {}

    @classmethod
    def from_arrays(
        cls,
        features: np.ndarray | torch.Tensor,
        labels: np.ndarray,
        complete: np.ndarray,
        blocks: dict[str, SplitBlock],
        *,
        lookback: int,
        gap: int | None = None,
        feature_names: list[str] | None = None,
        device: torch.device | str = "cpu",
    ) -> Series:
        """A resident series from arrays in memory (features (cells, T, F) float32, labels (cells, T)
        int8 codes, complete (cells, T) bool): the loader without a store, for benchmarks and tests."""
        self = cls.__new__(cls)
        self.source, self.remote, self._x = None, None, None
        self.device = torch.device(device)
        x = torch.as_tensor(features).to(self.device)
        self.n_cells, self.n_time, self.n_features = (int(s) for s in x.shape)
        self.chunk_cells, self.progress, self.attrs = self.n_cells, False, {}
        self.blocks, self.lookback, self.gap = dict(blocks), lookback, lookback if gap is None else gap
        self.features = feature_names or [f"feature{i}" for i in range(self.n_features)]
        self.labels, self.complete = np.asarray(labels, dtype=np.int8), np.asarray(complete) == 1
        self.budget_bytes = 2**62
        self._resident, self._labels_on_device = x, None
        self._lock = threading.Lock()
        self._indices = {}
        return self

    # -- sizes ---------------------------------------------------------------------------
    @property
    def n_chunks(self) -> int:
        return math.ceil(self.n_cells / self.chunk_cells)

    @property
    def feature_bytes(self) -> int:
        """Decoded bytes of the features of every cell."""
        return self.n_cells * self.n_time * self.n_features * 4

    @property
    def host_bytes(self) -> int:
        """What the loader holds besides the features: labels, the `complete` mask and an allowance
        for the window indices of the splits (8 bytes per cell each, 2 per window of a cell with gaps)."""
        return self.labels.nbytes + self.complete.nbytes + 3 * 16 * self.n_cells + self.labels.size // 4

    @property
    def resident(self) -> bool:
        """Whether the whole series stays on the device (else it is streamed in rounds)."""
        return self.feature_bytes + self.host_bytes <= self.budget_bytes

    @property
    def round_chunks(self) -> int:
        """Chunks per round when streaming: two rounds (one training, one downloading) fit the budget."""
        chunk_bytes = self.chunk_cells * self.n_time * self.n_features * 4
        return max(1, (self.budget_bytes - self.host_bytes) // (2 * chunk_bytes))

    def index(self, split: str, lookback: int | None = None, stride: int = 1) -> WindowIndex:
        """The split's usable windows (computed once per split, lookback and stride)."""
        lookback = lookback or self.lookback
        if split not in self.blocks:
            raise LoaderError(f"unknown split {split!r}; the store has {', '.join(self.blocks)}")
        if lookback > self.gap:
            raise LoaderError(
                f"a lookback of {lookback} steps is longer than the store's split gap ({self.gap} steps): "
                "windows would reach into another split; re-run the ETL with a larger etl.split_gap"
            )
        key = (split, lookback, stride)
        if key not in self._indices:
            ends = window_ends(self.blocks[split], lookback, stride)
            self._indices[key] = WindowIndex(self.labels, self.complete, ends, lookback)
        return self._indices[key]

    def pairs(self, split: str, lookback: int | None = None, stride: int = 1) -> np.ndarray:
        """Flat indices `cell * n_time + end` of the split's usable windows (sorted; int64, one per
        window: for checks and small stores, the loader itself keeps the compact `index`)."""
        return self.index(split, lookback, stride).all_flat()

    # -- features ------------------------------------------------------------------------
    def cells_of(self, chunks: np.ndarray) -> np.ndarray:
        """The cells of whole chunks, in the chunks' order."""
        return np.concatenate(
            [np.arange(c * self.chunk_cells, min((c + 1) * self.chunk_cells, self.n_cells)) for c in chunks]
        )

    def read_chunks(self, chunks: np.ndarray) -> np.ndarray:
        """Features (cells, T, F) float32 of whole chunks, cells in `cells_of(chunks)` order (one
        request per chunk, up to `train.prefetch_chunks` in flight; zarr decodes them)."""
        selection = (self.cells_of(chunks), slice(None), slice(None))
        try:
            return np.asarray(self._x.get_orthogonal_selection(selection), dtype=np.float32)
        except Exception as exc:
            self.remote.settle(exc)  # the selection's other reads end here, not as noise at exit
            raise

    def resident_features(self) -> torch.Tensor:
        """The whole series (cells, T, F) on the device, fetched once (with a progress bar)."""
        with self._lock:
            if self._resident is None:
                if not self.resident:
                    raise LoaderError("the series do not fit in train.resident_max_mb; stream them instead")
                out = torch.empty((self.n_cells, self.n_time, self.n_features), dtype=torch.float32,
                                  device=self.device)  # fmt: skip
                step = max(1, self.source.in_flight * 2)  # chunks per request group: a progress step
                with tqdm(total=self.n_chunks, unit="chunk", desc="fetch series", disable=not self.progress,
                          leave=False) as bar:  # fmt: skip
                    for first in range(0, self.n_chunks, step):
                        chunks = np.arange(first, min(first + step, self.n_chunks))
                        block = torch.from_numpy(self.read_chunks(chunks))
                        start = first * self.chunk_cells
                        out[start : start + len(block)] = block.to(self.device)
                        bar.update(len(chunks))
                self._resident = out
            return self._resident

    def labels_on_device(self) -> torch.Tensor:
        """The label codes flattened to (cells * T,), int8, on the device."""
        with self._lock:
            if self._labels_on_device is None:
                self._labels_on_device = torch.from_numpy(self.labels.reshape(-1)).to(self.device)
            return self._labels_on_device

    def close(self) -> None:
        if self.remote is not None:
            self.remote.close()


class WindowLoader:
    """Iterable of `(x, y)` batches of one split, on the series' device: x (batch, lookback,
    features) float32, y (batch,) int64 codes 0..10.

    Each `iter()` is one epoch; the epoch number (0, 1, ...) seeds the order, so the
    same seed gives the same batches. `start_epoch` (or `set_epoch`) resumes. `stats`
    describes the last pass. `stride` keeps every stride-th end date of the split (a fixed
    thinning, the same windows every epoch); `windows_per_epoch` (0: all; needs `shuffle`)
    draws that many of the split's windows afresh each epoch, uniformly, from the epoch's
    permutation (every rank takes its share of the same draw).
    """

    def __init__(
        self,
        series: Series,
        split: str,
        *,
        batch_size: int = 256,
        lookback: int | None = None,
        stride: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        progress: bool = False,
        desc: str = "",
        start_epoch: int = 0,
        windows_per_epoch: int = 0,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        if windows_per_epoch < 0 or (windows_per_epoch and not shuffle):
            raise ValueError("windows_per_epoch must be >= 0, and draws from a shuffled split only")
        self.series = series
        self.split = split
        self.batch_size = batch_size
        self.lookback = lookback or series.lookback
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.progress = progress
        self.desc = desc
        self.epoch = start_epoch
        self.stats = LoaderStats()
        self.index = series.index(split, self.lookback, stride)
        self.windows_per_epoch = windows_per_epoch
        self._permutation: tuple[int, Permutation] | None = None  # the last epoch's
        if not len(self.index):
            raise LoaderError(f"the {split} split has no usable window of {self.lookback} steps")

    @property
    def pairs(self) -> np.ndarray:
        """Flat indices `cell * n_time + end` of every usable window of the split (store order;
        materialised on request: 8 bytes per window)."""
        return self.index.all_flat()

    # -- sizes -------------------------------------------------------------------------------
    def _drawn(self, available: int) -> int:
        """Windows drawn per epoch out of `available` (all of them, or the configured share)."""
        if not self.windows_per_epoch:
            return available
        return min(available, round(available * self.windows_per_epoch / len(self.index)))

    def _chunk_windows(self, chunk: int) -> range:
        cc = self.series.chunk_cells
        return self.index.cell_windows(chunk * cc, min((chunk + 1) * cc, self.series.n_cells))

    @property
    def n_samples(self) -> int:
        """Windows this rank yields per epoch."""
        if self.series.resident:
            return len(range(self.rank, self._drawn(len(self.index)), self.world_size))
        chunks, step = self._rank_chunks(0), self.series.round_chunks
        return sum(
            self._drawn(sum(len(self._chunk_windows(c)) for c in chunks[i : i + step]))
            for i in range(0, len(chunks), step)
        )

    def __len__(self) -> int:
        """Batches this rank yields per epoch (for the resident series; streamed rounds may end
        with a short batch each)."""
        n = self.n_samples
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch of the next pass (like DistributedSampler.set_epoch)."""
        self.epoch = epoch

    def labels(self) -> np.ndarray:
        """The label codes (int8) of every window of the split (all ranks), in store order."""
        flat_labels, n, block = self.series.labels.reshape(-1), len(self.index), 2**18
        out = np.empty(n, dtype=flat_labels.dtype)
        for i in range(0, n, block):
            out[i : i + block] = flat_labels[self.index.flat(np.arange(i, min(i + block, n)))]
        return out

    def label_counts(self, n_classes: int) -> np.ndarray:
        """How many windows of the split (all ranks) have each label code 0..n_classes-1 (counted a
        block at a time: `np.bincount(labels())` would widen every label to int64 at once)."""
        labels, counts, block = self.labels(), np.zeros(n_classes, dtype=np.int64), 2**20
        for i in range(0, len(labels), block):
            part = labels[i : i + block]
            counts += np.bincount(part[part >= 0], minlength=n_classes)[:n_classes]
        return counts

    # -- orders ------------------------------------------------------------------------------
    def _rng(self, epoch: int, *stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, *stream])

    def _positions(self) -> range:
        """This rank's positions in each epoch's order (a resident series)."""
        return range(self.rank, self._drawn(len(self.index)), self.world_size)

    def _windows_at(self, epoch: int, positions: np.ndarray) -> np.ndarray:
        """Window numbers at `positions` of the order of `epoch` (a resident series)."""
        if not self.shuffle:
            return positions
        if self._permutation is None or self._permutation[0] != epoch:
            self._permutation = (epoch, Permutation(len(self.index), [self.seed, epoch, 0]))
        return self._permutation[1](positions)

    def _flat_at(self, epoch: int, first: int, stop: int) -> np.ndarray:
        """Flat indices (cell * T + end) of this rank's windows at positions [first, stop) of the
        order of `epoch` (a resident series)."""
        part = self._positions()[first:stop]
        return self.index.flat(self._windows_at(epoch, np.arange(part.start, part.stop, part.step)))

    def order(self, epoch: int) -> np.ndarray:
        """This rank's windows (flat indices) in the order of `epoch` (a resident series; one int64
        per window: the loader itself computes them a block of batches at a time)."""
        return self._flat_at(epoch, 0, len(self._positions()))

    def _rank_chunks(self, epoch: int) -> np.ndarray:
        """This rank's chunks in the order of `epoch` (a streamed series)."""
        series = self.series
        bounds = np.minimum(np.arange(series.n_chunks + 1) * series.chunk_cells, series.n_cells)
        chunks = np.flatnonzero(np.diff(self.index.counts_before[bounds]) > 0)  # those with windows
        if self.shuffle:
            chunks = self._rng(epoch, 1).permutation(chunks)
        return chunks[self.rank :: self.world_size]

    # -- iteration ---------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        self.epoch += 1
        stats = LoaderStats()
        self.stats = stats
        remote = self.series.remote.stats if self.series.remote is not None else TransferStats()
        before = remote.snapshot()
        desc = self.desc or f"epoch {epoch}"
        bar = tqdm(total=len(self), desc=desc, unit="batch", disable=not self.progress, leave=False)
        start = time.perf_counter()
        batches = self._resident_batches(epoch) if self.series.resident else self._streamed_batches(epoch)
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
            batches.close()
            stats.elapsed_s = time.perf_counter() - start
            after = remote.snapshot()
            stats.network_bytes = after["bytes"] - before["bytes"]
            stats.requests = after["requests"] - before["requests"]
            stats.retries = after["retries"] - before["retries"]
            stats.cache_hits = after["cache_hits"] - before["cache_hits"]
            stats.cache_bytes = after["cache_bytes"] - before["cache_bytes"]
            bar.close()

    def _batches_of(
        self, features: torch.Tensor, labels: torch.Tensor, n: int, ends_of: Any
    ) -> Iterator[Batch]:
        """Batches of `n` windows of (cells, T, F) `features`; `ends_of(positions)` gives the flat
        indices (cell * T + end) of the windows at positions [first, stop) of the pass.

        The positions are resolved a block of batches at a time; labels stay int8 until a
        batch is cut (then int64, as the loss wants). On the CPU
        the windows are gathered by numpy fancy indexing of the strided view (one block copy
        per window, in this thread); torch's CPU `index_select` copies each row through its
        own TensorIterator and forks its thread pool for every batch, which collapses when
        the cores are busy (warm epochs over the series of benchmarks/bench_loader.py, 627k
        windows of (180, 2), 2 shared cores, medians of 7 interleaved: 0.05 M windows/s with
        index_select, 0.98 M with torch limited to one thread, 1.33 M with numpy). Other
        devices (a GPU) gather with one `index_select` per batch.
        """
        lookback, n_features, size = self.lookback, features.shape[2], self.batch_size
        n = n // size * size if self.drop_last else n
        on_cpu = features.device.type == "cpu"
        rows = window_rows(features.numpy() if on_cpu else features, lookback)
        labels_np = labels.numpy() if on_cpu else None
        for p0 in range(0, n, size * BLOCK_BATCHES):
            ends = ends_of(p0, min(p0 + size * BLOCK_BATCHES, n))
            starts = ends - (lookback - 1)  # row of each window in the strided view
            if on_cpu:
                y = torch.from_numpy(labels_np[ends])  # int8: the block's labels, widened per batch
                for b0 in range(0, len(ends), size):
                    s = starts[b0 : b0 + size]
                    yield (
                        torch.from_numpy(rows[s]).view(len(s), lookback, n_features),
                        y[b0 : b0 + size].long(),
                    )
                continue
            ends_dev = torch.from_numpy(ends).to(features.device)
            starts_dev = ends_dev - (lookback - 1)
            for b0 in range(0, len(ends), size):
                s = starts_dev[b0 : b0 + size]
                y = labels[ends_dev[b0 : b0 + size]].long()
                yield torch.index_select(rows, 0, s).view(len(s), lookback, n_features), y

    def _resident_batches(self, epoch: int) -> Iterator[Batch]:
        series, ends_of = self.series, functools.partial(self._flat_at, epoch)
        yield from self._batches_of(
            series.resident_features(), series.labels_on_device(), len(self._positions()), ends_of
        )

    def _streamed_batches(self, epoch: int) -> Iterator[Batch]:
        """Rounds of whole chunks: the next round downloads (in a thread) while this one trains."""
        series, n_time = self.series, self.series.n_time
        chunks = self._rank_chunks(epoch)
        rounds = [chunks[i : i + series.round_chunks] for i in range(0, len(chunks), series.round_chunks)]
        local_of = np.empty(series.n_cells, dtype=np.int64)  # global cell -> its row in the round
        for number, features in enumerate(_prefetched(series.read_chunks, rounds)):
            cells = series.cells_of(rounds[number])
            local_of[cells] = np.arange(len(cells))
            ranges = [self._chunk_windows(c) for c in rounds[number]]
            firsts = np.array([r.start for r in ranges], dtype=np.int64)
            before = np.concatenate([[0], np.cumsum([len(r) for r in ranges])])
            total = int(before[-1])
            permutation = (
                Permutation(total, [self.seed, epoch, 2, self.rank, number]) if self.shuffle else None
            )

            def ends_of(first: int, stop: int, firsts=firsts, before=before, perm=permutation) -> np.ndarray:
                at = np.arange(first, stop, dtype=np.int64)
                at = perm(at) if perm is not None else at
                which = np.searchsorted(before, at, side="right") - 1
                flat = self.index.flat(firsts[which] + at - before[which])
                return local_of[flat // n_time] * n_time + flat % n_time

            labels = torch.from_numpy(series.labels[cells].reshape(-1))
            yield from self._batches_of(
                torch.from_numpy(features).to(series.device), labels.to(series.device),
                self._drawn(total), ends_of,
            )  # fmt: skip


def _prefetched(read: Any, rounds: list[np.ndarray]) -> Iterator[np.ndarray]:
    """`read(round)` for each round, one round ahead in a background thread; a failure is
    raised here, in the consumer, and stopping early stops the producer."""
    out: queue.Queue[Any] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def produce() -> None:
        for chunks in rounds:
            try:
                item: Any = read(chunks)
            except BaseException as exc:  # handed to the consumer, raised there
                item = exc
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if stop.is_set() or isinstance(item, BaseException):
                return

    thread = threading.Thread(target=produce, name="round-fetch", daemon=True)
    thread.start()
    try:
        for _ in rounds:
            item = out.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
