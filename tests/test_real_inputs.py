"""Slow tier: real CMIP6 output through a baked study with nothing but study.toml edits.

The data are PyPI's `esmvaltool-sample-data` (real CMIP6 `ta`, cut to a few cells;
installed with --no-deps by tasks.py, found with importlib). The edits are the ones the
study README's "Worked example" shows, read from the README itself, so the docs cannot
drift from what runs: CanESM5 daily output (two files, noleap calendar, 12:00 stamps,
0..360 longitudes, two pressure levels, no label files) goes through `etl` (850 hPa
selected, labels derived from the variable) and two epochs of `train` over the study's
own nginx (a smaller LSTM and a window ending every 7th day: the test is about the
plumbing). The derived labels are checked against a recomputation written here from the
raw files. Three more models go through the ETL alone: a 360_day and a julian calendar,
and monthly output (seven files, mid-month stamps).
Cost: about 35 s of CPU (four ETL runs, two short CPU epochs, process start-ups).
"""

from __future__ import annotations

import importlib.util
import json
import re
import secrets
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from servers import study_package, study_server

from .conftest import REQUIRE_ALL, require_tool, run

pytestmark = pytest.mark.slow

SAMPLE_DATA = "esmvaltool_sample_data"
CATEGORY_BOUNDS = ([0.02, 0.05, 0.10, 0.20, 0.30], [0.70, 0.80, 0.90, 0.95, 0.98])  # USDM bins, mirrored
GRINGORTEN = 0.44


def sample_data_root() -> Path:
    """The CMIP6 folder of the installed sample data (skip locally without it, fail in CI)."""
    spec = importlib.util.find_spec(SAMPLE_DATA)
    if spec is None or spec.origin is None:
        message = f"{SAMPLE_DATA} is not installed (python3 tasks.py setup installs it)"
        if REQUIRE_ALL:
            pytest.fail(f"{message}; it is required in CI")
        pytest.skip(message)
    return Path(spec.origin).parent / "data" / "timeseries" / "CMIP6"


def worked_example(readme: str) -> dict[str, str]:
    """key -> TOML value of the README's worked example (its ```toml block)."""
    section = readme.split("### Worked example", 1)[1]
    block = section.split("```toml\n", 1)[1].split("```", 1)[0]
    edits = dict(re.findall(r"(?m)^(\w+) = (.+)$", block))
    assert {"raw_dir", "model_files", "reference_kind", "select"} <= set(edits), edits
    return edits


def edited_config(study: Path, where: Path, edits: dict[str, str]) -> Path:
    """A copy of the study's study.toml with the given keys' lines replaced (keys are unique)."""
    text = (study / "study.toml").read_text()
    for key, value in edits.items():
        line = f"{key} = {value}"
        text, count = re.subn(rf"(?m)^{key} = .*$", lambda _, line=line: line, text)
        assert count == 1, f"study.toml has no single line for {key}"
    config = where / "study.toml"
    config.write_text(text)
    return config


def expected_codes(values: np.ndarray, doy: np.ndarray, train_stop: int, window: int, half: int) -> np.ndarray:
    """Category codes (cells, T) recomputed from scratch: the trailing mean, its Gringorten
    percentile among the training block's trailing means within ±half days of year, USDM bins."""
    n_cells, n_time = values.shape
    sums = np.concatenate([np.zeros((n_cells, 1)), np.cumsum(values, axis=1)], axis=1)
    trailing = np.full((n_cells, n_time), np.nan)
    trailing[:, window - 1 :] = (sums[:, window:] - sums[:, :-window]) / window
    period = 365  # noleap
    codes = np.full((n_cells, n_time), -1)
    for day in range(1, period + 1):
        distance = np.abs(doy[:train_stop] - day) % period
        near = np.minimum(distance, period - distance) <= half
        targets = doy == day
        for cell in range(n_cells):
            sample = np.sort(trailing[cell, :train_stop][near])
            sample = sample[~np.isnan(sample)]
            x = trailing[cell, targets]
            rank = (np.searchsorted(sample, x, "left") + np.searchsorted(sample, x, "right") + 1) / 2
            p = (rank - GRINGORTEN) / (len(sample) + 1 - 2 * GRINGORTEN)
            dry = np.searchsorted(CATEGORY_BOUNDS[0], p, side="left")
            wet = np.searchsorted(CATEGORY_BOUNDS[1], p, side="right")
            code = np.where(dry < 5, 10 - dry, np.where(wet > 0, 5 - wet, 5))
            codes[cell, targets] = np.where(np.isnan(x), -1, code)
    return codes


