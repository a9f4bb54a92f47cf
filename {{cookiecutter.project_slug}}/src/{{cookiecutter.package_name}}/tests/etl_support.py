"""Helpers of the ETL tests: write (possibly broken) inputs, read a finished store back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..config import Config
from ..synthetic import MODEL_FILE, REFERENCE_FILE, SIZES, SyntheticSize, generate

# Tests of how inputs are read (several files, units, data.select, derived labels, a missing
# variable) need two variables of known names and units, whatever the study's data.variables
# (its answers may name one variable, or others): they set these.
NAMED_VARIABLES = ["soil_moisture", "snow_water_equivalent"]


def tiny_datasets(
    cfg: Config, size: SyntheticSize = SIZES["tiny"], **kwargs: Any
) -> tuple[xr.Dataset, xr.Dataset]:
    """The tiny (or `size`) synthetic model output and reference, in memory, to be modified by a test
    (labels blending windows of the config's lookback unless `lookback` says otherwise)."""
    return generate(cfg.data.variables, size, **{"lookback": cfg.etl.time_lookback, **kwargs})


def write_inputs(
    cfg: Config, model: xr.Dataset | None, reference: xr.Dataset | None, *, calendar: str | None = None
) -> Path:
    """Write model output and reference NetCDF files into the config's raw folder."""
    raw = cfg.path(cfg.data.raw_dir)
    raw.mkdir(parents=True, exist_ok=True)
    for ds, name in ((model, MODEL_FILE), (reference, REFERENCE_FILE)):
        if ds is not None:
            write_netcdf(ds, raw / name, calendar=calendar)
    return raw


def write_netcdf(ds: xr.Dataset, path: Path, *, calendar: str | None = None) -> None:
    """A NetCDF file as products write them: time in integer hours (so 12:00 stamps survive), its
    calendar named `calendar` (CMIP6 files often say "gregorian" or "standard") or as xarray names it."""
    time = {
        "units": "hours since 2000-01-01",
        "dtype": "int32",
        **({"calendar": calendar} if calendar else {}),
    }
    ds.to_netcdf(path, engine="netcdf4", encoding={"time": time} if "time" in ds.coords else {})


def leftovers(cfg: Config) -> list[str]:
    """Everything in the zarr folder (a failed run must leave nothing, hidden or not)."""
    folder = cfg.path(cfg.data.zarr_dir)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def manifest(store: Path) -> dict[str, Any]:
    return json.loads((store / "manifest.json").read_text())


def checksums(store: Path, prefix: str = "") -> dict[str, str]:
    """Chunk key -> sha256 over every array of a store whose name starts with `prefix` (manifest)."""
    arrays = manifest(store)["arrays"]
    return {
        k: v for name, entry in arrays.items() if name.startswith(prefix) for k, v in entry["sha256"].items()
    }


def open_store(cfg: Config, group: str | None = None) -> xr.Dataset:
    return xr.open_zarr(cfg.store_path, group=group, consolidated=True, mask_and_scale=False).load()


def codes_to_percentile(codes: np.ndarray) -> np.ndarray:
    """A percentile in the middle of each code's bin (NaN for missing): a percentile-kind reference."""
    middles = np.array([0.99, 0.965, 0.925, 0.85, 0.75, 0.5, 0.25, 0.15, 0.075, 0.035, 0.01])
    return np.where(codes < 0, np.nan, middles[np.clip(codes, 0, 10)])
