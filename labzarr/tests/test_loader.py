"""The window loader over real HTTP: exactly-once epochs of uniformly shuffled windows, disjoint
rank shares, one download then a resident series, streaming rounds, the chunk cache, windows
equal to plain xarray slicing, and failures that stop loudly without fill values."""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
import zarr.core.sync

from labzarr.cache import make_cache
from labzarr.remote import ChecksumError, MissingChunkError, RemoteReadError, StoreSource
from labzarr.store_format import SPLIT_GAP, gather_windows, store_name, window_ends
from labzarr.testing.faultserver import FaultServer
from labzarr.testing.stores import DAY, indexed_series, write_series_store
from labzarr.train.loader import LoaderError, Series, WindowLoader

N_CELLS, N_TIME, LOOKBACK, CHUNK, BATCH = 10, 200, 8, 4, 64  # 3 chunks of cells, the last one short
SEED = 42
# Short enough for failures to show within the test: 1 s per read, retries for 1.5 s, 2 reads in flight.
SETTINGS = {"timeout_s": 1.0, "retry_budget_s": 1.5, "in_flight": 2, "cache": "none"}

Source = Callable[..., StoreSource]


@pytest.fixture
def source(source_for: Source, server: FaultServer) -> Source:
    """`source(**overrides)`: the served test store, read with SETTINGS (no chunk cache)."""

    def resolve(**overrides: Any) -> StoreSource:
        return source_for(server.url, **{**SETTINGS, **overrides})

    return resolve


@pytest.fixture
def server(store_dataset: str, tmp_path: Path) -> Iterator[FaultServer]:
    """Serves an indexed series: feature 0 of cell c on day t is c * DAY + t."""
    x, y = indexed_series(N_CELLS, N_TIME)
    write_series_store(
        tmp_path / "srv", x, y, dataset_name=store_dataset, lookback=LOOKBACK, chunk_cells=CHUNK
    )
    with FaultServer(tmp_path / "srv") as srv:
        yield srv


@pytest.fixture
def series(source: Source) -> Iterator[Series]:
    opened = Series(source(), progress=False)
    yield opened
    opened.close()


def loader_of(series: Series, split: str, **settings: Any) -> WindowLoader:
    """The loader of one split as a study's training makes it: batches of BATCH windows of LOOKBACK
    steps, every window (stride 1), the training split shuffled with SEED, the others in store order."""
    defaults = {"batch_size": BATCH, "lookback": LOOKBACK, "stride": 1, "shuffle": split == "train"}
    return WindowLoader(series, split, **{**defaults, "seed": SEED, "desc": split, **settings})


def windows_of(batches) -> list[np.ndarray]:
    """(cell, end) of every window, batch by batch, after checking each window and label."""
    out = []
    for xb, yb in batches:
        assert xb.dtype == torch.float32 and yb.dtype == torch.int64
        assert xb.shape[1:] == (LOOKBACK, 2) and len(xb) == len(yb) <= BATCH
        code = xb[:, :, 0].numpy().astype(np.int64)
        cell, day = code // DAY, code % DAY
        assert (cell == cell[:, :1]).all(), "a window never crosses cells"
        np.testing.assert_array_equal(np.diff(day, axis=1), 1)  # consecutive days, in order
        assert (xb[:, :, 1] == 1).all()  # no fill values anywhere
        end = day[:, -1]
        np.testing.assert_array_equal(yb.numpy(), (cell[:, 0] + end) % 11)  # the label of the end day
        out.append(np.stack([cell[:, 0], end], axis=1))
    return out


def expected(series: Series, split: str) -> set[tuple[int, int]]:
    ends = window_ends(series.blocks[split], LOOKBACK)
    return {(c, int(e)) for c in range(N_CELLS) for e in ends}


def as_set(batches: list[np.ndarray]) -> set[tuple[int, int]]:
    pairs = [tuple(p) for b in batches for p in b.tolist()]
    assert len(pairs) == len(set(pairs)), "no window twice in an epoch"
    return set(pairs)


def test_epoch_yields_every_window_once_in_a_seeded_uniform_order(series: Series) -> None:
    loader = loader_of(series, "train")
    assert series.resident and loader.n_samples == len(expected(series, "train"))
    epoch0, epoch1 = windows_of(loader), windows_of(loader)
    assert len(epoch0) == len(loader) and all(len(b) == BATCH for b in epoch0[:-1])
    assert as_set(epoch0) == as_set(epoch1) == expected(series, "train")
    assert not np.array_equal(np.concatenate(epoch0), np.concatenate(epoch1))  # a new order each epoch
    # batches are uniform draws: as many distinct cells per batch as random windows give
    uniform = N_CELLS * (1 - (1 - 1 / N_CELLS) ** BATCH)
    assert np.median([len(np.unique(b[:, 0])) for b in epoch0[:-1]]) >= 0.9 * uniform
    # the same seed gives the same batches, another seed others; start_epoch resumes the sequence
    again = windows_of(loader_of(series, "train"))
    assert all(np.array_equal(a, b) for a, b in zip(epoch0, again, strict=True))
    other = windows_of(loader_of(series, "train", seed=7))
    assert not np.array_equal(np.concatenate(epoch0), np.concatenate(other))
    resumed = windows_of(loader_of(series, "train", start_epoch=1))
    assert all(np.array_equal(a, b) for a, b in zip(epoch1, resumed, strict=True))


