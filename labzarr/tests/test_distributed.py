"""Data-parallel reading and training with torchrun for real: 2 CPU ranks on gloo, started by
torch's own launcher (`python -m torch.distributed.run`, what the `torchrun` script runs) as a
subprocess, reading a store served over real HTTP (`FaultServer`).

Checked: the ranks' shares of each epoch are disjoint and cover it, in a new order each epoch;
an uneven split (one rank runs a batch more) under `uneven_inputs` leaves the ranks' states apart
until `realign` makes them identical (`state_digest`); the collectives (`sum`, `gather`,
`broadcast`) combine the ranks; without torchrun's variables everything is one process, and half
of them is a clear error. A study's training loop under torchrun is tested by the study.
Cost: one launch of torchrun with 2 ranks, about 15 s on 2 idle cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from labzarr.remote import StoreSource
from labzarr.store_format import window_ends
from labzarr.testing.faultserver import FaultServer
from labzarr.testing.fixtures import torchrun
from labzarr.testing.stores import indexed_series, write_series_store
from labzarr.train.distributed import DistributedError, rank_device, start
from labzarr.train.loader import Series

PROBE = Path(__file__).with_name("ddp_probe.py")
DATASET = "probe_cells"
RANKS = 2
LOOKBACK = 20
# 7 cells x 197 training windows = 1379: 690 for rank 0, 689 = 13 x 53 for rank 1, so with
# batches of 53 rank 0 runs a 14th batch (its last window) alone: Join and the realignment act.
N_CELLS, N_TIME, BATCH = 7, 400, 53
SHARES = [690, 689]


def test_ranks_draw_disjoint_shares_and_train_in_step(tmp_path: Path) -> None:
    x, y = indexed_series(N_CELLS, N_TIME)
    write_series_store(tmp_path / "srv", x, y, dataset_name=DATASET, lookback=LOOKBACK, chunk_cells=4)
    with FaultServer(tmp_path / "srv") as server:
        torchrun(PROBE, server.url, DATASET, LOOKBACK, BATCH, tmp_path, 2, cwd=tmp_path)
        series = Series(StoreSource.resolve(server.url, dataset_name=DATASET))
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

    reports = json.loads((tmp_path / "report.json").read_text())
    assert [r["rank"] for r in reports] == list(range(RANKS)), "gather: every rank, in rank order"
    assert [r["samples"] for r in reports] == SHARES and [r["steps"] for r in reports] == [14, 13]
    assert reports[0]["before"] != reports[1]["before"], "Join does not step the rank that ran out"
    assert all(r["realigned"] for r in reports), "rank 0 ran one batch more, then both were realigned"
    assert reports[0]["after"] == reports[1]["after"] == reports[0]["before"], "rank 0's state everywhere"
    assert all(r["summed"] == [sum(SHARES), 0.5 * RANKS] for r in reports)
    assert all(r["broadcast"] == "from rank 0" for r in reports)
    assert all(
        r["describe"] == {"world_size": RANKS, "backend": "gloo", "threads_per_rank": 1} for r in reports
    )


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
