"""Open, validate and align the raw inputs; read them block by block of cells.

Model output and reference labels are found in `data.raw_dir` by the glob
patterns `data.model_files` / `data.reference_files`; each match may be a
NetCDF file or a zarr store (a folder), and several matches are combined by
their coordinates (files split by time, by variable, or both). Everything is
opened lazily with dask, so nothing is read until a block of cells is asked for.
With `data.reference_kind = "derived"` there are no reference files: the labels
are derived from the model-output variable `data.derive_from` (etl/derive.py).

What each file goes through, in order (each refusal is an `EtlInputError` that
names the file(s), the variable, the problem and what to do):

1. the required variables exist; dims are renamed by `data.dim_aliases`
   (latitude -> lat ...); a curvilinear grid (2-D lat/lon) is refused (grid.py);
2. extra dimensions (plev, depth, member ...) are reduced to one value by
   `data.select` (select.py); what is left must be (time, lat, lon) (a one-hot
   reference also has one dimension of length 11);
3. time is decoded (standard or cftime calendars), its stamps are normalised to
   their day or month (`etl.time_step`, timeaxis.py; 12:00 stamps become dates,
   logged), and it must be increasing, unique and one step apart;
4. the files of a variable must not overlap in time and must carry the same
   units, the configured ones where `data.units` names them (units.py).

Then the inputs are combined; missing steps are filled with NaN if
`data.fill_gaps`; the calendars of model and reference must agree; the reference
is matched onto the model grid within `data.grid_tolerance`, across longitude
conventions (grid.py); and the common period must be long enough for the
lookback, the gaps and the three splits (and, for the seasonal transforms, a
training block of at least a year).

Masking happens per block (`cell_status`): a cell without any reference label
in the overlap, or whose inputs are all NaN for some variable, is left out of
every store; the pipeline counts both kinds and logs them.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import xarray as xr

from ..config import Config, DataSection
from ..store_format import SplitBlock, split_blocks
from . import grid, select, timeaxis, units
from .categories import MISSING, N_CLASSES, reference_to_codes
from .errors import EtlInputError
from .quantiles import PERCENTILE_TRANSFORMS

log = logging.getLogger(__name__)
DIMS = ("time", "lat", "lon")
DERIVED = "derived"


@dataclass
class Inputs:
    """Validated, aligned, lazily opened inputs over their common period."""

    model: xr.Dataset  # the feature variables, (time, lat, lon), in config order
    # labels (time, lat, lon) or (time, lat, lon, category) for one-hot; for derived labels
    # the variable they are derived from (continuous values, ranked by the pipeline)
    reference: xr.DataArray
    features: list[str]
    reference_kind: str
    model_files: list[Path]
    reference_files: list[Path]
    calendar: str
    time_step: str = "daily"
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

    @property
    def derived(self) -> bool:
        return self.reference_kind == DERIVED

    def read_block(self, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        """Values (cells, T, features) float32 and the reference (cells, T) of a grid block.

        The reference is label codes (int8) for label files, and the raw values (float32)
        of the variable labels are derived from otherwise. Cells are in row-major order of
        the block; reading goes through dask, one task graph for all variables.
        """
        n_time = self.model.sizes["time"]
        model = self.model.isel(lat=rows, lon=cols)
        reference = self.reference.isel(lat=rows, lon=cols)
        *arrays, labels = dask.compute(*[model[v].data for v in self.features], reference.data)
        n_cells = model.sizes["lat"] * model.sizes["lon"]
        values = np.stack([np.asarray(a, dtype=np.float32).reshape(n_time, n_cells) for a in arrays], -1)
        if self.derived:
            return values.transpose(1, 0, 2), np.asarray(labels, dtype=np.float32).reshape(n_time, n_cells).T
        where = f"{_names(self.reference_files)}: variable {self.reference.name!r}"
        codes = reference_to_codes(np.asarray(labels), self.reference_kind, where, axis=-1)
        return values.transpose(1, 0, 2), codes.reshape(n_time, n_cells).T

    def read_cells(self, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`read_block` of some cells given by their sorted positions in the row-major grid: reads
        the grid cells from the first to the last (at most three rectangles) and keeps these."""
        nx = self.model.sizes["lon"]
        first, stop = int(cells[0]), int(cells[-1]) + 1
        parts = [self.read_block(rows, cols) for rows, cols in flat_blocks(first, stop, nx)]
        keep = np.asarray(cells) - first
        return (
            np.concatenate([values for values, _ in parts])[keep],
            np.concatenate([reference for _, reference in parts])[keep],
        )