def test_evaluation_splits_are_in_store_order_and_apart_from_training(series: Series) -> None:
    seen = {}
    for split in ("valid", "test"):
        got = np.concatenate(windows_of(loader_of(series, split)))
        assert (np.diff(got[:, 0] * N_TIME + got[:, 1]) > 0).all(), "cell-major, then time order"
        seen[split] = as_set([got])
        assert seen[split] == expected(series, split)
    train_days = {e - d for _, e in expected(series, "train") for d in range(LOOKBACK)}
    valid_days = {e - d for _, e in seen["valid"] for d in range(LOOKBACK)}
    test_days = {e - d for _, e in seen["test"] for d in range(LOOKBACK)}
    assert not (train_days & valid_days) and not (valid_days & test_days), "no day in two splits' windows"


def test_one_download_then_every_epoch_and_split_from_the_resident_series(
    source: Source, store_dataset: str, server: FaultServer
) -> None:
    name = store_dataset
    series = Series(source(), progress=False)
    assert server.count(f"*/{name}/*") == 0  # opening reads metadata, labels and mask only
    loader = loader_of(series, "train")
    windows_of(loader)
    assert server.count(f"*/{name}/*") == 3  # one request per chunk of cells
    assert loader.stats.requests == 3 and loader.stats.network_bytes > 0 and loader.stats.samples > 0
    server.clear()
    windows_of(loader)
    windows_of(loader_of(series, "test"))
    assert server.count() == 0 and loader.stats.network_bytes == 0
    series.close()


def test_disk_cache_serves_a_new_run_without_the_network(
    source: Source, store_dataset: str, server: FaultServer, tmp_path: Path
) -> None:
    disk = source(cache="disk", cache_dir=str(tmp_path / "cache"))
    first = Series(disk, progress=False)
    windows_of(loader_of(first, "train"))
    first.close()
    server.clear()
    second = Series(disk, progress=False)
    windows_of(loader_of(second, "train"))
    assert server.count(f"*/{store_dataset}/*") == 0
    assert second.remote.stats.snapshot()["cache_hits"] >= 3
    second.close()


def test_ranks_draw_disjoint_shares_covering_the_epoch(series: Series) -> None:
    shares = [as_set(windows_of(loader_of(series, "train", rank=r, world_size=3))) for r in range(3)]
    assert sum(len(s) for s in shares) == len(expected(series, "train"))
    assert set().union(*shares) == expected(series, "train")


