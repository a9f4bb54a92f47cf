#!/usr/bin/env python3
"""ETL benchmark: throughput and peak memory at 40 vs 320 cells. Prints figures; asserts nothing
(speed goals are not tests).

    python benchmarks/bench_etl.py                 # bakes the template with its defaults
    python benchmarks/bench_etl.py --study DIR     # uses an existing baked study instead

The ETL (`run_etl`) writes the series store (`<dataset_name>.zarr`: the transformed series
(cell, time, feature), labels and complete mask, chunked by `etl.chunk_cells` cells x all of time);
lookback windows are cut when read, so no window is built here (the loader benchmark,
bench_loader.py, measures reading). Each run is a fresh subprocess, so sizes cannot contaminate
each other: synthetic inputs of `SIZES["small"]` (5x8 = 40 cells) and `SIZES["large"]` (20x16 =
320 cells, 8x the cells), 10 years unless `--years`: wall time, cells/s, MB/s written and decoded
(the float32 series), usable windows, and peak RSS (`resource.getrusage`, the child's whole life)
next to the RSS right after imports, once with the study's `etl.block_mb` and once with a small
block budget that makes the large grid take several blocks (showing the bound rather than the
budget). The synthetic inputs are written by the study's own `synth` command in a separate process.
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
SIZES = (("small", 40), ("large", 320))


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def package_of(study: Path) -> str:
    (package,) = [p.parent.name for p in (study / "src").glob("*/cli.py")]
    return package


def child(args: list[str], study: Path, script: str = __file__) -> dict:
    """Run `script` (this one by default) in child mode with the study importable; return its
    JSON line."""
    env = {**os.environ, "PYTHONPATH": str(study / "src")}
    result = subprocess.run(
        [sys.executable, script, *args, "--study", str(study)], capture_output=True, text=True, env=env
    )
    if result.returncode:
        raise SystemExit(f"child {args} failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def synth(study: Path, out: Path, *extra: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(study / "src")}
    cmd = [sys.executable, "-m", package_of(study), "--config", str(study / "study.toml"), "synth"]
    subprocess.run([*cmd, "--out", str(out), "--overwrite", *extra], check=True, capture_output=True, env=env)


# ---------------------------------------------------------------- child mode
def child_etl(ns: argparse.Namespace) -> None:
    import importlib

    package = package_of(ns.study)
    config = importlib.import_module(f"{package}.config")
    pipeline = importlib.import_module(f"{package}.etl.pipeline")
    fmt = importlib.import_module("labzarr.store_format")
    importlib.import_module("sklearn.preprocessing")  # imported lazily by some transforms
    cfg = config.load_config(ns.study / "study.toml").override(
        {"data.raw_dir": str(ns.raw), "data.zarr_dir": str(ns.out), "etl.block_mb": ns.block_mb}
    )
    baseline = maxrss_mb()
    started = time.perf_counter()
    store = pipeline.run_etl(cfg, overwrite=True)
    seconds = time.perf_counter() - started
    peak = maxrss_mb()  # before the store is read back below
    import zarr

    group = zarr.open_group(store, mode="r")
    cells, days, features = group[cfg.study.dataset_name].shape
    labels, complete = group[fmt.LABELS][:], group[fmt.COMPLETE][:]
    lookback = cfg.etl.time_lookback
    windows = sum(
        len(fmt.valid_pairs(labels, complete, fmt.window_ends(block, lookback), lookback))
        for block in fmt.blocks_from_attrs(group.attrs).values()
    )
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cells": cells,
                "days": days,
                "windows": windows,
                "bytes": sum(f.stat().st_size for f in store.rglob("*") if f.is_file()),
                "decoded_bytes": cells * days * features * 4,
                "rss_after_imports_mb": baseline,
                "peak_rss_mb": peak,
            }
        )
    )


# ---------------------------------------------------------------- driver
def bake(where: Path, lookback: int, chunk_cells: int) -> Path:
    from cookiecutter.main import cookiecutter

    return Path(
        cookiecutter(
            str(TEMPLATE),
            no_input=True,
            output_dir=str(where),
            extra_context={"time_lookback": str(lookback), "chunk_cells": str(chunk_cells)},
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="run", choices=("run", "_etl"))
    parser.add_argument("--study", type=Path, help="a baked study (default: bake the template)")
    parser.add_argument("--lookback", type=int, default=180, help="time_lookback of the baked study")
    parser.add_argument("--chunk-cells", type=int, default=64, help="chunk_cells of the baked study")
    parser.add_argument("--years", type=int, help="years of synthetic data (default: the presets' 10)")
    parser.add_argument("--small-block-mb", type=int, default=8, help="the small block budget (MB)")
    parser.add_argument("--raw", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--block-mb", type=int)
    ns = parser.parse_args()
    if ns.mode == "_etl":
        return child_etl(ns)

    with tempfile.TemporaryDirectory(prefix="bench_etl_") as tmp:
        work = Path(tmp)
        study = ns.study.resolve() if ns.study else bake(work / "bake", ns.lookback, ns.chunk_cells)
        sys.path.insert(0, str(study / "src"))
        config = __import__(f"{package_of(study)}.config", fromlist=["load_config"])
        cfg = config.load_config(study / "study.toml")
        etl = cfg.etl
        print(
            f"study: {study}  (lookback {etl.time_lookback}, chunks of {etl.chunk_cells} cells x all days, "
            f"{etl.transform}, zarr v{etl.zarr_format}, features {', '.join(cfg.data.variables)})"
        )
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs\n")

        print("ETL throughput and peak memory (one subprocess per run)")
        print(
            f"{'size':<6} {'cells':>5} {'block_mb':>8} {'windows':>9} {'days':>5} {'seconds':>7} {'cells/s':>8} "
            f"{'MB/s written':>12} {'MB/s decoded':>12} {'MB written':>10} {'MB decoded':>10} "
            f"{'RSS imports':>11} {'peak RSS':>8}"
        )
        peaks: dict[int, dict[str, float]] = {}
        for block_mb in (cfg.etl.block_mb, ns.small_block_mb):
            for size, cells in SIZES:
                raw = work / f"raw_{size}"
                if not raw.exists():
                    synth(study, raw, "--size", size, *(["--years", str(ns.years)] if ns.years else []))
                r = child(["_etl", "--raw", str(raw), "--out", str(work / "zarr"), "--block-mb", str(block_mb)], study)
                peaks.setdefault(block_mb, {})[size] = r["peak_rss_mb"]
                print(
                    f"{size:<6} {cells:>5} {block_mb:>8} {r['windows']:>9} {r['days']:>5} {r['seconds']:>7.2f} "
                    f"{cells / r['seconds']:>8.1f} {r['bytes'] / 1e6 / r['seconds']:>12.1f} "
                    f"{r['decoded_bytes'] / 1e6 / r['seconds']:>12.1f} "
                    f"{r['bytes'] / 1e6:>10.1f} {r['decoded_bytes'] / 1e6:>10.1f} "
                    f"{r['rss_after_imports_mb']:>10.0f}M {r['peak_rss_mb']:>7.0f}M"
                )
        for block_mb, p in peaks.items():
            print(f"peak RSS large/small (8x the cells), block_mb={block_mb}: {p['large'] / p['small']:.2f}x")
        print(
            "\n'cells' counts the input grid (masked cells included); 'MB decoded' is the stored float32 series "
            "of the cells with data; windows are the usable (cell, end) pairs of all splits, cut when read."
        )


if __name__ == "__main__":
    main()
