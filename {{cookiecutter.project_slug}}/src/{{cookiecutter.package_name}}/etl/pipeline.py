"""The ETL in one call: `run_etl(cfg)` (CLI: `<package> etl [--overwrite]`).

raw inputs (data/raw) -> extract (open, validate, align) -> survey the grid block by block
(labels read, or derived from a variable and fitted on the training block; which cells have
data) -> create the store's arrays at their final size -> per span of whole chunks of the cells
with data: fit the transform on the training block, transform every time step, write the
series and the fitted state (`climatology` group) into their own chunks -> attributes (split,
encoding, transform, provenance), consolidated metadata, manifest -> rename the finished store
into place (on S3, `data.zarr_dir = "s3://..."`: copy it into place, the manifest last;
labzarr.etl.store). The layout is `labzarr.store_format`'s; windows are cut when read, never stored.

Where the blocks run is `etl.dask_scheduler` (labzarr.etl.cluster): in this process, one after
another, or as dask tasks on dask.distributed workers ("local:N" or "tcp://host:port"), each
task reading its inputs and writing its own chunks (labzarr.etl.regions). The same functions run
either way, so the store's bytes do not depend on it; the driver holds the positions of the
cells with data (8 bytes a cell) and small counts, never the series.

Memory: a block holds about `etl.block_mb` of working arrays (each cell holds its whole time
series while it is transformed), whatever the number of cells; with more years a block simply
holds fewer cells. A block also holds at most 1/(4 x worker threads) of the grid (a quarter in
process), so every worker gets work. The inputs are read twice, by the survey and by the write
phase (derived labels are computed twice too): the price of knowing each cell's place in the
store before any block is written. Blocks of the write phase are whole chunks (at least one),
read as the grid cells from their first to their last cell with data. Inputs chunked along time
(one file per year, say) are read once per block: for very large grids, rechunk them to whole
time series first.

Usage:

    from <package>.config import load_config
    from <package>.etl.pipeline import run_etl
    cfg = load_config()  # study.toml from the current folder upward
    store = run_etl(cfg, overwrite=True)  # data/zarr/<dataset_name>.zarr
    ds = xr.open_zarr(store, consolidated=True)[cfg.study.dataset_name]  # (cell, time, feature)

Logging goes to the `<package>.etl.pipeline` logger (INFO): inputs, split
periods, masked cells (without labels / all-NaN inputs), usable windows per
split (windows with a missing label or a NaN input are not usable), cells and
bytes written; show it with `logging.basicConfig(level=logging.INFO)`. A
progress bar (tqdm) follows the cells when run in a terminal.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr
from labzarr.etl import timeaxis
from labzarr.etl.cluster import Runner, runner
from labzarr.etl.errors import EtlInputError, StoreExistsError
from labzarr.etl.inputs import cell_blocks, grid_positions
from labzarr.etl.regions import (
    TASKS_PER_WORKER,
    ArrayGroup,
    block_cells,
    cells_of,
    chunk_spans,
    rows_of,
    time_units,
    write_rows,
)
from labzarr.etl.store import finalize, leftovers, provenance, staging, store_exists, stored_bytes
from labzarr.location import StoreLocation
from labzarr.store_format import (
    CELL,
    CLIMATOLOGY,
    COMPLETE,
    FEATURE,
    LABELS,
    LAT,
    LON,
    MISSING,
    SERIES_FILL_VALUES,
    SPLITS,
    TIME,
    SplitBlock,
    series_layout,
    split_attrs,
    valid_pairs,
    window_ends,
)
from tqdm.auto import tqdm

from .. import __version__
from ..config import Config
from . import derive, quantiles
from .categories import encoding_attrs
from .extract import Inputs, cell_status, open_inputs

log = logging.getLogger(__name__)
PACKAGE = __package__.rsplit(".", 1)[0]
CELL_ORDER = "cells with data, in row-major (lat, lon) order of the input grid"


def run_etl(cfg: Config, *, overwrite: bool = False) -> Path | str:
    """Build the study's store (`cfg.store_location`); returns its path (its URL on S3)."""
    target = cfg.store_location
    if store_exists(target) and not overwrite:
        raise StoreExistsError(f"{target} already exists; pass --overwrite to replace it")
    stale = leftovers(target)
    if stale:
        log.warning(
            "%s holds leftovers of interrupted runs (%s); delete them when no ETL is running",
            target.sibling(""),
            ", ".join(stale),
        )
    started = time.perf_counter()
    # a cluster starts in the background while the inputs are validated; it closes last
    with runner(cfg.etl.dask_scheduler) as run:
        inputs = open_inputs(cfg)
        n_time, ny, nx = inputs.shape
        step = inputs.time_step
        log.info(
            "inputs: %s | reference: %s | grid %dx%d, %s (%s calendar)",
            ", ".join(p.name for p in inputs.model_files),
            ", ".join(p.name for p in inputs.reference_files)
            or f"derived from {cfg.data.derive_from!r} (trailing means over "
            f"{timeaxis.steps(cfg.data.derive_window, step)})",
            ny,
            nx,
            timeaxis.steps(n_time, step),
            inputs.calendar,
        )
        days = inputs.time.values
        for block in inputs.blocks.values():
            log.info(
                "split %-5s label dates %s .. %s (%s)",
                block.name,
                str(days[block.start])[:10],
                str(days[block.stop - 1])[:10],
                timeaxis.steps(block.steps, step),
            )
        with staging(target, overwrite=overwrite) as tmp:  # run.map returns or raises once its tasks ended
            counts = _write_store(cfg, inputs, tmp, run)
    seconds = time.perf_counter() - started
    log.info(
        "masked %d of %d cells: %d without reference labels, %d with all-NaN inputs (a cell may be both)",
        counts["masked"],
        ny * nx,
        counts["no_labels"],
        counts["all_nan"],
    )
    log.info(
        "usable %d-%s windows (label on the end step, no NaN input inside): %s",
        cfg.etl.time_lookback,
        timeaxis.STEP_NOUN[step],
        ", ".join(f"{s} {counts[s]:,}" for s in SPLITS),
    )
    log.info(
        "wrote %s: %d cells x %s x %d features, %.1f MB in %.1f s",
        target,
        counts["cells"],
        timeaxis.steps(n_time, step),
        len(inputs.features),
        counts["bytes"] / 1e6,
        seconds,
    )
    return target.url if target.remote else Path(target.url)


