"""Loader memory benchmark: peak RSS over imports against the resident series, old loader vs new.

Usage (from the template repository, in its dev environment):

    .venv/bin/python benchmarks/bench_loader_memory.py [--cells 2207] [--years 30] [--batches 2000]

Each measurement runs in a fresh process: it imports numpy, torch and the loader, notes its RSS,
writes a synthetic series straight into memory (float32 features (cells, days, 2), int8 labels,
the `complete` mask; 10 % of the cells empty like ocean cells, a few gaps), wraps it as the
training does (the new loader: `Series.from_arrays`; the old one, `--old-commit`'s
`train/loader.py` from git, given the same arrays), builds the train, valid and test loaders
with a 180-day lookback, gathers the training labels (class weights), draws `--batches` training
batches (timed: batches/s) and one batch of each evaluation split, then reads its peak RSS
(VmHWM). No HTTP: the download is the same for both and is not what grows.

Two grid sizes (a quarter of `--cells` and `--cells`) give a fixed overhead and a per-cell slope,
extrapolated to 46,000 cells (about the largest resident series of a 12.7 GB Colab runtime).
Target (issue 20): peak over imports <= 1.5 x the resident features + a fixed overhead.
Prints figures and ratios; asserts nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TEMPLATE = Path(__file__).resolve().parents[1]
OLD_COMMIT = "846f293"  # the loader before the compact index (int64 pairs, materialised permutations)
LOOKBACK, BATCH, FEATURES, DAYS_PER_YEAR = 180, 256, 2, 365.25
EXTRAPOLATE_CELLS = 46_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", type=int, default=2207, help="cells of the larger grid (default 2207)")
    p.add_argument("--years", type=int, default=30, help="years of daily data (default 30)")
    p.add_argument("--batches", type=int, default=2000, help="training batches timed (default 2000)")
    p.add_argument("--old-commit", default=OLD_COMMIT, help=f"commit of the old loader (default {OLD_COMMIT})")
    p.add_argument("--skip-old", action="store_true", help="measure the new loader only")
    p.add_argument("--speed-repeat", type=int, default=3, help="interleaved old/new speed runs at the small size")
    p.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)  # internal: which cells old-file
    return p.parse_args(argv)


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def load_old_loader(path: str) -> Any:
    """The old `labzarr.train.loader` module from a file (relative imports resolve in labzarr.train)."""
    spec = importlib.util.spec_from_file_location("labzarr.train._old_loader", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def measure(which: str, cells: int, years: int, batches: int, old_file: str) -> dict[str, float]:
    import threading

    import numpy as np
    import torch
    from labzarr.remote import TransferStats
    from labzarr.store_format import split_blocks
    from labzarr.train import loader as new

    module = load_old_loader(old_file) if which == "old" else new
    base_kb = rss_kb("VmRSS")
    n_time = int(years * DAYS_PER_YEAR)
    rng = np.random.default_rng(0)
    features = torch.empty((cells, n_time, FEATURES), dtype=torch.float32)
    for c0 in range(0, cells, 64):  # in place, block by block: no float64 copy of the series
        rng.standard_normal(dtype=np.float32, out=features[c0 : c0 + 64].numpy())
    labels = rng.integers(0, 11, size=(cells, n_time), dtype=np.int8)
    complete = np.ones((cells, n_time), dtype=bool)
    complete[rng.choice(cells, cells // 10, replace=False)] = False  # ocean cells
    gappy = rng.choice(cells, cells // 20, replace=False)
    complete[gappy, rng.integers(0, n_time, size=len(gappy))] = False  # a lost day here and there
    blocks = split_blocks(n_time, lookback=LOOKBACK, gap=LOOKBACK, fractions=(0.7, 0.15, 0.15))
    if which == "new":
        series = new.Series.from_arrays(features, labels, complete, blocks, lookback=LOOKBACK)
    else:  # the old Series had no in-memory constructor: the same fields, set by hand
        series = module.Series.__new__(module.Series)
        series.__dict__.update(
            source=None, device=torch.device("cpu"), budget_bytes=2**62, progress=False,
            remote=type("Remote", (), {"stats": TransferStats()})(), n_cells=cells, n_time=n_time,
            n_features=FEATURES, chunk_cells=cells, attrs={}, blocks=blocks, gap=LOOKBACK, lookback=LOOKBACK,
            features=["a", "b"], labels=labels, complete=complete, _resident=features,
            _labels_on_device=None, _lock=threading.Lock(),
        )  # fmt: skip
    series_bytes = features.numel() * 4
    loaders = {
        split: module.WindowLoader(series, split, batch_size=BATCH, shuffle=split == "train", seed=42)
        for split in ("train", "valid", "test")
    }
    labels_of_train = loaders["train"].labels()  # class weights, as the training does (counted by block:
    for i in range(0, len(labels_of_train), 2**20):  # np.bincount would widen them all to int64 at once)
        np.bincount(labels_of_train[i : i + 2**20], minlength=11)
    del labels_of_train
    train = iter(loaders["train"])
    next(train)
    start = time.perf_counter()
    drawn = sum(1 for _, _ in zip(range(batches), train, strict=False))
    seconds = time.perf_counter() - start
    for split in ("valid", "test"):
        next(iter(loaders[split]))
    return {
        "which": which,
        "cells": cells,
        "series_mb": series_bytes / 2**20,
        "windows": len(loaders["train"].labels()),
        "peak_over_imports_mb": (rss_kb("VmHWM") - base_kb) / 1024,
        "batches_per_s": drawn / seconds,
    }


def run(which: str, cells: int, args: argparse.Namespace, old_file: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--years", str(args.years), "--batches", str(args.batches),
         "--measure", which, str(cells), old_file],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode:
        raise SystemExit(f"measuring {which} at {cells} cells failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.measure:
        which, cells, old_file = args.measure
        print(json.dumps(measure(which, int(cells), args.years, args.batches, old_file)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        old_file = str(Path(tmp) / "old_loader.py")
        if not args.skip_old:
            source = subprocess.run(
                ["git", "-C", str(TEMPLATE), "show", f"{args.old_commit}:labzarr/src/labzarr/train/loader.py"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            Path(old_file).write_text(source)
        sizes = (max(1, args.cells // 4), args.cells)
        results: dict[str, list[dict[str, float]]] = {}
        loaders = ("new",) if args.skip_old else ("old", "new")
        for which in loaders:
            results[which] = [run(which, cells, args, old_file) for cells in sizes]
        speed: dict[str, list[float]] = {which: [] for which in loaders}
        for _ in range(args.speed_repeat):  # interleaved: a shared machine's load hits both alike
            for which in loaders:
                speed[which].append(run(which, sizes[0], args, old_file)["batches_per_s"])
    n_time = int(args.years * DAYS_PER_YEAR)
    print(f"{args.years} years ({n_time} days) x {FEATURES} features, lookback {LOOKBACK}, batch {BATCH}")
    print(f"{'loader':6} {'cells':>6} {'series MiB':>10} {'train windows':>14} {'peak over imports MiB':>21} "
          f"{'x series':>9} {'batches/s':>10}")  # fmt: skip
    for which, rows in results.items():
        for r in rows:
            ratio = r["peak_over_imports_mb"] / r["series_mb"]
            print(f"{which:6} {r['cells']:>6} {r['series_mb']:>10.0f} {r['windows']:>14,} "
                  f"{r['peak_over_imports_mb']:>21.0f} {ratio:>9.2f} {r['batches_per_s']:>10,.0f}")  # fmt: skip
        small, large = rows
        slope = (large["peak_over_imports_mb"] - small["peak_over_imports_mb"]) / (large["cells"] - small["cells"])
        fixed = large["peak_over_imports_mb"] - slope * large["cells"]
        series_big = large["series_mb"] / large["cells"] * EXTRAPOLATE_CELLS
        peak_big = fixed + slope * EXTRAPOLATE_CELLS
        print(f"{which:6} fit: {fixed:.0f} MB fixed + {slope:.3f} MB per cell "
              f"({slope / (large['series_mb'] / large['cells']):.2f} x the series per cell); at "
              f"{EXTRAPOLATE_CELLS:,} cells: series {series_big / 1024:.1f} GB, peak over imports "
              f"{peak_big / 1024:.1f} GB ({peak_big / series_big:.2f} x)")  # fmt: skip
    for which, values in speed.items():
        print(f"{which:6} batches/s at {sizes[0]} cells, {len(values)} interleaved runs: median "
              f"{statistics.median(values):,.0f} [{min(values):,.0f}-{max(values):,.0f}]")  # fmt: skip
    if "old" in results and speed["old"]:
        print(f"new / old batches/s (medians): {statistics.median(speed['new']) / statistics.median(speed['old']):.2f}")
    if "old" in results:
        old, new_ = results["old"][-1], results["new"][-1]
        peak = new_["peak_over_imports_mb"] / old["peak_over_imports_mb"]
        print(f"new / old at {args.cells} cells: peak {peak:.2f}, "
              f"batches/s {new_['batches_per_s'] / old['batches_per_s']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
