"""Skew handling: per-cell transforms fitted on the training period only, saved, and re-applied.

Why: soil moisture is skewed and bounded, snow water equivalent is mostly
zeros; an LSTM wants features that are roughly normal and of order one, and
the mapping must be fitted without ever seeing validation or test days, then
applied identically to any later data.

Transforms (`etl.transform`):

* ``normal_score`` (default): the seasonal percentile p (below), then the
  probit z = Φ⁻¹(p), clipped at ±CLIP (3.09, the 0.1 % and 99.9 % points) and
  divided by CLIP, so features lie in [-1, 1];
* ``percentile``: the same percentile, centred and scaled: 2p - 1 in (-1, 1);
* ``quantile_normal``: scikit-learn's `QuantileTransformer` (normal output) per
  cell on the raw values (no season window, so the seasonal cycle stays in
  the feature), clipped and scaled like ``normal_score``;
* ``yeo_johnson``: scikit-learn's `PowerTransformer` (Yeo-Johnson) per cell on
  the raw values, standardised with the training mean and standard deviation.

Seasonal percentiles: for a cell and a step of season d (its day of year, or
its month of year for monthly steps: `timeaxis.season_index`), the reference
sample is every *training* step of that cell whose season lies within
±`etl.season_window` steps of d (circular, period 366 for standard calendars,
365 for noleap, 360 for 360_day, 12 for months). The percentile of a value x is
the plotting position of its mid-rank in that sample:

    lo = #(ref < x), hi = #(ref <= x), rank = (lo + hi + 1) / 2,
    p = (rank - a) / (n + 1 - 2a)

with a = 0.44 (Gringorten, default), 0 (Weibull), 0.5 (Hazen), 0.4 (Cunnane)
or 0.375 (Blom). For a training value this is exactly its plotting position
(`scipy.stats.mstats.plotting_positions(ref, a, a)`), ties get the mean
position of their group, so the zeros of a zero-inflated variable all get the
middle probability of the zero mass (an all-zero cell gets exactly 0.5); a value
between two reference values gets the half rank between them, and one outside
the reference range stays strictly inside (0, 1). Only the order of values
matters, so the percentiles are invariant to any increasing rescaling.

Fitted state (`fit`): the training values themselves for the percentile
transforms (the empirical distribution is the fitted model); the quantiles of
`QuantileTransformer`; the lambdas, means and scales of Yeo-Johnson. The
pipeline saves it in the store's `climatology` group (one row per cell, in the
store's cell order) and `apply` re-applies it to new data with the same code
the pipeline used. Inputs are read as float32 everywhere so
the saved training values reproduce the pipeline bit for bit.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
from labzarr.etl.timeaxis import TIME_STEPS, season_index
from labzarr.store_format import CELL, CLIMATOLOGY, FEATURE, TIME

# Plotting position parameter a of p = (i - a) / (n + 1 - 2a) (alpha = beta = a in scipy).
PLOTTING_POSITIONS: dict[str, float] = {
    "gringorten": 0.44,
    "weibull": 0.0,
    "hazen": 0.5,
    "cunnane": 0.4,
    "blom": 0.375,
}
TRANSFORMS = ("normal_score", "percentile", "quantile_normal", "yeo_johnson")
PERCENTILE_TRANSFORMS = ("normal_score", "percentile")
CLIP = 3.09  # probit of 0.1 %: normal scores are clipped here and divided by it
N_QUANTILES = 1000  # QuantileTransformer knots (fewer when the training period is shorter)


def circular_distance(a: np.ndarray, b: np.ndarray | int, period: int) -> np.ndarray:
    """Distance between seasons (days or months of year) on a circle of `period` steps."""
    d = np.abs(np.asarray(a, dtype=np.int64) - np.asarray(b, dtype=np.int64)) % period
    return np.minimum(d, period - d)


def normal_scores(p: np.ndarray) -> np.ndarray:
    """Probit of percentiles, clipped at ±CLIP (a uniform p gives mean 0, std 1)."""
    from scipy.special import ndtri

    with np.errstate(divide="ignore"):
        return np.clip(ndtri(np.asarray(p, dtype=np.float64)), -CLIP, CLIP)


def _count_sorted(sorted_rows: np.ndarray, n_valid: np.ndarray, x: np.ndarray, *, strict: bool) -> np.ndarray:
    """Per row, how many of the first n_valid sorted values are < x (strict) or <= x.

    A binary search vectorised over rows and targets (numpy's searchsorted only
    takes one sorted array); NaN targets give garbage and are masked by callers.
    """
    n_rows, n = sorted_rows.shape
    lo = np.zeros(x.shape, dtype=np.int64)
    if n == 0:
        return lo
    hi = np.broadcast_to(n_valid[:, None], x.shape).astype(np.int64)
    rows = np.arange(n_rows)[:, None]
    for _ in range(int(n).bit_length()):
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) // 2
        value = sorted_rows[rows, np.minimum(mid, n - 1)]
        right = ((value < x) if strict else (value <= x)) & active
        lo = np.where(right, mid + 1, lo)
        hi = np.where(active & ~right, mid, hi)
    return lo


def percentiles_against(reference: np.ndarray, x: np.ndarray, a: float) -> np.ndarray:
    """Mid-rank plotting positions of x (rows, m) against each row's reference (rows, n).

    NaN in the reference is ignored; NaN targets and rows without reference give NaN.
    """
    reference = np.sort(np.asarray(reference), axis=1)  # NaN sort last
    n_valid = (~np.isnan(reference)).sum(axis=1)
    lo = _count_sorted(reference, n_valid, x, strict=True)
    hi = _count_sorted(reference, n_valid, x, strict=False)
    n = n_valid[:, None].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = ((lo + hi + 1) / 2.0 - a) / (n + 1.0 - 2.0 * a)
    return np.where(np.isnan(x) | (n == 0), np.nan, p)


def seasonal_percentiles(
    train: np.ndarray,
    train_season: np.ndarray,
    values: np.ndarray,
    season: np.ndarray,
    *,
    window: int,
    period: int,
    a: float,
) -> np.ndarray:
    """Percentiles (cells, T) of `values` against each cell's training values within ±window seasons.

    train: (cells, n_train) training values; values: (cells, T) values to rank
    (training steps included). Loops over seasons, vectorised over cells.
    """
    out = np.full(values.shape, np.nan, dtype=np.float64)
    for d in np.unique(season):
        targets = season == d
        in_window = circular_distance(train_season, d, period) <= window
        out[:, targets] = percentiles_against(train[:, in_window], values[:, targets], a)
    return out


@dataclass(frozen=True)
class TransformSpec:
    """What a transform needs besides data: its name, plotting position, time step and season window."""

    transform: str = "normal_score"
    plotting_position: str = "gringorten"
    season_window: int = 7
    period: int = 366
    time_step: str = "daily"

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise ValueError(f"unknown transform {self.transform!r}; allowed: {', '.join(TRANSFORMS)}")
        if self.plotting_position not in PLOTTING_POSITIONS:
            raise ValueError(
                f"unknown plotting position {self.plotting_position!r}; "
                f"allowed: {', '.join(PLOTTING_POSITIONS)}"
            )
        if self.time_step not in TIME_STEPS:
            raise ValueError(f"unknown time step {self.time_step!r}; allowed: {', '.join(TIME_STEPS)}")

    @property
    def a(self) -> float:
        return PLOTTING_POSITIONS[self.plotting_position]

    def attrs(self) -> dict[str, Any]:
        """Attributes recording the spec (stored with the fitted state)."""
        return {
            "transform": self.transform,
            "plotting_position": self.plotting_position,
            "plotting_position_a": self.a,
            "time_step": self.time_step,
            "season_window": self.season_window,
            "season_period": self.period,
            "normal_score_clip": CLIP,
        }

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> TransformSpec:
        return cls(
            transform=str(attrs["transform"]),
            plotting_position=str(attrs["plotting_position"]),
            season_window=int(attrs["season_window"]),
            period=int(attrs["season_period"]),
            time_step=str(attrs["time_step"]),
        )


def state_dims(spec: TransformSpec, features: list[str]) -> dict[str, tuple[str, ...]]:
    """Dimensions of each fitted-state array (cell first, so it can be written cell block by block)."""
    if spec.transform in PERCENTILE_TRANSFORMS:
        return {f"reference_{v}": ("cell", "train_day") for v in features}
    if spec.transform == "quantile_normal":
        return {f"quantiles_{v}": ("cell", "quantile") for v in features}
    dims: dict[str, tuple[str, ...]] = {}
    for v in features:
        dims.update({f"lambda_{v}": ("cell",), f"mean_{v}": ("cell",), f"scale_{v}": ("cell",)})
    return dims


def n_quantiles(n_train: int) -> int:
    return max(2, min(N_QUANTILES, n_train))


def _fittable(train: np.ndarray) -> np.ndarray:
    """Columns (cells) with at least two finite training values."""
    return np.isfinite(train).sum(axis=0) >= 2


def fit(train: np.ndarray, spec: TransformSpec, features: list[str]) -> dict[str, np.ndarray]:
    """Fitted state of one block of cells from its training values (cells, n_train, features)."""
    train = np.asarray(train, dtype=np.float32)
    state: dict[str, np.ndarray] = {}
    for i, v in enumerate(features):
        column = train[:, :, i].T  # (n_train, cells): scikit-learn fits one model per column
        ok = _fittable(column)
        if spec.transform in PERCENTILE_TRANSFORMS:
            state[f"reference_{v}"] = train[:, :, i].copy()
        elif spec.transform == "quantile_normal":
            from sklearn.preprocessing import QuantileTransformer

            q = np.full((train.shape[0], n_quantiles(train.shape[1])), np.nan)
            if ok.any():
                qt = QuantileTransformer(
                    n_quantiles=q.shape[1], output_distribution="normal", subsample=None
                ).fit(column[:, ok].astype(np.float64))
                q[ok] = qt.quantiles_.T
            state[f"quantiles_{v}"] = q
        else:
            from sklearn.preprocessing import PowerTransformer

            lam, mean, scale = (np.full(train.shape[0], np.nan) for _ in range(3))
            if ok.any():
                x = column[:, ok].astype(np.float64)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    pt = PowerTransformer(method="yeo-johnson", standardize=False).fit(x)
                    y = pt.transform(x)
                lam[ok] = pt.lambdas_
                mean[ok] = np.nanmean(y, axis=0)
                sd = np.nanstd(y, axis=0)
                scale[ok] = np.where(sd > 0, sd, 1.0)
            state.update({f"lambda_{v}": lam, f"mean_{v}": mean, f"scale_{v}": scale})
    return state


def transform(
    state: Mapping[str, np.ndarray],
    values: np.ndarray,
    season: np.ndarray,
    spec: TransformSpec,
    features: list[str],
    *,
    train_season: np.ndarray | None = None,
) -> np.ndarray:
    """Features (cells, T, features) float32 of raw values (cells, T, features) with a fitted state.

    `season` is the season of each step; `train_season` (the season of each training
    step) is needed by the percentile transforms.
    """
    values = np.asarray(values, dtype=np.float32)
    out = np.empty(values.shape, dtype=np.float32)
    for i, v in enumerate(features):
        x = values[:, :, i]
        if spec.transform in PERCENTILE_TRANSFORMS:
            if train_season is None:
                raise ValueError("train_season is required by the percentile transforms")
            p = seasonal_percentiles(
                state[f"reference_{v}"],
                train_season,
                x,
                season,
                window=spec.season_window,
                period=spec.period,
                a=spec.a,
            )
            y = normal_scores(p) / CLIP if spec.transform == "normal_score" else 2.0 * p - 1.0
        elif spec.transform == "quantile_normal":
            y = _quantile_normal(state[f"quantiles_{v}"], x)
        else:
            y = _yeo_johnson(state[f"lambda_{v}"], state[f"mean_{v}"], state[f"scale_{v}"], x)
        out[:, :, i] = y
    return out


def _quantile_normal(quantiles: np.ndarray, x: np.ndarray) -> np.ndarray:
    """QuantileTransformer.transform with saved quantiles (cells, n_quantiles), clipped and scaled."""
    from sklearn.preprocessing import QuantileTransformer

    y = np.full(x.shape, np.nan)
    ok = ~np.isnan(quantiles).any(axis=1)
    if ok.any():
        qt = QuantileTransformer(n_quantiles=quantiles.shape[1], output_distribution="normal", subsample=None)
        qt.quantiles_ = quantiles[ok].T.astype(np.float64)
        qt.references_ = np.linspace(0, 1, quantiles.shape[1], endpoint=True)
        qt.n_quantiles_ = quantiles.shape[1]
        qt.n_features_in_ = int(ok.sum())
        y[ok] = qt.transform(x[ok].T.astype(np.float64)).T
        # scikit-learn sends every value equal to the lowest (highest) quantile to the bound,
        # even when many quantiles tie there (the zeros of snow); give them the middle of
        # their tied mass instead, as the percentile transforms do.
        references = qt.references_
        for end in (0, -1):
            tied = quantiles == quantiles[:, end : end + 1 or None]
            mass = tied.sum(axis=1)
            middle = normal_scores((tied * references).sum(axis=1) / np.maximum(mass, 1))
            fix = ok[:, None] & (mass[:, None] > 1) & (x == quantiles[:, end : end + 1 or None])
            y = np.where(fix, middle[:, None], y)
    return np.clip(y, -CLIP, CLIP) / CLIP


def _yeo_johnson(lam: np.ndarray, mean: np.ndarray, scale: np.ndarray, x: np.ndarray) -> np.ndarray:
    """PowerTransformer.transform with saved lambdas, then the saved standardisation."""
    from sklearn.preprocessing import PowerTransformer

    y = np.full(x.shape, np.nan)
    ok = ~np.isnan(lam)
    if ok.any():
        pt = PowerTransformer(method="yeo-johnson", standardize=False)
        pt.lambdas_ = lam[ok].astype(np.float64)
        pt.n_features_in_ = int(ok.sum())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            y[ok] = pt.transform(x[ok].T.astype(np.float64)).T
        y[ok] = (y[ok] - mean[ok, None]) / scale[ok, None]
    return y


def static_coords(spec: TransformSpec, train_time: Any, train_season: np.ndarray) -> dict[str, Any]:
    """Coordinates of the fitted state that do not depend on the cell."""
    coords: dict[str, Any] = {}
    if spec.transform in PERCENTILE_TRANSFORMS:
        coords["train_time"] = ("train_day", np.asarray(train_time))
        coords["train_season"] = ("train_day", train_season.astype(np.int16))
    return coords


def load_climatology(store: str | Any) -> xr.Dataset:
    """Open the fitted state saved in a study store's `climatology` group (lazily)."""
    return xr.open_zarr(store, group=CLIMATOLOGY, consolidated=True)


