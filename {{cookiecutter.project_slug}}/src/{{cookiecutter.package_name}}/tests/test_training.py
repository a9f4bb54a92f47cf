"""Training over HTTP end to end on small stores: loss goes down, results and baselines are
written, the same seed gives the same metrics, a resumed run continues where it stopped, and
labels shifted by a month (a misalignment) leave the model no better than the baselines."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from labzarr.store_format import blocks_from_attrs, valid_pairs, window_ends
from labzarr.testing.faultserver import FaultServer
from labzarr.testing.stores import learnable_series, write_series_store
from labzarr.train import checkpoints
from labzarr.train.checkpoints import CheckpointMismatch
from labzarr.train.classifiers import Baselines

from ..cli import main
from ..config import Config
from ..etl.categories import CATEGORIES, MISSING
from ..etl.pipeline import run_etl
from ..etl.quantiles import CLIP
from ..synthetic import SIZES, SyntheticSize, training_steps
from ..train import loop
from ..train.baselines import cell_modes, last_step_codes
from ..train.loop import CHECKPOINT_VERSION, _differences, ignore_in_git, train
from ..train.models import build_model
from .conftest import study_toml
from .etl_support import open_store, tiny_datasets, write_inputs

LOOKBACK = 20
N_CELLS, N_TIME = 8, 400  # days 0-215 train, 236-307 valid, 328-399 test (fractions 0.6, 0.2, 0.2; gaps 20)
RESULT_FILES = (
    "summary.json",
    "history.csv",
    "classification_report.txt",
    "loss.png",
    "confusion_matrix.png",
    "accuracy_map.png",
    "test_series.png",
    "test_by_cell.csv",
)
BASELINES = {"majority", "last_step", "logistic", "gbm"}


@pytest.fixture
def cfg(tiny_config: Config) -> Config:
    return tiny_config.override(
        {
            "train.batch_size": 64,
            "train.model_options.hidden_size": 16,
            "train.learning_rate": 0.01,
            "train.patience": 2,
        }
    )


@pytest.fixture
def url(cfg: Config, tmp_path: Path) -> Iterator[str]:
    x, y = learnable_series(N_CELLS, N_TIME)
    write_series_store(
        tmp_path / "srv", x, y, dataset_name=cfg.study.dataset_name, lookback=LOOKBACK, chunk_cells=4
    )
    with FaultServer(tmp_path / "srv") as server:
        yield server.url


def metrics(summary: dict) -> dict:
    """Everything that must be reproducible (not timings)."""
    return {k: summary[k] for k in ("history", "valid", "test", "best_epoch", "epochs_run", "class_weights")}


def test_train_writes_results_and_is_reproducible_and_resumable(
    cfg: Config, url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = train(cfg, url=url, epochs=2, out_dir=tmp_path / "a", progress=False)
    history = first["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    for name in RESULT_FILES:
        assert (tmp_path / "a" / name).stat().st_size > 0, name
    for name in ("loss.png", "confusion_matrix.png", "accuracy_map.png", "test_series.png"):
        assert (tmp_path / "a" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    by_cell = pd.read_csv(tmp_path / "a" / "test_by_cell.csv")
    assert len(by_cell) == N_CELLS and (by_cell["test_windows"] == 72).all()
    correct = (by_cell["test_accuracy"] * 72).round().sum()  # windows right, cell by cell
    assert correct == round(first["test"]["accuracy"] * N_CELLS * 72)
    assert (tmp_path / "a" / "checkpoints" / "last.pt").is_file()
    assert json.loads((tmp_path / "a" / "summary.json").read_text()) == first
    test = first["test"]
    assert test["samples"] == N_CELLS * 72 and 0 <= test["accuracy"] <= 1
    assert np.array(test["confusion_matrix"]).sum() == test["samples"] and 0 <= test["macro_f1"] <= 1
    assert set(first["baselines"]) == BASELINES
    for name, scores in first["baselines"].items():
        assert {"accuracy", "macro_f1", "f1"} <= set(scores) and len(scores["f1"]) == 11, name
    assert "most frequent category of the cell" in first["baselines"]["last_step"]["rule"]
    assert first["loader"][0]["samples"] == first["train_samples"] == N_CELLS * (216 - (LOOKBACK - 1))
    assert first["loader"][0]["network_bytes"] > 0 and first["loader"][1]["network_bytes"] == 0  # resident

    # Again, with the baselines predicting the test windows 100 at a time: the same scores, and
    # never more than a chunk (plus the batch that crossed it) of features held.
    chunks: list[int] = []
    predict = Baselines.predict
    monkeypatch.setattr(loop, "BASELINE_CHUNK", 100)
    monkeypatch.setattr(
        Baselines, "predict", lambda self, x, cells: (chunks.append(len(x)), predict(self, x, cells))
    )
    again = train(cfg, url=url, epochs=2, out_dir=tmp_path / "b", progress=False)
    assert metrics(again) == metrics(first) and again["baselines"] == first["baselines"]
    assert sum(chunks) == N_CELLS * 72 and len(chunks) > 1 and max(chunks) < 100 + cfg.train.batch_size, (
        chunks
    )

    partial = train(cfg, url=url, epochs=1, out_dir=tmp_path / "c", progress=False)
    assert partial["epochs_run"] == 1
    resumed = train(cfg, url=url, epochs=2, out_dir=tmp_path / "c", progress=False)
    assert len(resumed["loader"]) == 1  # only epoch 2 ran in the resumed call
    assert metrics(resumed) == metrics(first)


def test_a_folder_of_other_files_is_never_ignored_wholesale(tmp_path: Path) -> None:
    """`train --out .` (or any folder that holds other files) writes no `.gitignore` there; a new
    or empty folder gets one (the CLI test checks `train --out results-gru` with real git)."""
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "plan.md").write_text("next: a GRU\n")
    ignore_in_git(tmp_path / "notes")  # what train(out_dir=tmp_path / "notes") does first
    assert not (tmp_path / "notes" / ".gitignore").exists()
    ignore_in_git(tmp_path / "results-gru")
    assert (tmp_path / "results-gru" / ".gitignore").read_text().splitlines()[-1] == "*"


def test_early_stopping_and_incompatible_checkpoint(cfg: Config, url: str, tmp_path: Path) -> None:
    frozen = cfg.override({"train.learning_rate": 0.0, "train.patience": 1, "train.windows_per_epoch": 300})
    summary = train(frozen, url=url, epochs=5, out_dir=tmp_path / "out", progress=False)
    assert summary["stopped_early"] and summary["epochs_run"] == 2 and summary["best_epoch"] == 1
    # train.windows_per_epoch: 300 of the split's windows per epoch; evaluation still sees every window
    assert [epoch["samples"] for epoch in summary["loader"]] == [300, 300] < [summary["train_samples"]] * 2
    assert summary["test"]["samples"] == N_CELLS * 72
    with pytest.raises(
        CheckpointMismatch, match=r"hidden_size = 8 \(checkpoint: 16\).*train --fresh"
    ) as info:
        train(
            frozen.override({"train.model_options.hidden_size": 8}),
            url=url,
            epochs=5,
            out_dir=tmp_path / "out",
            progress=False,
        )
    assert "\n" not in str(info.value)


def test_a_fresh_run_never_evaluates_the_best_model_of_an_earlier_one(
    cfg: Config, url: str, tmp_path: Path
) -> None:
    stale = tmp_path / "out" / "checkpoints" / "best.pt"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"a best model of another run")
    train(cfg, url=url, epochs=1, out_dir=tmp_path / "out", progress=False)
    assert torch.load(stale, weights_only=True)["settings"]["model_options"] == cfg.train.model_options


def test_another_model_is_refused_in_one_line_then_trained_with_fresh_and_recorded(
    cfg: Config, url: str, tmp_path: Path, capsys
) -> None:
    """An LSTM run's checkpoint, then study.toml switched to the TCN: `train` refuses to resume in one
    line naming --fresh; `train --fresh` trains the TCN, whose checkpoint records model, options
    (defaults filled in) and features; the same command without --fresh then resumes it."""
    out = tmp_path / "out"
    train(cfg, url=url, epochs=1, out_dir=out, progress=False)
    config = study_toml(
        tmp_path / "study.toml", time_lookback=LOOKBACK, split_gap=LOOKBACK, batch_size=64,
        learning_rate=0.01, model="tcn", cache="none",
    )  # fmt: skip
    config.write_text(
        config.read_text().split("[train.model_options]")[0] + "[train.model_options]\nchannels = 8\n"
    )
    command = ["--config", str(config), "train", "--url", url, "--out", str(out), "--epochs", "1"]
    capsys.readouterr()

    assert main(command) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot resume from") and "\n" not in err, err
    assert "train.model is 'tcn' in study.toml but 'lstm' in the checkpoint" in err
    assert "`train --fresh`" in err and "new --out folder" in err

    assert main([*command, "--fresh"]) == 0
    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert saved["settings"]["model"] == "tcn" and saved["progress"]["epoch"] == 1
    assert saved["settings"]["model_options"] == {
        "channels": 8,
        "kernel_size": 3,
        "levels": 0,
        "dropout": 0.0,
    }
    assert saved["settings"]["features"] == ["f0", "f1"] and saved["settings"]["n_classes"] == 11
    assert json.loads((out / "summary.json").read_text())["settings"] == saved["settings"]
    assert main([*command[:-1], "2"]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["progress"]["epoch"] == 2


def test_other_features_are_refused_and_weights_that_do_not_fit_too(tmp_path: Path) -> None:
    """Checkpoints made by hand: features of another store, and weights of other code."""
    settings = {
        "model": "lstm", "model_options": {"hidden_size": 8, "num_layers": 1, "dropout": 0.0},
        "features": ["pr", "tas"], "n_features": 2, "n_classes": 11, "seed": 1,
    }  # fmt: skip
    last = tmp_path / "checkpoints" / "last.pt"
    last.parent.mkdir()
    (tmp_path / "checkpoints" / "best.pt").write_bytes(b"")
    torch.save({"version": CHECKPOINT_VERSION, "settings": settings, "world_size": 1}, last)
    now = {**settings, "features": ["pr", "mrsos"]}
    same = {"version": CHECKPOINT_VERSION, "world_size": 1, "differences": _differences}
    with pytest.raises(
        CheckpointMismatch, match=r"features are \['pr', 'mrsos'\] but the checkpoint's \['pr', 'tas'\]"
    ):
        checkpoints.load(last, settings=now, **same)
    saved = checkpoints.load(last, settings=settings, **same)
    saved["model"] = build_model("lstm", {"hidden_size": 4}, 2, 11).state_dict()
    with pytest.raises(CheckpointMismatch, match=r"do not fit model 'lstm'.*train --fresh"):
        checkpoints.restore(build_model("lstm", {"hidden_size": 8}, 2, 11), saved, last, "model 'lstm'")


def test_labels_shifted_by_a_month_leave_no_skill(tiny_config: Config, tmp_path: Path) -> None:
    """The same synthetic study through the real ETL, once aligned and once with each day labelled
    with the category of 30 days later: the aligned model beats the baselines that do not read the
    window (majority, last_step: labels from files) by far, the misaligned one falls to them. An
    alignment bug cannot pass silently. (On a 20-day window the labels' blend is as well read
    from the window's last value, means and trend: logistic and gbm do about as well as the model
    here; the demo's 180-day windows separate them.)"""
    cfg = tiny_config.override(
        {
            "train.batch_size": 128,
            "train.model_options.hidden_size": 32,
            "train.learning_rate": 0.01,
            "train.patience": 5,
        }
    )
    size = SyntheticSize(ny=3, nx=4, years=6)
    etl = cfg.etl
    days = training_steps(
        size, "standard", lookback=etl.time_lookback, gap=etl.split_gap, fractions=etl.split_fractions
    )
    model, reference = tiny_datasets(cfg, size=size, train_steps=days)
    summaries = {}
    for name, shift in (("aligned", 0), ("shifted", 30)):
        case = cfg.override(
            {"data.raw_dir": str(tmp_path / name / "raw"), "data.zarr_dir": str(tmp_path / name / "zarr")}
        )
        labels = reference.drought_category.shift(time=-shift, fill_value=MISSING)
        write_inputs(case, model, reference.assign(drought_category=labels))
        run_etl(case)
        with FaultServer(case.path(case.data.zarr_dir)) as server:
            summaries[name] = train(
                case, url=server.url, epochs=3, out_dir=tmp_path / name / "out", progress=False
            )
    aligned, shifted = summaries["aligned"], summaries["shifted"]
    for name in ("majority", "last_step"):
        assert aligned["test"]["accuracy"] > aligned["baselines"][name]["accuracy"] + 0.1, aligned[
            "baselines"
        ]
        assert aligned["test"]["macro_f1"] > aligned["baselines"][name]["macro_f1"] + 0.1, aligned[
            "baselines"
        ]
    for name in ("logistic", "gbm"):  # fitted with the model's class weights: not the majority class alone
        f1 = aligned["baselines"][name]["f1"]
        assert sum(v > 0.3 for v in f1.values()) >= 8, (name, f1)
        assert aligned["baselines"][name]["macro_f1"] > aligned["baselines"]["majority"]["macro_f1"] + 0.3
    best_baseline = max(b["accuracy"] for b in shifted["baselines"].values())
    assert shifted["test"]["accuracy"] < best_baseline + 0.1, (
        shifted["test"]["accuracy"],
        shifted["baselines"],
    )
    assert shifted["test"]["macro_f1"] < aligned["test"]["macro_f1"] / 2


def test_a_monthly_study_runs_from_the_etl_through_the_loader_to_training(
    tiny_config: Config, tmp_path: Path, caplog
) -> None:
    """The monthly synthetic preset, stamped mid-month at 12:00 as CMIP6 Amon output is, through the
    ETL (lookback, gap and season window in months), the store, the loader and two epochs."""
    lookback = 6
    cfg = tiny_config.override(
        {
            "etl.time_step": "monthly",
            "etl.time_lookback": lookback,
            "etl.split_gap": lookback,
            "etl.season_window": 1,
            "train.batch_size": 64,
            "train.model_options.hidden_size": 16,
            "train.learning_rate": 0.01,
        }
    )
    size, etl = SIZES["monthly"], cfg.etl
    steps = training_steps(size, "standard", lookback=lookback, gap=lookback, fractions=etl.split_fractions)
    model, reference = tiny_datasets(cfg, size=size, train_steps=steps)
    mid_month = model.indexes["time"] + pd.Timedelta(days=15, hours=12)
    write_inputs(cfg, model.assign_coords(time=mid_month), reference)
    with caplog.at_level(logging.INFO):
        run_etl(cfg)
    assert "monthly time stamps (e.g. 2000-01-16 12:00) set to the first of their month" in caplog.text
    assert "usable 6-month windows" in caplog.text
    store = open_store(cfg)
    assert store.attrs["time_step"] == "monthly" and store.attrs["season_period"] == 12
    assert store.sizes["time"] == 480 and (store.indexes["time"].day == 1).all()
    blocks = blocks_from_attrs(store.attrs)
    labels, complete = store["category"].values, store["complete"].values
    with FaultServer(cfg.path(cfg.data.zarr_dir)) as server:
        summary = train(cfg, url=server.url, epochs=2, out_dir=tmp_path / "out", progress=False)
    expected = {
        s: len(valid_pairs(labels, complete, window_ends(b, lookback), lookback)) for s, b in blocks.items()
    }
    assert summary["train_samples"] == expected["train"] and summary["test"]["samples"] == expected["test"]
    losses = [h["train_loss"] for h in summary["history"]]
    assert losses[-1] < losses[0], losses
    assert summary["test"]["macro_f1"] > summary["baselines"]["majority"]["macro_f1"], summary["baselines"]


def test_last_step_reads_the_last_value_as_a_drought_monitor_does() -> None:
    """Derived labels: the category of the window's last value of the labelled variable, whatever
    the features' transform; other labels: the training split's most frequent category of the cell."""
    from scipy.stats import norm

    percentiles = np.array([0.01, 0.5, 0.85, 0.25])
    expected = ["D4", "N", "W1", "D0"]
    for transform, stored in (
        ("normal_score", norm.ppf(percentiles) / CLIP),
        ("percentile", 2 * percentiles - 1),
    ):
        codes = last_step_codes(stored, transform, np.zeros(4, dtype=int), np.array([5]))
        assert [CATEGORIES[c] for c in codes] == expected
    labels = np.array([[3, 3, 7, MISSING], [MISSING] * 4, [1, 2, 2, 9]])
    modes = cell_modes(labels, slice(0, 3), fallback=5)
    assert modes.tolist() == [3, 5, 2]
    codes = last_step_codes(None, "normal_score", np.array([2, 0, 1]), modes)
    assert codes.tolist() == [2, 3, 5]
