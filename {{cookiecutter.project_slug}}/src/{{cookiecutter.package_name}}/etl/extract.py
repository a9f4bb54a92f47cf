"""Open, validate and align the raw inputs; read them block by block of cells.

Model output and reference labels are found in `data.raw_dir` by the glob
patterns `data.model_files` / `data.reference_files`; each match may be a
NetCDF file or a zarr store (a folder), and several matches are combined by
their coordinates (files split by time, by variable, or both). Everything is
opened lazily with dask, so nothing is read until a block of cells is asked for.

Checks, each failing with an `EtlInputError` that names the file(s), the
variable and the problem: the patterns match something; each file opens; the
required variables exist; their dimensions are time, lat, lon (after renaming
`data.dim_aliases`, e.g. latitude -> lat; a one-hot reference also has one
dimension of length 11); time is increasing, without duplicates, and daily
(standard or cftime calendars, e.g. noleap or 360_day, the same in both
inputs); files do not overlap in time; model and reference grids agree within
`data.grid_tolerance` (the reference then takes the model's coordinates); the
overlap period is long enough for the lookback, the gaps and the three splits
(and, for the day-of-year transforms, a training block of at least a year).

Masking happens per block (`cell_status`): a cell without any reference label
in the overlap, or whose inputs are all NaN for some variable, is left out of
every store; the pipeline counts both kinds and logs them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import xarray as xr

from ..config import Config
from ..store_format import SplitBlock, split_blocks
from .categories import MISSING, N_CLASSES, reference_to_codes
from .errors import EtlInputError
from .quantiles import PERCENTILE_TRANSFORMS, calendar_period

DIMS = ("time", "lat", "lon")


@dataclass
class Inputs:
    """Validated, aligned, lazily opened inputs over their common period."""

    model: xr.Dataset  # the feature variables, (time, lat, lon), in config order
    reference: xr.DataArray  # labels, (time, lat, lon) or (time, lat, lon, category) for one-hot
    features: list[str]
    reference_kind: str
    model_files: list[Path]
    reference_files: list[Path]
    calendar: str
    blocks: dict[str, SplitBlock] = field(default_factory=dict)

    @property
    def time(self) -> xr.DataArray:
        return self.model["time"]

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.model.sizes["time"], self.model.sizes["lat"], self.model.sizes["lon"]

    @property
    def files(self) -> list[Path]:
        return [*self.model_files, *self.reference_files]

    def read_block(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        """Values (cells, T, features) float32 and label codes (cells, T) int8 of a grid block.

        Cells are in row-major order of the block; reading goes through dask, one
        task graph for all variables.
        """
        n_time = self.model.sizes["time"]
        model = self.model.isel(lat=rows, lon=cols)
        reference = self.reference.isel(lat=rows, lon=cols)
        *arrays, labels = dask.compute(*[model[v].data for v in self.features], reference.data)
        n_cells = model.sizes["lat"] * model.sizes["lon"]
        values = np.stack([np.asarray(a, dtype=np.float32).reshape(n_time, n_cells) for a in arrays], -1)
        where = f"{_names(self.reference_files)}: variable {self.reference.name!r}"
        codes = reference_to_codes(np.asarray(labels), self.reference_kind, where, axis=-1)
        return values.transpose(1, 0, 2), codes.reshape(n_time, n_cells).T


def cell_status(values: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(usable, without_labels, all_nan_inputs) per cell of a block (cells, T, features)."""
    without_labels = (codes == MISSING).all(axis=1)
    all_nan = np.isnan(values).all(axis=1).any(axis=1)
    return ~without_labels & ~all_nan, without_labels, all_nan


def cell_blocks(ny: int, nx: int, max_cells: int) -> Iterator[tuple[slice, slice]]:
    """Grid blocks in row-major cell order: whole rows when a row fits, else pieces of one row."""
    max_cells = max(1, max_cells)
    if nx <= max_cells:
        rows = max_cells // nx
        for r in range(0, ny, rows):
            yield slice(r, min(r + rows, ny)), slice(0, nx)
    else:
        for r in range(ny):
            for c in range(0, nx, max_cells):
                yield slice(r, r + 1), slice(c, min(c + max_cells, nx))


def _names(paths: Sequence[Path]) -> str:
    shown = ", ".join(p.name for p in paths[:3])
    return shown + (f" (+{len(paths) - 3} more)" if len(paths) > 3 else "")


def _date(value: object) -> str:
    return str(value)[:10]


