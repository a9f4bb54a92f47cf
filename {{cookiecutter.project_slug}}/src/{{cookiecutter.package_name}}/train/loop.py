"""The training loop: epochs over the streamed store, validation, early stopping, results.

`train(cfg, source=..., epochs=..., out_dir=...)` is what the CLI (`<package> train`)
and the notebook call. The store's series are fetched once (`train.loader.Series`)
and every split's windows are cut from them on the training device. It writes to
the results folder (and, when the folder is new, a `.gitignore` that keeps it out of git):

* `checkpoints/last.pt` (every epoch; a new call resumes from it) and `checkpoints/best.pt`;
* `summary.json`: settings, per-epoch history, loader throughput, for the
  validation and test splits accuracy, macro-F1, per-class report and confusion
  matrix (scikit-learn), and beside them the baselines of the same test windows
  (`baselines`: majority, last_step, logistic and gbm, see train/baselines.py: accuracy,
  macro-F1 and the F1 of each category);
* `history.csv`, `classification_report.txt`, `loss.png`, `confusion_matrix.png`;
* where the model is right: `test_by_cell.csv` and `accuracy_map.png` (test accuracy of each
  grid cell on a lat/lon map), `test_series.png` (observed and predicted categories over the
  test period of the worst, median and best cell).

Each step stays on the device: losses and predictions are accumulated there and
read once per epoch, so the loop never waits for the GPU between steps.

Determinism: on CPU the same seed gives the same metrics (seeded weights, seeded
order of each epoch's windows, RNG state saved in checkpoints, so a resumed run
matches an uninterrupted one). On CUDA, mixed precision and cuDNN kernels make
results close but not bit-identical.

Under `torchrun` (`train.distributed`) every rank runs this same function: each
trains DistributedDataParallel on its own share of every epoch's windows and
evaluates its share of each split; the loss sums are all-reduced and rank 0, which
gathers the predicted codes, computes the metrics, decides early stopping for all
(its loop state is broadcast), and alone prints and writes checkpoints and results (it
alone evaluates the test split, in store order, for the baselines and the maps).
`train.batch_size` is per rank: an optimizer step sees `world_size` times as many
windows. A resumed run must have the world size of the run that wrote the checkpoint.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from labzarr.errors import StudyError
from labzarr.remote import StoreSource
from labzarr.train import checkpoints
from labzarr.train.classifiers import Baselines, class_weights
from labzarr.train.distributed import Ranks, seed_everything, start
from labzarr.train.epochs import check_in_step, gather_codes, mean_loss, rank_report, run_epoch
from labzarr.train.features import collect, mean_steps, tap
from labzarr.train.loader import LoaderStats, Series
from labzarr.train.metrics import classification_metrics, scores
from labzarr.train.results import ignore_in_git, write_cell_results, write_results
from labzarr.train.threads import apply_threads
from labzarr.train.where import coordinates, window_places
from torch import nn
from tqdm.auto import tqdm

from ..etl.categories import CATEGORIES, N_CLASSES
from .baselines import CELL_MODE_RULE, FIT_SAMPLES, LAST_VALUE_RULE, cell_modes, fit_baselines
from .data import make_loader
from .models import REGISTRY, build_model

if TYPE_CHECKING:
    from ..config import Config

CHECKPOINT_VERSION = 3  # 2: windows cut on read from the series store; 3: the model chosen in study.toml
BASELINE_CHUNK = (
    65_536  # test windows whose engineered features are held at once (10 float32 each for 2 features)
)


class TrainError(StudyError):
    """Training cannot start or continue."""


def _model_settings(cfg: Config, series: Series) -> dict[str, Any]:
    """What a checkpoint must share with the configuration to be resumed (the model first)."""
    t = cfg.train
    return {
        "model": t.model,
        "model_options": REGISTRY.resolved_options(t.model, t.model_options),
        "features": series.features,
        "n_features": series.n_features,
        "n_classes": N_CLASSES,
        "time_lookback": cfg.etl.time_lookback,
        "learning_rate": t.learning_rate,
        "batch_size": t.batch_size,
        "sample_stride": t.sample_stride,
        "windows_per_epoch": t.windows_per_epoch,
        "seed": t.seed,
        "class_weights": t.class_weights,
        "store": cfg.store_name,
    }


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> str:
    """What differs between a checkpoint's settings and the configuration's, in words."""
    parts = []
    if saved.get("model") != now["model"]:
        parts.append(
            f"train.model is {now['model']!r} in study.toml but {saved.get('model')!r} in the checkpoint"
        )
    elif saved.get("model_options") != now["model_options"]:
        old, new = saved.get("model_options") or {}, now["model_options"]
        changed = ", ".join(
            f"{k} = {new.get(k, '(none)')!r} (checkpoint: {old.get(k, '(none)')!r})"
            for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k)
        )
        parts.append(f"train.model_options of {now['model']!r} differ: {changed}")
    if saved.get("features") != now["features"]:
        parts.append(
            f"the store's features are {now['features']} but the checkpoint's {saved.get('features')}"
        )
    skip = {"model", "model_options", "features", "n_features"}
    parts += [
        f"{k} = {v!r} (checkpoint: {saved.get(k)!r})"
        for k, v in now.items()
        if k not in skip and saved.get(k) != v
    ]
    return "; ".join(parts)


def _evaluate(
    cfg: Config, series: Series, split: str, model: nn.Module, loss_fn: nn.Module, ranks: Ranks,
    progress: bool,
) -> dict[str, Any] | None:  # fmt: skip
    """Loss and metrics of `model` on a whole split, each rank evaluating its share; None off rank 0."""
    loader = make_loader(
        cfg, series, split, shuffle=False, progress=progress, rank=ranks.rank, world_size=ranks.world_size
    )
    done = run_epoch(model, loader, loss_fn, ranks.device)
    loss = mean_loss(ranks, done)
    codes = gather_codes(ranks, done)
    return None if codes is None else {"loss": loss, **classification_metrics(*codes, CATEGORIES)}


def _test_pass(
    cfg: Config, series: Series, model: nn.Module, loss_fn: nn.Module, device: torch.device, progress: bool,
    baselines: Baselines,
) -> dict[str, Any]:  # fmt: skip
    """The test split in this process alone, in store order: the model's loss, metrics and codes,
    and each window's cell and end step (for the maps); the `baselines` predict the same windows
    from their engineered features, BASELINE_CHUNK windows at a time."""
    loader = make_loader(cfg, series, "test", shuffle=False, progress=progress)
    cells, ends = window_places(series, "test", cfg.etl.time_lookback, cfg.train.sample_stride)

    def predict(features: np.ndarray, first: int) -> None:
        if first + len(features) > len(cells):
            raise TrainError(f"the test loader yielded more windows than its split's {len(cells)}: a bug")
        baselines.predict(features, cells[first : first + len(features)])

    steps = mean_steps(cfg.etl.time_step, cfg.etl.time_lookback)
    done = run_epoch(model, tap(loader, steps, BASELINE_CHUNK, predict), loss_fn, device)
    if len(cells) != done.count:
        raise TrainError(f"the test loader yielded {done.count} windows, its split has {len(cells)}: a bug")
    metrics = classification_metrics(done.y_true, done.y_pred, CATEGORIES)
    return {
        "metrics": {"loss": float(done.loss_sum) / done.count, **metrics}, "y": done.y_true,
        "pred": done.y_pred, "cells": cells, "ends": ends,
    }  # fmt: skip


def _fit_baselines(cfg: Config, series: Series, majority: int, weights: torch.Tensor) -> Baselines:
    """Every baseline (`baselines.py`), fitted on training windows, ready to predict the test pass's."""
    fit_loader = make_loader(cfg, series, "train", shuffle=True, progress=False)  # its own epoch counter
    fit = collect(fit_loader, mean_steps(cfg.etl.time_step, cfg.etl.time_lookback), FIT_SAMPLES)
    train_block = series.blocks["train"]
    return fit_baselines(
        fit, class_weights=weights.numpy(), seed=cfg.train.seed, majority=majority,
        modes=cell_modes(series.labels, slice(train_block.start, train_block.stop), majority),
        transform=str(series.attrs.get("transform", "")), last_column=_labelled_column(cfg, series),
    )  # fmt: skip


