"""Open gridded inputs (NetCDF files or zarr folders) lazily, check and combine them.

What each file goes through, in order (each refusal is an `EtlInputError` that
names the file(s), the variable, the problem and what to do):

1. the required variables exist; dims are renamed by the aliases (latitude ->
   lat ...); a curvilinear grid (2-D lat/lon) is refused (grid.py);
2. extra dimensions (plev, depth, member ...) are reduced to one value by the
   selection (select.py); what is left must be (time, lat, lon) (a one-hot
   reference also has one dimension of length `onehot`);
3. time is decoded (standard or cftime calendars), its stamps are normalised to
   their day or month (timeaxis.py; 12:00 stamps become dates, logged), and it
   must be increasing, unique and one step apart;
4. the files of a variable must not overlap in time; their units are collected
   for units.py to compare.

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

import numpy as np
import pandas as pd
import xarray as xr

from . import grid, select, timeaxis, units
from .errors import EtlInputError

log = logging.getLogger(__name__)
DIMS = ("time", "lat", "lon")


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


@dataclass
class Opened:
    """One input (model output or reference), combined from its files."""

    ds: xr.Dataset
    units: dict[str, list[tuple[Path, str | None]]]  # variable -> (file, its units attribute)
    selected: set[str]  # the data.select dimensions some variable had


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
             onehot: int) -> tuple[xr.Dataset, set[str]]:  # fmt: skip
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
                   onehot: int = 0) -> Opened:  # fmt: skip
    """Open, check and combine the files of one input (model output or reference); `onehot`
    is the number of classes of a one-hot reference (0: not one-hot)."""
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
    return Opened(ds=ds[variables], units=found_units, selected=used)
