"""What a study's results are made of: engineered window features, the feature-based baseline
classifiers, the scores shared by model and baselines, and the map and time-series pictures."""

from __future__ import annotations

from pathlib import Path

import cftime
import numpy as np
import pytest
import torch

from labzarr.train.classifiers import CLASSIFIERS, Baselines, class_weights, fit, fitted
from labzarr.train.features import collect, feature_names, mean_steps, tap, window_features
from labzarr.train.init import chrono_init
from labzarr.train.metrics import accuracy_by_group, baseline_scores, classification_metrics
from labzarr.train.plots import grid_of, plot_cell_map, plot_class_series
from labzarr.train.results import write_cell_results

PNG = b"\x89PNG\r\n\x1a\n"


def test_the_trailing_means_are_scaled_to_the_time_step_and_the_window() -> None:
    assert mean_steps("daily", 180) == (7, 30, 90)
    assert mean_steps("daily", 20) == (7, 20)  # never longer than the window
    assert mean_steps("monthly", 6) == (1, 3)  # a week and a month are both one month
    with pytest.raises(ValueError, match="unknown time step 'weekly'"):
        mean_steps("weekly", 10)


def test_window_features_are_last_values_trailing_means_and_least_squares_slopes() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 40, 2)).astype(np.float32)
    steps = (3, 10)
    got = window_features(torch.from_numpy(x), steps).numpy()
    assert got.shape == (5, 8) and len(feature_names(["a", "b"], steps)) == 8
    assert feature_names(["a", "b"], steps)[:3] == ["a_last", "b_last", "a_mean3"]
    slopes = np.array([[np.polyfit(np.arange(40), x[i, :, f], 1)[0] for f in range(2)] for i in range(5)])
    expected = np.concatenate([x[:, -1], x[:, -3:].mean(1), x[:, -10:].mean(1), slopes], axis=1)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_collect_stops_at_the_cap() -> None:
    batches = [(torch.ones(4, 6, 1) * i, torch.full((4,), i)) for i in range(5)]
    x, y = collect(iter(batches), (2,), max_samples=6)
    assert x.shape == (6, 3) and y.tolist() == [0, 0, 0, 0, 1, 1]


def test_a_tap_hands_on_the_features_a_chunk_at_a_time_and_passes_the_batches_through() -> None:
    """What the test pass feeds the baselines with: every window once, in order, never more than a
    chunk plus one batch held; the batches reach the model unchanged."""
    batches = [(torch.ones(4, 6, 1) * i, torch.full((4,), i)) for i in range(5)]
    handed: list[tuple[np.ndarray, int]] = []
    passed = list(tap(iter(batches), (2,), 6, lambda x, first: handed.append((x, first))))
    assert passed == batches
    assert [(len(x), first) for x, first in handed] == [(8, 0), (8, 8), (4, 16)]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in handed]), collect(iter(batches), (2,))[0])


def test_baselines_predict_as_the_windows_stream_by_and_score_them_all() -> None:
    train, (x_test, y_test) = imbalanced(2000, 0), imbalanced(500, 1)
    cells = np.arange(len(y_test)) % 7
    baselines = Baselines({"cell": lambda x, c: c % 3, **fitted(train, class_weights=np.ones(11), seed=0)})
    for part in np.array_split(np.arange(len(y_test)), 4):
        baselines.predict(x_test[part], cells[part])
    names = [str(i) for i in range(11)]
    scores = baselines.scores(y_test, names)
    assert list(scores) == ["cell", *CLASSIFIERS]
    assert scores["cell"] == baseline_scores(y_test, cells % 3, names)
    whole = fit("gbm", train, class_weights=np.ones(11), seed=0).predict(x_test)
    assert scores["gbm"] == baseline_scores(y_test, whole, names)