def _labelled_column(cfg: Config, series: Series) -> int | None:
    """The feature the labels are derived from, if the model sees it: its index, which is also its
    last value's column among the window features (those come first)."""
    data = cfg.data
    derived = data.reference_kind == "derived" and data.derive_from in series.features
    return series.features.index(data.derive_from) if derived else None


def train(
    cfg: Config,
    *,
    source: StoreSource | None = None,
    url: str | None = None,
    epochs: int | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = True,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any] | None:
    """Train the model on the served `train` split, validate on `valid`, report on `test`.

    `source` is the served store with its credentials, resolved once (`cfg.store_source(...)`);
    without it, `cfg.store_source(url)`: the base URL `url`, else $DATA_URL, else server.url,
    and the credentials of $DATA_TOKEN or $DATA_USER/$DATA_PASSWORD.
    `epochs` is the total number of epochs (default `train.epochs`); with
    `resume`, an existing `checkpoints/last.pt` in `out_dir` is continued (and refused
    with a `CheckpointMismatch` when its model, options, features or settings differ);
    without it (`train --fresh`) the run starts over and its checkpoints replace the old ones.
    `device` ('cuda' or 'cpu') defaults to CUDA when available.
    Returns the summary also written to `out_dir/summary.json`; under torchrun
    rank 0 returns it and the other ranks return None.
    """
    t = cfg.train
    epochs = epochs if epochs is not None else t.epochs
    if epochs < 1:
        raise TrainError(f"epochs must be at least 1, got {epochs}")
    out = Path(out_dir) if out_dir is not None else cfg.path(t.out_dir)
    source = source if source is not None else cfg.store_source(url)
    ranks = start(device)
    try:
        return _train(
            cfg,
            ranks,
            source=source,
            epochs=epochs,
            out=out,
            resume=resume,
            progress=progress and ranks.is_main,
        )
    finally:
        ranks.stop()


