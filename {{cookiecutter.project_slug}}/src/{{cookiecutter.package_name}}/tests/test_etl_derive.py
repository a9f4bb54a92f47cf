"""Labels derived from a variable: the trailing mean, the labels of the raw inputs computed exactly,
fitted on the training block only (later data cannot change them), both sides of the 11
categories, a variable that is not a feature, and the config rules of the mode."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from labzarr.etl import timeaxis
from labzarr.store_format import blocks_from_attrs

from ..config import Config, ConfigError
from ..etl.categories import CATEGORIES, MISSING
from ..etl.derive import derived_codes, trailing_mean
from ..etl.pipeline import run_etl
from ..etl.quantiles import TransformSpec
from ..synthetic import MODEL_FILE, SIZES, training_steps, write_synthetic
from .etl_support import NAMED_VARIABLES, open_store, tiny_datasets, write_inputs

DERIVED = {
    "data.reference_kind": "derived",
    "data.derive_from": "soil_moisture",
    "data.derive_window": 7,
    "data.reference_files": [],
}


def test_trailing_mean_is_the_mean_of_whole_windows_and_a_nan_blanks_only_its_windows() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(2, 40))
    values[1, 20] = np.nan
    window = 5
    got = trailing_mean(values, window)
    for cell in range(2):
        for t in range(40):
            part = values[cell, t - window + 1 : t + 1] if t >= window - 1 else [np.nan]
            expected = np.mean(part) if len(part) == window else np.nan
            np.testing.assert_allclose(got[cell, t], expected, rtol=1e-12, equal_nan=True)
    assert np.isnan(got[1, 20:25]).all() and np.isfinite(got[1, 25:]).all()
    assert np.isnan(trailing_mean(values, 41)).all()


@pytest.fixture
def derived(tiny_config: Config) -> Config:
    """Tiny synthetic inputs whose labels were ranked on this config's training block, and the
    config that derives the labels itself from soil moisture (the study's variables or not)."""
    tiny_config = tiny_config.override({"data.variables": NAMED_VARIABLES})
    etl = tiny_config.etl
    steps = training_steps(
        SIZES["tiny"],
        "standard",
        lookback=etl.time_lookback,
        gap=etl.split_gap,
        fractions=etl.split_fractions,
    )
    write_synthetic(tiny_config.path(tiny_config.data.raw_dir), tiny_config.data.variables, train_steps=steps,
                    size=SIZES["tiny"])  # fmt: skip
    return tiny_config.override(DERIVED)


def test_derived_labels_are_the_trailing_mean_categories_of_the_raw_variable(derived: Config) -> None:
    """The ETL's derived labels are `etl.derive` applied to each stored cell's raw series as written
    (float32), fitted on the store's training block: the right cells, days and block. Every land
    cell is labelled, the one the synthetic reference leaves unlabelled too."""
    run_etl(derived)
    ds = open_store(derived)
    model = xr.open_dataset(derived.path(derived.data.raw_dir) / MODEL_FILE)
    soil = model.soil_moisture.sel(lat=ds.lat, lon=ds.lon).transpose("cell", "time").values.astype(np.float32)
    train = blocks_from_attrs(ds.attrs)["train"]
    spec = TransformSpec(season_window=int(ds.attrs["season_window"]), period=int(ds.attrs["season_period"]))
    season = timeaxis.season_index(ds.time, "daily")
    expected = derived_codes(soil, season, slice(train.start, train.stop), window=7, spec=spec)
    np.testing.assert_array_equal(ds["category"].values, expected)
    assert (ds["category"].values[:, 7:] != MISSING).all()
    assert ds.attrs["labels"]["derived_from"] == "soil_moisture"


def test_derived_labels_of_the_training_block_ignore_later_data(derived: Config) -> None:
    run_etl(derived)
    before = open_store(derived)
    train = blocks_from_attrs(before.attrs)["train"]
    model, _ = tiny_datasets(derived)
    later = model.time > before.time.values[train.stop - 1]
    model["soil_moisture"] = model.soil_moisture.where(~later, model.soil_moisture * 0.5)  # a drier future
    write_inputs(derived, model, None)
    run_etl(derived, overwrite=True)
    after = open_store(derived)
    np.testing.assert_array_equal(
        after["category"].values[:, : train.stop], before["category"].values[:, : train.stop]
    )
    dry = CATEGORIES.index("D0")
    share = [(ds["category"].values[:, train.stop :] >= dry).mean() for ds in (before, after)]
    assert share[1] > share[0] + 0.3, share  # the later labels are ranked against the wetter past


def test_both_sides_of_the_categories_and_a_variable_that_is_not_a_feature(derived: Config) -> None:
    cfg = derived.override({"data.variables": ["snow_water_equivalent"]})
    run_etl(cfg)
    ds = open_store(cfg)
    assert list(ds.feature.values) == ["snow_water_equivalent"]
    train = blocks_from_attrs(ds.attrs)["train"]
    codes = ds["category"].values[:, train.start : train.stop]
    codes = codes[codes != MISSING]
    assert set(np.unique(codes)) == set(range(len(CATEGORIES)))  # W4 .. D4, all present
    dry = (codes > CATEGORIES.index("N")).mean()  # percentile <= 30 %
    wet = (codes < CATEGORIES.index("N")).mean()  # percentile >= 70 %: the mirror
    assert abs(dry - 0.3) < 0.03 and abs(wet - 0.3) < 0.03, (dry, wet)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"data.derive_from": ""}, r"reference_kind = 'derived' needs data\.derive_from"),
        ({"data.reference_files": ["reference*.nc"]}, r"would not be read: .*set reference_files = \[\]"),
        ({"data.reference_kind": "codes"}, r"derive_from = 'soil_moisture' is only read when"),
    ],
)
def test_the_derived_mode_is_configured_consistently(
    tiny_config: Config, changes: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny_config.override({**DERIVED, **changes})
