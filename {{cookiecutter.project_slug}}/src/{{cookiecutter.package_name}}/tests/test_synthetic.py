"""The synthetic dataset: deterministic, realistic in the ways that matter, consistent labels."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from ..etl.categories import CATEGORIES, MISSING
from ..synthetic import MODEL_FILE, REFERENCE_FILE, SIZES, generate, label_scales, labels, write_synthetic

VARIABLES = ["soil_moisture", "snow_water_equivalent"]


def test_same_seed_same_data_other_seed_other_data() -> None:
    a, ra = generate(VARIABLES, SIZES["tiny"], seed=3)
    b, rb = generate(VARIABLES, SIZES["tiny"], seed=3)
    c, _ = generate(VARIABLES, SIZES["tiny"], seed=4)
    xr.testing.assert_identical(a, b)
    xr.testing.assert_identical(ra, rb)
    assert not a.soil_moisture.equals(c.soil_moisture)


def test_realistic_properties() -> None:
    model, reference = generate(VARIABLES, SIZES["small"])
    assert model.soil_moisture.dims == ("time", "lat", "lon")
    land = model.soil_moisture.notnull().any("time")
    assert 0 < int((~land).sum()) < land.size, "some but not all cells are all-NaN (land mask)"
    sm = model.soil_moisture.where(land, drop=True).values.ravel()
    sm = sm[np.isfinite(sm)]
    assert sm.min() > 0.0 and sm.max() < 0.5
    skew = np.mean((sm - sm.mean()) ** 3) / sm.std() ** 3
    assert abs(skew) > 0.1, "soil moisture is skewed"
    swe = model.snow_water_equivalent.values
    zero_fraction = np.mean(swe[np.isfinite(swe)] == 0)
    assert 0.3 < zero_fraction < 0.95, "snow water equivalent is zero-inflated"
    assert (model.indexes["time"].strftime("%m-%d") == "02-29").any(), "leap days present"
    codes = reference.drought_category.values
    assert set(np.unique(codes)) == {MISSING, *range(len(CATEGORIES))}
    # labels follow the data: dry categories come with lower soil moisture (same cell, same season)
    dry = reference.drought_category >= CATEGORIES.index("D1")
    wet = (reference.drought_category <= CATEGORIES.index("W1")) & (reference.drought_category >= 0)
    assert float(model.soil_moisture.where(dry).mean()) < float(model.soil_moisture.where(wet).mean())


@pytest.mark.parametrize("calendar", ["noleap", "360_day"])
def test_cftime_calendars(calendar: str) -> None:
    model, _ = generate(VARIABLES, SIZES["tiny"], calendar=calendar)
    days = 360 if calendar == "360_day" else 365
    assert model.sizes["time"] == days * SIZES["tiny"].years


def test_write_refuses_to_overwrite_unless_asked(tmp_path) -> None:
    paths = write_synthetic(tmp_path, VARIABLES, SIZES["tiny"])
    assert [p.name for p in paths] == [MODEL_FILE, REFERENCE_FILE]
    with xr.open_dataset(paths[1]) as ref:
        assert ref.drought_category.attrs["flag_meanings"].split() == list(CATEGORIES)
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_synthetic(tmp_path, VARIABLES, SIZES["tiny"])
    write_synthetic(tmp_path, VARIABLES, SIZES["tiny"], overwrite=True)
    assert not list(tmp_path.glob(".*tmp*")), "no temporary files left behind"


def test_a_label_needs_the_whole_lookback_and_nothing_older() -> None:
    """Drying 30 days after the training period changes the labels of the days whose lookback
    window holds them (up to a whole lookback later, when they are the window's oldest days),
    and no label before them or beyond the lookback."""
    lookback, train_steps = 60, 700
    assert label_scales(180) == (30, 90, 180) and label_scales(6) == (1, 3, 6)
    model, _ = generate(VARIABLES, SIZES["tiny"], train_steps=train_steps, lookback=lookback)
    soil = model.soil_moisture.values.reshape(model.sizes["time"], -1)
    land = np.isfinite(soil).all(axis=0)
    soil = soil[:, land]
    start, stop = 800, 830
    drier = soil.copy()
    drier[start:stop] *= 0.6
    kwargs = {"lookback": lookback, "time_step": "daily", "train_steps": train_steps}
    before = labels(soil, model.time, **kwargs)
    after = labels(drier, model.time, **kwargs)
    changed = (before != after).any(axis=1)
    assert not changed[:start].any() and not changed[stop + lookback - 1 :].any()
    late = slice(stop + lookback // 2, stop + lookback - 1)  # the dry days are in the window's older half
    assert changed[late].any() and (after[start:stop] >= before[start:stop]).all()  # drier, never wetter
