"""A torchrun entry for the tests: each rank joins the group and opens the served series and its
share of the training split exactly as `train` does, then saves the (cell, end) of every window it
drew, epoch by epoch, so the test can check the shares against the whole split.

Run: `torchrun --standalone --nproc_per_node=N -m <package>.tests.ddp_probe CONFIG URL OUT EPOCHS`
on a store written with `stores.indexed_series` (feature 0 of cell c on day t is c * DAY + t).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..config import load_config
from ..train.distributed import start
from ..train.loader import make_loader, open_series
from .stores import DAY


def main(argv: list[str]) -> None:
    config, url, out, epochs = argv
    cfg = load_config(config)
    ranks = start("cpu")
    try:
        series = open_series(cfg, url=url, device=ranks.device, progress=False)
        try:
            loader = make_loader(
                cfg, series, "train", progress=False, rank=ranks.rank, world_size=ranks.world_size
            )
            for epoch in range(int(epochs)):
                code = np.concatenate([xb[:, -1, 0].numpy().astype(np.int64) for xb, _ in loader])
                drawn = np.stack([code // DAY, code % DAY], axis=1)  # (cell, end) in the order drawn
                np.save(Path(out) / f"rank{ranks.rank}-epoch{epoch}.npy", drawn)
        finally:
            series.close()
    finally:
        ranks.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
