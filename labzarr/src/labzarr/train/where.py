"""Where a split's windows are: the grid cell and the time step each one ends on, and the cells'
coordinates and the store's time axis, for maps and time series of results.

An unshuffled single-rank `WindowLoader` yields a split's windows in the order of
`Series.pairs` (cell-major, then time), resident or streamed; `window_places` gives that order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .loader import Series

BLOCK = 2**20  # windows placed at once


def window_places(
    series: Series, split: str, lookback: int, stride: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """The cell (store order) and end step of each window of `split`, in the order an unshuffled
    single-rank loader yields them: int32, 8 bytes a window (computed a block at a time, never
    the 24 bytes a window of flat int64 indices and their quotient and remainder)."""
    index = series.index(split, lookback, stride)
    cells, ends = np.empty(len(index), dtype=np.int32), np.empty(len(index), dtype=np.int32)
    for i in range(0, len(index), BLOCK):
        part = slice(i, min(i + BLOCK, len(index)))
        cells[part], ends[part] = np.divmod(index.flat(np.arange(part.start, part.stop)), series.n_time)
    return cells, ends


def coordinates(series: Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Latitude and longitude (cells,) of the stored cells and the decoded time axis (T,) (numpy
    datetime64, or cftime objects for a non-standard calendar)."""
    import xarray as xr

    group = series.remote.open_group()
    time = group["time"]
    encoded = xr.Dataset({"time": ("time", np.asarray(time[:]), dict(time.attrs))})
    return (
        np.asarray(group["lat"][:], dtype=np.float64),
        np.asarray(group["lon"][:], dtype=np.float64),
        xr.decode_cf(encoded)["time"].values,
    )
