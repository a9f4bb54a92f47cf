"""The chunk-streaming loader over real HTTP: exactly-once epochs, seeded shuffling,
disjoint shards, the chunk cache, and failures that stop the epoch loudly."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ..config import Config
from ..remote import ChecksumError, MissingChunkError, RemoteReadError
from ..train.cache import make_cache
from ..train.loader import BatchMemory, ChunkLoader, ShuffleBuffer, SplitSource, make_loader, shard_chunks
from .faultserver import FaultServer
from .stores import indexed_samples, synthetic_samples, write_split

N, LOOKBACK, CHUNK, BATCH = 1030, 8, 100, 64  # 11 chunks, the last one short


@pytest.fixture
def cfg(tiny_config: Config) -> Config:
    return tiny_config.override(
        {
            "etl.time_lookback": LOOKBACK,
            "etl.split_gap_days": LOOKBACK,
            "train.batch_size": BATCH,
            "train.timeout_s": 1.0,
            "train.retries": 1,
            "train.prefetch_chunks": 3,
            "train.shuffle_buffer_chunks": 3,
        }
    )


@pytest.fixture
def server(cfg: Config, tmp_path: Path) -> Iterator[FaultServer]:
    """Serves train.zarr whose samples carry their index in x[:, :, 0]."""
    x, y = indexed_samples(N, LOOKBACK)
    write_split(tmp_path / "srv" / cfg.store_name / "train.zarr", x, y, name=cfg.study.dataset_name,
                chunk_samples=CHUNK)  # fmt: skip
    with FaultServer(tmp_path / "srv") as srv:
        yield srv


def ids_of(batches) -> list[np.ndarray]:
    out = []
    for xb, yb in batches:
        assert xb.dtype == torch.float32 and yb.dtype == torch.int64
        assert xb.shape[1:] == (LOOKBACK, 2) and len(xb) == len(yb) <= BATCH
        ids = xb[:, 0, 0].numpy().astype(np.int64)
        np.testing.assert_array_equal(yb.numpy(), ids % 11)  # labels travel with their samples
        assert (xb[:, :, 1] == 1).all()  # no fill values (0) anywhere
        out.append(ids)
    return out


def loader(cfg: Config, server: FaultServer, **kwargs) -> ChunkLoader:
    ld = make_loader(cfg, "train", url=server.url, progress=False, **kwargs)
    return ld


def test_epoch_yields_every_sample_once_in_a_seeded_shuffled_order(cfg: Config, server: FaultServer) -> None:
    ld = loader(cfg, server)
    assert len(ld) == -(-N // BATCH) and ld.n_samples == N
    epoch0, epoch1 = ids_of(ld), ids_of(ld)
    for epoch in (epoch0, epoch1):
        np.testing.assert_array_equal(np.sort(np.concatenate(epoch)), np.arange(N))
        assert all(len(b) == BATCH for b in epoch[:-1])
    assert not np.array_equal(np.concatenate(epoch0), np.concatenate(epoch1))
    # chunk order is shuffled and batches mix chunks from the shuffle buffer
    first_chunks = [int(b[0] // CHUNK) for b in epoch0]
    assert first_chunks != sorted(first_chunks)
    assert np.mean([len(np.unique(b // CHUNK)) > 1 for b in epoch0]) > 0.5
    assert len(np.unique(epoch0[0] // CHUNK)) == 3  # the buffer spans shuffle_buffer_chunks chunks
    # the same seed gives the same batches; another seed does not
    again = ids_of(make_loader(cfg, "train", url=server.url, progress=False))
    assert all(np.array_equal(a, b) for a, b in zip(epoch0, again, strict=True))
    other = ids_of(make_loader(cfg.override({"train.seed": 7}), "train", url=server.url, progress=False))
    assert not np.array_equal(np.concatenate(epoch0), np.concatenate(other))
    # start_epoch resumes the sequence
    resumed = ids_of(make_loader(cfg, "train", url=server.url, progress=False, start_epoch=1))
    assert all(np.array_equal(a, b) for a, b in zip(epoch1, resumed, strict=True))
    ld.close()


def test_unshuffled_loader_is_in_store_order(cfg: Config, server: FaultServer) -> None:
    ld = loader(cfg, server, shuffle=False)
    np.testing.assert_array_equal(np.concatenate(ids_of(ld)), np.arange(N))


def test_one_request_per_chunk_and_cache_makes_epoch_two_offline(cfg: Config, server: FaultServer) -> None:
    name = cfg.study.dataset_name
    ld = loader(cfg, server)
    _ = ld.reader  # open: manifest and consolidated metadata
    server.clear()
    ids_of(ld)
    assert server.count(f"*/{name}/*") == 11 and server.count("*/category/*") == 11
    assert server.count() == 22  # nothing else: one request per chunk per array
    assert ld.stats.requests == 22 and ld.stats.network_bytes > 0 and ld.stats.samples == N
    assert ld.stats.samples_per_s > 0 and ld.stats.wait_s <= ld.stats.elapsed_s
    server.clear()
    ids_of(ld)
    assert server.count() == 0, server.requests
    assert ld.stats.cache_hits == 22 and ld.stats.network_bytes == 0
    ld.close()


def test_disk_cache_survives_a_new_loader(cfg: Config, server: FaultServer) -> None:
    first = loader(cfg, server, cache="disk")
    ids_of(first)
    first.close()
    server.clear()
    second = loader(cfg, server, cache="disk")
    ids_of(second)
    assert server.count("*/category/*") == 0 and server.count(f"*/{cfg.study.dataset_name}/*") == 0
    assert second.stats.cache_hits == 22
    second.close()


def test_no_cache_reads_again(cfg: Config, server: FaultServer) -> None:
    ld = loader(cfg, server, cache="none")
    ids_of(ld)
    server.clear()
    ids_of(ld)
    assert server.count() == 22


def test_ranks_read_disjoint_chunks_covering_the_split(cfg: Config, server: FaultServer) -> None:
    seen = []
    for rank in range(3):
        ld = loader(cfg, server, rank=rank, world_size=3)
        ids = np.concatenate(ids_of(ld))
        assert len(ids) == ld.n_samples
        seen.append(ids)
    all_ids = np.concatenate(seen)
    np.testing.assert_array_equal(np.sort(all_ids), np.arange(N))
    assert [set(s // CHUNK) for s in seen] == [set(shard_chunks(11, r, 3).tolist()) for r in range(3)]


@pytest.mark.slow
def test_spawned_workers_open_their_own_filesystem_and_split_the_chunks(
    cfg: Config, server: FaultServer
) -> None:
    ld = loader(cfg.override({"train.num_workers": 2}), server)
    in_main = ld.remote.stats.snapshot()["requests"]  # the main process reads metadata only
    server.clear()
    for _ in range(2):  # persistent workers keep their memory caches: epoch two is offline
        np.testing.assert_array_equal(np.sort(np.concatenate(ids_of(ld))), np.arange(N))
        assert server.count("*/category/*") == 11
    assert ld.remote.stats.snapshot()["requests"] == in_main
    ld.close()


def test_failed_chunk_stops_the_epoch_without_fill_values(cfg: Config, server: FaultServer) -> None:
    name = cfg.study.dataset_name
    server.always(f"*/{name}/7.0.0", 404)
    ld = loader(cfg, server)
    seen: list[np.ndarray] = []
    with pytest.raises(MissingChunkError, match=f"{name}/7.0.0"):
        for batch in ld:
            seen.extend(ids_of([batch]))
    ids = np.concatenate(seen) if seen else np.empty(0, dtype=np.int64)
    assert len(np.unique(ids)) == len(ids) and not np.isin(np.arange(700, 800), ids).any()


def test_chunk_of_wrong_content_stops_the_epoch(cfg: Config, server: FaultServer, tmp_path: Path) -> None:
    """Valid zarr bytes of another chunk (as after a rewrite of the store) fail the manifest check."""
    store = tmp_path / "srv" / cfg.store_name / "train.zarr" / cfg.study.dataset_name
    store.joinpath("7.0.0").write_bytes(store.joinpath("2.0.0").read_bytes())
    seen: list[np.ndarray] = []
    with pytest.raises(ChecksumError, match=f"{cfg.study.dataset_name}/7.0.0"):
        for batch in loader(cfg, server):
            seen.extend(ids_of([batch]))
    ids = np.concatenate(seen) if seen else np.empty(0, dtype=np.int64)
    assert len(np.unique(ids)) == len(ids)  # chunk 2's samples never came twice


def test_batch_memory_is_reused_only_once_nothing_refers_to_a_batch() -> None:
    memory = BatchMemory()
    shape = (256, 180, 2)  # one batch of the default size
    first = memory.empty(shape, np.float32)
    address = first.__array_interface__["data"][0]
    del first
    second = memory.empty(shape, np.float32)
    assert second.__array_interface__["data"][0] == address  # recycled once dropped
    second[:] = 1
    held = torch.from_numpy(second)[10:20]  # a view of the tensor keeps the memory in use
    del second
    third = memory.empty(shape, np.float32)
    assert third.__array_interface__["data"][0] != address
    third[:] = 2
    assert (held == 1).all()


def test_stalled_chunk_fails_within_the_timeout(cfg: Config, server: FaultServer) -> None:
    server.always("*/category/3", "stall")
    ld = loader(cfg, server)
    ld.source = dataclasses.replace(ld.source, backoff_s=0.05)
    with pytest.raises(RemoteReadError, match="read timeout"):
        ids_of(ld)
    assert server.count("*/category/3") == cfg.train.retries + 1


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_fast_chunk_decoding_matches_zarr(cfg: Config, tmp_path: Path, zarr_format: int) -> None:
    x, y = synthetic_samples(N, LOOKBACK, seed=3)
    root = tmp_path / "srv"
    write_split(root / cfg.store_name / "train.zarr", x, y, name=cfg.study.dataset_name, chunk_samples=CHUNK,
                zarr_format=zarr_format)  # fmt: skip
    with FaultServer(root) as srv:
        reader = make_loader(cfg, "train", url=srv.url, progress=False).reader
        assert reader._decoders is not None  # the layout the ETL writes takes the fast path
        for chunk in range(reader.n_chunks):
            fast, slow = reader.read(chunk), reader.read(chunk, fast=False)
            np.testing.assert_array_equal(fast[0], slow[0])
            np.testing.assert_array_equal(fast[1], slow[1])
            start, stop = reader.bounds(chunk)
            np.testing.assert_array_equal(fast[0], x[start:stop])
        reader.remote.close()


def test_shuffle_buffer_keeps_every_row_once() -> None:
    rng = np.random.default_rng(0)
    buffer = ShuffleBuffer(batch_size=7, capacity=3, rng=rng)
    chunks = [np.arange(s, s + n) for s, n in ((0, 10), (10, 25), (35, 3), (38, 10))]
    out = []
    for c in chunks:
        out += [yb for _, yb in buffer.add(c[:, None, None].astype(np.float32), c)]
    out += [yb for _, yb in buffer.flush()]
    np.testing.assert_array_equal(np.sort(np.concatenate(out)), np.arange(48))
    assert all(len(b) == 7 for b in out[:-1])


def test_shuffle_buffer_releases_each_chunk_within_capacity_additions() -> None:
    """The memory bound the loader's speed depends on: a chunk leaves after `capacity` adds."""
    capacity = 3
    released: list[int] = []
    buffer = ShuffleBuffer(
        batch_size=8,
        capacity=capacity,
        rng=np.random.default_rng(1),
        release=lambda x: released.append(int(x[0, 0, 0])),
    )
    for i in range(10):
        chunk = np.full((40, 1, 1), i, dtype=np.float32)
        list(buffer.add(chunk, np.full(40, i)))
        assert all(old in released for old in range(i - capacity)), (i, released)
    list(buffer.flush())


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


def test_split_source_is_picklable_without_secrets_in_repr(cfg: Config) -> None:
    import pickle

    source = SplitSource.from_config(cfg, "train", url="http://127.0.0.1:9", token="hush-hush")
    assert pickle.loads(pickle.dumps(source)) == source
    assert "hush-hush" not in repr(source)