def test_streamed_rounds_cover_the_epoch_and_mix_the_cells_of_a_round(
    source: Source, store_dataset: str, server: FaultServer
) -> None:
    series = Series(source(), resident_max_mb=1, progress=False)
    series.budget_bytes = series.labels.nbytes + 2 * CHUNK * N_TIME * 2 * 4  # room for two one-chunk rounds
    assert not series.resident and series.round_chunks == 1
    loader = loader_of(series, "train")
    server.clear()
    for _ in range(2):
        batches = windows_of(loader)
        assert as_set(batches) == expected(series, "train")
        assert all(len(np.unique(b[:, 0] // CHUNK)) == 1 for b in batches), "a batch mixes one round's cells"
    assert server.count(f"*/{store_dataset}/*") == 6  # streamed again each epoch (cache off)
    half = loader_of(series, "train", windows_per_epoch=len(expected(series, "train")) // 2)
    drawn = [as_set(windows_of(half)) for _ in range(2)]  # each round gives its share of the draw
    assert all(len(d) == half.n_samples and d <= expected(series, "train") for d in drawn)
    assert abs(half.n_samples - len(expected(series, "train")) / 2) <= 3 and drawn[0] != drawn[1]
    series.close()


def test_windows_equal_plain_xarray_slicing_of_the_store(
    store_dataset: str, series: Series, server: FaultServer, tmp_path: Path
) -> None:
    ds = xr.open_zarr(tmp_path / "srv" / store_name(store_dataset), consolidated=True)[store_dataset]
    loader = loader_of(series, "valid")
    xb, _ = next(iter(loader))
    for i in (0, 5, len(xb) - 1):
        cell, end = int(xb[i, 0, 0]) // DAY, int(xb[i, -1, 0]) % DAY
        window = ds.isel(cell=cell, time=slice(end - LOOKBACK + 1, end + 1)).values
        np.testing.assert_array_equal(xb[i].numpy(), window)
    flat = loader.pairs[:7]
    np.testing.assert_array_equal(gather_windows(ds.values, flat, LOOKBACK), xb[:7].numpy())


def test_missing_chunk_stops_the_epoch_without_fill_values(
    source: Source, store_dataset: str, server: FaultServer
) -> None:
    name = store_dataset
    server.always(f"*/{name}/1.0.0", 404)
    server.always(f"*/{name}/[!1].0.0", "slow")  # the selection's other reads still in flight at the 404
    series = Series(source(), progress=False)
    with pytest.raises(MissingChunkError, match=f"{name}/1.0.0"):
        windows_of(loader_of(series, "train"))
    # Nothing is left running once the error is raised: no read of ours in flight, no task pending on
    # zarr's event loop (a process exiting now would have asyncio log "Task was destroyed but it is
    # pending!" for each, after the error line).
    assert not series.remote.store._tasks
    assert zarr.core.sync.sync(_other_tasks()) == []
    series.close()


async def _other_tasks() -> list[str]:
    import asyncio

    return [repr(t) for t in asyncio.all_tasks() if t is not asyncio.current_task()]


def test_chunk_of_wrong_content_stops_the_epoch(
    source: Source, store_dataset: str, server: FaultServer, tmp_path: Path
) -> None:
    """Valid zarr bytes of another chunk (as after a rewrite of the store) fail the manifest check."""
    chunks = tmp_path / "srv" / store_name(store_dataset) / store_dataset
    chunks.joinpath("1.0.0").write_bytes(chunks.joinpath("0.0.0").read_bytes())
    series = Series(source(), progress=False)
    with pytest.raises(ChecksumError, match=f"{store_dataset}/1.0.0"):
        windows_of(loader_of(series, "train"))
    series.close()


def test_stalled_chunk_fails_within_the_timeout(
    source: Source, store_dataset: str, server: FaultServer
) -> None:
    server.always(f"*/{store_dataset}/2.0.0", "stall")
    series = Series(source(backoff_s=0.05), progress=False)
    with pytest.raises(RemoteReadError, match=r"read timeout.*train\.timeout_s = 1 s"):
        windows_of(WindowLoader(series, "train", batch_size=BATCH))
    series.close()


def test_a_lookback_longer_than_the_split_gap_is_refused(series: Series) -> None:
    with pytest.raises(LoaderError, match="split gap"):
        WindowLoader(series, "train", lookback=LOOKBACK + 1)
    with pytest.raises(
        LoaderError, match="unknown split 'validation'"
    ):  # the study's check, now the library's
        WindowLoader(series, "validation")


@pytest.mark.filterwarnings("ignore:Object at manifest.json is not recognized")  # consolidating by hand
def test_a_store_of_an_older_etl_is_refused_with_what_to_do(
    source_for: Source, store_dataset: str, tmp_path: Path
) -> None:
    x, y = indexed_series(N_CELLS, N_TIME)
    path = write_series_store(
        tmp_path / "old", x, y, dataset_name=store_dataset, lookback=LOOKBACK, chunk_cells=CHUNK
    )
    group = zarr.open_group(path, mode="r+")
    attrs = dict(group.attrs)
    attrs["split_gap_days"] = attrs.pop(SPLIT_GAP)  # the attribute's name before time steps
    group.attrs.put(attrs)
    zarr.consolidate_metadata(path)
    with FaultServer(tmp_path / "old") as server, pytest.raises(LoaderError, match=r"older ETL.*--overwrite"):
        Series(source_for(server.url, **SETTINGS), progress=False)


def test_caches_are_size_capped_and_verified(tmp_path: Path) -> None:
    blobs = {hashlib.sha256(b).hexdigest(): b for b in (b"a" * 400, b"b" * 400, b"c" * 400)}
    (d1, b1), (d2, b2), (d3, b3) = blobs.items()
    memory = make_cache("memory", max_mb=1000 / 2**20)
    memory.put(d1, b1)
    memory.put(d2, b2)
    assert memory.get(d1) == b1  # d1 is now the most recently used
    memory.put(d3, b3)  # over 1000 bytes: the least recently used (d2) goes
    assert memory.get(d2) is None and memory.get(d1) == b1 and memory.get(d3) == b3
    disk = make_cache("disk", max_mb=1000 / 2**20, cache_dir=tmp_path / "cache")
    for digest, blob in blobs.items():
        disk.put(digest, blob)
    assert disk.nbytes <= 1000 and sum(disk.get(d) is not None for d in blobs) == 2
    kept = next(d for d in blobs if disk.get(d) is not None)
    (tmp_path / "cache" / kept[:2] / kept).write_bytes(b"damaged")
    assert disk.get(kept) is None  # a damaged entry is dropped, never served
    assert make_cache("none", max_mb=1) is None


def test_store_source_is_picklable_without_secrets_in_repr(source_for: Source, tmp_path: Path) -> None:
    source = source_for(
        "http://127.0.0.1:9", token="hush-hush", **SETTINGS, cache_dir=str(tmp_path / "cache")
    )
    assert pickle.loads(pickle.dumps(source)) == source
    assert "hush-hush" not in repr(source) and "hush-hush" not in str(source)
