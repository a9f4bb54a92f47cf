"""Deterministic synthetic inputs: the embedded dataset of the demo, tests and benchmarks.

It exercises the hard cases of real data: skewed, seasonal soil moisture;
zero-inflated snow water equivalent; an all-NaN land mask; a cell with inputs
but no labels; leap days (or a cftime calendar). The `monthly` preset writes
monthly means (time stamps on the first of the month) of a longer record, for
studies whose time step is a month (`etl.time_step = "monthly"`).

The labels are what a drought monitor would publish from a blend of short- and
long-term indicators: the US Drought Monitor category of the percentile of a
weighted blend of three exponentially weighted means of soil moisture's normal
score over the study's lookback window, with time scales of a sixth, a half and
all of the lookback (30, 90 and 180 days for the default 180-day window; 1, 3 and
6 months for a 6-month one), plus a little smooth noise. The normal score is the
ETL's default feature (`etl.transform = "normal_score"`: the same seasonal
percentiles, fitted on the *training* period only), and the blend is ranked against
the training period of every cell (one regional climatology). So a label is a
function of the window the model sees, all of it (the half-year mean weighs most,
and summaries of the last weeks cannot give it), and of the training climatology; a
model that beats the baselines has learnt the right alignment (shift the labels by
a month and it cannot).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from labzarr.atomic import atomic_write
from labzarr.etl import timeaxis
from labzarr.store_format import split_blocks

from .etl import derive
from .etl.categories import CATEGORIES, MISSING, percentile_to_code
from .etl.quantiles import CLIP, TransformSpec, normal_scores, percentiles_against, seasonal_percentiles

MODEL_FILE = "model_output.nc"
REFERENCE_FILE = "reference.nc"
# Time scales of the labels' blend as fractions of the lookback (30, 90 and 180 of 180 days), and
# their weights: most on the longest, which only a model reading the whole window knows.
LABEL_SCALE_FRACTIONS = (1 / 6, 1 / 2, 1.0)
LABEL_WEIGHTS = (0.2, 0.3, 0.5)
LABEL_NOISE = 0.05  # standard deviation of the blend's smooth noise, in standard deviations of the blend
DEFAULT_LOOKBACK = {"daily": 180, "monthly": 6}  # the lookback of a study that does not say
# Season half-window of the features' climatology, in steps (the ETL's etl.season_window).
LABEL_SEASON_WINDOW = {"daily": TransformSpec.season_window, "monthly": 1}
SOIL_MEMORY = 0.9  # lag-1 autocorrelation of daily soil-moisture anomalies (a ~10-day memory)


@dataclass(frozen=True)
class SyntheticSize:
    """Grid, period and time step of a synthetic dataset."""

    ny: int
    nx: int
    years: int
    time_step: str = "daily"

    @property
    def cells(self) -> int:
        return self.ny * self.nx


SIZES: dict[str, SyntheticSize] = {
    "tiny": SyntheticSize(ny=3, nx=4, years=3),  # unit tests
    "small": SyntheticSize(ny=5, nx=8, years=10),  # the default: demo and CI
    "large": SyntheticSize(ny=20, nx=16, years=10),  # benchmarks: 8x the cells of small
    "monthly": SyntheticSize(ny=3, nx=4, years=40, time_step="monthly"),  # 480 monthly means
}


def _time_axis(years: int, calendar: str, start_year: int = 2000) -> xr.DataArray:
    """Daily time axis; standard calendars include leap days, cftime ones their own rules."""
    index = xr.date_range(
        f"{start_year}-01-01",
        f"{start_year + years}-01-01",
        freq="D",
        inclusive="left",
        calendar=calendar,
        use_cftime=calendar not in ("standard", "gregorian", "proleptic_gregorian"),
    )
    return xr.DataArray(index, dims="time", name="time")


def _ar1(rng: np.random.Generator, n_time: int, n_cells: int, phi: float) -> np.ndarray:
    """Unit-variance AR(1) anomalies (time, cells) with a shared regional component."""
    from scipy.signal import lfilter

    regional = rng.standard_normal((n_time, 1))
    local = rng.standard_normal((n_time, n_cells))
    shocks = 0.7 * regional + np.sqrt(1 - 0.7**2) * local
    series = lfilter([1.0], [1.0, -phi], shocks, axis=0)
    return series * np.sqrt(1 - phi**2)


def monthly_means(values: np.ndarray, time: xr.DataArray) -> tuple[np.ndarray, xr.DataArray]:
    """Means (months, cells) of daily values (days, cells), and the first day of each month."""
    month = np.asarray(time.dt.year) * 12 + np.asarray(time.dt.month)
    starts = np.flatnonzero(np.r_[True, month[1:] != month[:-1]])
    lengths = np.diff(np.r_[starts, len(month)])
    means = np.add.reduceat(values, starts, axis=0) / lengths[:, None]
    return means, time.isel(time=starts)


def label_scales(lookback: int) -> tuple[int, ...]:
    """Time scales (steps) of the labels' blend for a lookback: a sixth, a half, all of it."""
    return tuple(max(1, round(f * lookback)) for f in LABEL_SCALE_FRACTIONS)


