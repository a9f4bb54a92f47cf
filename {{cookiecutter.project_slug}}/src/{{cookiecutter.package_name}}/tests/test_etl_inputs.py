"""Real inputs as products ship them: each case is a small file written here, and the ETL either
gives exactly the store of the plain inputs, or refuses with the message a user needs (and
leaves nothing under data/zarr). Cases: time of day, sub-daily data, longitude conventions and
the antimeridian, grid tolerance, extra dimensions (data.select), units, gaps, curvilinear grids."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from labzarr.etl import timeaxis
from labzarr.etl.errors import EtlInputError

from ..config import Config
from ..etl.pipeline import run_etl
from .etl_support import NAMED_VARIABLES, leftovers, open_store, tiny_datasets, write_inputs, write_netcdf

NAME_FIELDS = ("category", "complete")


@pytest.fixture
def tiny_config(tiny_config: Config) -> Config:
    """The cases name variables and their units: the two named variables, whatever the study's."""
    return tiny_config.override({"data.variables": NAMED_VARIABLES})


@pytest.fixture(scope="module")
def baseline(study_config: Config, tmp_path_factory: pytest.TempPathFactory) -> xr.Dataset:
    """The store of the plain tiny inputs (daily, 00:00 stamps, -180..180, no extra dims)."""
    where = tmp_path_factory.mktemp("baseline")
    cfg = study_config.override(
        {
            "data.variables": NAMED_VARIABLES,
            "data.raw_dir": str(where / "raw"),
            "data.zarr_dir": str(where / "zarr"),
            "etl.time_lookback": 20,
            "etl.split_gap": 20,
            "etl.chunk_cells": 4,
        }
    )
    write_inputs(cfg, *tiny_datasets(cfg))
    run_etl(cfg)
    return open_store(cfg)


def assert_same_store(cfg: Config, baseline: xr.Dataset, *, lon: np.ndarray | None = None) -> xr.Dataset:
    """The store of `cfg` holds exactly the baseline's series, labels, cells and dates."""
    got = open_store(cfg)
    name = cfg.study.dataset_name
    for field in (name, *NAME_FIELDS, "lat"):
        np.testing.assert_array_equal(got[field].values, baseline[field].values, err_msg=field)
    np.testing.assert_array_equal(got.lon.values, baseline.lon.values if lon is None else lon)
    assert list(got.time.values) == list(baseline.time.values)
    return got


def refused(cfg: Config, message: str) -> None:
    """The ETL stops with `message` (a regex) and leaves nothing under data/zarr."""
    with pytest.raises(EtlInputError, match=message):
        run_etl(cfg)
    assert leftovers(cfg) == []


# -- time of day and time steps ------------------------------------------------------------


def at_noon(ds: xr.Dataset) -> xr.Dataset:
    """The same data stamped at 12:00, as CMIP6 daily output is."""
    return ds.assign_coords(time=ds.indexes["time"] + pd.Timedelta(hours=12))


@pytest.mark.parametrize(("calendar", "named"), [("standard", "gregorian"), ("noleap", "noleap")])
def test_daily_stamps_at_noon_are_normalised_to_dates_and_logged(
    tiny_config: Config, calendar: str, named: str, caplog
) -> None:
    model, reference = tiny_datasets(tiny_config, calendar=calendar)
    write_inputs(tiny_config, at_noon(model), reference, calendar=named)  # as CMIP6 files name it
    with caplog.at_level(logging.INFO):
        run_etl(tiny_config)
    assert "model_output.nc: daily time stamps at 12:00 normalised to dates" in caplog.text
    assert f"({named} calendar)" in caplog.text
    store = open_store(tiny_config)
    assert list(store.time.values) == list(model.time.values)  # 00:00, the reference's days
    assert store.attrs["calendar"] == named and store.time.encoding["calendar"] == named  # as the file says
    assert (store["category"].values >= 0).any()