def find_inputs(raw_dir: Path, patterns: Sequence[str], key: str) -> list[Path]:
    """Files or zarr folders in raw_dir matching the glob patterns (sorted, unique)."""
    if not raw_dir.is_dir():
        raise EtlInputError(f"{raw_dir}: the raw-data folder (data.raw_dir) does not exist")
    found = sorted({p for pattern in patterns for p in raw_dir.glob(pattern)})
    found = [p for p in found if not p.name.startswith(".")]
    if not found:
        raise EtlInputError(
            f"{raw_dir}: no file matches {key} = {list(patterns)!r}; put the inputs there or fix the patterns"
        )
    return found


def _open(path: Path) -> xr.Dataset:
    try:
        if path.is_dir():
            return xr.open_zarr(path, chunks={})
        return xr.open_dataset(path, chunks={})
    except Exception as exc:  # any reader failure becomes a message about this file
        raise EtlInputError(f"{path}: cannot open as NetCDF or zarr ({type(exc).__name__}: {exc})") from None


def _rename(ds: xr.Dataset, aliases: dict[str, str]) -> xr.Dataset:
    names = {
        old: new
        for old, new in aliases.items()
        if (old in ds.dims or old in ds.variables) and new not in ds.dims and new not in ds.variables
    }
    return ds.rename(names)


def _check_time(index: pd.Index, where: str) -> None:
    """Increasing, unique, daily."""
    if not index.is_unique:
        duplicate = index[index.duplicated()][0]
        raise EtlInputError(f"{where}: time has duplicate values (e.g. {_date(duplicate)}); remove them")
    if not index.is_monotonic_increasing:
        position = int(np.argmax(np.asarray(index[1:] < index[:-1])))
        raise EtlInputError(
            f"{where}: time is not increasing ({_date(index[position + 1])} follows "
            f"{_date(index[position])}); sort the file by time"
        )
    if len(index) > 1:
        steps = index[1:] - index[:-1]
        day = pd.Timedelta(days=1)
        if not (steps == day).all():
            position = int(np.argmax(np.asarray(steps != day)))
            raise EtlInputError(
                f"{where}: time steps must be one day; {_date(index[position])} is followed by "
                f"{_date(index[position + 1])} (missing days must be present as NaN)"
            )


def _prepare(ds: xr.Dataset, path: Path, variables: list[str], onehot: bool) -> xr.Dataset:
    """Check variables, dims and coordinates of one opened (and renamed) file."""
    present = [v for v in variables if v in ds.data_vars]
    if not present:
        raise EtlInputError(
            f"{path}: none of the variables {variables} found (it has: {', '.join(map(str, ds.data_vars))}); "
            "check data.variables / data.reference_variable"
        )
    for v in present:
        dims = ds[v].dims
        extra = [d for d in dims if d not in DIMS]
        ok = set(DIMS) <= set(dims) and (
            not extra or (onehot and len(extra) == 1 and ds.sizes[extra[0]] == N_CLASSES)
        )
        if not ok:
            expected = "(time, lat, lon" + (f", one dim of length {N_CLASSES}" if onehot else "") + ")"
            raise EtlInputError(
                f"{path}: variable {v!r} has dims {dims}; expected {expected}. Map other names "
                "with data.dim_aliases in study.toml, e.g. dim_aliases = "
                + '{ t = "time", latitude = "lat" }'
            )
    for dim in DIMS:
        if dim not in ds.coords:
            raise EtlInputError(f"{path}: dimension {dim!r} has no coordinate values")
    if not isinstance(ds.indexes["time"], pd.DatetimeIndex | xr.CFTimeIndex):
        raise EtlInputError(f"{path}: time could not be decoded as dates (units/calendar attributes?)")
    _check_time(ds.indexes["time"], str(path))
    return ds[present].transpose(*DIMS, ...)


def open_inputs_of(paths: list[Path], variables: list[str], aliases: dict[str, str], *,
                   onehot: bool = False) -> xr.Dataset:  # fmt: skip
    """Open, check and combine the files of one input (model output or reference)."""
    parts, available = [], set()
    for path in paths:
        ds = _rename(_open(path), aliases)
        available |= {str(name) for name in ds.data_vars}
        parts.append(_prepare(ds, path, variables, onehot))
    for v in variables:
        holders = [(p, ds) for p, ds in zip(paths, parts, strict=True) if v in ds]
        if not holders:
            raise EtlInputError(
                f"{_names(paths)}: variable {v!r} not found in any file (found: "
                f"{', '.join(sorted(available))}); check data.variables / data.reference_variable "
                "in study.toml"
            )
        holders.sort(key=lambda item: item[1].indexes["time"][0])
        for (p1, d1), (p2, d2) in itertools.pairwise(holders):
            if d2.indexes["time"][0] <= d1.indexes["time"][-1]:
                raise EtlInputError(
                    f"{p1.name} and {p2.name} both hold {v!r} on {_date(d2.indexes['time'][0])}; "
                    "files must not overlap in time"
                )
    if len(parts) == 1:
        ds = parts[0]
    else:
        try:
            ds = xr.combine_by_coords(
                parts, data_vars="minimal", coords="minimal", compat="override", join="exact",
                combine_attrs="drop_conflicts",
            )  # fmt: skip
        except ValueError as exc:
            raise EtlInputError(f"{_names(paths)}: cannot combine the files ({exc})") from None
        _check_time(ds.indexes["time"], _names(paths))
    return ds[variables]