def _cell_indices(coord: np.ndarray, wanted: np.ndarray, name: str) -> np.ndarray:
    import pandas as pd

    index = pd.Index(np.asarray(coord, dtype=np.float64))
    found = index.get_indexer(np.asarray(wanted, dtype=np.float64), method="nearest", tolerance=1e-6)
    if (found < 0).any():
        missing = np.asarray(wanted)[found < 0][0]
        raise ValueError(f"the data has no {name} = {missing} that the climatology was fitted on")
    return found


def apply(climatology: xr.Dataset, data: xr.Dataset, *, block_cells: int = 256) -> xr.DataArray:
    """Transform new data exactly as the ETL transformed its own, with a saved climatology.

    `data` holds the feature variables with dims (time, lat, lon) (e.g. new model
    output over the same grid, with the study's dim names). Returns float32
    features (cell, time, feature) for the climatology's cells, with lat/lon on
    `cell`. Works block by block of cells; pass a time slice for very long data.
    """
    spec = TransformSpec.from_attrs(climatology.attrs)
    features = [str(f) for f in climatology[FEATURE].values]
    missing = [v for v in features if v not in data]
    if missing:
        raise ValueError(f"the data lacks the climatology's variables {missing}")
    rows = _cell_indices(data["lat"].values, climatology["lat"].values, "lat")
    cols = _cell_indices(data["lon"].values, climatology["lon"].values, "lon")
    season = season_index(data["time"], spec.time_step)
    train_season = climatology["train_season"].values if "train_season" in climatology else None
    names = list(state_dims(spec, features))
    n_cells = climatology.sizes["cell"]
    out = np.empty((n_cells, data.sizes["time"], len(features)), dtype=np.float32)
    for start in range(0, n_cells, block_cells):
        stop = min(start + block_cells, n_cells)
        state = {name: np.asarray(climatology[name][start:stop].values) for name in names}
        r = xr.DataArray(rows[start:stop], dims="cell")
        c = xr.DataArray(cols[start:stop], dims="cell")
        block = np.stack(
            [data[v].isel(lat=r, lon=c).transpose("cell", "time").values for v in features], axis=-1
        )
        out[start:stop] = transform(state, block, season, spec, features, train_season=train_season)
    return xr.DataArray(
        out,
        dims=(CELL, TIME, FEATURE),
        coords={
            "lat": (CELL, climatology["lat"].values),
            "lon": (CELL, climatology["lon"].values),
            TIME: data["time"].values,
            FEATURE: features,
        },
        name="features",
        attrs=spec.attrs(),
    )