@pytest.mark.parametrize(
    "calendar", ["standard", "proleptic_gregorian", "julian", "noleap", "all_leap", "360_day"]
)
def test_stamps_become_their_date_or_month_in_every_calendar(calendar: str) -> None:
    days = xr.date_range("2001-02-26", periods=4, freq="D", calendar=calendar, use_cftime=True)
    noon = days + pd.Timedelta(hours=12)
    dates, note = timeaxis.normalise(noon, "daily", "f.nc")
    assert list(dates) == list(days) and note == "daily time stamps at 12:00 normalised to dates"
    same, note = timeaxis.normalise(days, "daily", "f.nc")
    assert list(same) == list(days) and note == ""  # dates stay as they are, silently
    month, note = timeaxis.normalise(noon[1:2], "monthly", "f.nc")
    assert timeaxis.stamp(month[0]) == "2001-02-01" and note.endswith("set to the first of their month")


def test_sub_daily_data_are_refused_with_what_to_do(tiny_config: Config) -> None:
    model, reference = tiny_datasets(tiny_config)
    six_hourly = xr.concat(
        [model.assign_coords(time=model.time + np.timedelta64(h, "h")) for h in (0, 6, 12, 18)], "time"
    )
    write_inputs(tiny_config, six_hourly.sortby("time"), reference)
    refused(
        tiny_config,
        r"model_output\.nc: more than one time stamp per day \(2000-01-01 and 2000-01-01 06:00\): the data "
        r"are 6-hourly, and etl\.time_step = 'daily' needs one value per day; aggregate to daily values "
        r"first, e\.g\. ds\.resample\(time='D'\)\.mean\(\)",
    )


def test_a_mismatched_time_step_says_which_step_the_data_have(tiny_config: Config) -> None:
    model, reference = tiny_datasets(tiny_config)
    monthly = model.resample(time="1MS").mean()
    write_inputs(tiny_config, monthly, reference)
    refused(
        tiny_config,
        r"model_output\.nc: the data are monthly \(2000-01-01 is followed by 2000-02-01\), but "
        r"etl\.time_step = 'daily'; set etl\.time_step to match the data",
    )
    write_inputs(tiny_config, model, reference)
    refused(
        tiny_config.override({"etl.time_step": "monthly", "etl.season_window": 1}),
        r"model_output\.nc: more than one time stamp per month \(2000-01-01 and 2000-01-02\): the data are "
        r"daily, .*set etl\.time_step = 'daily', or aggregate to monthly means first",
    )


def test_missing_days_are_refused_or_filled_with_nan(tiny_config: Config, caplog) -> None:
    model, reference = tiny_datasets(tiny_config)
    write_inputs(tiny_config, model.drop_isel(time=[100, 101, 102]), reference)
    refused(
        tiny_config,
        r"model_output\.nc: time steps must be one day; 2000-04-09 is followed by 2000-04-13 \(3 missing\); "
        r"set data\.fill_gaps = true to fill missing days with NaN",
    )
    cfg = tiny_config.override({"data.fill_gaps": True})
    with caplog.at_level(logging.INFO):
        run_etl(cfg)
    assert "model_output.nc: filled 3 days missing between 2000-01-01 and 2002-12-31 with NaN" in caplog.text
    ds = open_store(cfg)
    assert list(ds.time.values) == list(model.time.values)
    assert not ds["complete"].values[:, 100:103].any() and ds["complete"].values[:, 99].any()


def test_filled_gaps_do_not_count_as_data(tiny_config: Config, caplog) -> None:
    """A training block that is mostly filled gaps is refused for a seasonal fit (fewer than a year
    of steps in the files); a split with data on fewer than half its steps is warned about."""
    model, reference = tiny_datasets(tiny_config)
    cfg = tiny_config.override({"data.fill_gaps": True})
    time = model.indexes["time"]
    write_inputs(cfg, model.sel(time=(time < "2000-03-01") | (time > "2001-10-31")), reference)
    refused(cfg, r"the training block has data on 129 days, less than the 366 days year")
    write_inputs(cfg, model.sel(time=(time < "2002-08-20") | (time > "2002-11-30")), reference)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run_etl(cfg)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("split test has data on 56 of its 159 days (the rest are gaps filled" in m for m in warned)
    assert len(warned) == 1 and "split train has data" not in caplog.text  # no gap there: nothing said


