"""Lookback samples and the time-block split, vectorised over cells and dates.

A sample is the window of `time_lookback` consecutive days of every feature of
one cell, shape (time_lookback, features); its label is the category on the
window's last day (the "end date"), and the cell's lat/lon plus the end date
travel with it so every sample can be traced back to the inputs.

Split: the overlap period is cut into three contiguous blocks, train, then
validation, then test, separated by gaps of `split_gap_days` (at least the
lookback). Block lengths are the `split_fractions` of the days left after the
two gaps (train and validation rounded down, test takes the rest). A window
ends inside its split's block; the first training window ends on day
lookback - 1, later splits' windows may reach back into the gap before their
block but, as the gap is at least the lookback, never into the previous block.
So no window holds days of two splits. End dates step by `sample_stride` from
each block's first possible end.

Sample order (what a chunk of the store holds): cell-major, as the blog's
per-cell loop would produce: cells in row-major (lat, lon) order of the input
grid, and for each cell its windows in time order. A chunk of `chunk_samples`
therefore holds consecutive windows of one or a few cells.

Windows are never built per cell in Python: `numpy.lib.stride_tricks.
sliding_window_view` gives every window of a block of cells as a view, and one
fancy index gathers the wanted (cell, end) pairs, a chunk's worth at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr
from numpy.lib.stride_tricks import sliding_window_view

from .categories import MISSING

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class SplitBlock:
    """Days [start, stop) whose labels belong to one split, and its first possible window end."""

    name: str
    start: int
    stop: int
    first_end: int

    @property
    def days(self) -> int:
        return self.stop - self.start


def split_blocks(
    n_time: int, *, lookback: int, gap: int, fractions: Sequence[float]
) -> dict[str, SplitBlock]:
    """Contiguous train / valid / test blocks of day indices separated by `gap` days.

    Raises ValueError when a block would hold no window end (the caller words
    the error for the user).
    """
    if gap < lookback:
        raise ValueError(f"the split gap ({gap} days) is shorter than the lookback ({lookback} days)")
    usable = n_time - 2 * gap
    n_train = int(np.floor(usable * fractions[0]))
    n_valid = int(np.floor(usable * fractions[1]))
    n_test = usable - n_train - n_valid
    train = SplitBlock("train", 0, n_train, lookback - 1)
    valid = SplitBlock("valid", n_train + gap, n_train + gap + n_valid, n_train + gap)
    test = SplitBlock("test", valid.stop + gap, valid.stop + gap + n_test, valid.stop + gap)
    blocks = {b.name: b for b in (train, valid, test)}
    for block in blocks.values():
        if block.first_end >= block.stop or block.days <= 0:
            raise ValueError(
                f"the {block.name} block would hold {max(block.days, 0)} days, too few for one "
                f"{lookback}-day window ({n_time} days in all, gaps of {gap} days)"
            )
    return blocks


def window_ends(block: SplitBlock, stride: int = 1) -> np.ndarray:
    """Day indices of the window end dates (label dates) of a split block."""
    return np.arange(block.first_end, block.stop, stride, dtype=np.int64)


def sample_index(
    codes: np.ndarray, invalid: np.ndarray, ends: np.ndarray, lookback: int
) -> tuple[np.ndarray, np.ndarray]:
    """(cell, end) index pairs of the usable samples, in cell-major order.

    codes: (cells, T) label codes; invalid: (cells, T) True where any feature is
    NaN. A sample is usable when its end date has a label and no day of its
    window is invalid (counted with a cumulative sum, not per window).
    """
    n_cells = codes.shape[0]
    bad = np.zeros((n_cells, codes.shape[1] + 1), dtype=np.int64)
    np.cumsum(invalid, axis=1, out=bad[:, 1:])
    bad_in_window = bad[:, ends + 1] - bad[:, ends + 1 - lookback]
    usable = (codes[:, ends] != MISSING) & (bad_in_window == 0)
    cell, which = np.nonzero(usable)  # row-major: cell-major, then time order
    return cell.astype(np.int64), ends[which]


def gather(series: np.ndarray, cell: np.ndarray, end: np.ndarray, lookback: int) -> np.ndarray:
    """Windows (samples, lookback, features) of series (cells, T, features) ending at `end`.

    One copy: the window view is transposed to (cells, T - L + 1, L, features)
    before the fancy index, whose result is then already C-ordered. A series that
    is not C-contiguous is copied first (windows of a strided series read badly).
    """
    series = np.ascontiguousarray(series)
    view = sliding_window_view(series, lookback, axis=1).transpose(0, 1, 3, 2)  # no copy
    return view[cell, end - (lookback - 1)]


def iter_samples(
    series: np.ndarray, cell: np.ndarray, end: np.ndarray, lookback: int, max_samples: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(windows, cell, end) in pieces of at most `max_samples`, so memory stays bounded."""
    series = np.ascontiguousarray(series)
    for start in range(0, cell.size, max_samples):
        c, e = cell[start : start + max_samples], end[start : start + max_samples]
        yield gather(series, c, e, lookback), c, e


def naive_lookback(series: xr.Dataset, lookback: int, ends: np.ndarray) -> xr.DataArray:
    """The blog's way, kept as the baseline of the tests and the benchmark: a Python loop
    over stacked cells, one `rolling().construct` per cell, then `xr.concat` of the list.

    series: the features as variables (time, lat, lon). Returns (samples, time_lookback,
    features) for every cell and end date, cell-major like `gather`. Do not use it for
    real data: it is slow (per-cell overhead) and holds everything in memory.
    """
    stacked = series.stack(z=("lat", "lon"))
    samples = []
    for i in range(stacked.sizes["z"]):
        cell = stacked.isel(z=i).to_array("features").transpose("time", "features")
        windows = cell.rolling(time=lookback).construct("time_lookback")
        samples.append(windows.isel(time=ends).rename(time="samples"))
    return xr.concat(samples, dim="samples", coords="minimal", compat="override").transpose(
        "samples", "time_lookback", "features"
    )
