"""The study's training with torchrun for real: 2 CPU ranks on gloo, started by torch's own
launcher (`python -m torch.distributed.run`, what the `torchrun` script runs) as a subprocess,
reading a store served over real HTTP (`labzarr.testing.faultserver.FaultServer`).

Checked: an uneven split (one rank runs a batch more) leaves both ranks with identical weights;
only rank 0 prints and writes; its metrics are finite; a fresh run with the same seed repeats the
first epoch exactly and a resumed run ends where the uninterrupted one did; a checkpoint of 2
ranks is refused, with a clear message, by a single-process run. The ranks' shares, the
collectives and a single process without torchrun are labzarr's and tested there.
Cost: about 70 s of CPU (3 launches of torchrun and 2 ranks, most of it each process importing
torch and scikit-learn), about 40 s on 2 idle cores.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from labzarr.testing.faultserver import FaultServer
from labzarr.testing.fixtures import torchrun
from labzarr.testing.stores import learnable_series, write_series_store
from labzarr.train.checkpoints import CheckpointError
from labzarr.train.distributed import state_digest
from labzarr.train.threads import POLICY_MARK

from ..config import load_config
from ..train.loop import train
from .conftest import study_toml

pytestmark = pytest.mark.scaleout

PACKAGE = __package__.rsplit(".", 1)[0]
RANKS = 2
LOOKBACK = 20
# 7 cells x 197 training windows = 1379: 690 for rank 0, 689 = 13 x 53 for rank 1, so with
# batches of 53 rank 0 runs a 14th batch (its last window) alone: Join and the realignment act.
N_CELLS, N_TIME, BATCH = 7, 400, 53
SHARES = [690, 689]
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


@pytest.fixture
def learnable_url(config: Path, tmp_path: Path) -> Iterator[str]:
    x, y = learnable_series(N_CELLS, N_TIME)
    name = load_config(config).study.dataset_name
    write_series_store(tmp_path / "srv", x, y, dataset_name=name, lookback=LOOKBACK, chunk_cells=4)
    with FaultServer(tmp_path / "srv") as server:
        yield server.url


def test_torchrun_trains_in_step_reproducibly_and_resumes(
    config: Path, learnable_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OMP_WAIT_POLICY", POLICY_MARK):  # what this test process's policy left for children:
        monkeypatch.delenv(name, raising=False)  # the ranks' own CLI must set the policy

    def train_ranks(out: str, epochs: int) -> tuple[dict, str]:
        cli = ("-m", PACKAGE, "--config", config, "train", "--url", learnable_url, "--out", tmp_path / out)
        done = torchrun(*cli, "--epochs", epochs, cwd=tmp_path)
        return json.loads((tmp_path / out / "summary.json").read_text()), done.stdout

    first, printed = train_ranks("full", 2)
    assert printed.count("epoch 1/2:") == 1 and printed.count("test: accuracy") == 1, "rank 0 alone prints"
    group = first["ranks"]
    assert group["world_size"] == RANKS and group["backend"] == "gloo" and group["threads_per_rank"] == 1
    threads = first["threads"]  # the study's policy, not torchrun's own OMP_NUM_THREADS=1
    assert threads["threads_source"] == "policy" and threads["local_ranks"] == RANKS, threads
    assert threads["wait_policy"] == "passive" and threads["wait_source"] == "policy", threads  # the CLI's
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

    with pytest.raises(CheckpointError, match=r"written by a run of 2 process\(es\) and this run has 1"):
        train(load_config(config), url=learnable_url, epochs=3, out_dir=tmp_path / "resumed", progress=False)
