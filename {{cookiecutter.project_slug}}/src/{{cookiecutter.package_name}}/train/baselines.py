"""Baselines computed in the same run, on the same test windows as the model.

A model that does not beat them has not shown anything:

* **majority**: always the training split's most frequent category;
* **logistic**: a scikit-learn logistic regression on each window's per-feature
  means (what a model sees without any order in time), fitted on up to
  `FIT_SAMPLES` random training windows.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

FIT_SAMPLES = 100_000  # training windows the logistic baseline is fitted on (a seeded random subset)


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 (over the classes present in either)."""
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }


def window_means(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]], max_samples: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature means (samples, features) of the windows and their labels, read from a loader
    (on its device; one transfer at the end)."""
    means, labels, n = [], [], 0
    for xb, yb in batches:
        means.append(xb.mean(dim=1))
        labels.append(yb)
        n += len(yb)
        if max_samples is not None and n >= max_samples:
            break
    return torch.cat(means)[:max_samples].cpu().numpy(), torch.cat(labels)[:max_samples].cpu().numpy()


def baselines(
    train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], majority: int, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Scores of the majority class and of the logistic regression on the test windows.

    `train` and `test` are (window means, labels) as returned by `window_means`.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x_train, y_train = train
    x_test, y_test = test
    scaler = StandardScaler().fit(x_train)
    model = LogisticRegression(max_iter=2000, random_state=seed).fit(scaler.transform(x_train), y_train)
    return {
        "majority": {"class": int(majority), **scores(y_test, np.full_like(y_test, majority))},
        "logistic": scores(y_test, model.predict(scaler.transform(x_test))),
    }
