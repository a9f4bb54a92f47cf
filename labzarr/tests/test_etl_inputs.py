"""The ETL's input checks on small files written here: what a hostile review of real inputs found
(issue 21): infinite values, duplicate or unsorted coordinates, rotated-pole, projected and
curvilinear grids, out-of-range longitudes, damaged files, absolute input patterns, float32
coordinates, calendar names, and split blocks that are mostly filled gaps."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from labzarr.etl import grid
from labzarr.etl.errors import EtlInputError
from labzarr.etl.inputs import (
    Opened,
    Part,
    Reading,
    find_inputs,
    open_inputs_of,
    read_parts,
    warn_sparse_blocks,
)
from labzarr.store_format import SplitBlock

READING = Reading(aliases={"y": "lat", "x": "lon"}, select={}, select_tolerance=0.0, time_step="daily",
                  fill_gaps=False)  # fmt: skip
LAT = np.array([49.5, 47.5, 45.5])  # north to south, as many products are
LON = np.array([-120.0, -117.5, -115.0, -112.5])


def dataset(lat: np.ndarray = LAT, lon: np.ndarray = LON, days: int = 30) -> xr.Dataset:
    """A small (time, lat, lon) input with one variable `v`, values 0..n-1."""
    time = pd.date_range("2000-01-01", periods=days, freq="D")
    values = np.arange(days * lat.size * lon.size, dtype=np.float32).reshape(days, lat.size, lon.size)
    return xr.Dataset({"v": (("time", "lat", "lon"), values)}, coords={"time": time, "lat": lat, "lon": lon})


def written(ds: xr.Dataset, path: Path, **encoding: dict) -> Path:
    ds.to_netcdf(path, engine="netcdf4", encoding=encoding or None)
    return path


def opened(ds: xr.Dataset, folder: Path, reading: Reading = READING) -> Opened:
    """`ds` written as `folder`/model.nc (a new folder per file: open files stay cached) and opened."""
    folder.mkdir(parents=True, exist_ok=True)
    return open_inputs_of([written(ds, folder / "model.nc")], ["v"], reading)


def read(ds: xr.Dataset, paths: list[Path]) -> list[np.ndarray]:
    """The whole grid of an opened input read as the ETL reads a block."""
    return read_parts([Part("v", ds["v"].data, paths)], ds.indexes["time"], ds.lat.values, ds.lon.values)


# -- item 1: infinite values -----------------------------------------------------------------------


def test_infinite_values_are_refused_naming_variable_cell_and_dates(tmp_path: Path) -> None:
    ds = dataset()
    ds["v"][10:15, 1, 2] = np.inf
    ds["v"][3, 0, 0] = np.nan  # NaN is missing data, not an error
    model = opened(ds, tmp_path).ds
    with pytest.raises(
        EtlInputError,
        match=r"^model\.nc: variable 'v' is infinite at lat 47\.5, lon -115 on 5 time step\(s\) "
        r"\(2000-01-11 to 2000-01-15\); only NaN means missing",
    ):
        read(model, [tmp_path / "model.nc"])
    ds["v"][10:15, 1, 2] = -np.inf
    ds["v"][20, 2, 3] = np.inf
    with pytest.raises(EtlInputError, match=r"on 5 time step.*, and in 1 more cell\(s\) of the same block"):
        read(opened(ds, tmp_path / "b").ds, [tmp_path / "model.nc"])
    ds["v"][10:15, 1, 2] = 1.0
    ds["v"][20, 2, 3] = 1.0
    values = read(opened(ds, tmp_path / "c").ds, [tmp_path / "model.nc"])[0]
    assert np.isnan(values[3, 0, 0]) and np.isfinite(values).sum() == values.size - 1


# -- item 2: duplicate and unsorted coordinates ----------------------------------------------------


@pytest.mark.parametrize(
    ("lat", "lon", "message"),
    [
        ([49.5, 49.5, 45.5], LON, r"lat has duplicate values \(49\.5 at positions 0, 1\)"),
        (
            LAT,
            [0.0, 90.0, 180.0, 360.0],
            r"lon has duplicate values \(0, 360 at positions 0, 3\).*a repeated cyclic column\?",
        ),
        ([47.5, 49.5, 45.5], LON, r"lat is neither increasing nor decreasing \(47\.5, 49\.5, 45\.5 at pos"),
        (LAT, [-120.0, -115.0, -117.5, -112.5], r"lon is neither increasing nor decreasing \(-120, -115, "),
    ],
)
def test_duplicate_or_unsorted_coordinates_are_refused_naming_them(
    tmp_path: Path, lat: list[float], lon: list[float], message: str
) -> None:
    with pytest.raises(EtlInputError, match=r"model\.nc: " + message):
        opened(dataset(np.array(lat), np.array(lon)), tmp_path)


@pytest.mark.parametrize(
    "lon",
    [
        [170.0, 175.0, 180.0, -175.0],
        [185.0, 180.0, 175.0, 170.0],
        [0, 120, 240, 359],
        [-178.0, -176.0, 177.0, 179.0],
    ],
)
def test_sorted_grids_pass_also_across_the_antimeridian(tmp_path: Path, lon: list[float]) -> None:
    ds = opened(dataset(LAT[::-1], np.array(lon)), tmp_path).ds
    assert ds.lon.values.tolist() == lon


# -- item 5: rotated-pole, projected and curvilinear grids; out-of-range coordinates ----------------


def rotated(mapping: str = "rotated_latitude_longitude") -> xr.Dataset:
    """A rotated-pole file (rlat, rlon within ordinary ranges) whose dims data.dim_aliases renames."""
    ds = dataset().rename(lat="rlat", lon="rlon")
    ds["rotated_pole"] = xr.DataArray(0, attrs={"grid_mapping_name": mapping})
    ds["v"].attrs["grid_mapping"] = "rotated_pole"
    return ds


ROTATED = Reading(**{**READING.__dict__, "aliases": {"rlat": "lat", "rlon": "lon"}})


def test_a_rotated_pole_grid_mapping_is_refused_even_when_aliased_to_lat_lon(tmp_path: Path) -> None:
    with pytest.raises(
        EtlInputError,
        match=r"model\.nc: variable 'v' is on a rotated_latitude_longitude grid \(grid_mapping = "
        r"'rotated_pole'\): its coordinates are not latitudes and longitudes.*regrid to a regular lat/lon",
    ):
        opened(rotated(), tmp_path, ROTATED)
    assert opened(rotated("latitude_longitude"), tmp_path / "b", ROTATED).ds.sizes["lat"] == 3  # plain crs


def test_rotated_or_projected_standard_names_are_refused(tmp_path: Path) -> None:
    ds = dataset().rename(lat="rlat", lon="rlon")
    ds["rlon"].attrs["standard_name"] = "grid_longitude"
    with pytest.raises(EtlInputError, match=r"the lon coordinate has standard_name 'grid_longitude'"):
        opened(ds, tmp_path, ROTATED)


@pytest.mark.parametrize(
    ("lat", "lon", "message"),
    [
        (LAT, LON + 510.0, r"lon has values outside \[-180, 360\] \(e\.g\. 390\)"),
        (LAT, LON - 100.0, r"lon has values outside \[-180, 360\] \(e\.g\. -220\)"),
        (LAT + 45.0, LON, r"lat has values outside \[-90, 90\] \(e\.g\. 94\.5\)"),
    ],
)
def test_coordinates_out_of_range_are_refused(
    tmp_path: Path, lat: np.ndarray, lon: np.ndarray, message: str
) -> None:
    with pytest.raises(EtlInputError, match=message + r".*rotated-pole or projected"):
        opened(dataset(lat, lon), tmp_path)


def nemo() -> xr.Dataset:
    """The NEMO/ORCA layout: dims (y, x), 2-D nav_lat/nav_lon, no lat or lon at all."""
    ds = dataset().rename(lat="y", lon="x").drop_vars(["y", "x"])
    y, x = np.meshgrid(LAT, LON, indexing="ij")
    return ds.assign_coords(
        nav_lat=(("y", "x"), y, {"standard_name": "latitude", "units": "degrees_north"}),
        nav_lon=(("y", "x"), x + 0.1 * y, {"standard_name": "longitude", "units": "degrees_east"}),
    )


def test_a_curvilinear_grid_is_named_whatever_its_coordinates_are_called(tmp_path: Path) -> None:
    with pytest.raises(
        EtlInputError,
        match=r"model\.nc: nav_lat is 2-D \('y', 'x'\): a curvilinear grid, which the ETL does not support "
        r".*regrid to a regular lat/lon grid first",
    ):
        opened(nemo(), tmp_path)
    bounds = dataset().assign_coords(lat_bnds=(("lat", "bnds"), np.stack([LAT - 1, LAT + 1], -1)))
    bounds["lat_bnds"].attrs["units"] = "degrees_north"
    assert opened(bounds, tmp_path / "b").ds.sizes["lat"] == 3  # 2-D bounds are not a curvilinear grid


# -- item 12: damaged files and absolute patterns --------------------------------------------------


def test_a_damaged_file_is_named_when_its_values_are_read(tmp_path: Path) -> None:
    path = written(dataset(days=200), tmp_path / "model.nc", v={"zlib": True, "chunksizes": (20, 3, 4)})
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4000] = bytes(b ^ 0x5A for b in data[middle : middle + 4000])
    path.write_bytes(bytes(data))
    model = open_inputs_of([path], ["v"], READING).ds  # the header is intact: opening works
    with pytest.raises(
        EtlInputError,
        match=r"^model\.nc: cannot read variable 'v' \(RuntimeError: NetCDF: HDF error\); a file may be "
        r"damaged or truncated",
    ):
        read(model, [path])


def test_absolute_patterns_are_taken_as_they_are(tmp_path: Path) -> None:
    raw, elsewhere = tmp_path / "raw", tmp_path / "cmip6"
    for folder in (raw, elsewhere):
        folder.mkdir()
        (folder / "model_2000.nc").touch()
    found = find_inputs(raw, [str(elsewhere / "model_*.nc"), "model_*.nc"], "data.model_files")
    assert found == [elsewhere / "model_2000.nc", raw / "model_2000.nc"]
    assert find_inputs(tmp_path / "absent", [str(elsewhere / "*.nc")], "k") == [elsewhere / "model_2000.nc"]
    with pytest.raises(EtlInputError, match=r"no file matches k = .* relative to data\.raw_dir"):
        find_inputs(raw, [str(elsewhere / "nothing*.nc")], "k")


# -- item 14: rounding is no grid difference; a shift of part of a cell is -------------------------


def global_grid(step: float = 0.25) -> xr.Dataset:
    lat = np.arange(-89.875, 90, step)[:8]
    lon = np.arange(step / 2, 360, step)[-8:]  # 358.125 .. 359.875: float32's coarsest steps
    return dataset(lat, lon, days=2)


def test_float32_coordinates_match_by_default_and_a_part_cell_shift_does_not() -> None:
    model = global_grid()
    in_float32 = model.assign_coords(
        lat=model.lat.astype(np.float32), lon=model.lon.astype(np.float32) + 3e-5
    )
    distance = np.abs(in_float32.lon.values.astype(np.float64) - model.lon.values).max()
    assert 1e-5 < distance < 1e-4  # the review's 3.05e-05: rounding, not place
    matched = grid.match_grid(model, in_float32["v"], 0.0, "m.nc and r.nc")
    np.testing.assert_array_equal(matched.values, model["v"].values)
    for shift in (0.125, 0.01):  # half a cell, and 4 % of one
        with pytest.raises(
            EtlInputError, match=r"the lat coordinates .* differ by up to .*grid_tolerance = 0, plus"
        ):
            grid.match_grid(model, model["v"].assign_coords(lat=model.lat + shift), 0.0, "m.nc and r.nc")
    wider = model["v"].assign_coords(lat=model.lat + 0.01)
    assert grid.match_grid(model, wider, 0.02, "m.nc and r.nc").shape == (2, 8, 8)  # data.grid_tolerance
    row = model.isel(lat=[0])  # one row has no spacing: only float32 rounding is allowed
    with pytest.raises(EtlInputError, match=r"the lat coordinates .* differ by up to 0\.001 "):
        grid.match_grid(row, row["v"].assign_coords(lat=row.lat + 0.001), 0.0, "m.nc and r.nc")


# -- item 15: calendar names -----------------------------------------------------------------------


@pytest.mark.parametrize("calendar", ["standard", "gregorian", "proleptic_gregorian", "noleap"])
def test_the_calendar_keeps_the_name_the_file_gives_it(tmp_path: Path, calendar: str) -> None:
    ds = dataset()
    if calendar == "noleap":
        ds = ds.convert_calendar("noleap", use_cftime=True)
    time = {"units": "days since 2000-01-01", "calendar": calendar}
    path = written(ds, tmp_path / "model.nc", time=time)
    assert open_inputs_of([path], ["v"], READING).calendar == calendar


# -- item 16: split blocks that are mostly filled gaps ---------------------------------------------


def test_sparse_split_blocks_are_warned_about_and_real_steps_counted(caplog) -> None:
    blocks = {"train": SplitBlock("train", 0, 10), "valid": SplitBlock("valid", 12, 16)}
    present = np.ones(16, dtype=bool)
    with caplog.at_level(logging.INFO):
        assert warn_sparse_blocks(blocks, present, "daily", "m.nc") == {"train": 10, "valid": 4}
    assert caplog.text == ""  # no gap filled: nothing to say
    present[5:10] = present[12:15] = False
    with caplog.at_level(logging.INFO):
        assert warn_sparse_blocks(blocks, present, "daily", "m.nc") == {"train": 5, "valid": 1}
    records = {r.getMessage().split(" has ")[0]: r for r in caplog.records}
    assert records["m.nc: split train"].levelno == logging.INFO  # 5 of 10: half is enough
    assert records["m.nc: split valid"].levelno == logging.WARNING
    assert "split valid has data on 1 of its 4 days (the rest are gaps filled with NaN)" in caplog.text


def test_a_missing_season_or_year_in_a_split_is_warned_about_even_with_half_its_days(caplog) -> None:
    """The review's case: a year missing from a 725-day training block leaves 366 days with data,
    just over half; the metrics then miss whole seasons of that year. A shorter gap is logged."""
    blocks = {"train": SplitBlock("train", 0, 725)}
    present = np.ones(725, dtype=bool)
    present[100:160] = False  # two months: logged, not warned about
    with caplog.at_level(logging.INFO):
        assert warn_sparse_blocks(blocks, present, "daily", "m.nc") == {"train": 665}
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    caplog.clear()
    present[100:459] = False  # the review's missing year: 366 of 725 days with data
    with caplog.at_level(logging.INFO):
        assert warn_sparse_blocks(blocks, present, "daily", "m.nc") == {"train": 366}
    assert [r.levelno for r in caplog.records] == [logging.WARNING], caplog.text
