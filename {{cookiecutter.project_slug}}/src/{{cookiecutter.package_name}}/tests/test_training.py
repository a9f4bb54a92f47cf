"""Training over HTTP end to end on a tiny store: loss goes down, results are written,
the same seed gives the same metrics, and a resumed run continues where it stopped."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ..config import Config
from ..train.loop import TrainError, class_weights, train
from ..train.model import build_model
from .faultserver import FaultServer
from .stores import write_study_stores

LOOKBACK = 20
RESULT_FILES = (
    "summary.json",
    "history.csv",
    "classification_report.txt",
    "loss.png",
    "confusion_matrix.png",
)


@pytest.fixture
def cfg(tiny_config: Config) -> Config:
    return tiny_config.override(
        {"train.batch_size": 64, "train.hidden_size": 16, "train.learning_rate": 0.01, "train.patience": 2}
    )


@pytest.fixture
def url(cfg: Config, tmp_path: Path) -> Iterator[str]:
    sizes = {"train": 2000, "valid": 500, "test": 500}
    write_study_stores(tmp_path / "srv", store_name=cfg.store_name, dataset_name=cfg.study.dataset_name,
                       lookback=LOOKBACK, chunk_samples=250, sizes=sizes)  # fmt: skip
    with FaultServer(tmp_path / "srv") as server:
        yield server.url


def metrics(summary: dict) -> dict:
    """Everything that must be reproducible (not timings)."""
    return {k: summary[k] for k in ("history", "valid", "test", "best_epoch", "epochs_run", "class_weights")}


def test_train_writes_results_and_is_reproducible_and_resumable(
    cfg: Config, url: str, tmp_path: Path
) -> None:
    first = train(cfg, url=url, epochs=2, out_dir=tmp_path / "a", progress=False)
    history = first["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    for name in RESULT_FILES:
        assert (tmp_path / "a" / name).stat().st_size > 0, name
    for name in ("loss.png", "confusion_matrix.png"):
        assert (tmp_path / "a" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "a" / "checkpoints" / "last.pt").is_file()
    assert json.loads((tmp_path / "a" / "summary.json").read_text()) == first
    test = first["test"]
    assert test["samples"] == 500 and 0 <= test["accuracy"] <= 1 and 0 <= test["macro_f1"] <= 1
    assert np.array(test["confusion_matrix"]).sum() == 500
    assert 0 < test["majority_baseline_accuracy"] < 1 and test["majority_class"] == "N"
    assert first["loader"][0]["samples"] == 2000 and first["loader"][1]["network_bytes"] == 0  # cached

    again = train(cfg, url=url, epochs=2, out_dir=tmp_path / "b", progress=False)
    assert metrics(again) == metrics(first)

    partial = train(cfg, url=url, epochs=1, out_dir=tmp_path / "c", progress=False)
    assert partial["epochs_run"] == 1
    resumed = train(cfg, url=url, epochs=2, out_dir=tmp_path / "c", progress=False)
    assert len(resumed["loader"]) == 1  # only epoch 2 ran in the resumed call
    assert metrics(resumed) == metrics(first)


def test_early_stopping_and_incompatible_checkpoint(cfg: Config, url: str, tmp_path: Path) -> None:
    frozen = cfg.override({"train.learning_rate": 0.0, "train.patience": 1})
    summary = train(frozen, url=url, epochs=5, out_dir=tmp_path / "out", progress=False)
    assert summary["stopped_early"] and summary["epochs_run"] == 2 and summary["best_epoch"] == 1
    with pytest.raises(TrainError, match="hidden_size"):
        train(frozen.override({"train.hidden_size": 8}), url=url, epochs=5, out_dir=tmp_path / "out",
              progress=False)  # fmt: skip


def test_class_weights_favour_rare_classes() -> None:
    labels = np.array([5] * 80 + [0] * 10 + [10] * 10 + [-1] * 5)
    balanced = class_weights(labels, "balanced")
    assert balanced[0] == balanced[10] > balanced[5] and balanced[3] == 1.0
    assert torch.allclose(class_weights(labels, "sqrt") ** 2, balanced)
    assert (class_weights(labels, "none") == 1).all()


def test_model_maps_windows_to_class_logits() -> None:
    model = build_model(3, hidden_size=8, num_layers=2, dropout=0.1)
    assert model(torch.zeros(5, LOOKBACK, 3)).shape == (5, 11)
