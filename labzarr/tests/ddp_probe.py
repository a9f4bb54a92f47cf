"""A torchrun entry for the tests: each rank joins the group, opens the served series and its share
of the training split (`Series`, `WindowLoader(rank=, world_size=)`), saves the (cell, end) of
every window it drew, epoch by epoch, then trains a tiny model for one epoch the way a study's loop
does (DDP under `uneven_inputs`, `realign`, `state_digest`) and rank 0 writes what the ranks report.

Run: `torchrun --standalone --nproc_per_node=N tests/ddp_probe.py URL DATASET LOOKBACK BATCH OUT
EPOCHS` on a store written with `labzarr.testing.stores.indexed_series` (feature 0 of cell c on
day t is c * DAY + t).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from labzarr.remote import StoreSource
from labzarr.testing.stores import DAY
from labzarr.train.distributed import Ranks, start, state_digest, uneven_inputs
from labzarr.train.loader import Series, WindowLoader

SEED = 42


def train_one_epoch(ranks: Ranks, loader: WindowLoader, lookback: int, n_features: int) -> dict:
    """One epoch of a linear model on this rank's share; what the ranks report about it."""
    torch.manual_seed(SEED)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    net = nn.Sequential(nn.Flatten(), nn.Linear(lookback * n_features, 11))
    model = ranks.wrap(net)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    steps = samples = 0
    with uneven_inputs(model):
        for xb, yb in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(xb / DAY), yb)
            loss.backward()
            optimizer.step()
            steps += 1
            samples += len(yb)
    before = state_digest(net.state_dict(), optimizer.state_dict())
    realigned = ranks.realign(net, optimizer, scaler, steps)
    after = state_digest(net.state_dict(), optimizer.state_dict())
    return {
        "rank": ranks.rank,
        "steps": steps,
        "samples": samples,
        "before": before,
        "after": after,
        "realigned": realigned,
        "summed": ranks.sum([samples, 0.5]),
        "broadcast": ranks.broadcast(f"from rank {ranks.rank}"),
        "describe": ranks.describe(),
    }


def main(argv: list[str]) -> None:
    url, dataset, lookback, batch, out, epochs = argv
    ranks = start("cpu")
    try:
        source = StoreSource.resolve(url, dataset_name=dataset, auth="none", cache="none")
        series = Series(source, device=ranks.device)
        try:
            loader = WindowLoader(
                series, "train", batch_size=int(batch), lookback=int(lookback), shuffle=True, seed=SEED,
                rank=ranks.rank, world_size=ranks.world_size,
            )  # fmt: skip
            for epoch in range(int(epochs)):
                code = np.concatenate([xb[:, -1, 0].numpy().astype(np.int64) for xb, _ in loader])
                drawn = np.stack([code // DAY, code % DAY], axis=1)  # (cell, end) in the order drawn
                np.save(Path(out) / f"rank{ranks.rank}-epoch{epoch}.npy", drawn)
            loader.set_epoch(0)
            report = train_one_epoch(ranks, loader, int(lookback), series.n_features)
        finally:
            series.close()
        reports = ranks.gather(report)
        if ranks.is_main:
            (Path(out) / "report.json").write_text(json.dumps(reports))
        if ranks.distributed:  # leave together: once, a rank that left while rank 0 still wrote aborted
            torch.distributed.barrier()
    finally:
        ranks.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
