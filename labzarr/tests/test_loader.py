"""The window loader over real HTTP: exactly-once epochs of uniformly shuffled windows, disjoint
rank shares, one download then a resident series, streaming rounds, the chunk cache, windows
equal to plain xarray slicing, and failures that stop loudly without fill values."""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from ..config import Config
from ..remote import ChecksumError, MissingChunkError, RemoteReadError
from ..store_format import SPLIT_GAP, gather_windows, window_ends
from ..train.cache import make_cache
from ..train.loader import LoaderError, Series, StoreSource, WindowLoader, make_loader, open_series
from .faultserver import FaultServer
from .stores import DAY, indexed_series, write_series_store

N_CELLS, N_TIME, LOOKBACK, CHUNK, BATCH = 10, 200, 8, 4, 64  # 3 chunks of cells, the last one short


@pytest.fixture
def cfg(tiny_config: Config) -> Config:
    return tiny_config.override(
        {
            "etl.time_lookback": LOOKBACK,
            "etl.split_gap": LOOKBACK,
            "train.batch_size": BATCH,
            "train.timeout_s": 1.0,
            "train.retry_budget_s": 1.5,
            "train.prefetch_chunks": 2,
            "train.cache": "none",
        }
    )


@pytest.fixture
def server(cfg: Config, tmp_path: Path) -> Iterator[FaultServer]:
    """Serves an indexed series: feature 0 of cell c on day t is c * DAY + t."""
    x, y = indexed_series(N_CELLS, N_TIME)
    write_series_store(
        tmp_path / "srv", x, y, dataset_name=cfg.study.dataset_name, lookback=LOOKBACK, chunk_cells=CHUNK
    )
    with FaultServer(tmp_path / "srv") as srv:
        yield srv


@pytest.fixture
def series(cfg: Config, server: FaultServer) -> Iterator[Series]:
    opened = open_series(cfg, url=server.url, progress=False)
    yield opened
    opened.close()


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


def test_epoch_yields_every_window_once_in_a_seeded_uniform_order(cfg: Config, series: Series) -> None:
    loader = make_loader(cfg, series, "train", progress=False)
    assert series.resident and loader.n_samples == len(expected(series, "train"))
    epoch0, epoch1 = windows_of(loader), windows_of(loader)
    assert len(epoch0) == len(loader) and all(len(b) == BATCH for b in epoch0[:-1])
    assert as_set(epoch0) == as_set(epoch1) == expected(series, "train")
    assert not np.array_equal(np.concatenate(epoch0), np.concatenate(epoch1))  # a new order each epoch
    # batches are uniform draws: as many distinct cells per batch as random windows give
    uniform = N_CELLS * (1 - (1 - 1 / N_CELLS) ** BATCH)
    assert np.median([len(np.unique(b[:, 0])) for b in epoch0[:-1]]) >= 0.9 * uniform
    # the same seed gives the same batches, another seed others; start_epoch resumes the sequence
    again = windows_of(make_loader(cfg, series, "train", progress=False))
    assert all(np.array_equal(a, b) for a, b in zip(epoch0, again, strict=True))
    other = windows_of(make_loader(cfg.override({"train.seed": 7}), series, "train", progress=False))
    assert not np.array_equal(np.concatenate(epoch0), np.concatenate(other))
    resumed = windows_of(make_loader(cfg, series, "train", progress=False, start_epoch=1))
    assert all(np.array_equal(a, b) for a, b in zip(epoch1, resumed, strict=True))


def test_evaluation_splits_are_in_store_order_and_apart_from_training(cfg: Config, series: Series) -> None:
    seen = {}
    for split in ("valid", "test"):
        got = np.concatenate(windows_of(make_loader(cfg, series, split, progress=False)))
        assert (np.diff(got[:, 0] * N_TIME + got[:, 1]) > 0).all(), "cell-major, then time order"
        seen[split] = as_set([got])
        assert seen[split] == expected(series, split)
    train_days = {e - d for _, e in expected(series, "train") for d in range(LOOKBACK)}
    valid_days = {e - d for _, e in seen["valid"] for d in range(LOOKBACK)}
    test_days = {e - d for _, e in seen["test"] for d in range(LOOKBACK)}
    assert not (train_days & valid_days) and not (valid_days & test_days), "no day in two splits' windows"


def test_one_download_then_every_epoch_and_split_from_the_resident_series(
    cfg: Config, server: FaultServer
) -> None:
    name = cfg.study.dataset_name
    series = open_series(cfg, url=server.url, progress=False)
    assert server.count(f"*/{name}/*") == 0  # opening reads metadata, labels and mask only
    loader = make_loader(cfg, series, "train", progress=False)
    windows_of(loader)
    assert server.count(f"*/{name}/*") == 3  # one request per chunk of cells
    assert loader.stats.requests == 3 and loader.stats.network_bytes > 0 and loader.stats.samples > 0
    server.clear()
    windows_of(loader)
    windows_of(make_loader(cfg, series, "test", progress=False))
    assert server.count() == 0 and loader.stats.network_bytes == 0
    series.close()


def test_disk_cache_serves_a_new_run_without_the_network(cfg: Config, server: FaultServer) -> None:
    disk = cfg.override({"train.cache": "disk"})
    first = open_series(disk, url=server.url, progress=False)
    windows_of(make_loader(disk, first, "train", progress=False))
    first.close()
    server.clear()
    second = open_series(disk, url=server.url, progress=False)
    windows_of(make_loader(disk, second, "train", progress=False))
    assert server.count(f"*/{cfg.study.dataset_name}/*") == 0
    assert second.remote.stats.snapshot()["cache_hits"] >= 3
    second.close()


