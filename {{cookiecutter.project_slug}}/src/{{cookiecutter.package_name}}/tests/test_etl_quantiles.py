"""Skew-handling transforms: plotting positions, ties and zeros, normal scores, scikit-learn routes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.stats.mstats import plotting_positions

from ..etl import quantiles as q

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False, width=32)
samples = arrays(np.float32, st.integers(2, 60), elements=finite)
unique_samples = arrays(np.float32, st.integers(2, 60), elements=finite, unique=True)
FEATURES = ["soil_moisture", "snow_water_equivalent"]


def pct(reference: np.ndarray, x: np.ndarray, a: float = 0.44) -> np.ndarray:
    return q.percentiles_against(np.asarray(reference)[None], np.asarray(x)[None], a)[0]


@pytest.mark.parametrize("name", sorted(q.PLOTTING_POSITIONS))
@settings(max_examples=40, deadline=None)
@given(values=unique_samples)
def test_in_sample_percentiles_equal_scipy_plotting_positions(name: str, values: np.ndarray) -> None:
    a = q.PLOTTING_POSITIONS[name]
    expected = np.asarray(plotting_positions(values.astype(np.float64), alpha=a, beta=a))
    np.testing.assert_allclose(pct(values, values, a), expected, rtol=0, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(reference=samples, targets=samples)
def test_percentiles_are_monotonic_and_inside_the_unit_interval(reference, targets) -> None:
    order = np.argsort(targets, kind="stable")
    p = pct(reference, targets[order])
    assert np.all(np.diff(p) >= 0)
    assert np.all((p > 0) & (p < 1))


@settings(max_examples=60, deadline=None)
@given(reference=samples, targets=samples, scale=st.floats(0.01, 100))
def test_percentiles_are_invariant_to_monotone_rescaling(reference, targets, scale) -> None:
    def rescale(x: np.ndarray) -> np.ndarray:  # increasing and nonlinear; strict for float32 inputs
        return scale * np.arcsinh(np.cbrt(x.astype(np.float64)))

    np.testing.assert_array_equal(pct(rescale(reference), rescale(targets)), pct(reference, targets))


def test_ties_get_the_mid_rank_and_an_all_zero_cell_gets_one_half() -> None:
    zeros = np.zeros(37)
    assert np.all(pct(zeros, zeros) == 0.5)
    # 10 zeros (snow-free days) and 20 positive values: every zero gets the middle of the zero mass.
    values = np.r_[np.zeros(10), np.linspace(1, 2, 20)]
    expected = ((1 + 10) / 2 - 0.44) / (30 + 1 - 2 * 0.44)
    np.testing.assert_allclose(pct(values, values)[:10], expected)
    np.testing.assert_allclose(pct(values, [0.0]), expected)  # a new zero: the same probability


def test_out_of_sample_values_fall_between_neighbours_and_nan_stays_nan() -> None:
    reference = np.array([1.0, 2.0, 3.0, np.nan])  # NaN in the reference is ignored (n = 3)
    p = pct(reference, np.array([0.0, 1.5, 2.0, 9.0, np.nan]))
    np.testing.assert_allclose(p[:4], (np.array([0.5, 1.5, 2.0, 3.5]) - 0.44) / (3 + 1 - 0.88))
    assert np.isnan(p[4])


def test_a_uniform_samples_normal_scores_have_mean_zero_and_std_one() -> None:
    values = np.random.default_rng(1).uniform(size=20000)
    scores = q.normal_scores(pct(values, values))
    assert abs(scores.mean()) < 0.01
    assert abs(scores.std() - 1) < 0.02
    assert np.abs(scores).max() <= q.CLIP


def test_season_window_is_circular_and_uses_training_steps_only() -> None:
    period = 365
    train_doy = np.tile(np.arange(1, period + 1), 3)  # three training years
    train = np.tile(np.arange(period, dtype=np.float64), 3)[None] + np.repeat([0.0, 0.1, 0.2], period)[None]
    # Jan 1 with a ±2-day window: its reference is Dec 30, Dec 31, Jan 1, Jan 2, Jan 3 of each year.
    p = q.seasonal_percentiles(
        train, train_doy, np.array([[1.5]]), np.array([1]), window=2, period=period, a=0.0
    )
    # references below 1.5: 0, 0.1, 0.2 (Jan 1), 1, 1.1, 1.2 (Jan 2) -> 6 of 15 values.
    np.testing.assert_allclose(p, [[(6 + 0.5) / 16]])


@pytest.mark.parametrize("transform", q.TRANSFORMS)
def test_every_transform_is_monotonic_and_bounded_on_new_data(transform: str) -> None:
    rng = np.random.default_rng(2)
    spec = q.TransformSpec(transform=transform, period=365)
    train = rng.gamma(0.5, 2.0, (3, 730, 2)).astype(np.float32)
    train[:, :, 1] *= rng.uniform(size=(3, 730)) > 0.6  # zero-inflated second feature
    state = q.fit(train, spec, FEATURES)
    new = np.sort(rng.gamma(0.5, 2.0, (3, 400, 2)), axis=1).astype(np.float32)  # increasing in time
    doy = np.full(400, 100)  # one day of year, so only the value changes
    out = q.transform(state, new, doy, spec, FEATURES, train_season=np.arange(730) % 365 + 1)
    assert out.dtype == np.float32 and not np.isnan(out).any()
    assert np.all(np.diff(out, axis=1) >= -1e-6)
    if transform != "yeo_johnson":
        assert np.abs(out).max() <= 1.0


def test_quantile_normal_is_scikit_learns_quantile_transformer() -> None:
    from sklearn.preprocessing import QuantileTransformer

    rng = np.random.default_rng(3)
    train = rng.lognormal(size=(4, 500, 1)).astype(np.float32)
    spec = q.TransformSpec(transform="quantile_normal")
    state = q.fit(train, spec, FEATURES[:1])
    new = rng.lognormal(size=(4, 50, 1)).astype(np.float32)
    ours = q.transform(state, new, np.ones(50, int), spec, FEATURES[:1])[:, :, 0]
    qt = QuantileTransformer(n_quantiles=500, output_distribution="normal", subsample=None)
    theirs = qt.fit(train[:, :, 0].T.astype(np.float64)).transform(new[:, :, 0].T.astype(np.float64)).T
    np.testing.assert_allclose(ours, np.clip(theirs, -q.CLIP, q.CLIP) / q.CLIP, atol=1e-6)


def test_quantile_normal_gives_zeros_the_middle_of_their_mass() -> None:
    train = np.r_[np.zeros(300), np.linspace(1, 2, 700)].astype(np.float32)[None, :, None]
    spec = q.TransformSpec(transform="quantile_normal")
    state = q.fit(train, spec, FEATURES[:1])
    out = q.transform(state, np.zeros((1, 1, 1), np.float32), np.ones(1, int), spec, FEATURES[:1])
    np.testing.assert_allclose(out[0, 0, 0] * q.CLIP, q.normal_scores(0.15), atol=0.01)


def test_yeo_johnson_is_scikit_learns_power_transformer() -> None:
    from sklearn.preprocessing import PowerTransformer

    rng = np.random.default_rng(4)
    train = rng.gamma(1.5, 3.0, (3, 400, 1)).astype(np.float32)
    train[2] = 0.0  # a constant cell: lambda 1, output 0
    spec = q.TransformSpec(transform="yeo_johnson")
    state = q.fit(train, spec, FEATURES[:1])
    ours = q.transform(state, train, np.ones(400, int), spec, FEATURES[:1])[:, :, 0]
    theirs = PowerTransformer(method="yeo-johnson").fit_transform(train[:, :, 0].T.astype(np.float64)).T
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert np.all(ours[2] == 0)


def test_spec_rejects_unknown_names_and_round_trips_through_attrs() -> None:
    spec = q.TransformSpec(transform="percentile", plotting_position="hazen", season_window=3, period=360)
    assert q.TransformSpec.from_attrs(spec.attrs()) == spec
    monthly = q.TransformSpec(season_window=1, period=12, time_step="monthly")
    assert q.TransformSpec.from_attrs(monthly.attrs()) == monthly
    with pytest.raises(ValueError, match="unknown transform"):
        q.TransformSpec(transform="log")
    with pytest.raises(ValueError, match="unknown time step 'weekly'"):
        q.TransformSpec(time_step="weekly")
