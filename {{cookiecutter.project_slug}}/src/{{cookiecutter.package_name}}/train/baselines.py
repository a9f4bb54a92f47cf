"""Baselines computed in the same run, on the same test windows as the model.

A model that does not beat them has not shown anything:

* **majority**: always the training split's most frequent category;
* **last_step**: how a drought monitor reads an index: when the labels are derived from a
  variable the model sees (`data.reference_kind = "derived"`), the category the drought
  thresholds give the window's last value of it; otherwise the training split's most
  frequent category of the window's cell;
* **logistic** and **gbm**: a logistic regression and gradient-boosted trees (scikit-learn) on
  engineered features of each window (`labzarr.train.features`: per feature the last value,
  the means over the last 7, 30 and 90 days and the trend), fitted with the model's class
  weights on up to `FIT_SAMPLES` random training windows.

They are fitted before the test pass and predict its windows chunk by chunk as it streams by, so
no more than a chunk of test windows' features is held (at 46,000 cells and three test years, all of
them would be about 2 GB).
"""

from __future__ import annotations

import numpy as np
from labzarr.store_format import MISSING
from labzarr.train import classifiers

from ..etl.categories import N_CLASSES, percentile_to_code
from ..etl.quantiles import CLIP

FIT_SAMPLES = 20_000  # training windows the feature-based baselines are fitted on (a seeded random subset)
LAST_VALUE_RULE = "drought category of the last value"
CELL_MODE_RULE = "the training split's most frequent category of the cell"


def percentile_of_feature(values: np.ndarray, transform: str) -> np.ndarray:
    """The percentile a stored feature value stands for, by the ETL's transform (`etl.transform`)."""
    from scipy.special import ndtr

    values = np.asarray(values, dtype=np.float64)
    if transform == "percentile":
        return (values + 1) / 2
    return ndtr(values * (CLIP if transform in ("normal_score", "quantile_normal") else 1.0))


def cell_modes(labels: np.ndarray, block: slice, fallback: int) -> np.ndarray:
    """Each cell's most frequent category (cells,) over the steps `block` of `labels` (cells, T);
    `fallback` for a cell without labels there."""
    codes = labels[:, block]
    counts = np.stack([(codes == c).sum(axis=1) for c in range(N_CLASSES)], axis=1)
    return np.where(counts.sum(axis=1) > 0, counts.argmax(axis=1), fallback)


def last_step_codes(
    last: np.ndarray | None, transform: str, cells: np.ndarray, modes: np.ndarray
) -> np.ndarray:
    """The last_step baseline's codes of test windows: the drought category of `last` (the
    windows' last values of the labelled variable; LAST_VALUE_RULE) when given, else the mode of
    each window's cell (`modes[cells]`; CELL_MODE_RULE)."""
    if last is None:
        return modes[cells]
    codes = percentile_to_code(percentile_of_feature(last, transform)).astype(np.int64)
    return np.where(codes == MISSING, modes[cells], codes)


def fit_baselines(
    fit: tuple[np.ndarray, np.ndarray], *, majority: int, modes: np.ndarray, transform: str,
    last_column: int | None, class_weights: np.ndarray, seed: int,
) -> classifiers.Baselines:  # fmt: skip
    """Every baseline, fitted on (features, labels) `fit` of training windows: `modes` are the
    cells' most frequent training categories (`cell_modes`), `transform` the store's, and
    `last_column` the window-feature column of the labelled variable's last value, if derived."""

    def last_step(x: np.ndarray, cells: np.ndarray) -> np.ndarray:
        return last_step_codes(None if last_column is None else x[:, last_column], transform, cells, modes)

    return classifiers.Baselines(
        {
            "majority": lambda x, cells: np.full(len(cells), majority),
            "last_step": last_step,
            **classifiers.fitted(fit, class_weights=class_weights, seed=seed),
        }
    )