def flat_blocks(first: int, stop: int, nx: int) -> Iterator[tuple[slice, slice]]:
    """The grid rectangles (rows, cols) covering row-major positions first..stop-1, in order."""
    r0, c0 = divmod(first, nx)
    r1, c1 = divmod(stop, nx)
    if r0 == r1:
        yield slice(r0, r0 + 1), slice(c0, c1)
        return
    if c0:
        yield slice(r0, r0 + 1), slice(c0, nx)
        r0 += 1
    if r1 > r0:
        yield slice(r0, r1), slice(0, nx)
    if c1:
        yield slice(r1, r1 + 1), slice(0, c1)


def grid_positions(rows: slice, cols: slice, nx: int) -> np.ndarray:
    """Row-major positions (int64) of the cells of a grid block, in `read_block`'s order."""
    return (np.arange(rows.start, rows.stop)[:, None] * nx + np.arange(cols.start, cols.stop)).ravel()


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


@dataclass(frozen=True)
class Reading:
    """How every input file is read: the [data] and [etl] settings that shape it."""

    aliases: dict[str, str]
    select: Mapping[str, Any]
    select_tolerance: float
    time_step: str
    fill_gaps: bool

    @classmethod
    def of(cls, cfg: Config) -> Reading:
        data: DataSection = cfg.data
        return cls(
            aliases=data.dim_aliases,
            select=data.select,
            select_tolerance=data.select_tolerance,
            time_step=cfg.etl.time_step,
            fill_gaps=data.fill_gaps,
        )


@dataclass
class Opened:
    """One input (model output or reference), combined from its files."""

    ds: xr.Dataset
    units: dict[str, list[tuple[Path, str | None]]]  # variable -> (file, its units attribute)
    selected: set[str]  # the data.select dimensions some variable had


def _check_dims(ds: xr.Dataset, path: Path, v: str, onehot: bool) -> None:
    dims = ds[v].dims
    missing = [d for d in DIMS if d not in dims]
    extra = [d for d in dims if d not in DIMS]
    if missing:
        raise EtlInputError(
            f"{path}: variable {v!r} has dims {dims}; it needs {DIMS} (missing: {', '.join(missing)}). Map "
            "other names with data.dim_aliases in study.toml, e.g. dim_aliases = "
            + '{ t = "time", latitude = "lat" }'
        )
    if not extra or (onehot and len(extra) == 1 and ds.sizes[extra[0]] == N_CLASSES):
        return
    raise EtlInputError(
        f"{path}: variable {v!r} has dims {dims}; the ETL needs {DIMS}"
        + (f" (or one more of length {N_CLASSES} for a one-hot reference)" if onehot else "")
        + f". {select.hint(ds, extra[0])}"
    )


