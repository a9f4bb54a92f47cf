"""The loader's windows without a server: the compact window index against `valid_pairs`, the
keyed permutation (a true permutation, uniform enough), windows drawn afresh each epoch, and
memory that does not grow by a per-window int64 array."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from labzarr.store_format import MISSING, SplitBlock, valid_pairs, window_ends
from labzarr.train.loader import Series, WindowLoader
from labzarr.train.windows import Permutation, WindowIndex

LOOKBACK = 10


def gappy(n_cells: int, n_time: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and mask with full cells, an empty (ocean) cell, missing labels and incomplete days."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 11, size=(n_cells, n_time)).astype(np.int8)
    complete = np.ones((n_cells, n_time), dtype=bool)
    complete[1] = False  # no usable window
    complete[2, rng.integers(0, n_time, size=5)] = False  # gaps
    labels[3, rng.integers(0, n_time, size=20)] = MISSING  # missing labels
    complete[4:6, 50:53] = False
    return labels, complete


def series_of(n_cells: int, n_time: int, seed: int = 0) -> Series:
    labels, complete = gappy(n_cells, n_time, seed)
    features = np.zeros((n_cells, n_time, 1), dtype=np.float32)
    features[:, :, 0] = np.arange(n_cells)[:, None] * 100_000 + np.arange(n_time)  # (cell, day) readable
    blocks = {
        "train": SplitBlock("train", 0, n_time * 2 // 3),
        "test": SplitBlock("test", n_time * 2 // 3, n_time),
    }
    return Series.from_arrays(features, labels, complete, blocks, lookback=LOOKBACK)


def flat_of(batches: list[tuple[torch.Tensor, torch.Tensor]], labels: np.ndarray) -> np.ndarray:
    """Flat indices of the windows' end days, after checking each window and its label."""
    out = []
    for xb, yb in batches:
        code = xb[:, :, 0].numpy().astype(np.int64)
        cell, end = code[:, -1] // 100_000, code[:, -1] % 100_000
        np.testing.assert_array_equal(np.diff(code, axis=1), 1)
        assert yb.dtype == torch.int64
        np.testing.assert_array_equal(yb.numpy(), labels[cell, end])
        out.append(cell * labels.shape[1] + end)
    return np.concatenate(out)


@pytest.mark.parametrize("stride", [1, 3])
def test_the_compact_index_holds_exactly_the_usable_windows(stride: int) -> None:
    labels, complete = gappy(12, 400)
    ends = window_ends(SplitBlock("train", 0, 400), LOOKBACK, stride)
    index = WindowIndex(labels, complete, ends, LOOKBACK)
    expected = valid_pairs(labels, complete, ends, LOOKBACK)
    np.testing.assert_array_equal(index.all_flat(), expected)
    rng = np.random.default_rng(1)
    picks = rng.integers(0, len(index), size=50)
    np.testing.assert_array_equal(index.flat(picks), expected[picks])
    # full cells cost no per-window memory: only the 5 cells with gaps keep offsets (2 bytes each)
    assert index.offsets.dtype == np.uint16 and len(index.offsets) < 5 * len(ends)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4097, 100_003])
def test_the_permutation_is_a_bijection_of_the_range(n: int) -> None:
    for key in ([0, 0, 0], [42, 3, 0]):
        images = Permutation(n, key)(np.arange(n))
        np.testing.assert_array_equal(np.sort(images), np.arange(n))
    if n > 7:
        assert not np.array_equal(Permutation(n, [1])(np.arange(n)), Permutation(n, [2])(np.arange(n)))
        np.testing.assert_array_equal(
            Permutation(n, [5, 1])(np.arange(n)), Permutation(n, [5, 1])(np.arange(n))
        )


