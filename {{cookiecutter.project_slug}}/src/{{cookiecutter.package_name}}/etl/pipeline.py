"""The ETL in one call: `run_etl(cfg)` (CLI: `<package> etl [--overwrite]`).

raw inputs (data/raw) -> extract (open, validate, align) -> per block of cells:
labels (read, or derived from a variable and fitted on the training block), mask,
fit the transform on the training block, transform every time step -> append
whole chunks of the series to `<dataset_name>.zarr` and the fitted state to its
`climatology` group -> attributes (split, encoding, transform, provenance),
consolidated metadata, manifest -> rename the finished store into
place (on S3, `data.zarr_dir = "s3://..."`: copy it into place, the manifest last;
etl/store.py). The layout is `store_format.py`'s; windows are cut when read, never stored.

Memory: the grid is processed in blocks of cells sized from `etl.block_mb`
(each cell holds its whole time series while it is transformed); finished rows
go to a fixed buffer of whole chunks (FLUSH_MB, at least one chunk) that is
appended when full, so peak memory is about `block_mb` plus two such buffers,
whatever the number of cells; with more years a block simply holds fewer cells.
Inputs are read through dask; set `etl.dask_scheduler` to a dask.distributed
address to read on a cluster. Inputs chunked along time (one file per year, say)
are read once per block: for very large grids, rechunk them to whole time series first.

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

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr
from tqdm.auto import tqdm

from .. import __version__
from ..config import Config
from ..location import StoreLocation
from ..store_format import (
    CELL,
    CLIMATOLOGY,
    COMPLETE,
    FEATURE,
    LABELS,
    LAT,
    LON,
    MISSING,
    SPLITS,
    TIME,
    TIME_FILL,
    SplitBlock,
    split_attrs,
    valid_pairs,
    window_ends,
)
from . import derive, quantiles, timeaxis
from .categories import encoding_attrs
from .errors import EtlError, EtlInputError, StoreExistsError
from .extract import Inputs, cell_blocks, cell_status, open_inputs
from .store import ChunkAppender, finalize, leftovers, provenance, staging, store_exists, stored_bytes

log = logging.getLogger(__name__)
PACKAGE = __package__.rsplit(".", 1)[0]
FLUSH_MB = 4  # buffer of whole chunks per writer (at least one chunk): few writes, bounded memory
CELL_ORDER = "cells with data, in row-major (lat, lon) order of the input grid"


def block_cells(block_mb: float, n_time: int, n_features: int) -> int:
    """Cells per block so that one block's working arrays stay near `block_mb`."""
    bytes_per_cell = n_time * (40 * n_features + 40)  # values, features, float64 temporaries, indices
    return max(1, int(block_mb * 2**20 // bytes_per_cell))


@contextlib.contextmanager
def _dask_scheduler(address: str) -> Iterator[None]:
    if not address:
        yield
        return
    try:
        from dask.distributed import Client
    except ImportError:
        raise EtlError(
            f"etl.dask_scheduler = {address!r} needs dask.distributed: pip install distributed"
        ) from None
    with Client(address):
        yield


def _time_units(inputs: Inputs) -> str:
    first = inputs.time.values[0]
    stamp = first.isoformat() if hasattr(first, "isoformat") else np.datetime_as_string(first, unit="s")
    return f"days since {str(stamp).replace('T', ' ')}"


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
    with _dask_scheduler(cfg.etl.dask_scheduler), staging(target, overwrite=overwrite) as tmp:
        counts = _write_store(cfg, inputs, tmp)
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


def _open_writers(cfg: Config, inputs: Inputs, plan: _Plan, path: Any) -> dict[str, ChunkAppender]:
    """The series writer (root) and the climatology writer (its group), both along `cell`."""
    etl, name = cfg.etl, cfg.study.dataset_name
    common: dict[str, Any] = {
        "zarr_format": etl.zarr_format,
        "compression_level": etl.compression_level,
        "time_units": _time_units(inputs),
        "calendar": inputs.calendar,
        "flush_mb": FLUSH_MB,
        "dim": CELL,
        "coords": (LAT, LON),
    }
    features = xr.Dataset(coords={FEATURE: np.array(inputs.features, dtype=object)})
    series = ChunkAppender(
        path,
        chunk=etl.chunk_cells,
        layout={
            name: (CELL, TIME, FEATURE),
            LABELS: (CELL, TIME),
            COMPLETE: (CELL, TIME),
            LAT: (CELL,),
            LON: (CELL,),
        },
        static=features.assign_coords({TIME: plan.time_values}),
        fill_values={name: np.float32(np.nan), LABELS: np.int8(MISSING), TIME: TIME_FILL},
        **common,
    )
    n_train = plan.train_days.stop - plan.train_days.start
    row_bytes = 8 * max(n_train if plan.spec.transform in quantiles.PERCENTILE_TRANSFORMS else 1, 1000)
    climatology = ChunkAppender(
        path,
        group=CLIMATOLOGY,
        chunk=max(1, (8 << 20) // row_bytes),  # about 8 MB per chunk
        layout={**quantiles.state_dims(plan.spec, inputs.features), LAT: (CELL,), LON: (CELL,)},
        static=features.assign_coords(
            quantiles.static_coords(
                plan.spec, plan.time_values[plan.train_days], plan.season[plan.train_days]
            )
        ),
        **common,
    )
    return {"series": series, CLIMATOLOGY: climatology}


def _process_block(
    cfg: Config,
    inputs: Inputs,
    plan: _Plan,
    rows: slice,
    cols: slice,
    writers: dict[str, ChunkAppender],
    counts: Counter[str],
) -> int:
    """Mask, fit, transform and encode one block of cells; returns how many cells it had."""
    values, reference = inputs.read_block(rows, cols)
    codes = plan.labels(reference)
    for i, name in enumerate(inputs.features):  # which variables have any value at all
        counts[f"finite {name}"] += int(np.isfinite(values[:, :, i]).any())
    usable, no_labels, all_nan = cell_status(values, codes)
    counts.update(masked=int((~usable).sum()), no_labels=int(no_labels.sum()), all_nan=int(all_nan.sum()))
    if not usable.any():
        return len(usable)
    lat, lon = np.meshgrid(inputs.model["lat"].values[rows], inputs.model["lon"].values[cols], indexing="ij")
    lat, lon = lat.ravel()[usable], lon.ravel()[usable]
    values, codes = values[usable], codes[usable]
    state = quantiles.fit(values[:, plan.train_days], plan.spec, inputs.features)
    series = quantiles.transform(
        state, values, plan.season, plan.spec, inputs.features, train_season=plan.season[plan.train_days]
    )
    del values
    complete = np.isfinite(series).all(axis=2)
    lookback = cfg.etl.time_lookback
    for split, block in plan.blocks.items():
        counts[split] += len(valid_pairs(codes, complete, window_ends(block, lookback), lookback))
    counts["cells"] += len(lat)
    writers["series"].add(
        {cfg.study.dataset_name: series, LABELS: codes, COMPLETE: complete, LAT: lat, LON: lon}
    )
    writers[CLIMATOLOGY].add({**state, LAT: lat, LON: lon})
    return len(usable)


def _write_store(cfg: Config, inputs: Inputs, location: StoreLocation) -> Counter[str]:
    """The block loop, then attributes, consolidated metadata and the manifest."""
    n_time, ny, nx = inputs.shape
    plan = _Plan.of(cfg, inputs)
    path = location.zarr_store()  # the local path, or a zarr store on S3
    zarr.open_group(path, mode="w-", zarr_format=cfg.etl.zarr_format)  # the root; writers add to it
    writers = _open_writers(cfg, inputs, plan, path)
    counts: Counter[str] = Counter()
    blocks = list(cell_blocks(ny, nx, block_cells(cfg.etl.block_mb, n_time, len(inputs.features))))
    with tqdm(total=ny * nx, unit="cell", desc="etl", disable=None) as progress:
        for rows, cols in blocks:
            progress.update(_process_block(cfg, inputs, plan, rows, cols, writers, counts))
    for writer in writers.values():
        writer.close()
    empty = [name for name in inputs.features if not counts[f"finite {name}"]]
    if empty:
        raise EtlInputError(
            f"{', '.join(p.name for p in inputs.model_files)}: variable {empty[0]!r} is NaN on every cell "
            "and day of the common period; check its fill value and scale in the file, or leave it out "
            "of data.variables"
        )
    for split in SPLITS:
        if counts[split] == 0:
            raise EtlInputError(
                f"{', '.join(p.name for p in inputs.files)}: no usable {split} window (every cell is masked, "
                "or every window has a missing label or NaN input); check the inputs' overlap and NaNs"
            )
    _finalize(cfg, inputs, plan, location)
    counts["bytes"] = stored_bytes(location)
    return counts


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