def trailing_ewm(values: np.ndarray, scale: float, window: int) -> np.ndarray:
    """Exponentially weighted mean (time scale `scale` steps) of each step and the window - 1 steps
    before it, along the last axis; NaN where the window is incomplete or holds a NaN."""
    from scipy.signal import lfilter

    weights = np.exp(-np.arange(window) / scale)
    out = lfilter(weights / weights.sum(), [1.0], values, axis=-1)
    out[..., : window - 1] = np.nan
    return np.where(np.isnan(derive.trailing_mean(values, window)), np.nan, out)


def labels(
    values: np.ndarray,
    time: xr.DataArray,
    train_steps: int,
    time_step: str,
    *,
    lookback: int,
    noise: np.ndarray | None = None,
) -> np.ndarray:
    """Category codes (time, cells) of the blend of exponentially weighted means over the last
    `lookback` steps of the normal score of `values` (time, cells), as the ETL computes that feature,
    with the training block the first `train_steps` steps; `noise` (time, cells, unit variance) is
    added in LABEL_NOISE blend standard deviations."""
    calendar = timeaxis.calendar_of(time.to_index())
    period = timeaxis.season_period(calendar, time_step)
    season = timeaxis.season_index(time, time_step)
    train = slice(0, train_steps)
    x = values.T.astype(np.float64)
    p = seasonal_percentiles(
        x[:, train], season[train], x, season,
        window=LABEL_SEASON_WINDOW[time_step], period=period, a=TransformSpec().a,
    )  # fmt: skip
    score = normal_scores(p) / CLIP  # the stored feature
    scales = zip(LABEL_WEIGHTS, label_scales(lookback), strict=True)
    blend = sum(w * trailing_ewm(score, n, lookback) for w, n in scales)
    if noise is not None:
        blend = blend + LABEL_NOISE * np.nanstd(blend[:, train], axis=1, keepdims=True) * noise.T
    # One climatology for the region (every cell's training steps): a cell's few independent half-years
    # would make noisy thresholds of its own.
    regional = percentiles_against(blend[:, train].reshape(1, -1), blend.reshape(1, -1), TransformSpec().a)
    return percentile_to_code(regional.reshape(blend.shape)).T


