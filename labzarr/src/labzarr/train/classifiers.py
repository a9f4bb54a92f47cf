"""Class weights for imbalanced classes, the feature-based baseline classifiers (scikit-learn's
logistic regression and gradient boosting), and `Baselines`: a study's set of baselines predicting
a split chunk by chunk and scored on it.

Both are fitted on standardised window features (`train.features`) with the same class weights as
the study's model, so rare classes count as much for them as for it: an unweighted logistic
regression on weak features falls back to the majority class and then proves nothing. The fit is
on a capped, seeded sample of training windows (`max_samples`): a baseline must stay cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from .metrics import baseline_scores

CLASSIFIERS = ("logistic", "gbm")
Predictor = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (features, cells) of windows -> their codes
CLASS_WEIGHTS = ("balanced", "sqrt", "none")
MIN_BINS, MAX_BINS, SAMPLES_PER_BIN = 32, 255, 80  # gradient boosting's histogram bins (gbm_bins)
# The classifiers are fitted with OpenMP at one thread. Gradient boosting runs many small parallel
# regions; with OMP_WAIT_POLICY=passive (train.threads sets it for torch) each wakes sleeping
# threads, and a fit took 4.7x longer (8.4 s against 1.8 s at 20,000 windows on 2 cores, the same
# predictions: benchmarks/bench_baselines.py). At the windows a baseline is fitted on, a second
# thread gained nothing even with spinning waits. Predicting keeps scikit-learn's threads: it is
# not slowed by passive waits, and one thread took up to 1.8x longer.
ONE_OPENMP_THREAD = {"limits": 1, "user_api": "openmp"}


def class_weights(counts: np.ndarray, mode: str) -> torch.Tensor:
    """Loss weights for imbalanced classes from the count of training windows of each class
    (`WindowLoader.label_counts`): 'balanced' (n / (k * count)), its square root 'sqrt' (gentler,
    keeps accuracy), or 'none'. Absent classes get weight 1."""
    if mode not in CLASS_WEIGHTS:
        raise ValueError(f"unknown class weighting {mode!r}; allowed: {', '.join(CLASS_WEIGHTS)}")
    counts = np.asarray(counts, dtype=np.float64)
    n_classes = len(counts)
    weights = np.ones(n_classes)
    present = counts > 0
    if mode != "none" and present.any():
        balanced = counts[present].sum() / (present.sum() * counts[present])
        weights[present] = balanced if mode == "balanced" else np.sqrt(balanced)
    return torch.tensor(weights, dtype=torch.float32)


def gbm_bins(n_samples: int) -> int:
    """Histogram bins per feature for gradient boosting: up to scikit-learn's 255, but about
    SAMPLES_PER_BIN fitting windows per bin at least (finer bins of a small sample only split on
    noise, and each costs a weighted-percentile pass when the samples carry class weights)."""
    return int(np.clip(n_samples // SAMPLES_PER_BIN, MIN_BINS, MAX_BINS))


def make(name: str, seed: int = 0, n_samples: int = 0) -> Any:
    """An unfitted scikit-learn pipeline (standardise, then classify) named in CLASSIFIERS, for
    `n_samples` fitting windows (0: unknown, the most bins)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "logistic":
        model: Any = LogisticRegression(max_iter=1000, random_state=seed)
    elif name == "gbm":
        # Stops when 10 % of the fitting windows held out stop improving: as good as 100 rounds on
        # the demo's features (82 rounds), 5 rounds instead of 100 on a tiny test store.
        model = HistGradientBoostingClassifier(
            max_iter=200,
            max_bins=gbm_bins(n_samples) if n_samples else MAX_BINS,
            early_stopping=True,
            n_iter_no_change=5,
            random_state=seed,
        )
    else:
        raise ValueError(f"unknown classifier {name!r}; allowed: {', '.join(CLASSIFIERS)}")
    return make_pipeline(StandardScaler(), model)


def fit(
    name: str, train: tuple[np.ndarray, np.ndarray], *, class_weights: np.ndarray | None = None, seed: int = 0
) -> Any:
    """Classifier `name` fitted on (features, labels) `train`, each sample weighted by the weight of
    its class (`class_weights[label]`); its `predict` takes features of any number of windows, so
    a long test split can be predicted chunk by chunk without holding all its features."""
    x, y = train
    model = make(name, seed, n_samples=len(y))
    weight = None if class_weights is None else np.asarray(class_weights, dtype=np.float64)[y]
    step = model.steps[-1][0]
    with threadpool_limits(**ONE_OPENMP_THREAD):
        model.fit(x, y, **({f"{step}__sample_weight": weight} if weight is not None else {}))
    return model


def fitted(
    train: tuple[np.ndarray, np.ndarray], *, class_weights: np.ndarray, seed: int
) -> dict[str, Predictor]:
    """Every classifier of CLASSIFIERS fitted on `train`, as a predictor of `Baselines`."""
    models = {name: fit(name, train, class_weights=class_weights, seed=seed) for name in CLASSIFIERS}
    return {name: (lambda x, cells, model=model: model.predict(x)) for name, model in models.items()}


@dataclass
class Baselines:
    """Named predictors, each turning the (features, cells) of a chunk of windows into codes, and
    the codes (int8) they gave so far: a split is predicted as it streams by (`features.tap`) and
    scored at the end, its features never held whole."""

    predictors: dict[str, Predictor]
    codes: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def predict(self, features: np.ndarray, cells: np.ndarray) -> None:
        """Add every predictor's codes of the next windows."""
        for name, predictor in self.predictors.items():
            self.codes.setdefault(name, []).append(np.asarray(predictor(features, cells)).astype(np.int8))

    def scores(self, y_true: np.ndarray, names: Sequence[str]) -> dict[str, dict[str, Any]]:
        """`metrics.baseline_scores` of every predictor on all the windows predicted, in order."""
        return {
            name: baseline_scores(y_true, np.concatenate(parts), names) for name, parts in self.codes.items()
        }
