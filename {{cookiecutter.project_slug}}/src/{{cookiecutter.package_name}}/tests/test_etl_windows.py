"""Lookback windows: vectorised equals the blog's loop, labels at the window's end, split gaps hold."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from ..etl import windows as w
from ..etl.categories import MISSING


def tiny_series(n_time: int = 60, ny: int = 2, nx: int = 3, n_features: int = 2) -> np.ndarray:
    """(cells, time, features) whose value encodes (cell, day, feature), so any mix-up shows."""
    cell, day, feature = np.meshgrid(
        np.arange(ny * nx), np.arange(n_time), np.arange(n_features), indexing="ij"
    )
    return (cell * 1000 + day + feature * 0.5).astype(np.float32)


def test_vectorised_windows_equal_the_naive_per_cell_loop() -> None:
    series = tiny_series()
    ends = np.arange(9, 60, 3)
    cell = np.repeat(np.arange(6), ends.size)
    end = np.tile(ends, 6)
    fast = w.gather(series, cell, end, lookback=10)
    grid = series.reshape(2, 3, 60, 2).transpose(2, 0, 1, 3)  # (time, lat, lon, features)
    ds = xr.Dataset(
        {name: (("time", "lat", "lon"), grid[..., i]) for i, name in enumerate(["sm", "swe"])},
        coords={"time": np.arange(60), "lat": [1.0, 2.0], "lon": [3.0, 4.0, 5.0]},
    )
    slow = w.naive_lookback(ds, 10, ends)
    assert fast.shape == slow.shape == (6 * ends.size, 10, 2)
    np.testing.assert_array_equal(fast, slow.values)


def test_the_last_day_of_each_window_is_the_label_date() -> None:
    series = tiny_series()
    codes = np.zeros((6, 60), dtype=np.int8)
    cell, end = w.sample_index(codes, np.zeros((6, 60), bool), np.arange(14, 60), lookback=15)
    windows = w.gather(series, cell, end, 15)
    np.testing.assert_array_equal(windows[:, -1, :], series[cell, end, :])
    np.testing.assert_array_equal(windows[:, 0, :], series[cell, end - 14, :])


def test_sample_index_is_cell_major_and_drops_unlabelled_or_nan_windows() -> None:
    codes = np.zeros((3, 30), dtype=np.int8)
    invalid = np.zeros((3, 30), dtype=bool)
    codes[0, 20] = MISSING  # one label missing: only the window ending that day goes
    invalid[1, 10] = True  # one NaN day: every window containing it goes (ends 10..14)
    ends = np.arange(4, 30)
    cell, end = w.sample_index(codes, invalid, ends, lookback=5)
    assert np.all(np.diff(cell) >= 0)  # cell-major
    assert 20 not in end[cell == 0] and end[cell == 0].size == ends.size - 1
    assert set(end[cell == 1]) == set(ends) - set(range(10, 15))
    assert end[cell == 2].tolist() == ends.tolist()  # time order within a cell


def test_pieces_stay_bounded_and_cover_every_sample() -> None:
    series = tiny_series()
    cell, end = np.repeat(np.arange(6), 40), np.tile(np.arange(20, 60), 6)
    pieces = list(w.iter_samples(series, cell, end, 20, max_samples=33))
    assert max(len(p[0]) for p in pieces) == 33
    np.testing.assert_array_equal(np.concatenate([p[0] for p in pieces]), w.gather(series, cell, end, 20))


@settings(max_examples=200, deadline=None)
@given(
    n_time=st.integers(50, 5000),
    lookback=st.integers(1, 200),
    extra_gap=st.integers(0, 50),
    train=st.floats(0.3, 0.8),
    stride=st.integers(1, 10),
)
def test_splits_are_ordered_blocks_whose_windows_never_share_a_day(
    n_time, lookback, extra_gap, train, stride
) -> None:
    fractions = [train, (1 - train) / 2, (1 - train) / 2]
    try:
        blocks = w.split_blocks(n_time, lookback=lookback, gap=lookback + extra_gap, fractions=fractions)
    except ValueError as exc:
        assert "too few" in str(exc)
        return
    previous_last_day, previous_block = -1, None
    for name in w.SPLITS:
        block = blocks[name]
        ends = w.window_ends(block, stride)
        assert ends.size > 0 and ends.min() >= block.start and ends.max() < block.stop
        assert np.all(np.diff(ends) == stride)
        first_day = ends.min() - lookback + 1
        assert first_day > previous_last_day and first_day >= 0  # no window reaches an earlier split
        if previous_block is not None:
            assert block.start - previous_block.stop >= lookback  # the gap holds
        previous_last_day, previous_block = ends.max(), block
    assert blocks["test"].stop <= n_time


def test_too_short_a_period_or_gap_is_refused() -> None:
    with pytest.raises(ValueError, match="too few"):
        w.split_blocks(100, lookback=30, gap=30, fractions=[0.7, 0.15, 0.15])
    with pytest.raises(ValueError, match="shorter than the lookback"):
        w.split_blocks(1000, lookback=30, gap=10, fractions=[0.7, 0.15, 0.15])