def generate(
    variables: list[str],
    size: SyntheticSize = SIZES["small"],
    *,
    seed: int = 0,
    calendar: str = "standard",
    train_steps: int | None = None,
    lookback: int | None = None,
) -> tuple[xr.Dataset, xr.Dataset]:
    """Model output (the given variables) and reference labels on the same grid.

    The first variable and any whose name mentions "soil" behave like soil
    moisture; names mentioning "snow" or "swe" are zero-inflated snow water
    equivalent; others are positive, right-skewed fluxes. Monthly sizes hold the
    monthly means of the daily series. The labels' climatology is fitted on the
    first `train_steps` steps (pass the ETL's training block, see `training_steps`;
    default: 70 % of the record), and their blend's windows are fractions of `lookback` (pass
    etl.time_lookback; default DEFAULT_LOOKBACK).
    """
    rng = np.random.default_rng(seed)
    time = _time_axis(size.years, calendar)
    n_time, n_cells = time.size, size.cells
    lat = np.round(np.linspace(49.5, 45.5, size.ny), 4)  # north to south, as many products
    lon = np.round(np.linspace(-123.0, -116.0, size.nx), 4)
    doy = np.asarray(time.dt.dayofyear)[:, None].astype(np.float64)
    days_per_year = 360.0 if calendar == "360_day" else 365.25
    season = np.cos(2 * np.pi * (doy - 30) / days_per_year)  # wet winters, dry late summers

    anomaly = _ar1(rng, n_time, n_cells, phi=SOIL_MEMORY)  # soil-moisture memory
    elevation = rng.uniform(0.0, 1.0, n_cells)
    elevation[0] = 0.0  # one lowland cell: snow-free, an all-zero snow series

    fields: dict[str, np.ndarray] = {}
    soil_like: list[str] = []
    for i, name in enumerate(variables):
        lowered = name.lower()
        if "snow" in lowered or "swe" in lowered:
            accumulation = np.cos(2 * np.pi * (doy - 45) / days_per_year) - 0.2
            latent = 250 * elevation * accumulation + 40 * (
                0.6 * anomaly + 0.4 * rng.standard_normal((n_time, n_cells))
            )
            fields[name] = np.clip(latent, 0.0, None) * (elevation > 0.15)  # mm, zero in summer
        elif i == 0 or "soil" in lowered:
            soil_like.append(name)
            latent = 0.9 * season + 1.2 * anomaly + 0.15 * rng.standard_normal((n_time, n_cells))
            fields[name] = 0.05 + 0.40 / (1 + np.exp(-latent)) ** 2  # m3/m3, right-skewed
        else:
            own = _ar1(rng, n_time, n_cells, phi=0.9)
            fields[name] = rng.gamma(2.0, 1.0, (n_time, n_cells)) * np.exp(
                0.5 * season + 0.5 * own + 0.3 * anomaly
            )

    if size.time_step == "monthly":
        daily = time
        for name in fields:
            fields[name], time = monthly_means(fields[name], daily)
        n_time = time.size
    # Labels: the drought category of a blend of the recent and long-term soil-moisture feature, from
    # the values as written (float32), as the ETL will compute the feature.
    soil = fields[(soil_like or variables)[0]].astype(np.float32)
    noise = _ar1(rng, n_time, n_cells, phi=SOIL_MEMORY)
    codes = labels(
        soil, time, train_steps or int(0.7 * n_time), size.time_step,
        lookback=lookback or DEFAULT_LOOKBACK[size.time_step], noise=noise,
    )  # fmt: skip

    # Land mask: a corner block of all-NaN cells, and one land cell without labels.
    masked = np.zeros((size.ny, size.nx), dtype=bool)
    masked[: max(1, size.ny // 3), : max(1, size.nx // 4)] = True
    masked = masked.ravel()
    unlabelled = n_cells - 1
    for name in fields:
        fields[name][:, masked] = np.nan
    codes[:, masked] = MISSING
    codes[:, unlabelled] = MISSING

    def grid(values: np.ndarray) -> np.ndarray:
        return values.reshape(n_time, size.ny, size.nx)

    coords = {"time": time, "lat": ("lat", lat), "lon": ("lon", lon)}
    units = {"soil": "m3 m-3", "snow": "mm", "swe": "mm"}
    model = xr.Dataset(
        {
            name: (
                ("time", "lat", "lon"),
                grid(values).astype(np.float32),
                {"units": next((u for k, u in units.items() if k in name.lower()), "1"), "long_name": name},
            )
            for name, values in fields.items()
        },
        coords=coords,
        attrs={"title": "Synthetic model output", "source": f"{__name__} seed={seed}"},
    )
    reference = xr.Dataset(
        {
            "drought_category": (
                ("time", "lat", "lon"),
                grid(codes).astype(np.int8),
                {
                    "long_name": "drought category",
                    "flag_values": list(range(len(CATEGORIES))),
                    "flag_meanings": " ".join(CATEGORIES),
                },
            )
        },
        coords=coords,
        attrs={"title": "Synthetic reference drought categories", "source": f"{__name__} seed={seed}"},
    )
    for ds in (model, reference):
        ds["lat"].attrs.update(units="degrees_north", standard_name="latitude")
        ds["lon"].attrs.update(units="degrees_east", standard_name="longitude")
    return model, reference


def _write_netcdf(ds: xr.Dataset, path: Path, fill: dict[str, object]) -> None:
    """Write NetCDF (compressed, explicit fill values) atomically."""
    encoding = {
        name: {"zlib": True, "complevel": 1, "_FillValue": fill.get(name, np.float32(np.nan))}
        for name in ds.data_vars
    }
    encoding["time"] = {"units": "days since 2000-01-01", "dtype": "int32"}
    atomic_write(path, lambda tmp: ds.to_netcdf(tmp, engine="netcdf4", encoding=encoding))


def write_synthetic(
    out_dir: Path,
    variables: list[str],
    size: SyntheticSize = SIZES["small"],
    *,
    seed: int = 0,
    calendar: str = "standard",
    train_steps: int | None = None,
    lookback: int | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write model output and reference NetCDF files; returns their paths (see `generate`)."""
    out_dir = Path(out_dir)
    paths = [out_dir / MODEL_FILE, out_dir / REFERENCE_FILE]
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]} already exists; pass --overwrite to replace the synthetic inputs"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    model, reference = generate(
        variables, size, seed=seed, calendar=calendar, train_steps=train_steps, lookback=lookback
    )
    _write_netcdf(model, paths[0], {})
    _write_netcdf(reference, paths[1], {"drought_category": np.int8(MISSING)})
    return paths


def describe(size: SyntheticSize, variables: list[str], calendar: str = "standard") -> str:
    """One line about what `write_synthetic` produces."""
    return (
        f"{size.ny}x{size.nx} grid ({size.cells} cells), "
        f"{timeaxis.steps(n_steps(size, calendar), size.time_step)} ({calendar}), "
        f"variables {', '.join(variables)}; labels: {len(CATEGORIES)} categories"
    )


def n_steps(size: SyntheticSize, calendar: str) -> int:
    """Time steps (days or months) of a synthetic record."""
    if size.time_step == "monthly":
        return size.years * timeaxis.MONTHS_PER_YEAR
    return _time_axis(size.years, calendar).size


def training_steps(
    size: SyntheticSize, calendar: str, *, lookback: int, gap: int, fractions: list[float]
) -> int:
    """Steps in the ETL's training block for a synthetic record (what the labels are ranked on)."""
    blocks = split_blocks(n_steps(size, calendar), lookback=lookback, gap=gap, fractions=fractions)
    return blocks["train"].stop