@dataclass
class _Plan:
    """What every block needs: the transform spec, the season axis, the training steps, and the
    trailing window of derived labels (None when the labels are read from files)."""

    spec: quantiles.TransformSpec
    time_values: np.ndarray
    season: np.ndarray
    train_days: slice
    blocks: dict[str, SplitBlock]
    derive_window: int | None = None

    @classmethod
    def of(cls, cfg: Config, inputs: Inputs) -> _Plan:
        spec = quantiles.TransformSpec(
            transform=cfg.etl.transform,
            plotting_position=cfg.etl.plotting_position,
            season_window=cfg.etl.season_window,
            period=timeaxis.season_period(inputs.calendar, inputs.time_step),
            time_step=inputs.time_step,
        )
        train = inputs.blocks["train"]
        return cls(
            spec=spec,
            time_values=inputs.time.values,
            season=timeaxis.season_index(inputs.time, inputs.time_step),
            train_days=slice(train.start, train.stop),
            blocks=inputs.blocks,
            derive_window=cfg.data.derive_window if inputs.derived else None,
        )

    def labels(self, reference: np.ndarray) -> np.ndarray:
        """Label codes (cells, T) of a block's reference: read codes as they are; derived ones
        from the variable's values, ranked against this block's training steps only."""
        if self.derive_window is None:
            return reference
        return derive.derived_codes(
            reference, self.season, self.train_days, window=self.derive_window, spec=self.spec
        )


def _groups(cfg: Config, inputs: Inputs, plan: _Plan) -> dict[str, ArrayGroup]:
    """The series arrays (root) and the fitted state (the climatology group), both along `cell`
    and chunked alike (`etl.chunk_cells`), so whole series chunks are whole climatology chunks."""
    etl, name = cfg.etl, cfg.study.dataset_name
    common: dict[str, Any] = {
        "zarr_format": etl.zarr_format,
        "compression_level": etl.compression_level,
        "time_units": time_units(inputs.time.values[0]),
        "calendar": inputs.calendar,
        "dim": CELL,
        "coords": (LAT, LON),
    }
    features = xr.Dataset(coords={FEATURE: np.array(inputs.features, dtype=object)})
    series = ArrayGroup(
        chunk=etl.chunk_cells,
        layout=series_layout(name),
        static=features.assign_coords({TIME: plan.time_values}),
        fill_values=SERIES_FILL_VALUES,
        **common,
    )
    climatology = ArrayGroup(
        group=CLIMATOLOGY,
        chunk=etl.chunk_cells,
        layout={**quantiles.state_dims(plan.spec, inputs.features), LAT: (CELL,), LON: (CELL,)},
        static=features.assign_coords(
            quantiles.static_coords(
                plan.spec, plan.time_values[plan.train_days], plan.season[plan.train_days]
            )
        ),
        **common,
    )
    return {"series": series, CLIMATOLOGY: climatology}