def _quiet(message: str) -> None:
    """What ranks other than 0 print: nothing (rank 0 speaks for the group)."""


def _train(
    cfg: Config,
    ranks: Ranks,
    *,
    source: StoreSource,
    epochs: int,
    out: Path,
    resume: bool,
    progress: bool,
) -> dict[str, Any] | None:
    """`train` in one rank of `ranks` (the only one without torchrun)."""
    t = cfg.train
    dev = ranks.device
    say = tqdm.write if ranks.is_main else _quiet
    ckpt_dir = out / "checkpoints"
    if ranks.is_main:
        ignore_in_git(out)
    seed_everything(t.seed, deterministic=dev.type == "cpu")

    series = Series(source, device=dev, resident_max_mb=t.resident_max_mb, progress=progress)
    try:
        share = {"rank": ranks.rank, "world_size": ranks.world_size}
        train_loader = make_loader(cfg, series, "train", progress=progress, **share)
        valid_loader = make_loader(cfg, series, "valid", shuffle=False, progress=progress, **share)
        settings = _model_settings(cfg, series)
        label_counts = train_loader.label_counts(N_CLASSES)  # not np.bincount: int64 per window
        weights = class_weights(label_counts, t.class_weights)
        majority = int(label_counts.argmax())

        net = build_model(
            t.model, t.model_options, series.n_features, N_CLASSES, time_lookback=cfg.etl.time_lookback
        ).to(dev)
        threads = apply_threads(net)  # intra-op threads for this model on this rank's share of the cores
        if ranks.distributed:  # the same initial weights everywhere, then each rank its own dropout masks
            torch.manual_seed(ranks.rank_seed(t.seed))
        optimizer = torch.optim.Adam(net.parameters(), lr=t.learning_rate)
        scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda")
        loss_fn = nn.CrossEntropyLoss(weight=weights.to(dev))

        state: dict[str, Any] = {
            "epoch": 0, "history": [], "best_val_loss": math.inf, "best_epoch": None, "bad_epochs": 0,
            "stopped_early": False,
        }  # fmt: skip
        last, best = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
        if ranks.broadcast(resume and last.exists()):  # rank 0 decides; every rank loads
            saved = checkpoints.load(
                last, version=CHECKPOINT_VERSION, settings=settings, world_size=ranks.world_size,
                differences=_differences,
            )  # fmt: skip
            checkpoints.restore(net, saved, last, f"model {t.model!r}")
            optimizer.load_state_dict(saved["optimizer"])
            scaler.load_state_dict(saved["scaler"])
            torch.set_rng_state(
                saved["rank_torch_rng"][ranks.rank] if ranks.distributed else saved["torch_rng"]
            )
            state = saved["progress"]
            say(f"resuming from {last} after epoch {state['epoch']}")
        elif ranks.is_main:
            best.unlink(missing_ok=True)  # never evaluate a best model of an earlier run
        model = ranks.wrap(net)  # under torchrun: DDP, gradients averaged over the ranks
        train_loader.set_epoch(state["epoch"])

        loader_stats: list[dict[str, Any]] = []
        digests: list[str] = []
        while state["epoch"] < epochs and not state["stopped_early"]:
            epoch = state["epoch"]
            started = time.perf_counter()
            train_loader.desc = f"train {epoch + 1}/{epochs}"
            trained = run_epoch(model, train_loader, loss_fn, dev, optimizer, scaler)
            stats: LoaderStats = train_loader.stats
            realigned = ranks.realign(net, optimizer, scaler, trained.batches)
            valid_loader.desc = f"valid {epoch + 1}/{epochs}"
            validated = run_epoch(net, valid_loader, loss_fn, dev)
            train_loss, val_loss = mean_loss(ranks, trained), mean_loss(ranks, validated)
            if not math.isfinite(val_loss) or not math.isfinite(train_loss):
                raise TrainError(
                    f"the loss is not finite in epoch {epoch + 1} (train {train_loss}, validation "
                    f"{val_loss}): training diverged; lower train.learning_rate and start over"
                )
            codes = gather_codes(ranks, validated)
            peers = ranks.gather(rank_report(net, optimizer, stats.samples)) if ranks.distributed else None
            if codes is not None:  # rank 0: metrics, decisions, files
                metrics = scores(*codes)
                state["history"].append(
                    {
                        "epoch": epoch + 1,
                        "train_loss": train_loss,
                        "val_loss": val_loss,
                        "val_accuracy": metrics["accuracy"],
                        "val_macro_f1": metrics["macro_f1"],
                    }
                )
                epoch_stats: dict[str, Any] = {"epoch": epoch + 1, **stats.as_dict()}
                if peers is not None:
                    digests = check_in_step(peers, epoch + 1)
                    epoch_stats.update(rank_samples=[p["samples"] for p in peers], realigned=realigned)
                loader_stats.append({**epoch_stats, "epoch_s": time.perf_counter() - started})
                improved = val_loss < state["best_val_loss"] - 1e-6
                if improved:
                    state.update(best_val_loss=val_loss, best_epoch=epoch + 1, bad_epochs=0)
                    checkpoints.save(best, {"model": net.state_dict(), "settings": settings})
                else:
                    state["bad_epochs"] += 1
                state["epoch"] = epoch + 1
                state["stopped_early"] = state["bad_epochs"] >= t.patience
                checkpoint = {
                    "version": CHECKPOINT_VERSION,
                    "settings": settings,
                    "model": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "progress": state,
                    "world_size": ranks.world_size,
                }
                if peers is not None:
                    checkpoint["rank_torch_rng"] = [p["rng"] for p in peers]
                checkpoints.save(last, checkpoint)
                say(
                    f"epoch {epoch + 1}/{epochs}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
                    f"val accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}"
                    f"{' (best)' if improved else ''} | loader: {stats}"
                )
                if state["stopped_early"]:
                    say(f"early stopping: no validation improvement for {t.patience} epochs")
            state = ranks.broadcast(state)  # every rank goes on, or stops, with rank 0

        net.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["model"])
        valid = _evaluate(cfg, series, "valid", net, loss_fn, ranks, progress)
        if valid is None:  # not rank 0: the test split and the baselines are rank 0's alone
            return None
        baselines = _fit_baselines(cfg, series, majority, weights)
        test = _test_pass(cfg, series, net, loss_fn, dev, progress, baselines)
        results = {"valid": valid, "test": test["metrics"]}
        reference = baselines.scores(test["y"], CATEGORIES)
        reference["majority"]["class"] = majority
        reference["last_step"]["rule"] = (
            CELL_MODE_RULE if _labelled_column(cfg, series) is None else LAST_VALUE_RULE
        )
        lat, lon, time_axis = coordinates(series)
    finally:
        series.close()

    summary = {
        "device": str(dev),
        "mixed_precision": dev.type == "cuda",
        "threads": threads,
        "ranks": {**ranks.describe(), **({"state_sha256": digests} if digests else {})},
        "settings": settings,
        "epochs_requested": epochs,
        "epochs_run": state["epoch"],
        "best_epoch": state["best_epoch"],
        "stopped_early": state["stopped_early"],
        "class_weights": [round(float(w), 6) for w in weights],
        "train_samples": int(label_counts.sum()),
        "series": {"cells": series.n_cells, "days": series.n_time, "resident": series.resident},
        "history": state["history"],
        "loader": loader_stats,
        **{split: _public(m) for split, m in results.items()},
        "baselines": reference,
    }
    write_results(out, summary, results, CATEGORIES)
    write_cell_results(out, test, lat, lon, time_axis, series.n_cells, CATEGORIES)
    say(
        f"test: accuracy {summary['test']['accuracy']:.3f}, macro-F1 {summary['test']['macro_f1']:.3f} | "
        + " | ".join(f"{name} {b['accuracy']:.3f}, {b['macro_f1']:.3f}" for name, b in reference.items())
    )
    return summary


def _public(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics without the plain-text report (it goes to its own file)."""
    return {k: v for k, v in metrics.items() if k != "report"}