def test_the_permutation_mixes_uniformly() -> None:
    """Where position 0 and position 1 land over many keys: flat, and independent of each other
    (chi-square of 50 and of 49 degrees of freedom, far below the 1e-6 tail)."""
    n, keys = 50, 2000
    first = np.array([Permutation(n, [k])(np.arange(2)) for k in range(keys)])
    counts = np.bincount(first[:, 0], minlength=n)
    chi2 = ((counts - keys / n) ** 2 / (keys / n)).sum()
    assert chi2 < 110, chi2
    gaps = np.bincount((first[:, 1] - first[:, 0]) % n, minlength=n)[1:]
    chi2 = ((gaps - keys / (n - 1)) ** 2 / (keys / (n - 1))).sum()
    assert chi2 < 110, chi2


def test_windows_per_epoch_draws_a_new_uniform_subset_each_epoch() -> None:
    series = series_of(12, 400)
    valid = set(series.pairs("train").tolist())
    m = 300

    def epoch(loader: WindowLoader) -> np.ndarray:
        return flat_of(list(loader), series.labels)

    loader = WindowLoader(series, "train", batch_size=64, seed=3, windows_per_epoch=m)
    assert loader.n_samples == m and len(loader) == 5
    seen = [epoch(loader) for _ in range(30)]
    for got in seen:
        assert len(got) == m and len(set(got.tolist())) == m and set(got.tolist()) <= valid
    assert len({tuple(sorted(g.tolist())) for g in seen}) == 30, "a different subset each epoch"
    ends = window_ends(series.blocks["train"], LOOKBACK)
    hits = np.bincount(np.concatenate(seen) % 400, minlength=400)[ends]  # by end day: roughly flat
    assert len(set(np.concatenate(seen).tolist())) > 0.9 * len(valid)  # 1 - e^-3.2 = 96 % if uniform
    assert hits.std() / hits.mean() < 0.3  # 30 draws of 300 over ~2,800 windows: ~0.19 if uniform
    again = WindowLoader(series, "train", batch_size=64, seed=3, windows_per_epoch=m, start_epoch=2)
    np.testing.assert_array_equal(epoch(again), seen[2])  # deterministic given seed and epoch
    shares = [
        epoch(WindowLoader(series, "train", batch_size=64, seed=3, windows_per_epoch=m, rank=r, world_size=3))
        for r in range(3)
    ]
    np.testing.assert_array_equal(np.sort(np.concatenate(shares)), np.sort(seen[0]))  # ranks split one draw
    with pytest.raises(ValueError, match="shuffled"):
        WindowLoader(series, "test", shuffle=False, windows_per_epoch=m)


def test_an_epoch_allocates_no_per_window_array() -> None:
    """Host memory of the loader beyond the series is O(cells + batch), not O(windows): the old
    loader held int64 (cell, end) indices, a permutation of them and int64 labels of the pass."""
    series = series_of(64, 20_000)  # ~850,000 training windows: 6.8 MB per int64 array of them
    index = series.index("train", LOOKBACK)  # built in blocks of cells (bounded scratch), kept compact
    assert index.nbytes < 24 * 64 + 2 * 3 * 20_000 + 8 * 20_000
    tracemalloc.start()
    try:
        loader = WindowLoader(series, "train", batch_size=256, seed=1)
        for _, (xb, _) in zip(range(3), loader, strict=False):
            assert xb.shape == (256, LOOKBACK, 1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(loader.index) > 800_000
    assert peak < 3e6, peak  # a block of batches' positions (the old loader: over 20 MB here)


def test_window_places_are_the_unshuffled_loaders_order_block_by_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cells and end steps the test pass maps its windows with, in blocks smaller than the split."""
    from labzarr.train import where

    series = series_of(12, 300)
    monkeypatch.setattr(where, "BLOCK", 97)
    cells, ends = where.window_places(series, "test", LOOKBACK)
    assert cells.dtype == ends.dtype == np.int32 and len(cells) > 3 * 97
    loader = WindowLoader(series, "test", batch_size=64, lookback=LOOKBACK, shuffle=False)
    np.testing.assert_array_equal(cells.astype(np.int64) * 300 + ends, flat_of(list(loader), series.labels))
