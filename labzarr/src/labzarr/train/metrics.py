"""Classification scores shared by a study's model and its baselines (scikit-learn underneath).

Every predictor of a study is scored by these same functions on the same windows, so a table of
model and baselines compares like with like.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 (over the classes present in either)."""
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }


def per_class_f1(y_true: np.ndarray, y_pred: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """F1 of each class (by name, classes numbered 0..len(names) - 1; 0 for a class never seen)."""
    from sklearn.metrics import f1_score

    f1 = f1_score(y_true, y_pred, labels=list(range(len(names))), average=None, zero_division=0)
    return {name: float(v) for name, v in zip(names, f1, strict=True)}


def baseline_scores(y_true: np.ndarray, y_pred: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """What a report shows of a baseline: accuracy, macro-F1 and the F1 of each class."""
    return {**scores(y_true, y_pred), "f1": per_class_f1(y_true, y_pred, names)}


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class report (dict and text) and confusion matrix of classes
    0..len(names) - 1."""
    from sklearn.metrics import classification_report, confusion_matrix

    labels = list(range(len(names)))
    report = {"labels": labels, "target_names": list(names), "zero_division": 0}
    return {
        "samples": len(y_true),
        **scores(y_true, y_pred),
        "per_class": classification_report(y_true, y_pred, output_dict=True, **report),
        "report": classification_report(y_true, y_pred, **report),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def accuracy_by_group(
    groups: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, n_groups: int
) -> np.ndarray:
    """Accuracy (float64, n_groups) of the samples of each group 0..n_groups - 1 (e.g. grid cells);
    NaN for a group without samples."""
    total = np.bincount(groups, minlength=n_groups).astype(np.float64)
    right = np.bincount(groups, weights=(y_true == y_pred).astype(np.float64), minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, right / total, np.nan)