def test_real_cmip6_daily_output_goes_through_etl_and_training_with_study_toml_edits_only(
    fast_study: tuple[Path, Path], tmp_path: Path
) -> None:
    require_tool("nginx")
    root = sample_data_root()
    study, python = fast_study
    edits = worked_example((study / "README.md").read_text())
    edits.update(
        raw_dir=json.dumps(str(root)), zarr_dir=json.dumps(str(tmp_path / "zarr")), hidden_size="16", sample_stride="7"
    )
    cli = [python, "-m", study_package(study), "--config", edited_config(study, tmp_path, edits)]
    log = run([*cli, "etl"], cwd=tmp_path, timeout=300).stderr
    assert "daily time stamps at 12:00 normalised to dates" in log, log

    store = xr.open_zarr(next((tmp_path / "zarr").glob("*.zarr")), consolidated=True, mask_and_scale=False)
    files = sorted(root.glob(json.loads(edits["model_files"])[0]))
    cftime = xr.coders.CFDatetimeCoder(use_cftime=True)
    raw = xr.concat([xr.open_dataset(f, decode_times=cftime)[["ta"]] for f in files], "time", data_vars="all")
    ta = raw["ta"].sel(plev=85000.0).stack(cell=("lat", "lon")).transpose("cell", "time")
    assert len(files) == 2 and store.sizes["cell"] == ta.sizes["cell"] == 4
    # the calendar as the files name it (CanESM5: "365_day", which is noleap by another name)
    assert list(store.feature.values) == ["ta"] and store.attrs["calendar"] == file_calendar(files[0]) == "365_day"
    np.testing.assert_array_equal(store.lon.values, ta.lon.values)  # 0..360, as the model has it
    assert [t.hour for t in raw.time.values[:2]] == [12, 12]
    assert [str(t) for t in store.time.values[:2]] == ["1991-01-01 00:00:00", "1991-01-02 00:00:00"]
    train_stop = store.attrs["splits"]["train"]["stop"]
    codes = expected_codes(
        ta.values.astype(np.float32).astype(np.float64),
        ta.time.dt.dayofyear.values,
        train_stop,
        window=int(edits["derive_window"]),
        half=store.attrs["season_window"],
    )
    np.testing.assert_array_equal(store["category"].values, codes)

    token = secrets.token_urlsafe(32)
    out = tmp_path / "out"
    with study_server(python, study, tmp_path / "zarr", auth_env={"DATA_TOKEN": token}) as url:
        run([*cli, "train", "--url", url, "--epochs", "2", "--out", out], cwd=tmp_path,
            env={"DATA_TOKEN": token}, timeout=600)  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["settings"]["n_features"] == 1
    losses = [h["train_loss"] for h in summary["history"]]
    assert losses[1] < losses[0], losses
    assert summary["test"]["samples"] == 4 * len(range(0, 1086, 7))  # 4 cells, every 7th day of 1086
    assert len(summary["test"]["confusion_matrix"]) == 11


CALENDAR_KINDS = {"365_day": "noleap", "366_day": "all_leap"}  # CF's other names for a calendar


def file_calendar(path: Path) -> str:
    """The calendar attribute of a NetCDF file's time axis, as written."""
    with xr.open_dataset(path, decode_times=False) as ds:
        return str(ds["time"].attrs["calendar"])


MORE_MODELS = {
    "360_day": ("CMIP/NIMS-KMA/KACE-1-0-G/historical/r1i1p1f1/day/ta/gr/*/ta_day_*.nc", {}),
    "julian": ("CMIP/CCCR-IITM/IITM-ESM/historical/r1i1p1f1/day/ta/gn/*/ta_day_*.nc", {}),
    "noleap monthly": (
        "CMIP/NCC/NorESM2-LM/historical/r1i1p1f1/Amon/ta/gn/*/ta_Amon_*.nc",
        {
            "time_step": '"monthly"',
            "select": "{ plev = 92500 }",
            "derive_window": "3",
            "time_lookback": "12",
            "split_gap": "12",
            "season_window": "1",
        },
    ),
}


@pytest.mark.parametrize("case", sorted(MORE_MODELS))
def test_more_real_models_and_calendars_go_through_the_etl(
    fast_study: tuple[Path, Path], tmp_path: Path, case: str
) -> None:
    root = sample_data_root()
    study, python = fast_study
    pattern, more = MORE_MODELS[case]
    edits = worked_example((study / "README.md").read_text())
    edits.update(raw_dir=json.dumps(str(root)), zarr_dir=json.dumps(str(tmp_path / "zarr")))
    edits.update(model_files=json.dumps([pattern]), **more)
    cli = [python, "-m", study_package(study), "--config", edited_config(study, tmp_path, edits)]
    log = run([*cli, "etl"], cwd=tmp_path, timeout=300).stderr
    store = xr.open_zarr(next((tmp_path / "zarr").glob("*.zarr")), consolidated=True)
    calendar, _, step = case.partition(" ")  # the calendar's kind; the store keeps the file's own name for it
    files = sorted(root.glob(pattern))
    assert store.attrs["calendar"] == file_calendar(files[0]) and store.attrs["time_step"] == (step or "daily")
    assert CALENDAR_KINDS.get(store.attrs["calendar"], store.attrs["calendar"]) == calendar
    days = {t.day for t in store.time.values}
    assert days == {1} if step else len(days) >= 28
    assert "set to the first of their month" in log if step else "normalised to dates" in log
    labels = store["category"].values
    assert set(np.unique(labels[labels >= 0])) == set(range(11))