@dataclass
class _Job:
    """What every block task needs (sent once to each dask worker): the lazily opened inputs,
    the plan, and the store location the rows are written to."""

    inputs: Inputs
    plan: _Plan
    dataset_name: str
    lookback: int
    location: StoreLocation


def _survey(block: tuple[slice, slice], job: _Job) -> tuple[np.ndarray, Counter[str]]:
    """Which cells of a grid block have data (labels and every input somewhere), and the counts
    of masked cells and of variables with any finite value."""
    values, reference = job.inputs.read_block(*block)
    codes = job.plan.labels(reference)
    counts: Counter[str] = Counter()
    for i, name in enumerate(job.inputs.features):  # which variables have any value at all
        counts[f"finite {name}"] += int(np.isfinite(values[:, :, i]).any())
    usable, no_labels, all_nan = cell_status(values, codes)
    counts.update(masked=int((~usable).sum()), no_labels=int(no_labels.sum()), all_nan=int(all_nan.sum()))
    return usable, counts


def _rows(
    job: _Job, values: np.ndarray, codes: np.ndarray, lat: np.ndarray, lon: np.ndarray, counts: Counter[str]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Fit on the training block, transform every step, count usable windows: the series rows
    and the fitted-state rows of some cells with data."""
    plan, features = job.plan, job.inputs.features
    state = quantiles.fit(values[:, plan.train_days], plan.spec, features)
    series = quantiles.transform(
        state, values, plan.season, plan.spec, features, train_season=plan.season[plan.train_days]
    )
    complete = np.isfinite(series).all(axis=2)
    for split, block in plan.blocks.items():
        counts[split] += len(valid_pairs(codes, complete, window_ends(block, job.lookback), job.lookback))
    counts["cells"] += len(lat)
    rows = {job.dataset_name: series, LABELS: codes, COMPLETE: complete, LAT: lat, LON: lon}
    return rows, {**state, LAT: lat, LON: lon}


def _span(span: tuple[int, np.ndarray], job: _Job) -> Counter[str]:
    """Compute and write the store's cells `start`.. (whole chunks); `cells` are their positions in
    the row-major input grid. Returns the counts of its windows and cells."""
    start, cells = span
    nx = job.inputs.shape[2]
    values, reference = job.inputs.read_cells(cells)
    lat = job.inputs.model[LAT].values[cells // nx]
    lon = job.inputs.model[LON].values[cells % nx]
    counts: Counter[str] = Counter()
    rows, state = _rows(job, values, job.plan.labels(reference), lat, lon, counts)
    del values, reference
    write_rows(job.location, None, start, rows)
    write_rows(job.location, CLIMATOLOGY, start, state)
    return counts


def _like(job: _Job) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Rows of one made-up cell: the shapes and dtypes the arrays are created with."""
    n_time, _, _ = job.inputs.shape
    values = np.random.default_rng(0).standard_normal((1, n_time, len(job.inputs.features)), dtype=np.float32)
    coords = {c: np.zeros(1, job.inputs.model[c].dtype) for c in (LAT, LON)}
    return _rows(job, values, np.full((1, n_time), MISSING, np.int8), coords[LAT], coords[LON], Counter())


def _write_store(cfg: Config, inputs: Inputs, location: StoreLocation, run: Runner) -> Counter[str]:
    """Survey the grid (which cells have data), create the arrays at their final size, compute and
    write spans of whole chunks (in this process or on dask workers), then attributes,
    consolidated metadata and the manifest."""
    n_time, ny, nx = inputs.shape
    plan = _Plan.of(cfg, inputs)
    groups = _groups(cfg, inputs, plan)
    job = _Job(inputs, plan, cfg.study.dataset_name, cfg.etl.time_lookback, location)
    block = min(
        block_cells(cfg.etl.block_mb, n_time, len(inputs.features)),
        -(-ny * nx // (TASKS_PER_WORKER * run.workers)),  # enough blocks to keep every worker busy
    )

    counts: Counter[str] = Counter()
    usable: dict[tuple[int, int], np.ndarray] = {}  # by the block's first row and column
    grid = list(cell_blocks(ny, nx, block))
    with tqdm(total=ny * nx, unit="cell", desc="etl: cells with data", disable=None) as progress:
        for (rows, cols), (mask, found) in run.map(_survey, grid, job, rows_of):
            usable[rows.start, cols.start] = mask
            counts.update(found)
            progress.update(mask.size)
    _check_variables(inputs, counts)
    cells = np.concatenate(
        [grid_positions(rows, cols, nx)[usable[rows.start, cols.start]] for rows, cols in grid]
    )
    if not len(cells):
        _check_windows(inputs, counts)

    # the root; the groups add to it
    zarr.open_group(location.zarr_store(), mode="w-", zarr_format=cfg.etl.zarr_format)
    for group, like in zip(groups.values(), _like(job), strict=True):
        group.create(location, len(cells), like)
    chunk = cfg.etl.chunk_cells
    spans = chunk_spans(cells, block=block, chunk=chunk, workers=run.workers)
    with tqdm(total=len(cells), unit="cell", desc="etl", disable=None) as progress:
        for span_done, found in run.map(_span, spans, job, cells_of):
            log.debug("wrote %s", cells_of(span_done))
            counts.update(found)
            progress.update(len(span_done[1]))
    _check_windows(inputs, counts)
    _finalize(cfg, inputs, plan, location)
    counts["bytes"] = stored_bytes(location)
    return counts


def _check_variables(inputs: Inputs, counts: Counter[str]) -> None:
    empty = [name for name in inputs.features if not counts[f"finite {name}"]]
    if empty:
        raise EtlInputError(
            f"{', '.join(p.name for p in inputs.model_files)}: variable {empty[0]!r} is NaN on every cell "
            "and day of the common period; check its fill value and scale in the file, or leave it out "
            "of data.variables"
        )


def _check_windows(inputs: Inputs, counts: Counter[str]) -> None:
    for split in SPLITS:
        if counts[split] == 0:
            raise EtlInputError(
                f"{', '.join(p.name for p in inputs.files)}: no usable {split} window (every cell is masked, "
                "or every window has a missing label or NaN input); check the inputs' overlap and NaNs"
            )


def _finalize(cfg: Config, inputs: Inputs, plan: _Plan, path: StoreLocation) -> None:
    """Attributes (encoding, split, transform, provenance), consolidated metadata, manifest."""
    days = plan.time_values
    base: dict[str, Any] = {
        "dataset_name": cfg.study.dataset_name,
        "features": inputs.features,
        "calendar": inputs.calendar,
        "cell_order": CELL_ORDER,
        **plan.spec.attrs(),
        "provenance": provenance(cfg.to_dict(), inputs.files, PACKAGE, __version__),
    }
    series = {
        **base,
        **encoding_attrs(),
        **split_attrs(plan.blocks, days, cfg.etl.split_gap),
        "time_lookback": cfg.etl.time_lookback,
        "labels": _labels_attrs(cfg),
        "layout": (
            f"{cfg.study.dataset_name}(cell, time, feature): the transformed series; {LABELS}(cell, time): "
            f"label codes; {COMPLETE}(cell, time): every feature finite on that step. Windows of "
            "time_lookback steps (time_step) ending on a step of a split's block are cut when read."
        ),
    }
    train = plan.train_days
    climatology = {
        **base,
        "training_first_date": str(days[train.start])[:10],
        "training_last_date": str(days[train.stop - 1])[:10],
    }
    finalize(path, series, {CLIMATOLOGY: climatology})


def _labels_attrs(cfg: Config) -> dict[str, Any]:
    """Where the labels came from: the reference files' variable, or how they were derived."""
    data = cfg.data
    if data.reference_kind != "derived":
        return {"kind": data.reference_kind, "variable": data.reference_variable}
    return {
        "kind": "derived",
        "derived_from": data.derive_from,
        "trailing_window_steps": data.derive_window,
        "method": "percentile of the trailing mean per cell and season, fitted on the training block",
    }