# -- grids ---------------------------------------------------------------------------------


def wrap_180(lon: np.ndarray) -> np.ndarray:
    return (np.asarray(lon) + 180.0) % 360.0 - 180.0


@pytest.mark.parametrize("case", ["reference 0..360", "model 0..360", "across the antimeridian"])
def test_longitude_conventions_are_matched_and_labels_stay_on_their_cells(
    tiny_config: Config, baseline: xr.Dataset, case: str, caplog
) -> None:
    model, reference = tiny_datasets(tiny_config)
    lon = model.lon.values
    if case == "reference 0..360":
        model_lon, reference_lon = lon, lon % 360
    elif case == "model 0..360":
        model_lon, reference_lon = lon % 360, lon
    else:  # 177, 179.3, 181.7, 184 in the model; the reference on -180..180, sorted (it wraps)
        model_lon = lon + 300.0
        reference_lon = wrap_180(model_lon)
    write_inputs(
        tiny_config,
        model.assign_coords(lon=model_lon),
        reference.assign_coords(lon=reference_lon).sortby("lon"),
    )
    with caplog.at_level(logging.INFO):
        run_etl(tiny_config)
    assert "longitudes: the model output uses" in caplog.text
    moved = dict(zip(lon.tolist(), model_lon.tolist(), strict=True))
    assert_same_store(tiny_config, baseline, lon=np.array([moved[x] for x in baseline.lon.values.tolist()]))


def test_a_grid_tolerance_over_half_the_spacing_is_refused_saying_why(tiny_config: Config) -> None:
    model, reference = tiny_datasets(tiny_config)
    write_inputs(tiny_config, model, reference.assign_coords(lon=reference.lon % 360))
    refused(
        tiny_config.override({"data.grid_tolerance": 181.0}),
        r"data\.grid_tolerance = 181 is not below half the model's lat spacing \(2 / 2 = 1\): with it, a "
        r"reference value could pair with the neighbouring cell's and labels would land on the wrong cells",
    )


def test_curvilinear_grids_are_refused_with_what_to_do(tiny_config: Config) -> None:
    model, reference = tiny_datasets(tiny_config)
    y, x = np.meshgrid(model.lat.values, model.lon.values, indexing="ij")
    curvilinear = model.rename(lat="y", lon="x").drop_vars(["y", "x"])
    curvilinear = curvilinear.assign_coords(lat=(("y", "x"), y + 0.1 * x), lon=(("y", "x"), x))
    write_inputs(tiny_config, curvilinear, reference)
    refused(
        tiny_config,
        r"model_output\.nc: lat is 2-D \('y', 'x'\): a curvilinear grid, which the ETL does not support "
        r".*regrid to a regular lat/lon grid first, e\.g\. with xESMF",
    )


# -- extra dimensions ----------------------------------------------------------------------


def with_levels(ds: xr.Dataset, levels: list[float], keep: float) -> xr.Dataset:
    """Every variable on pressure levels (Pa): the original data at `keep`, other numbers elsewhere."""
    layers = [ds if level == keep else ds * 1.7 + 3.0 for level in levels]
    out = xr.concat(layers, pd.Index(levels, name="plev")).transpose("time", "plev", "lat", "lon")
    out["plev"].attrs["units"] = "Pa"
    for v in ds.data_vars:
        out[v].attrs = ds[v].attrs
    return out