def _match_grid(model: xr.Dataset, reference: xr.DataArray, tolerance: float, where: str) -> xr.DataArray:
    """The reference on the model's coordinates, after checking the grids agree."""
    for dim in ("lat", "lon"):
        m = model[dim].values.astype(np.float64)
        r = reference[dim].values.astype(np.float64)
        if m.size != r.size:
            raise EtlInputError(
                f"{where}: {dim} has {m.size} values in the model output, {r.size} in the reference"
            )
        if m.size > 1 and r.size > 1 and (m[-1] - m[0]) * (r[-1] - r[0]) < 0:
            reference = reference.isel({dim: slice(None, None, -1)})  # same grid, opposite order
            r = r[::-1]
        diff = float(np.max(np.abs(m - r))) if m.size else 0.0
        if not diff <= tolerance:
            raise EtlInputError(
                f"{where}: the {dim} coordinates of model output and reference differ by up to {diff:g} "
                f"(data.grid_tolerance = {tolerance:g}); put both on the same grid or raise the tolerance"
            )
    return reference.assign_coords(lat=model["lat"], lon=model["lon"])


def _calendar(ds: xr.Dataset) -> str:
    index = ds.indexes["time"]
    return index.calendar if isinstance(index, xr.CFTimeIndex) else "proleptic_gregorian"


def open_inputs(cfg: Config) -> Inputs:
    """Find, open, validate and align model output and reference for the configured study."""
    data, etl = cfg.data, cfg.etl
    raw = cfg.path(data.raw_dir)
    model_files = find_inputs(raw, data.model_files, "data.model_files")
    reference_files = find_inputs(raw, data.reference_files, "data.reference_files")
    onehot = data.reference_kind == "onehot"
    model = open_inputs_of(model_files, list(data.variables), data.dim_aliases)
    reference_ds = open_inputs_of(reference_files, [data.reference_variable], data.dim_aliases, onehot=onehot)
    where = f"{_names(model_files)} and {_names(reference_files)}"

    calendars = _calendar(model), _calendar(reference_ds)
    standard = {"standard", "gregorian", "proleptic_gregorian"}
    if calendars[0] != calendars[1] and not set(calendars) <= standard:
        raise EtlInputError(
            f"{where}: calendars differ ({calendars[0]} in the model output, {calendars[1]} in the "
            "reference); convert one with Dataset.convert_calendar"
        )
    reference = _match_grid(model, reference_ds[data.reference_variable], data.grid_tolerance, where)

    common = model.indexes["time"].intersection(reference.indexes["time"])
    if len(common) == 0:
        raise EtlInputError(f"{where}: the model output and the reference have no day in common")
    model = model.isel(time=model.indexes["time"].get_indexer(common))
    reference = reference.isel(time=reference.indexes["time"].get_indexer(common))
    _check_time(common, f"{where} (common period)")
    if onehot:
        extra = next(d for d in reference.dims if d not in DIMS)
        reference = reference.transpose(*DIMS, extra)

    period = f"{len(common)} days ({_date(common[0])} to {_date(common[-1])})"
    try:
        blocks = split_blocks(
            len(common), lookback=etl.time_lookback, gap=etl.split_gap_days, fractions=etl.split_fractions
        )
    except ValueError as exc:
        need = math.ceil(etl.time_lookback / min(etl.split_fractions)) + 2 * etl.split_gap_days
        raise EtlInputError(
            f"{where}: the common period is {period}; {exc}. It needs roughly {need} days or more "
            "(or a shorter etl.time_lookback / etl.split_gap_days)"
        ) from None
    calendar = _calendar(model)
    year = calendar_period(calendar)
    if etl.transform in PERCENTILE_TRANSFORMS and blocks["train"].days < year:
        raise EtlInputError(
            f"{where}: the common period is {period}, so the training block covers "
            f"{blocks['train'].days} days, less than the {year}-day year the day-of-year climatology "
            "needs; use a longer period or a larger first etl.split_fractions"
        )
    return Inputs(
        model=model,
        reference=reference,
        features=list(data.variables),
        reference_kind=data.reference_kind,
        model_files=model_files,
        reference_files=reference_files,
        calendar=calendar,
        blocks=blocks,
    )
