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
"""

from __future__ import annotations

from typing import Any

import numpy as np
from labzarr.store_format import MISSING
from labzarr.train.classifiers import CLASSIFIERS, fit_predict
from labzarr.train.metrics import baseline_scores

from ..etl.categories import CATEGORIES, N_CLASSES, percentile_to_code
from ..etl.quantiles import CLIP

FIT_SAMPLES = 20_000  # training windows the feature-based baselines are fitted on (a seeded random subset)


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


def baselines(
    fit: tuple[np.ndarray, np.ndarray],
    x_test: np.ndarray,
    y_test: np.ndarray,
    last_step: np.ndarray,
    majority: int,
    *,
    class_weights: np.ndarray,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Scores (accuracy, macro-F1, per-class F1) of every baseline on the test windows.

    `fit` is (features, labels) of training windows and `x_test` the test windows' features
    (`labzarr.train.features.collect`); `last_step` the last_step baseline's codes of the test windows.
    """
    predictions = {"majority": np.full_like(y_test, majority), "last_step": last_step}
    for name in CLASSIFIERS:
        predictions[name] = fit_predict(name, fit, x_test, class_weights=class_weights, seed=seed)
    out = {name: baseline_scores(y_test, pred, CATEGORIES) for name, pred in predictions.items()}
    out["majority"]["class"] = int(majority)
    return out


def last_step_codes(
    last: np.ndarray | None, transform: str, cells: np.ndarray, modes: np.ndarray
) -> tuple[np.ndarray, str]:
    """The last_step baseline's codes of test windows and how they were made: the drought
    category of `last` (the windows' last values of the labelled variable) when given, else
    the mode of each window's cell (`modes[cells]`)."""
    if last is None:
        return modes[cells], "the training split's most frequent category of the cell"
    codes = percentile_to_code(percentile_of_feature(last, transform)).astype(np.int64)
    return np.where(codes == MISSING, modes[cells], codes), "drought category of the last value"
