"""Bad inputs fail with messages naming file, variable and problem; failures leave no store behind."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from labzarr.etl.errors import EtlInputError

from ..config import Config
from ..etl import pipeline
from ..etl.pipeline import run_etl
from .conftest import STUDY_ROOT
from .etl_support import NAMED_VARIABLES, checksums, leftovers, tiny_datasets, write_inputs

PACKAGE = __package__.rsplit(".", 1)[0]
Mutation = Callable[[xr.Dataset, xr.Dataset], tuple[xr.Dataset | None, xr.Dataset | None]]


def swap_days(ds: xr.Dataset) -> xr.Dataset:
    order = np.arange(ds.sizes["time"])
    order[[50, 51]] = order[[51, 50]]
    return ds.isel(time=order)


def duplicate_day(ds: xr.Dataset) -> xr.Dataset:
    return xr.concat([ds.isel(time=slice(0, 10)), ds.isel(time=slice(9, None))], "time")


def shift_lat(ds: xr.Dataset, by: float) -> xr.Dataset:
    return ds.assign_coords(lat=ds.lat + by)


def infinite(ds: xr.Dataset) -> xr.Dataset:
    """soil_moisture[100:110, 2, 3] = inf, as the review did."""
    ds = ds.copy(deep=True)
    ds["soil_moisture"][100:110, 2, 3] = np.inf
    return ds


def fractional_code(ds: xr.Dataset) -> xr.Dataset:
    """Float codes with one 2.5 (written as floats: an int8 encoding would round it to 2 on writing)."""
    codes = ds["drought_category"].astype(np.float32)
    codes[400, 1, 1] = 2.5
    return ds.assign(drought_category=codes)


BAD_INPUTS: dict[str, tuple[Mutation, str]] = {
    "no model file": (lambda m, r: (None, r), r"no file matches data\.model_files"),
    "variable missing": (
        lambda m, r: (m.drop_vars("snow_water_equivalent"), r),
        r"model_output\.nc: variable 'snow_water_equivalent' not found",
    ),
    "unknown dims": (
        lambda m, r: (m.rename(lat="row"), r),
        r"model_output\.nc: variable '\w+' has dims .*'row'",
    ),
    "time not increasing": (lambda m, r: (swap_days(m), r), r"model_output\.nc: time is not increasing"),
    "duplicate time": (lambda m, r: (m, duplicate_day(r)), r"reference\.nc: time has duplicate values"),
    "missing day": (lambda m, r: (m.drop_isel(time=100), r), r"model_output\.nc: time steps must be one day"),
    "grids differ": (
        lambda m, r: (m, shift_lat(r, 0.5)),
        r"model_output\.nc and reference\.nc: the lat coordinates .* differ by up to 0\.5",
    ),
    "grid sizes differ": (lambda m, r: (m, r.isel(lon=slice(1, None))), r"lon has 4 values in the model"),
    "overlap too short": (
        lambda m, r: (m, r.isel(time=slice(0, 300))),
        r"model_output\.nc and reference\.nc: the common period is 300 days",
    ),
    "labels out of range": (
        lambda m, r: (m, r.assign(drought_category=r.drought_category.where(r.time.dt.year < 2002, 12))),
        r"reference\.nc: variable 'drought_category': \d+ values are not category codes",
    ),
    "infinite values": (
        lambda m, r: (infinite(m), r),
        r"^model_output\.nc: variable 'soil_moisture' is infinite at lat [-\d.]+, lon [-\d.]+ on 10 time "
        r"step\(s\) \(2000-04-10 to 2000-04-19\); only NaN means missing",
    ),
    "duplicate lat": (
        lambda m, r: (m.assign_coords(lat=np.r_[m.lat[:1], m.lat[:1], m.lat[2:]]), r),
        r"model_output\.nc: lat has duplicate values \([-\d.]+ at positions 0, 1\)",
    ),
    "fractional label code": (
        lambda m, r: (m, fractional_code(r)),
        r"reference\.nc: variable 'drought_category': 1 values are not category codes 0\.\.10 "
        r"\(e\.g\. 2\.5\)",
    ),
    "a variable all NaN": (
        lambda m, r: (m.assign(snow_water_equivalent=m.snow_water_equivalent * np.nan), r),
        r"model_output\.nc: variable 'snow_water_equivalent' is NaN on every cell and day",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_a_clear_error_and_leaves_no_store(tiny_config: Config, case: str) -> None:
    tiny_config = tiny_config.override({"data.variables": NAMED_VARIABLES})  # the cases name them
    mutate, message = BAD_INPUTS[case]
    model, reference = mutate(*tiny_datasets(tiny_config))
    write_inputs(tiny_config, model, reference)
    with pytest.raises(EtlInputError, match=message):
        run_etl(tiny_config)
    assert leftovers(tiny_config) == []


def test_unreadable_or_damaged_file_is_named(tiny_inputs: Config) -> None:
    path = tiny_inputs.path(tiny_inputs.data.raw_dir) / "model_output.nc"
    data = bytearray(path.read_bytes())  # compressed chunks: damaged bytes fail to decompress
    data[len(data) // 2 : len(data) // 2 + 200] = bytes(200)
    path.write_bytes(bytes(data))
    with pytest.raises(EtlInputError, match=r"model_output\.nc: cannot read variable '\w+' \(RuntimeError"):
        run_etl(tiny_inputs)
    assert leftovers(tiny_inputs) == []
    path.write_bytes(b"not a netcdf file")
    with pytest.raises(EtlInputError, match=r"model_output\.nc: cannot open as NetCDF or zarr"):
        run_etl(tiny_inputs)
    assert leftovers(tiny_inputs) == []


def test_absolute_input_patterns_are_read(tiny_inputs: Config) -> None:
    raw = tiny_inputs.path(tiny_inputs.data.raw_dir)
    run_etl(tiny_inputs.override({"data.model_files": [str(raw / "model_output*.nc")]}))
    assert (tiny_inputs.store_path / "manifest.json").is_file()


def test_calendars_must_match(tiny_config: Config) -> None:
    model, _ = tiny_datasets(tiny_config, calendar="noleap")
    _, reference = tiny_datasets(tiny_config)
    write_inputs(tiny_config, model, reference)
    with pytest.raises(EtlInputError, match=r"calendars differ \(noleap in the model output"):
        run_etl(tiny_config)


def test_files_overlapping_in_time_are_refused(tiny_config: Config) -> None:
    model, reference = tiny_datasets(tiny_config)
    raw = write_inputs(tiny_config, None, reference)
    model.isel(time=slice(0, 400)).to_netcdf(raw / "model_output_a.nc")
    model.isel(time=slice(300, None)).to_netcdf(raw / "model_output_b.nc")
    with pytest.raises(EtlInputError, match=r"model_output_a\.nc and model_output_b\.nc both hold"):
        run_etl(tiny_config)


def test_grids_differing_by_rounding_match_by_default_and_a_part_of_a_cell_does_not(
    tiny_config: Config,
) -> None:
    """data.grid_tolerance = 0 (the default) accepts a float32 copy of the grid; a larger tolerance
    is the library's test (labzarr tests/test_etl_inputs.py)."""
    model, reference = tiny_datasets(tiny_config)
    rounded = reference.assign_coords(lat=reference.lat.astype(np.float32) + np.float32(1e-5))
    rounded = rounded.assign_coords(lon=rounded.lon.astype(np.float32))
    write_inputs(tiny_config, model, rounded)  # the reference on the model's grid in float32: the same grid
    run_etl(tiny_config)
    assert (tiny_config.store_path / "manifest.json").is_file()
    write_inputs(tiny_config, model, shift_lat(reference, 0.02))  # 1 % of the 2-degree cells
    with pytest.raises(EtlInputError, match=r"differ by up to 0\.02 \(data\.grid_tolerance = 0, plus"):
        run_etl(tiny_config, overwrite=True)


