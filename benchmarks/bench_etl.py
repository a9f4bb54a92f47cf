#!/usr/bin/env python3
"""ETL benchmark: throughput and peak memory at two grid sizes, and the lookback step side by side
with the blog's per-cell loop. Prints figures; asserts nothing (speed goals are not tests).

    python benchmarks/bench_etl.py                 # bakes the template with its defaults
    python benchmarks/bench_etl.py --study DIR     # uses an existing baked study instead

What it measures, each in a fresh subprocess so sizes cannot contaminate each other:

1. ETL (`run_etl`) on synthetic inputs of `SIZES["small"]` (5x8 = 40 cells) and
   `SIZES["large"]` (20x16 = 320 cells, 8x the cells), 5 years: wall time,
   samples/s, MB/s written, and peak RSS (`resource.getrusage`, the child's
   whole life) next to the RSS right after imports, once with the study's
   `etl.block_mb` and once with a small block budget that makes the large grid
   take several blocks (showing the bound rather than the budget).
2. The lookback step alone on a grid of at least 400 cells: the blog's way (a
   Python loop over stacked cells, `rolling().construct` per cell, `xr.concat`)
   against `windows.gather` (one `sliding_window_view` + fancy index), on the
   same in-memory data, checked equal, with the ratio.

The synthetic inputs are written by the study's own `synth` command in a
separate process before each measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1]


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def package_of(study: Path) -> str:
    (package,) = [p.parent.name for p in (study / "src").glob("*/cli.py")]
    return package


def child(args: list[str], study: Path) -> dict:
    """Run this script in child mode with the study importable; return its JSON line."""
    env = {**os.environ, "PYTHONPATH": str(study / "src")}
    result = subprocess.run(
        [sys.executable, __file__, *args, "--study", str(study)], capture_output=True, text=True, env=env
    )
    if result.returncode:
        raise SystemExit(f"child {args} failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def synth(study: Path, out: Path, *extra: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(study / "src")}
    cmd = [sys.executable, "-m", package_of(study), "--config", str(study / "study.toml"), "synth"]
    subprocess.run([*cmd, "--out", str(out), "--overwrite", *extra], check=True, capture_output=True, env=env)


# ---------------------------------------------------------------- child modes
def child_etl(ns: argparse.Namespace) -> None:
    import importlib

    package = package_of(ns.study)
    config = importlib.import_module(f"{package}.config")
    pipeline = importlib.import_module(f"{package}.etl.pipeline")
    importlib.import_module("sklearn.preprocessing")  # imported lazily by some transforms
    cfg = config.load_config(ns.study / "study.toml").override(
        {"data.raw_dir": str(ns.raw), "data.zarr_dir": str(ns.out), "etl.block_mb": ns.block_mb}
    )
    baseline = maxrss_mb()
    started = time.perf_counter()
    store = pipeline.run_etl(cfg, overwrite=True)
    seconds = time.perf_counter() - started
    import xarray as xr

    samples = sum(
        xr.open_zarr(store / f"{s}.zarr", consolidated=True).sizes["samples"] for s in ("train", "valid", "test")
    )
    written = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    decoded = samples * cfg.etl.time_lookback * len(cfg.data.variables) * 4
    print(
        json.dumps(
            {
                "seconds": seconds,
                "samples": samples,
                "bytes": written,
                "decoded_bytes": decoded,
                "rss_after_imports_mb": baseline,
                "peak_rss_mb": maxrss_mb(),
            }
        )
    )


def child_lookback(ns: argparse.Namespace) -> None:
    import importlib

    import numpy as np
    import xarray as xr

    windows = importlib.import_module(f"{package_of(ns.study)}.etl.windows")
    ds = xr.open_dataset(ns.raw / "model_output.nc").load()
    variables = list(ds.data_vars)
    n_time = ds.sizes["time"]
    cells = ds.sizes["lat"] * ds.sizes["lon"]
    ends = np.arange(ns.lookback - 1, n_time)

    naive_s = float("inf")
    for _ in range(ns.repeat):  # best of n for both, the same way
        started = time.perf_counter()
        slow = windows.naive_lookback(ds[variables], ns.lookback, ends).values
        naive_s = min(naive_s, time.perf_counter() - started)

    best = float("inf")
    for _ in range(ns.repeat):
        started = time.perf_counter()
        series = np.stack([ds[v].values.reshape(n_time, cells).T for v in variables], axis=-1)
        cell = np.repeat(np.arange(cells), ends.size)
        end = np.tile(ends, cells)
        fast = windows.gather(series, cell, end, ns.lookback)
        best = min(best, time.perf_counter() - started)
    print(
        json.dumps(
            {
                "cells": cells,
                "days": n_time,
                "samples": int(fast.shape[0]),
                "lookback": ns.lookback,
                "equal": bool(np.array_equal(slow, fast, equal_nan=True)),
                "naive_s": naive_s,
                "vectorised_s": best,
                "mb": fast.nbytes / 1e6,
            }
        )
    )


# ---------------------------------------------------------------- driver
def bake(where: Path, lookback: int, chunk: int) -> Path:
    from cookiecutter.main import cookiecutter

    return Path(
        cookiecutter(
            str(TEMPLATE),
            no_input=True,
            output_dir=str(where),
            extra_context={"time_lookback": str(lookback), "chunk_samples": str(chunk)},
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="run", choices=("run", "_etl", "_lookback"))
    parser.add_argument("--study", type=Path, help="a baked study (default: bake the template)")
    parser.add_argument("--lookback", type=int, default=180, help="time_lookback of the baked study")
    parser.add_argument("--chunk", type=int, default=10000, help="chunk_samples of the baked study")
    parser.add_argument("--small-block-mb", type=int, default=8, help="the small block budget (MB)")
    parser.add_argument("--compare-lookback", type=int, default=30, help="lookback of the loop comparison")
    parser.add_argument("--compare-grid", default="20x20", help="grid of the loop comparison (>= 400 cells)")
    parser.add_argument("--compare-years", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="best of n timings in the loop comparison")
    parser.add_argument("--raw", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--block-mb", type=int)
    ns = parser.parse_args()
    if ns.mode == "_etl":
        return child_etl(ns)
    if ns.mode == "_lookback":
        ns.lookback = ns.compare_lookback
        return child_lookback(ns)

    with tempfile.TemporaryDirectory(prefix="bench_etl_") as tmp:
        work = Path(tmp)
        study = ns.study.resolve() if ns.study else bake(work / "bake", ns.lookback, ns.chunk)
        sys.path.insert(0, str(study / "src"))
        config = __import__(f"{package_of(study)}.config", fromlist=["load_config"])
        cfg = config.load_config(study / "study.toml")
        etl = cfg.etl
        print(
            f"study: {study}  (lookback {etl.time_lookback}, chunk {etl.chunk_samples} samples, {etl.transform}, "
            f"zarr v{etl.zarr_format}, features {', '.join(cfg.data.variables)})"
        )
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs\n")

        print("1. ETL throughput and peak memory (one subprocess per run)")
        header = (
            f"{'size':<6} {'cells':>5} {'block_mb':>8} {'samples':>8} {'seconds':>7} {'samples/s':>10} "
            f"{'MB/s written':>12} {'MB/s decoded':>12} {'MB written':>10} {'MB decoded':>10} "
            f"{'RSS imports':>11} {'peak RSS':>8}"
        )
        print(header)
        peaks: dict[int, dict[str, float]] = {}
        for block_mb in (cfg.etl.block_mb, ns.small_block_mb):
            for size, cells in (("small", 40), ("large", 320)):
                raw = work / f"raw_{size}"
                if not raw.exists():
                    synth(study, raw, "--size", size)
                r = child(["_etl", "--raw", str(raw), "--out", str(work / "zarr"), "--block-mb", str(block_mb)], study)
                peaks.setdefault(block_mb, {})[size] = r["peak_rss_mb"]
                print(
                    f"{size:<6} {cells:>5} {block_mb:>8} {r['samples']:>8} {r['seconds']:>7.2f} "
                    f"{r['samples'] / r['seconds']:>10.0f} {r['bytes'] / 1e6 / r['seconds']:>12.1f} "
                    f"{r['decoded_bytes'] / 1e6 / r['seconds']:>12.1f} "
                    f"{r['bytes'] / 1e6:>10.1f} {r['decoded_bytes'] / 1e6:>10.1f} "
                    f"{r['rss_after_imports_mb']:>10.0f}M {r['peak_rss_mb']:>7.0f}M"
                )
        for block_mb, p in peaks.items():
            print(f"peak RSS large/small (8x the cells), block_mb={block_mb}: {p['large'] / p['small']:.2f}x")

        ny, nx = (int(v) for v in ns.compare_grid.split("x"))
        raw = work / "raw_compare"
        synth(study, raw, "--ny", str(ny), "--nx", str(nx), "--years", str(ns.compare_years))
        args = ["--raw", str(raw), "--compare-lookback", str(ns.compare_lookback), "--repeat", str(ns.repeat)]
        r = child(["_lookback", *args], study)
        print(
            f"\n2. Lookback step on {r['cells']} cells x {r['days']} days, lookback {r['lookback']}: "
            f"{r['samples']} samples, {r['mb']:.0f} MB (results equal: {r['equal']})"
        )
        print(f"   naive per-cell loop + xr.concat : {r['naive_s']:8.3f} s (best of {ns.repeat})")
        print(f"   vectorised (sliding_window_view): {r['vectorised_s']:8.3f} s (best of {ns.repeat})")
        print(f"   speed-up                        : {r['naive_s'] / r['vectorised_s']:8.0f}x")


if __name__ == "__main__":
    main()
