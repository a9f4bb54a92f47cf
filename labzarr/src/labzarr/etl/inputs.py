"""Open gridded inputs (NetCDF files or zarr folders) lazily, check and combine them.

What each file goes through, in order (each refusal is an `EtlInputError` that
names the file(s), the variable, the problem and what to do):

1. the required variables exist; a curvilinear grid (a 2-D latitude or longitude,
   whatever its name) is refused; dims are renamed by the aliases (latitude ->
   lat ...); a rotated-pole or projected grid (grid_mapping, standard_name) is
   refused (grid.py);
2. extra dimensions (plev, depth, member ...) are reduced to one value by the
   selection (select.py); what is left must be (time, lat, lon) (a one-hot
   reference also has one dimension of length `onehot`);
3. lat and lon are degrees in range, unique and sorted (grid.py); time is
   decoded (standard or cftime calendars; the calendar keeps the name the file
   gives it), its stamps are normalised to their day or month (timeaxis.py; 12:00
   stamps become dates, logged), and it must be increasing, unique and one step apart;
4. the files of a variable must not overlap in time; their units are collected
   for units.py to compare.

Values are read later, block by block (`read_parts`): a file that fails to read
(damaged bytes) and an infinite value are refused there, naming the input, the
variable and, for an infinite value, its cell and dates. Only NaN means missing.

The study's own ETL (its `etl/extract.py`) says which files and variables, and
aligns model output with its labels.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import xarray as xr

from ..store_format import SplitBlock
from . import grid, select, timeaxis, units
from .errors import EtlInputError

log = logging.getLogger(__name__)
DIMS = ("time", "lat", "lon")
MIN_DATA_FRACTION = 0.5  # of a split block's steps: fewer in the files (gaps filled) warns
GAP_WARN_DAYS = 90  # a filled gap this long (a season; 3 months) in a split block warns too


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


def names(paths: Sequence[Path]) -> str:
    """The first few file names, for messages."""
    shown = ", ".join(p.name for p in paths[:3])
    return shown + (f" (+{len(paths) - 3} more)" if len(paths) > 3 else "")


def _glob(raw_dir: Path, pattern: str) -> list[Path]:
    """Matches of a pattern relative to raw_dir, or of an absolute one (from its root)."""
    path = Path(pattern).expanduser()
    if path.is_absolute():
        return list(Path(path.anchor).glob(str(path.relative_to(path.anchor))))
    return list(raw_dir.glob(pattern))


def find_inputs(raw_dir: Path, patterns: Sequence[str], key: str) -> list[Path]:
    """Files or zarr folders matching the glob patterns (sorted, unique): relative patterns are
    relative to raw_dir, absolute ones (/data/cmip6/*.nc) are taken as they are."""
    relative = [p for p in patterns if not Path(p).expanduser().is_absolute()]
    if relative and not raw_dir.is_dir():
        raise EtlInputError(f"{raw_dir}: the raw-data folder (data.raw_dir) does not exist")
    found = sorted({p for pattern in patterns for p in _glob(raw_dir, pattern)})
    found = [p for p in found if not p.name.startswith(".")]
    if not found:
        where = f"{raw_dir}: " if relative else ""
        raise EtlInputError(
            f"{where}no file matches {key} = {list(patterns)!r} (relative patterns are relative to "
            "data.raw_dir); put the inputs there or fix the patterns"
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


@dataclass
class Opened:
    """One input (model output or reference), combined from its files."""

    ds: xr.Dataset
    units: dict[str, list[tuple[Path, str | None]]]  # variable -> (file, its units attribute)
    selected: set[str]  # the data.select dimensions some variable had
    calendar: str  # as the first file names it: "standard" stays "standard"
    present: xr.DataArray  # bool (time): the step is in the files (False: a filled gap)


def _check_dims(ds: xr.Dataset, path: Path, v: str, onehot: int) -> None:
    dims = ds[v].dims
    missing = [d for d in DIMS if d not in dims]
    extra = [d for d in dims if d not in DIMS]
    if missing:
        raise EtlInputError(
            f"{path}: variable {v!r} has dims {dims}; it needs {DIMS} (missing: {', '.join(missing)}). Map "
            "other names with data.dim_aliases in study.toml, e.g. dim_aliases = "
            + '{ t = "time", latitude = "lat" }'
        )
    if not extra or (onehot and len(extra) == 1 and ds.sizes[extra[0]] == onehot):
        return
    raise EtlInputError(
        f"{path}: variable {v!r} has dims {dims}; the ETL needs {DIMS}"
        + (f" (or one more of length {onehot} for a one-hot reference)" if onehot else "")
        + f". {select.hint(ds, extra[0])}"
    )


def _prepare(ds: xr.Dataset, path: Path, variables: list[str], reading: Reading,
             onehot: int) -> tuple[xr.Dataset, set[str], str]:  # fmt: skip
    """Check variables, dims, grid and time of one opened (and renamed) file; select extra dims.
    Returns the file's data, the selected dims and the calendar it names."""
    present = [v for v in variables if v in ds.data_vars]
    if not present:
        raise EtlInputError(
            f"{path}: none of the variables {variables} found (it has: {', '.join(map(str, ds.data_vars))}); "
            "check data.variables / data.reference_variable / data.derive_from"
        )
    grid.refuse_projected(ds, present, str(path))
    ds, used = select.apply(ds, present, reading.select, reading.select_tolerance, str(path))
    for v in present:
        _check_dims(ds, path, v, onehot)
    for dim in DIMS:
        if dim not in ds.coords:
            raise EtlInputError(f"{path}: dimension {dim!r} has no coordinate values")
    grid.check_axes(ds, str(path))
    index = ds.indexes["time"]
    if not isinstance(index, pd.DatetimeIndex | xr.CFTimeIndex):
        raise EtlInputError(f"{path}: time could not be decoded as dates (units/calendar attributes?)")
    calendar = timeaxis.declared_calendar(ds["time"])
    index, note = timeaxis.normalise(index, reading.time_step, str(path))
    if note:
        log.info("%s: %s", path.name, note)
    timeaxis.check_steps(index, reading.time_step, str(path), fill_gaps=reading.fill_gaps)
    return ds.assign_coords(time=index).transpose(*DIMS, ...), used, calendar


def open_inputs_of(paths: list[Path], variables: list[str], reading: Reading, *,
                   onehot: int = 0) -> Opened:  # fmt: skip
    """Open, check and combine the files of one input (model output or reference); `onehot`
    is the number of classes of a one-hot reference (0: not one-hot)."""
    parts, available, used, calendars = [], set(), set(), []
    found_units: dict[str, list[tuple[Path, str | None]]] = {v: [] for v in variables}
    for path in paths:
        ds = _open(path)
        grid.refuse_curvilinear(ds, variables, str(path))
        ds = _rename(ds, reading.aliases)
        available |= {str(name) for name in ds.data_vars}
        part, picked, calendar = _prepare(ds, path, variables, reading, onehot)
        parts.append(part)
        calendars.append(calendar)
        used |= picked
        for v in part.data_vars:
            found_units[str(v)].append((path, part[v].attrs.get(units.UNITS_ATTR)))
    for v in variables:
        holders = [(p, ds) for p, ds in zip(paths, parts, strict=True) if v in ds]
        if not holders:
            raise EtlInputError(
                f"{names(paths)}: variable {v!r} not found in any file (found: "
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
            raise EtlInputError(f"{names(paths)}: cannot combine the files ({exc})") from None
    index = ds.indexes["time"]
    timeaxis.check_steps(index, reading.time_step, names(paths), fill_gaps=reading.fill_gaps)
    gaps = timeaxis.missing_steps(index, reading.time_step)
    if gaps:
        log.info(
            "%s: filled %s missing between %s and %s with NaN (data.fill_gaps)",
            names(paths),
            timeaxis.steps(gaps, reading.time_step),
            timeaxis.stamp(index[0]),
            timeaxis.stamp(index[-1]),
        )
        ds = ds.reindex(time=timeaxis.full_axis(index, reading.time_step))
    present = xr.DataArray(ds.indexes["time"].isin(index), coords={"time": ds["time"]}, dims="time")
    return Opened(ds[variables], found_units, used, calendar=calendars[0], present=present)


def warn_sparse_blocks(blocks: Mapping[str, SplitBlock], present: np.ndarray, time_step: str,
                       where: str) -> dict[str, int]:  # fmt: skip
    """The steps of each split block that are in the inputs (`present`, bool over the common
    period: False for gaps data.fill_gaps filled with NaN), logged when gaps were filled, and a
    warning for a block with data on fewer than MIN_DATA_FRACTION of its steps or with a gap of a
    season or more (GAP_WARN_DAYS: its metrics would miss that season of a year)."""
    present = np.asarray(present, dtype=bool)
    season = GAP_WARN_DAYS // 30 if time_step == "monthly" else GAP_WARN_DAYS
    real = {name: int(present[b.start : b.stop].sum()) for name, b in blocks.items()}
    for name, block in blocks.items():
        if real[name] == block.steps:
            continue
        longest_gap = _longest_run(~present[block.start : block.stop])
        sparse = real[name] < MIN_DATA_FRACTION * block.steps or longest_gap >= season
        log.log(
            logging.WARNING if sparse else logging.INFO,
            "%s: split %s has data on %d of its %s (the rest are gaps filled with NaN)%s",
            where,
            name,
            real[name],
            timeaxis.steps(block.steps, time_step),
            "; its metrics rest on few steps: add the missing data or change etl.split_fractions"
            if sparse
            else "",
        )
    return real


def _longest_run(flags: np.ndarray) -> int:
    """Length of the longest run of True in a 1-D bool array."""
    edges = np.diff(np.concatenate(([0], flags.astype(np.int8), [0])))
    return int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max(initial=0))


def read_parts(parts: Sequence[Part], time: timeaxis.TimeIndex, lat: np.ndarray,
               lon: np.ndarray) -> list[np.ndarray]:  # fmt: skip
    """The values of lazily opened parts of one grid block (time, lat, lon[, extra]), computed in
    one dask call. A reader failure (damaged or truncated file) becomes an EtlInputError naming
    the input and variable that fail; an infinite value one naming its variable, cell and dates."""
    try:
        values = [np.asarray(a) for a in dask.compute(*[part.data for part in parts])]
    except (EtlInputError, MemoryError, FileNotFoundError, PermissionError):
        raise  # a file gone or unreadable since it was opened is no damage: its own error says which
    except Exception:  # any reader failure: find the input it comes from (this path only)
        for part in parts:
            try:
                dask.compute(part.data)
            except Exception as exc:
                raise EtlInputError(
                    f"{names(part.paths)}: cannot read variable {part.variable!r} ({type(exc).__name__}: "
                    f"{exc}); a file may be damaged or truncated (an interrupted download or copy?): check "
                    f"it, e.g. `ncdump -v {part.variable} FILE > /dev/null`, and copy it again"
                ) from None
        raise
    for part, array in zip(parts, values, strict=True):
        refuse_infinite(array, part, time, lat, lon)
    return values


@dataclass(frozen=True)
class Part:
    """One variable of one input, lazily opened: what `read_parts` reads and names in messages."""

    variable: str
    data: Any  # a dask array (time, lat, lon[, extra]) of a grid block
    paths: Sequence[Path]  # the input's files


def _dates(time: timeaxis.TimeIndex, positions: np.ndarray) -> str:
    shown = [timeaxis.stamp(time[i]) for i in positions]
    if len(positions) > 1 and positions[-1] - positions[0] == len(positions) - 1:
        return f"{shown[0]} to {shown[-1]}"
    return ", ".join(shown[:3]) + (f" (+{len(shown) - 3} more)" if len(shown) > 3 else "")


def refuse_infinite(values: np.ndarray, part: Part, time: timeaxis.TimeIndex, lat: np.ndarray,
                    lon: np.ndarray) -> None:  # fmt: skip
    """Refuse +-inf in a block (time, lat, lon[, extra]): it is no measurement, and a transform
    would turn it into an ordinary-looking value. Names the variable, the first cell and its dates."""
    if values.dtype.kind != "f":
        return
    bad = np.isinf(values)
    if not bad.any():
        return
    bad = bad.reshape(*bad.shape[:3], -1).any(axis=-1)
    cells = bad.any(axis=0)
    row, col = np.argwhere(cells)[0]
    days = np.flatnonzero(bad[:, row, col])
    others = int(cells.sum()) - 1
    raise EtlInputError(
        f"{names(part.paths)}: variable {part.variable!r} is infinite at lat {float(lat[row]):g}, lon "
        f"{float(lon[col]):g} on {len(days)} time step(s) ({_dates(time, days)})"
        + (f", and in {others} more cell(s) of the same block" if others else "")
        + "; only NaN means missing: set them to NaN in the file "
        "(e.g. ds[v] = ds[v].where(np.isfinite(ds[v]))) or fix what wrote them"
    )
