"""Labels derived from a variable (`data.reference_kind = "derived"`), fitted on the training block only.

Many studies have no label files. The US Drought Monitor's objective blends rank a
drought indicator's recent mean against its own climatology; so do we: the label of
a cell on a step is the category (`categories.percentile_to_code`, wet side mirrored)
of the percentile of the trailing mean of `data.derive_from` over `data.derive_window`
steps, ranked against that cell's trailing means on the *training block* within
`etl.season_window` steps of the same season (day of year, or month of year).

Why the training block only: ranking over the whole record lets the validation and
test periods shape the labels the model is scored on (a wet future makes the past
look dry). With the fit on the training block, labels there do not depend on
later data at all, which the tests check.

A trailing mean is missing (and the label MISSING) until a whole window of finite
values precedes the step; one missing value blanks the windows that contain it.
The synthetic generator labels its data with these same functions.
"""

from __future__ import annotations

import numpy as np

from .categories import percentile_to_code
from .quantiles import TransformSpec, seasonal_percentiles


def trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean (float64) of each step and the window - 1 steps before it, along the last axis.

    NaN where the window is incomplete: the first window - 1 steps, and every window
    holding a NaN (counted with a cumulative sum, so a NaN does not spread further).
    """
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[-1]
    out = np.full(values.shape, np.nan)
    if window > n:
        return out
    missing = np.isnan(values)
    sums = np.zeros((*values.shape[:-1], n + 1))
    np.cumsum(np.where(missing, 0.0, values), axis=-1, out=sums[..., 1:])
    gaps = np.zeros((*values.shape[:-1], n + 1), dtype=np.int64)
    np.cumsum(missing, axis=-1, out=gaps[..., 1:])
    window_sum = sums[..., window:] - sums[..., :-window]
    window_gaps = gaps[..., window:] - gaps[..., :-window]
    out[..., window - 1 :] = np.where(window_gaps == 0, window_sum / window, np.nan)
    return out


def derived_codes(
    values: np.ndarray, season: np.ndarray, train: slice, *, window: int, spec: TransformSpec
) -> np.ndarray:
    """Category codes (int8, cells x T) of a variable (cells x T) whose training block is `train`.

    `season` is the season index of every step (timeaxis.season_index); the season
    window, its period and the plotting position come from `spec`, as for the features.
    """
    trailing = trailing_mean(values, window)
    percentile = seasonal_percentiles(
        trailing[:, train],
        season[train],
        trailing,
        season,
        window=spec.season_window,
        period=spec.period,
        a=spec.a,
    )
    return percentile_to_code(percentile)