def test_an_interrupted_write_leaves_nothing_and_keeps_the_old_store(
    tiny_inputs: Config, monkeypatch
) -> None:
    run_etl(tiny_inputs)
    before = checksums(tiny_inputs.store_path)
    calls = []
    original = pipeline.write_rows

    def interrupted(*args):
        calls.append(args)
        if len(calls) == 2:  # the first series rows are written, their climatology not yet
            raise KeyboardInterrupt
        original(*args)

    monkeypatch.setattr(pipeline, "write_rows", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_etl(tiny_inputs, overwrite=True)
    assert leftovers(tiny_inputs) == [tiny_inputs.store_path.name]  # no hidden temporary folder
    assert checksums(tiny_inputs.store_path) == before


def test_a_killed_run_leaves_no_store_that_looks_complete(tiny_inputs: Config, caplog) -> None:
    """SIGKILL while the store is being finished: the target never appears."""
    overrides = {
        "data.raw_dir": str(tiny_inputs.path(tiny_inputs.data.raw_dir)),
        "data.zarr_dir": str(tiny_inputs.path(tiny_inputs.data.zarr_dir)),
        "etl.time_lookback": 20,
        "etl.split_gap": 20,
        "etl.chunk_cells": 4,
    }
    script = f"""
import time
from {PACKAGE}.config import load_config
from {PACKAGE}.etl import pipeline
cfg = load_config({str(STUDY_ROOT / "study.toml")!r}).override({overrides!r})
real = pipeline.finalize
def slow(path, attrs, groups):
    out = real(path, attrs, groups)
    print("finalized", path.name, flush=True)
    time.sleep(60)
    return out
pipeline.finalize = slow
pipeline.run_etl(cfg)
"""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(STUDY_ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()  # the store is complete but not yet renamed into place
        assert line.startswith("finalized"), line
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    time.sleep(0.1)
    left = leftovers(tiny_inputs)
    assert tiny_inputs.store_path.name not in left
    assert left and all(name.startswith(".") for name in left)  # hidden: nginx never serves it
    with caplog.at_level(logging.WARNING):
        run_etl(tiny_inputs)  # a later run is not disturbed by the leftover, and mentions it
    assert "leftovers of interrupted runs" in caplog.text
    assert (tiny_inputs.store_path / "manifest.json").is_file()


def test_an_existing_store_is_refused_before_any_work(tiny_config: Config) -> None:
    tiny_config.store_path.mkdir(parents=True)
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_etl(tiny_config)  # no inputs at all: the existence check comes first


def test_raw_folder_missing_is_named(tiny_config: Config) -> None:
    with pytest.raises(EtlInputError, match=r"raw.*data\.raw_dir.*does not exist"):
        run_etl(tiny_config)
    assert not Path(tiny_config.path(tiny_config.data.zarr_dir)).exists()
