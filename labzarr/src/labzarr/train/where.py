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


def window_places(
    series: Series, split: str, lookback: int, stride: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """The cell (store order) and end step of each window of `split`, in the order an unshuffled
    single-rank loader yields them."""
    cells, ends = np.divmod(series.pairs(split, lookback, stride), series.n_time)
    return cells.astype(np.int32), ends.astype(np.int32)  # 8 bytes a window, not 16


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