def _prepare(ds: xr.Dataset, path: Path, variables: list[str], reading: Reading,
             onehot: bool) -> tuple[xr.Dataset, set[str]]:  # fmt: skip
    """Check variables, dims and time of one opened (and renamed) file; select extra dims."""
    present = [v for v in variables if v in ds.data_vars]
    if not present:
        raise EtlInputError(
            f"{path}: none of the variables {variables} found (it has: {', '.join(map(str, ds.data_vars))}); "
            "check data.variables / data.reference_variable / data.derive_from"
        )
    grid.refuse_curvilinear(ds, str(path))
    ds, used = select.apply(ds, present, reading.select, reading.select_tolerance, str(path))
    for v in present:
        _check_dims(ds, path, v, onehot)
    for dim in DIMS:
        if dim not in ds.coords:
            raise EtlInputError(f"{path}: dimension {dim!r} has no coordinate values")
    index = ds.indexes["time"]
    if not isinstance(index, pd.DatetimeIndex | xr.CFTimeIndex):
        raise EtlInputError(f"{path}: time could not be decoded as dates (units/calendar attributes?)")
    index, note = timeaxis.normalise(index, reading.time_step, str(path))
    if note:
        log.info("%s: %s", path.name, note)
    timeaxis.check_steps(index, reading.time_step, str(path), fill_gaps=reading.fill_gaps)
    return ds.assign_coords(time=index).transpose(*DIMS, ...), used