def test_ranks_draw_disjoint_shares_covering_the_epoch(cfg: Config, series: Series) -> None:
    shares = [
        as_set(windows_of(make_loader(cfg, series, "train", rank=r, world_size=3, progress=False)))
        for r in range(3)
    ]
    assert sum(len(s) for s in shares) == len(expected(series, "train"))
    assert set().union(*shares) == expected(series, "train")


def test_streamed_rounds_cover_the_epoch_and_mix_the_cells_of_a_round(
    cfg: Config, server: FaultServer
) -> None:
    small = cfg.override({"train.resident_max_mb": 1})
    series = open_series(small, url=server.url, progress=False)
    series.budget_bytes = series.labels.nbytes + 2 * CHUNK * N_TIME * 2 * 4  # room for two one-chunk rounds
    assert not series.resident and series.round_chunks == 1
    loader = make_loader(small, series, "train", progress=False)
    server.clear()
    for _ in range(2):
        batches = windows_of(loader)
        assert as_set(batches) == expected(series, "train")
        assert all(len(np.unique(b[:, 0] // CHUNK)) == 1 for b in batches), "a batch mixes one round's cells"
    assert server.count(f"*/{cfg.study.dataset_name}/*") == 6  # streamed again each epoch (cache off)
    series.close()


def test_windows_equal_plain_xarray_slicing_of_the_store(
    cfg: Config, series: Series, server: FaultServer, tmp_path: Path
) -> None:
    ds = xr.open_zarr(tmp_path / "srv" / cfg.store_name, consolidated=True)[cfg.study.dataset_name]
    loader = make_loader(cfg, series, "valid", progress=False)
    xb, _ = next(iter(loader))
    for i in (0, 5, len(xb) - 1):
        cell, end = int(xb[i, 0, 0]) // DAY, int(xb[i, -1, 0]) % DAY
        window = ds.isel(cell=cell, time=slice(end - LOOKBACK + 1, end + 1)).values
        np.testing.assert_array_equal(xb[i].numpy(), window)
    flat = loader.pairs[:7]
    np.testing.assert_array_equal(gather_windows(ds.values, flat, LOOKBACK), xb[:7].numpy())


def test_missing_chunk_stops_the_epoch_without_fill_values(cfg: Config, server: FaultServer) -> None:
    name = cfg.study.dataset_name
    server.always(f"*/{name}/1.0.0", 404)
    series = open_series(cfg, url=server.url, progress=False)
    with pytest.raises(MissingChunkError, match=f"{name}/1.0.0"):
        windows_of(make_loader(cfg, series, "train", progress=False))
    series.close()


def test_chunk_of_wrong_content_stops_the_epoch(cfg: Config, server: FaultServer, tmp_path: Path) -> None:
    """Valid zarr bytes of another chunk (as after a rewrite of the store) fail the manifest check."""
    chunks = tmp_path / "srv" / cfg.store_name / cfg.study.dataset_name
    chunks.joinpath("1.0.0").write_bytes(chunks.joinpath("0.0.0").read_bytes())
    series = open_series(cfg, url=server.url, progress=False)
    with pytest.raises(ChecksumError, match=f"{cfg.study.dataset_name}/1.0.0"):
        windows_of(make_loader(cfg, series, "train", progress=False))
    series.close()


def test_stalled_chunk_fails_within_the_timeout(cfg: Config, server: FaultServer) -> None:
    server.always(f"*/{cfg.study.dataset_name}/2.0.0", "stall")
    source = dataclasses.replace(StoreSource.from_config(cfg, url=server.url), backoff_s=0.05)
    series = Series(source, progress=False)
    with pytest.raises(RemoteReadError, match=r"read timeout.*train\.timeout_s = 1 s"):
        windows_of(WindowLoader(series, "train", batch_size=BATCH))
    series.close()


def test_a_lookback_longer_than_the_split_gap_is_refused(cfg: Config, series: Series) -> None:
    with pytest.raises(LoaderError, match="split gap"):
        WindowLoader(series, "train", lookback=LOOKBACK + 1)


@pytest.mark.filterwarnings("ignore:Object at manifest.json is not recognized")  # consolidating by hand
def test_a_store_of_an_older_etl_is_refused_with_what_to_do(cfg: Config, tmp_path: Path) -> None:
    x, y = indexed_series(N_CELLS, N_TIME)
    path = write_series_store(
        tmp_path / "old", x, y, dataset_name=cfg.study.dataset_name, lookback=LOOKBACK, chunk_cells=CHUNK
    )
    group = zarr.open_group(path, mode="r+")
    attrs = dict(group.attrs)
    attrs["split_gap_days"] = attrs.pop(SPLIT_GAP)  # the attribute's name before time steps
    group.attrs.put(attrs)
    zarr.consolidate_metadata(path)
    with FaultServer(tmp_path / "old") as server, pytest.raises(LoaderError, match=r"older ETL.*--overwrite"):
        open_series(cfg, url=server.url, progress=False)


def test_caches_are_size_capped_and_verified(tmp_path: Path) -> None:
    import hashlib

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


def test_store_source_is_picklable_without_secrets_in_repr(cfg: Config) -> None:
    source = StoreSource.from_config(cfg, url="http://127.0.0.1:9", token="hush-hush")
    assert pickle.loads(pickle.dumps(source)) == source
    assert "hush-hush" not in repr(source)
