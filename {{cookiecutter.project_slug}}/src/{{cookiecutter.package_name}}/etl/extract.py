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

1. the required variables exist; a curvilinear grid (2-D latitude/longitude,
   whatever its name) is refused; dims are renamed by `data.dim_aliases`
   (latitude -> lat ...); rotated-pole and projected grids are refused (grid.py);
2. extra dimensions (plev, depth, member ...) are reduced to one value by
   `data.select` (select.py); what is left must be (time, lat, lon) (a one-hot
   reference also has one dimension of length 11);
3. lat and lon must be degrees in range, unique and sorted; time is decoded
   (standard or cftime calendars, named as the file names them), its stamps are
   normalised to their day or month (`etl.time_step`, timeaxis.py; 12:00 stamps
   become dates, logged), and it must be increasing, unique and one step apart;
4. the files of a variable must not overlap in time and must carry the same
   units, the configured ones where `data.units` names them (units.py).

Then the inputs are combined; missing steps are filled with NaN if
`data.fill_gaps`; the calendars of model and reference must agree; the reference
is matched onto the model grid within `data.grid_tolerance` (plus rounding, such
as float32 coordinates), across longitude conventions (grid.py); and the common
period must be long enough for the lookback, the gaps and the three splits (and,
for the seasonal transforms, a training block with at least a year of steps
present in the files; a split with data on fewer than half its steps is warned about).
Values are read per block: a damaged file or an infinite value is refused then.

Masking happens per block (`cell_status`): a cell without any reference label
in the overlap, or whose inputs are all NaN for some variable, is left out of
every store; the pipeline counts both kinds and logs them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr
from labzarr.etl import grid, inputs, select, timeaxis, units
from labzarr.etl.errors import EtlInputError
from labzarr.etl.inputs import DIMS, Part, Reading, find_inputs, flat_blocks, names, open_inputs_of
from labzarr.store_format import SplitBlock, split_blocks

from ..config import Config
from .categories import MISSING, N_CLASSES, reference_to_codes
from .quantiles import PERCENTILE_TRANSFORMS

log = logging.getLogger(__name__)
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
    calendar: str  # as the model output's files name it
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
        parts = [Part(v, model[v].data, self.model_files) for v in self.features]
        parts.append(Part(str(self.reference.name), reference.data, self.reference_files or self.model_files))
        time, lat, lon = self.model.indexes["time"], model["lat"].values, model["lon"].values
        *arrays, labels = inputs.read_parts(parts, time, lat, lon)
        n_cells = model.sizes["lat"] * model.sizes["lon"]
        values = np.stack([np.asarray(a, dtype=np.float32).reshape(n_time, n_cells) for a in arrays], -1)
        if self.derived:
            return values.transpose(1, 0, 2), np.asarray(labels, dtype=np.float32).reshape(n_time, n_cells).T
        where = f"{names(self.reference_files)}: variable {self.reference.name!r}"
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


def cell_status(values: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(usable, without_labels, all_nan_inputs) per cell of a block (cells, T, features)."""
    without_labels = (codes == MISSING).all(axis=1)
    all_nan = np.isnan(values).all(axis=1).any(axis=1)
    return ~without_labels & ~all_nan, without_labels, all_nan


def open_inputs(cfg: Config) -> Inputs:
    """Find, open, validate and align model output and reference for the configured study."""
    data, etl = cfg.data, cfg.etl
    reading = Reading(
        aliases=data.dim_aliases,
        select=data.select,
        select_tolerance=data.select_tolerance,
        time_step=etl.time_step,
        fill_gaps=data.fill_gaps,
    )
    raw = cfg.path(data.raw_dir)
    derived = data.reference_kind == DERIVED
    model_files = find_inputs(raw, data.model_files, "data.model_files")
    reference_files = [] if derived else find_inputs(raw, data.reference_files, "data.reference_files")
    onehot = N_CLASSES if data.reference_kind == "onehot" else 0
    wanted = list(data.variables)
    if derived and data.derive_from not in wanted:
        wanted.append(data.derive_from)
    opened = open_inputs_of(model_files, wanted, reading)
    units.check(opened.units, data.units, names(model_files))
    model, selected, present = opened.ds, set(opened.selected), opened.present
    if derived:
        where = names(model_files)
        reference = model[data.derive_from]
        model = model[list(data.variables)]
        common = model.indexes["time"]
    else:
        where = f"{names(model_files)} and {names(reference_files)}"
        ref = open_inputs_of(reference_files, [data.reference_variable], reading, onehot=onehot)
        selected |= ref.selected
        calendars = timeaxis.calendar_of(model.indexes["time"]), timeaxis.calendar_of(ref.ds.indexes["time"])
        standard = {"standard", "gregorian", "proleptic_gregorian"}
        if calendars[0] != calendars[1] and not set(calendars) <= standard:
            raise EtlInputError(
                f"{where}: calendars differ ({opened.calendar} in the model output, {ref.calendar} in the "
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
        present = present.sel(time=common) & ref.present.sel(time=common)
    unused = [d for d in select.global_dims(data.select) if d not in selected]
    if unused:
        raise EtlInputError(
            f"{where}: data.select names {', '.join(map(repr, unused))}, which no variable has as a "
            "dimension; fix the name (after data.dim_aliases) or remove it"
        )
    if onehot:
        extra = next(d for d in reference.dims if d not in DIMS)
        reference = reference.transpose(*DIMS, extra)

    blocks = _split(cfg, common, present.values, where)
    return Inputs(
        model=model,
        reference=reference,
        features=list(data.variables),
        reference_kind=data.reference_kind,
        model_files=model_files,
        reference_files=reference_files,
        calendar=opened.calendar,
        time_step=etl.time_step,
        blocks=blocks,
    )


def _span(index: timeaxis.TimeIndex) -> str:
    return f"{timeaxis.stamp(index[0])} to {timeaxis.stamp(index[-1])}" if len(index) else "empty"


def _split(cfg: Config, common: timeaxis.TimeIndex, present: np.ndarray, where: str) -> dict[str, SplitBlock]:
    """The split blocks of the common period; refused when too short for them or for a seasonal fit
    (counting the steps `present` in the files, not gaps filled with NaN)."""
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
    real = inputs.warn_sparse_blocks(blocks, present, etl.time_step, where)["train"]
    if seasonal and real < year:
        raise EtlInputError(
            f"{where}: the common period is {period}, so the training block has data on "
            f"{timeaxis.steps(real, etl.time_step)}, less than the "
            f"{timeaxis.steps(year, etl.time_step)} year the seasonal climatology needs; use a longer "
            "period or a larger first etl.split_fractions"
        )
    return blocks
