"""How fast this runtime reads the served store: the probe the notebook runs before training."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from .remote import StoreSource


def measure_throughput(source: StoreSource, *, max_chunks: int = 8) -> dict[str, float]:
    """Read up to `max_chunks` whole feature chunks the way the loader does (no cache: this
    measures the link); returns `chunks`, `cells`, `seconds`, `bytes`, `mb_per_s` and
    `cells_per_s` (whole series of a cell per second)."""
    source = dataclasses.replace(source, cache="none")
    with source.connect() as remote:
        features = remote.open_group()[source.features]
        chunk_cells = int(features.chunks[0])
        n_chunks = min(max_chunks, -(-int(features.shape[0]) // chunk_cells))
        before = remote.stats.snapshot()["bytes"]
        start = time.perf_counter()
        cells = np.asarray(features[: n_chunks * chunk_cells]).shape[0]
        seconds = time.perf_counter() - start
        nbytes = remote.stats.snapshot()["bytes"] - before
    return {
        "chunks": n_chunks,
        "cells": cells,
        "seconds": seconds,
        "bytes": nbytes,
        "mb_per_s": nbytes / 1e6 / seconds if seconds else 0.0,
        "cells_per_s": cells / seconds if seconds else 0.0,
    }