def test_an_extra_dimension_is_selected_with_data_select(tiny_config: Config, baseline: xr.Dataset) -> None:
    model, reference = tiny_datasets(tiny_config)
    write_inputs(tiny_config, with_levels(model, [100000.0, 85000.00000001], keep=85000.00000001), reference)
    refused(
        tiny_config,
        r"model_output\.nc: variable 'soil_moisture' has dims \('time', 'plev', 'lat', 'lon'\); the ETL "
        r"needs \('time', 'lat', 'lon'\)\. Pick one plev with data\.select in study\.toml, e\.g\. "
        r"select = \{ plev = 100000 \} \(its values: 100000, 85000\)",
    )
    refused(
        tiny_config.override({"data.select": {"plev": 50000}}),
        r"variable 'soil_moisture': data\.select asks for plev = 50000; the nearest value is 85000 \(35000 "
        r"away, data\.select_tolerance = 0\)",
    )
    run_etl(tiny_config.override({"data.select": {"plev": 85000}}))  # float noise is no difference
    assert_same_store(tiny_config, baseline)


def test_select_per_variable_and_a_dimension_no_variable_has(
    tiny_config: Config, baseline: xr.Dataset
) -> None:
    model, reference = tiny_datasets(tiny_config)
    soil = with_levels(model[["soil_moisture"]], [0.05, 0.3], keep=0.3).rename(plev="depth")
    write_inputs(tiny_config, None, reference)
    raw = tiny_config.path(tiny_config.data.raw_dir)
    write_netcdf(soil, raw / "model_output_soil.nc")
    write_netcdf(model[["snow_water_equivalent"]], raw / "model_output_snow.nc")
    refused(
        tiny_config.override({"data.select": {"height": 2.0, "soil_moisture": {"depth": 0.3}}}),
        r"data\.select names 'height', which no variable has as a dimension",
    )
    refused(
        tiny_config.override(
            {"data.select": {"soil_moisture": {"depth": 0.3}, "snow_water_equivalent": {"depth": 0}}}
        ),
        r"variable 'snow_water_equivalent': data\.select\.snow_water_equivalent names 'depth', which it "
        r"does not have",
    )
    run_etl(tiny_config.override({"data.select": {"soil_moisture": {"depth": 0.3}}}))
    assert_same_store(tiny_config, baseline)


# -- units ---------------------------------------------------------------------------------


def by_year(cfg: Config, model: xr.Dataset, units: dict[int, str]) -> Path:
    """The model output as one file per year, with the given units of soil_moisture per year."""
    raw = cfg.path(cfg.data.raw_dir)
    (raw / "model_output.nc").unlink(missing_ok=True)
    for year, part in model.groupby("time.year"):
        part = part.copy()
        part["soil_moisture"].attrs["units"] = units[year]
        write_netcdf(part, raw / f"model_output_{year}.nc")
    return raw


def test_units_that_differ_between_files_are_refused(tiny_config: Config) -> None:
    model, reference = tiny_datasets(tiny_config)
    write_inputs(tiny_config, None, reference)
    by_year(tiny_config, model, {2000: "K", 2001: "K", 2002: "degC"})
    refused(
        tiny_config,
        r"model_output_2000\.nc and model_output_2002\.nc: variable 'soil_moisture' is in 'K' in one and "
        r"'degC' in the other \(0 K = -273\.15 degC, 1 K = -272\.15 degC\); convert the files to one unit",
    )


def test_units_are_compared_as_units_and_against_data_units(
    tiny_config: Config, baseline: xr.Dataset
) -> None:
    model, reference = tiny_datasets(tiny_config)
    write_inputs(tiny_config, None, reference)
    by_year(tiny_config, model, {2000: "m3 m-3", 2001: "m3/m3", 2002: "1"})  # the same unit, spelt three ways
    refused(
        tiny_config.override({"data.units": {"snow_water_equivalent": "kg m-2"}}),
        r"model_output_2000\.nc: variable 'snow_water_equivalent' is in 'mm', but data\.units expects "
        r"'kg m-2' \(they measure different quantities\)",
    )
    run_etl(tiny_config.override({"data.units": {"soil_moisture": "1", "snow_water_equivalent": "mm"}}))
    assert_same_store(tiny_config, baseline)