def open_inputs_of(paths: list[Path], variables: list[str], reading: Reading, *,
                   onehot: bool = False) -> Opened:  # fmt: skip
    """Open, check and combine the files of one input (model output or reference)."""
    parts, available, used = [], set(), set()
    found_units: dict[str, list[tuple[Path, str | None]]] = {v: [] for v in variables}
    for path in paths:
        ds = _rename(_open(path), reading.aliases)
        available |= {str(name) for name in ds.data_vars}
        part, picked = _prepare(ds, path, variables, reading, onehot)
        parts.append(part)
        used |= picked
        for v in part.data_vars:
            found_units[str(v)].append((path, part[v].attrs.get(units.UNITS_ATTR)))
    for v in variables:
        holders = [(p, ds) for p, ds in zip(paths, parts, strict=True) if v in ds]
        if not holders:
            raise EtlInputError(
                f"{_names(paths)}: variable {v!r} not found in any file (found: "
                f"{', '.join(sorted(available))}); check data.variables / data.reference_variable / "
                "data.derive_from in study.toml"
            )
        holders.sort(key=lambda item: item[1].indexes["time"][0])
        for (p1, d1), (p2, d2) in itertools.pairwise(holders):
            if d2.indexes["time"][0] <= d1.indexes["time"][-1]:
                raise EtlInputError(
                    f"{p1.name} and {p2.name} both hold {v!r} on {timeaxis.stamp(d2.indexes['time'][0])}; "
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
    index = ds.indexes["time"]
    timeaxis.check_steps(index, reading.time_step, _names(paths), fill_gaps=reading.fill_gaps)
    gaps = timeaxis.missing_steps(index, reading.time_step)
    if gaps:
        log.info(
            "%s: filled %s missing between %s and %s with NaN (data.fill_gaps)",
            _names(paths),
            timeaxis.steps(gaps, reading.time_step),
            timeaxis.stamp(index[0]),
            timeaxis.stamp(index[-1]),
        )
        ds = ds.reindex(time=timeaxis.full_axis(index, reading.time_step))
    return Opened(ds=ds[variables], units=found_units, selected=used)


def open_inputs(cfg: Config) -> Inputs:
    """Find, open, validate and align model output and reference for the configured study."""
    data, etl = cfg.data, cfg.etl
    reading = Reading.of(cfg)
    raw = cfg.path(data.raw_dir)
    derived = data.reference_kind == DERIVED
    model_files = find_inputs(raw, data.model_files, "data.model_files")
    reference_files = [] if derived else find_inputs(raw, data.reference_files, "data.reference_files")
    onehot = data.reference_kind == "onehot"
    wanted = list(data.variables)
    if derived and data.derive_from not in wanted:
        wanted.append(data.derive_from)
    opened = open_inputs_of(model_files, wanted, reading)
    units.check(opened.units, data.units, _names(model_files))
    model, selected = opened.ds, set(opened.selected)
    if derived:
        where = _names(model_files)
        reference = model[data.derive_from]
        model = model[list(data.variables)]
        common = model.indexes["time"]
    else:
        where = f"{_names(model_files)} and {_names(reference_files)}"
        ref = open_inputs_of(reference_files, [data.reference_variable], reading, onehot=onehot)
        selected |= ref.selected
        calendars = timeaxis.calendar_of(model.indexes["time"]), timeaxis.calendar_of(ref.ds.indexes["time"])
        standard = {"standard", "gregorian", "proleptic_gregorian"}
        if calendars[0] != calendars[1] and not set(calendars) <= standard:
            raise EtlInputError(
                f"{where}: calendars differ ({calendars[0]} in the model output, {calendars[1]} in the "
                "reference); convert one with Dataset.convert_calendar"
            )
        reference = grid.match_grid(model, ref.ds[data.reference_variable], data.grid_tolerance, where)
        common = model.indexes["time"].intersection(reference.indexes["time"])
        if len(common) == 0:
            raise EtlInputError(
                f"{where}: the model output ({_span(model.indexes['time'])}) and the reference "
                f"({_span(reference.indexes['time'])}) have no time step in common"
            )
        model = model.isel(time=model.indexes["time"].get_indexer(common))
        reference = reference.isel(time=reference.indexes["time"].get_indexer(common))
        timeaxis.check_steps(common, etl.time_step, f"{where} (common period)", fill_gaps=False)
    unused = [d for d in select.global_dims(data.select) if d not in selected]
    if unused:
        raise EtlInputError(
            f"{where}: data.select names {', '.join(map(repr, unused))}, which no variable has as a "
            "dimension; fix the name (after data.dim_aliases) or remove it"
        )
    if onehot:
        extra = next(d for d in reference.dims if d not in DIMS)
        reference = reference.transpose(*DIMS, extra)

    blocks = _split(cfg, common, where)
    return Inputs(
        model=model,
        reference=reference,
        features=list(data.variables),
        reference_kind=data.reference_kind,
        model_files=model_files,
        reference_files=reference_files,
        calendar=timeaxis.calendar_of(model.indexes["time"]),
        time_step=etl.time_step,
        blocks=blocks,
    )


def _span(index: timeaxis.TimeIndex) -> str:
    return f"{timeaxis.stamp(index[0])} to {timeaxis.stamp(index[-1])}" if len(index) else "empty"


def _split(cfg: Config, common: timeaxis.TimeIndex, where: str) -> dict[str, SplitBlock]:
    """The split blocks of the common period; refused when too short for them or for a seasonal fit."""
    etl = cfg.etl
    period = f"{timeaxis.steps(len(common), etl.time_step)} ({_span(common)})"
    try:
        blocks = split_blocks(
            len(common), lookback=etl.time_lookback, gap=etl.split_gap, fractions=etl.split_fractions
        )
    except ValueError as exc:
        need = math.ceil(etl.time_lookback / min(etl.split_fractions)) + 2 * etl.split_gap
        raise EtlInputError(
            f"{where}: the common period is {period}; {exc}. It needs roughly "
            f"{timeaxis.steps(need, etl.time_step)} or more (or a shorter etl.time_lookback / etl.split_gap)"
        ) from None
    year = timeaxis.season_period(timeaxis.calendar_of(common), etl.time_step)
    seasonal = etl.transform in PERCENTILE_TRANSFORMS or cfg.data.reference_kind == DERIVED
    if seasonal and blocks["train"].steps < year:
        raise EtlInputError(
            f"{where}: the common period is {period}, so the training block covers "
            f"{timeaxis.steps(blocks['train'].steps, etl.time_step)}, less than the "
            f"{timeaxis.steps(year, etl.time_step)} year the seasonal climatology needs; use a longer "
            "period or a larger first etl.split_fractions"
        )
    return blocks
