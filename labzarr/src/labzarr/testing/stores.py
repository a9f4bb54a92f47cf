"""Small series stores in the ETL's served layout, written directly for reader and loader tests.

`write_series_store` writes `<root>/<dataset>.zarr` with the ETL's own writer
(`etl.store.ChunkAppender`, `finalize`): the features, labels and `complete`
mask along `cell`, chunked by `chunk_cells`, the split attributes and the
manifest; only the climatology group is left out. Two kinds of content:

* `indexed_series`: feature 0 of cell c on day t is c * 10_000 + t (exact in
  float32), so a window tells which (cell, end) it is, and any mix-up shows;
* `learnable_series`: AR(1) features whose labels are the category of the
  weekly mean of feature 0 (a model can learn them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from ..etl.store import ChunkAppender, finalize
from ..store_format import (
    CELL,
    COMPLETE,
    FEATURE,
    LABELS,
    LAT,
    LON,
    MISSING,
    SERIES_FILL_VALUES,
    TIME,
    series_layout,
    split_attrs,
    split_blocks,
    store_name,
)

DAY = 10_000  # feature 0 = cell * DAY + day in indexed series
# Percentile bounds of the US Drought Monitor classes, driest to wettest: D4 <= 2 %, D3 <= 5 %, D2 <= 10 %,
# D1 <= 20 %, D0 <= 30 % (inclusive upper bounds), W0 >= 70 %, ..., W4 >= 98 % (inclusive lower bounds).
DROUGHT_BOUNDS = np.array([0.02, 0.05, 0.10, 0.20, 0.30, 0.70, 0.80, 0.90, 0.95, 0.98])
N_CODES = len(DROUGHT_BOUNDS) + 1  # 11 codes: 0 = wettest (W4) ... 5 = neutral ... 10 = driest (D4)


def percentile_codes(p: np.ndarray | float) -> np.ndarray:
    """Category codes (int8) of percentiles in [0, 1]: 0 = W4 (p >= 0.98) ... 10 = D4 (p <= 0.02),
    NaN -> MISSING; a bound belongs to the class further from neutral, as in a study's ETL."""
    p = np.asarray(p, dtype=np.float64)
    dry = np.digitize(p, DROUGHT_BOUNDS, right=True)  # bounds strictly below p: a dry bound is inclusive
    wet = np.digitize(p, DROUGHT_BOUNDS)  # bounds at or below p: a wet bound is inclusive
    level = np.where(p < 0.5, dry, wet)  # 0 (driest) .. 10 (wettest)
    return np.where(np.isnan(p), MISSING, N_CODES - 1 - level).astype(np.int8)


def indexed_series(n_cells: int, n_time: int, n_features: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Features whose feature 0 encodes (cell, day), other features 1.0; labels (cell + day) % 11."""
    cell, day = np.meshgrid(np.arange(n_cells), np.arange(n_time), indexing="ij")
    x = np.ones((n_cells, n_time, n_features), dtype=np.float32)
    x[:, :, 0] = cell * DAY + day
    return x, ((cell + day) % 11).astype(np.int8)


def learnable_series(
    n_cells: int, n_time: int, n_features: int = 2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """AR(1) features (cells, T, F) and labels: the category of the last 7 days' mean of feature 0."""
    from scipy.signal import lfilter
    from scipy.stats import norm

    rng = np.random.default_rng(seed)
    phi = 0.9
    shocks = rng.standard_normal((n_cells, n_time, n_features))
    x = (lfilter([1.0], [1.0, -phi], shocks, axis=1) * np.sqrt(1 - phi**2)).astype(np.float32)
    weekly = np.full((n_cells, n_time), np.nan)
    cumulative = np.cumsum(x[:, :, 0], axis=1)
    weekly[:, 7:] = (cumulative[:, 7:] - cumulative[:, :-7]) / 7
    z = weekly / np.nanstd(weekly)
    return x, percentile_codes(norm.cdf(z))


def write_series_store(
    root: Path,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    dataset_name: str,
    lookback: int,
    chunk_cells: int,
    zarr_format: int = 2,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> Path:
    """`<root>/<dataset_name>.zarr` holding `features` (cells, T, F) and `labels` (cells, T); returns it."""
    n_cells, n_time, n_features = features.shape
    path = Path(root) / store_name(dataset_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    dates = pd.date_range("2000-01-01", periods=n_time, freq="D")
    blocks = split_blocks(n_time, lookback=lookback, gap=lookback, fractions=fractions)
    zarr.open_group(path, mode="w", zarr_format=zarr_format)
    writer = ChunkAppender(
        path,
        dim=CELL,
        chunk=chunk_cells,
        layout=series_layout(dataset_name),
        coords=(LAT, LON),
        static=xr.Dataset(
            coords={TIME: dates, FEATURE: np.array([f"f{i}" for i in range(n_features)], dtype=object)}
        ),
        fill_values=SERIES_FILL_VALUES,
        zarr_format=zarr_format,
        time_units="days since 2000-01-01",
    )
    writer.add(
        {
            dataset_name: features,
            LABELS: labels,
            COMPLETE: np.isfinite(features).all(axis=2),
            LAT: np.linspace(40, 50, n_cells),
            LON: np.linspace(-120, -110, n_cells),
        }
    )
    writer.close()
    names = [f"f{i}" for i in range(n_features)]
    attrs = {**split_attrs(blocks, dates, lookback), "time_lookback": lookback, "features": names}
    finalize(path, attrs, {})
    return path
