"""Training with torchrun for real: 2 CPU ranks on gloo, started by torch's own launcher
(`python -m torch.distributed.run`, what the `torchrun` script runs) as a subprocess, reading a
store served over real HTTP (`FaultServer`).

Checked: the ranks' shares of each epoch are disjoint and cover it, in a new order each epoch;
an uneven split (one rank runs a batch more) leaves both ranks with identical weights; only
rank 0 prints and writes; its metrics are finite; a fresh run with the same seed repeats the
first epoch exactly and a resumed run ends where the uninterrupted one did; a checkpoint of 2
ranks is refused, with a clear message, by a single-process run; without torchrun's variables
everything is one process, and half of them is a clear error.
Cost: about 90 s of CPU (4 launches of torchrun and 2 ranks, most of it each process importing
torch and scikit-learn), about 50 s on 2 idle cores.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ..config import Config, load_config
from ..store_format import window_ends
from ..train.distributed import DistributedError, rank_device, start, state_digest
from ..train.loader import open_series
from ..train.loop import TrainError, train
from .conftest import study_toml
from .faultserver import FaultServer
from .stores import indexed_series, learnable_series, write_series_store

PACKAGE = __package__.rsplit(".", 1)[0]
RANKS = 2
LOOKBACK = 20
# 7 cells x 197 training windows = 1379: 690 for rank 0, 689 = 13 x 53 for rank 1, so with
# batches of 53 rank 0 runs a 14th batch (its last window) alone: Join and the realignment act.
N_CELLS, N_TIME, BATCH = 7, 400, 53
SHARES = [690, 689]
LAUNCH_TIMEOUT_S = 600  # a hung rendezvous fails the test instead of blocking the suite
REPRODUCIBLE = ("history", "valid", "test", "best_epoch", "epochs_run", "class_weights", "ranks")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A study.toml for a tiny run: short lookback, small LSTM with dropout, a shared disk cache."""
    return study_toml(
        tmp_path / "study.toml",
        time_lookback=LOOKBACK,
        split_gap=LOOKBACK,
        batch_size=BATCH,
        hidden_size=16,
        learning_rate=0.01,
        dropout=0.2,
        patience=2,
        cache="disk",
        cache_dir=str(tmp_path / "chunk-cache"),
        out_dir=str(tmp_path / "results"),
    )


def serve(cfg: Config, root: Path, series: tuple[np.ndarray, np.ndarray]) -> FaultServer:
    x, y = series
    write_series_store(root, x, y, dataset_name=cfg.study.dataset_name, lookback=LOOKBACK, chunk_cells=4)
    return FaultServer(root)


def torchrun(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`torchrun --standalone --nproc_per_node=2 ARGS`, one intra-op thread per rank; fails with
    both output streams when the launch fails."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={RANKS}"]
    result = subprocess.run(
        [*command, *map(str, args)],
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT_S,
    )
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture
def learnable_url(config: Path, tmp_path: Path) -> Iterator[str]:
    with serve(load_config(config), tmp_path / "srv", learnable_series(N_CELLS, N_TIME)) as server:
        yield server.url


def test_ranks_draw_disjoint_shares_covering_each_epoch(config: Path, tmp_path: Path) -> None:
    cfg = load_config(config)
    with serve(cfg, tmp_path / "srv", indexed_series(N_CELLS, N_TIME)) as server:
        torchrun("-m", f"{PACKAGE}.tests.ddp_probe", config, server.url, tmp_path, 2, cwd=tmp_path)
        series = open_series(cfg, url=server.url, progress=False)
        split = {(c, int(e)) for c in range(N_CELLS) for e in window_ends(series.blocks["train"], LOOKBACK)}
        series.close()
    orders = []
    for epoch in range(2):
        drawn = [np.load(tmp_path / f"rank{r}-epoch{epoch}.npy") for r in range(RANKS)]
        assert [len(d) for d in drawn] == SHARES
        shares = [{tuple(map(int, pair)) for pair in d} for d in drawn]
        assert not shares[0] & shares[1], "the ranks' shares overlap"
        assert shares[0] | shares[1] == split, "together the ranks cover the epoch"
        orders.append(np.concatenate(drawn))
    assert not np.array_equal(orders[0], orders[1]), "each epoch draws a new order"


def test_torchrun_trains_in_step_reproducibly_and_resumes(
    config: Path, learnable_url: str, tmp_path: Path
) -> None:
    def train_ranks(out: str, epochs: int) -> tuple[dict, str]:
        cli = ("-m", PACKAGE, "--config", config, "train", "--url", learnable_url, "--out", tmp_path / out)
        done = torchrun(*cli, "--epochs", epochs, cwd=tmp_path)
        return json.loads((tmp_path / out / "summary.json").read_text()), done.stdout

    first, printed = train_ranks("full", 2)
    assert printed.count("epoch 1/2:") == 1 and printed.count("test: accuracy") == 1, "rank 0 alone prints"
    group = first["ranks"]
    assert group["world_size"] == RANKS and group["backend"] == "gloo" and group["threads_per_rank"] == 1
    last = torch.load(tmp_path / "full" / "checkpoints" / "last.pt", weights_only=True)
    assert group["state_sha256"] == [state_digest(last["model"], last["optimizer"])] * RANKS, (
        "both ranks end with rank 0's weights and optimizer state"
    )
    assert last["world_size"] == RANKS and len(last["rank_torch_rng"]) == RANKS
    for epoch in first["loader"]:
        assert epoch["rank_samples"] == SHARES and sum(SHARES) == first["train_samples"]
        assert epoch["realigned"], "rank 0 ran one batch more, then both were realigned"
    for entry in first["history"]:
        assert all(
            math.isfinite(entry[k]) for k in ("train_loss", "val_loss", "val_accuracy", "val_macro_f1")
        )
    assert first["history"][1]["train_loss"] < first["history"][0]["train_loss"]
    test = first["test"]
    assert test["samples"] == N_CELLS * 72 and math.isfinite(test["loss"]) and 0 <= test["macro_f1"] <= 1
    for name in ("loss.png", "confusion_matrix.png", "history.csv", "classification_report.txt"):
        assert (tmp_path / "full" / name).stat().st_size > 0, name
    assert any((tmp_path / "chunk-cache").rglob("*")), "the ranks filled their shared chunk cache"

    partial, _ = train_ranks("resumed", 1)
    assert partial["history"] == first["history"][:1], "the same seed gives the same first epoch"
    resumed, printed = train_ranks("resumed", 2)
    assert "resuming from" in printed and len(resumed["loader"]) == 1
    assert {k: resumed[k] for k in REPRODUCIBLE} == {k: first[k] for k in REPRODUCIBLE}

    with pytest.raises(TrainError, match=r"written by a run of 2 process\(es\) and this run has 1"):
        train(load_config(config), url=learnable_url, epochs=3, out_dir=tmp_path / "resumed", progress=False)


def test_without_torchrun_one_process_and_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    alone = start("cpu")
    assert (alone.rank, alone.world_size, alone.device, alone.distributed) == (
        0,
        1,
        torch.device("cpu"),
        False,
    )
    assert alone.sum([torch.tensor(1.5, dtype=torch.float64), 2]) == [1.5, 2.0]
    assert alone.gather("x") == ["x"] and alone.broadcast("x") == "x"
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(DistributedError, match="start distributed training with torchrun"):
        start("cpu")
    with pytest.raises(DistributedError, match="cuda:LOCAL_RANK"):
        rank_device("cuda:1", local_rank=0)