def imbalanced(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mostly class 5; classes 0 and 10 at the tails of a noisy signal (how drought categories are)."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=n)
    y = np.full(n, 5)
    y[signal < -1.6] = 0
    y[signal > 1.6] = 10
    x = np.stack([signal + rng.normal(scale=3.0, size=n), rng.normal(size=n)], axis=1)
    return x.astype(np.float32), y


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_class_weighted_baselines_do_not_fall_back_to_the_majority(name: str) -> None:
    """Unweighted, the logistic regression predicts the majority class for every window of weak
    features (what the old report showed: its scores equalled the majority's); with the model's
    class weights both classifiers predict the rare classes too."""
    train, (x_test, _) = imbalanced(3000, 0), imbalanced(1000, 1)
    counts = np.bincount(train[1], minlength=11)
    weights = np.where(counts > 0, counts.sum() / (3 * np.maximum(counts, 1)), 1.0)
    weighted = fit(name, train, class_weights=weights, seed=0)
    assert set(np.unique(weighted.predict(x_test))) == {0, 5, 10}
    np.testing.assert_array_equal(  # chunk by chunk, as the test pass predicts, or all at once
        np.concatenate([weighted.predict(part) for part in np.array_split(x_test, 7)]),
        weighted.predict(x_test),
    )
    if name == "logistic":
        assert set(np.unique(fit(name, train, seed=0).predict(x_test))) == {5}
    with pytest.raises(ValueError, match="unknown classifier 'svm'"):
        fit("svm", train)


def test_scores_per_class_and_per_group() -> None:
    names = ["wet", "normal", "dry"]
    y_true, y_pred = np.array([0, 1, 1, 2, 2, 2]), np.array([0, 1, 2, 2, 2, 1])
    scored = baseline_scores(y_true, y_pred, names)
    assert set(scored) == {"accuracy", "macro_f1", "f1"} and list(scored["f1"]) == names
    assert scored["f1"]["wet"] == 1.0 and scored["accuracy"] == pytest.approx(4 / 6)
    metrics = classification_metrics(y_true, y_pred, names)
    assert metrics["samples"] == 6 and np.array(metrics["confusion_matrix"]).sum() == 6
    assert "dry" in metrics["report"] and metrics["per_class"]["dry"]["support"] == 3
    by_cell = accuracy_by_group(np.array([0, 0, 0, 2, 2, 2]), y_true, y_pred, 3)
    np.testing.assert_allclose(by_cell, [2 / 3, np.nan, 2 / 3])


def test_the_map_and_the_series_are_pictures(tmp_path: Path) -> None:
    lat = np.array([47.0, 47.0, 46.0])  # a 2 x 2 grid with one cell missing (land mask)
    lon = np.array([-120.0, -119.0, -119.0])
    lats, lons, grid = grid_of(lat, lon, np.array([0.5, 0.9, 0.1]))
    assert lats.tolist() == [46.0, 47.0] and lons.tolist() == [-120.0, -119.0]
    np.testing.assert_array_equal(grid, [[np.nan, 0.1], [0.5, 0.9]])
    plot_cell_map(lat, lon, np.array([0.5, np.nan, 0.1]), tmp_path / "map.png", title="t", label="accuracy")
    days = np.arange("2001-01-01", "2001-03-01", dtype="datetime64[D]")
    noleap = np.array([cftime.DatetimeNoLeap(2001, 1, 1 + i) for i in range(20)])
    codes = np.arange(len(days)) % 11
    plot_class_series(
        [("a", codes, codes[::-1], days), ("b", codes[:20], codes[:20], noleap)], [str(i) for i in range(11)],
        tmp_path / "series.png",
    )  # fmt: skip
    for name in ("map.png", "series.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG


def test_class_weights_favour_rare_classes() -> None:
    counts = np.bincount([5] * 80 + [0] * 10 + [10] * 10, minlength=11)
    balanced = class_weights(counts, "balanced")
    assert balanced[0] == balanced[10] > balanced[5] and balanced[3] == 1.0
    assert torch.allclose(class_weights(counts, "sqrt") ** 2, balanced)
    assert (class_weights(counts, "none") == 1).all()
    with pytest.raises(ValueError, match="unknown class weighting 'inverse'"):
        class_weights(counts, "inverse")


def test_chrono_init_spreads_the_lstm_memories_over_the_lookback() -> None:
    lstm = torch.nn.LSTM(2, 16, num_layers=2)
    chrono_init(lstm, 180, generator=torch.Generator().manual_seed(0))
    for layer in range(2):
        b_ih, b_hh = getattr(lstm, f"bias_ih_l{layer}"), getattr(lstm, f"bias_hh_l{layer}")
        forget = b_ih[16:32]
        assert (forget >= 0).all() and (forget <= np.log(179)).all() and forget.std() > 0.5
        assert torch.equal(b_ih[:16], -forget) and (b_ih[32:] == 0).all() and (b_hh == 0).all()
    assert torch.sigmoid(forget).max() > 0.99  # some units remember for about a hundred steps


def test_the_cell_results_are_a_table_a_map_and_three_series(tmp_path: Path) -> None:
    cells = np.repeat([0, 1, 3], 10)  # cell 2 has no test window
    ends = np.tile(np.arange(100, 110), 3)
    y = np.tile(np.arange(10) % 11, 3)
    pred = y.copy()
    pred[:5] = 10 - pred[:5]  # cell 0: codes 0..4 predicted as 10..6, 5 of 10 wrong
    test = {"cells": cells, "ends": ends, "y": y, "pred": pred}
    lat, lon = np.array([47.0, 47.0, 46.0, 46.0]), np.array([-120.0, -119.0, -120.0, -119.0])
    time = np.arange("2001-01-01", "2001-05-01", dtype="datetime64[D]")
    write_cell_results(tmp_path, test, lat, lon, time, 4, [str(i) for i in range(11)])
    rows = (tmp_path / "test_by_cell.csv").read_text().splitlines()
    assert rows[0] == "cell,lat,lon,test_windows,test_accuracy"
    assert [r.split(",")[3:] for r in rows[1:]] == [["10", "0.500000"], ["10", "1.000000"], ["0", "nan"],
                                                   ["10", "1.000000"]]  # fmt: skip
    for name in ("accuracy_map.png", "test_series.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
