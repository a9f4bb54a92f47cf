"""The ETL in one call: `run_etl(cfg)` (CLI: `<package> etl [--overwrite]`).

raw inputs (data/raw) -> extract (open, validate, align) -> per block of cells:
mask, fit the transform on the training block, transform every day, cut
lookback windows per split -> append whole chunks to train/valid/test.zarr and
the fitted state to climatology.zarr -> attributes, consolidated metadata,
manifests -> rename the finished folder to `cfg.store_dir`.

Memory: the grid is processed in blocks of cells sized from `etl.block_mb`
(each cell holds its whole time series while it is transformed), windows are
gathered a chunk at a time and copied into a fixed buffer of whole chunks per
store (FLUSH_MB, at least one chunk) that is appended when full, so peak memory
is about `block_mb` plus four such buffers, whatever the number of cells; with
more years a block simply holds fewer cells. Inputs are read through
dask; set `etl.dask_scheduler` to a dask.distributed address to read on a
cluster. Inputs chunked along time (one file per year, say) are read once per
block: for very large grids, rechunk them to whole time series first.

Usage:

    from <package>.config import load_config
    from <package>.etl.pipeline import run_etl
    cfg = load_config()  # study.toml from the current folder upward
    store_dir = run_etl(cfg, overwrite=True)  # data/zarr/<dataset_name>_lb<lookback>/
    ds = xr.open_zarr(store_dir / "train.zarr", consolidated=True)[cfg.study.dataset_name]

Logging goes to the `<package>.etl.pipeline` logger (INFO): inputs, split
periods, masked cells (without labels / all-NaN inputs), dropped windows
(missing label or NaN inside), samples and bytes per store; show it with
`logging.basicConfig(level=logging.INFO)`. A progress bar (tqdm) follows the
cells when run in a terminal.
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
from tqdm.auto import tqdm

from .. import __version__
from ..config import Config
from . import quantiles
from .categories import encoding_attrs
from .errors import EtlError, EtlInputError, StoreExistsError
from .extract import Inputs, cell_blocks, cell_status, open_inputs
from .store import ChunkAppender, finalize, provenance, staging
from .windows import SPLITS, iter_samples, sample_index, window_ends

log = logging.getLogger(__name__)
PACKAGE = __package__.rsplit(".", 1)[0]
CLIMATOLOGY = "climatology"
FLUSH_MB = 4  # buffer of whole chunks per store (at least one chunk): few writes, bounded memory
SAMPLE_ORDER = (
    "cell-major: cells in row-major (lat, lon) order of the input grid, each cell's windows in time order"
)


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


def run_etl(cfg: Config, *, overwrite: bool = False) -> Path:
    """Build the split stores and the climatology under `cfg.store_dir`; returns that folder."""
    target = cfg.store_dir
    if target.exists() and not overwrite:
        raise StoreExistsError(f"{target} already exists; pass --overwrite to replace it")
    stale = (
        sorted(p.name for p in target.parent.glob(f".{target.name}.tmp-*")) if target.parent.is_dir() else []
    )
    if stale:
        log.warning(
            "%s holds leftovers of interrupted runs (%s); delete them when no ETL is running",
            target.parent, ", ".join(stale),
        )  # fmt: skip
    started = time.perf_counter()
    inputs = open_inputs(cfg)
    n_time, ny, nx = inputs.shape
    log.info(
        "inputs: %s | reference: %s | grid %dx%d, %d days (%s calendar)",
        ", ".join(p.name for p in inputs.model_files),
        ", ".join(p.name for p in inputs.reference_files),
        ny, nx, n_time, inputs.calendar,
    )  # fmt: skip
    days = inputs.time.values
    for block in inputs.blocks.values():
        first, last = str(days[block.first_end])[:10], str(days[block.stop - 1])[:10]
        log.info(
            "split %-5s label dates %s .. %s (%d days)", block.name, first, last, block.stop - block.first_end
        )
    with _dask_scheduler(cfg.etl.dask_scheduler), staging(target, overwrite=overwrite) as tmp:
        counts = _write_stores(cfg, inputs, tmp)
    seconds = time.perf_counter() - started
    log.info(
        "masked %d of %d cells: %d without reference labels, %d with all-NaN inputs (a cell may be both)",
        counts["masked"], ny * nx, counts["no_labels"], counts["all_nan"],
    )  # fmt: skip
    log.info("dropped %d windows with a missing label or a NaN input inside", counts["dropped"])
    log.info(
        "wrote %s: train %d, valid %d, test %d samples, %.1f MB in %.1f s",
        target, counts["train"], counts["valid"], counts["test"], counts["bytes"] / 1e6, seconds,
    )  # fmt: skip
    return target


@dataclass
class _Plan:
    """What every block needs: the transform spec, day-of-year axis, training days, window ends."""

    spec: quantiles.TransformSpec
    time_values: np.ndarray
    doy: np.ndarray
    train_days: slice
    ends: dict[str, np.ndarray]

    @classmethod
    def of(cls, cfg: Config, inputs: Inputs) -> _Plan:
        spec = quantiles.TransformSpec(
            transform=cfg.etl.transform,
            plotting_position=cfg.etl.plotting_position,
            doy_window=cfg.etl.doy_window,
            period=quantiles.calendar_period(inputs.calendar),
        )
        train = inputs.blocks["train"]
        return cls(
            spec=spec,
            time_values=inputs.time.values,
            doy=quantiles.day_of_year(inputs.time),
            train_days=slice(train.start, train.stop),
            ends={split: window_ends(inputs.blocks[split], cfg.etl.sample_stride) for split in SPLITS},
        )


def _open_writers(cfg: Config, inputs: Inputs, plan: _Plan, out: Path) -> dict[str, ChunkAppender]:
    """One appender per split store (along samples) and one for the climatology (along cells)."""
    etl, name = cfg.etl, cfg.study.dataset_name
    common: dict[str, Any] = {
        "zarr_format": etl.zarr_format,
        "compression_level": etl.compression_level,
        "time_units": _time_units(inputs),
        "calendar": inputs.calendar,
        "flush_mb": FLUSH_MB,
    }
    features_coord = xr.Dataset(coords={"features": np.array(inputs.features, dtype=object)})
    per_sample = {"category": ("samples",), "lat": ("samples",), "lon": ("samples",), "time": ("samples",)}
    writers = {
        split: ChunkAppender(
            out / f"{split}.zarr",
            dim="samples",
            chunk=etl.chunk_samples,
            layout={name: ("samples", "time_lookback", "features"), **per_sample},
            coords=("lat", "lon", "time"),
            static=features_coord,
            **common,
        )
        for split in SPLITS
    }
    n_train = plan.train_days.stop - plan.train_days.start
    row_bytes = 8 * max(n_train if plan.spec.transform in quantiles.PERCENTILE_TRANSFORMS else 1, 1000)
    writers[CLIMATOLOGY] = ChunkAppender(
        out / f"{CLIMATOLOGY}.zarr",
        dim="cell",
        chunk=max(1, (8 << 20) // row_bytes),  # about 8 MB per chunk
        layout={**quantiles.state_dims(plan.spec, inputs.features), "lat": ("cell",), "lon": ("cell",)},
        coords=("lat", "lon"),
        static=features_coord.assign_coords(
            quantiles.static_coords(plan.spec, plan.time_values[plan.train_days], plan.doy[plan.train_days])
        ),
        **common,
    )
    return writers


def _process_block(
    cfg: Config, inputs: Inputs, plan: _Plan, rows: slice, cols: slice,
    writers: dict[str, ChunkAppender], counts: Counter[str],
) -> int:  # fmt: skip
    """Mask, fit, transform and window one block of cells; returns how many cells it had."""
    lookback, features = cfg.etl.time_lookback, inputs.features
    values, codes = inputs.read_block(rows, cols)
    usable, no_labels, all_nan = cell_status(values, codes)
    counts.update(masked=int((~usable).sum()), no_labels=int(no_labels.sum()), all_nan=int(all_nan.sum()))
    if not usable.any():
        return len(usable)
    lat, lon = np.meshgrid(inputs.model["lat"].values[rows], inputs.model["lon"].values[cols], indexing="ij")
    lat, lon = lat.ravel()[usable], lon.ravel()[usable]
    values, codes = values[usable], codes[usable]
    train_doy = plan.doy[plan.train_days]
    state = quantiles.fit(values[:, plan.train_days], plan.spec, features)
    series = quantiles.transform(state, values, plan.doy, plan.spec, features, train_doy=train_doy)
    del values
    writers[CLIMATOLOGY].add({**state, "lat": lat, "lon": lon})
    invalid = np.isnan(series).any(axis=2)
    for split in SPLITS:
        cell, end = sample_index(codes, invalid, plan.ends[split], lookback)
        counts["dropped"] += codes.shape[0] * len(plan.ends[split]) - len(cell)
        for windows, c, e in iter_samples(series, cell, end, lookback, cfg.etl.chunk_samples):
            writers[split].add(
                {
                    cfg.study.dataset_name: windows,
                    "category": codes[c, e],
                    "lat": lat[c],
                    "lon": lon[c],
                    "time": plan.time_values[e],
                }
            )
    return len(usable)


def _write_stores(cfg: Config, inputs: Inputs, out: Path) -> Counter[str]:
    """The block loop, then attributes, consolidated metadata and manifests of every store."""
    n_time, ny, nx = inputs.shape
    plan = _Plan.of(cfg, inputs)
    writers = _open_writers(cfg, inputs, plan, out)
    counts: Counter[str] = Counter()
    blocks = list(cell_blocks(ny, nx, block_cells(cfg.etl.block_mb, n_time, len(inputs.features))))
    with tqdm(total=ny * nx, unit="cell", desc="etl", disable=None) as progress:
        for rows, cols in blocks:
            progress.update(_process_block(cfg, inputs, plan, rows, cols, writers, counts))
    for split, writer in writers.items():
        counts[split] = writer.close()
        if counts[split] == 0:
            raise EtlInputError(
                f"{', '.join(p.name for p in inputs.files)}: no usable {split} sample (every cell is masked, "
                "or every window has a missing label or NaN input); check the inputs' overlap and NaNs"
            )
    _finalize_all(cfg, inputs, plan, out)
    counts["bytes"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return counts


def _finalize_all(cfg: Config, inputs: Inputs, plan: _Plan, out: Path) -> None:
    """Attributes (encoding, split, transform, provenance), consolidated metadata, manifests."""
    days = plan.time_values
    base: dict[str, Any] = {
        "dataset_name": cfg.study.dataset_name,
        "features": inputs.features,
        "calendar": inputs.calendar,
        **plan.spec.attrs(),
        "provenance": provenance(cfg.to_dict(), inputs.files, PACKAGE, __version__),
    }
    for split in SPLITS:
        attrs = {
            **base,
            **encoding_attrs(),
            "split": split,
            "split_first_label_date": str(days[plan.ends[split][0]])[:10],
            "split_last_label_date": str(days[plan.ends[split][-1]])[:10],
            "time_lookback": cfg.etl.time_lookback,
            "sample_stride": cfg.etl.sample_stride,
            "sample_order": SAMPLE_ORDER,
            "label": "category code of the window's last day (time)",
        }
        finalize(out / f"{split}.zarr", attrs)
    train = plan.train_days
    climatology = {
        **base,
        "training_first_date": str(days[train.start])[:10],
        "training_last_date": str(days[train.stop - 1])[:10],
        "cell_order": "the split stores' cell order (row-major lat, lon)",
    }
    finalize(out / f"{CLIMATOLOGY}.zarr", climatology)
