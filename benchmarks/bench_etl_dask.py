#!/usr/bin/env python3
"""ETL in process vs on dask.distributed (`etl.dask_scheduler = "local:2"`): wall time and peak RSS
of the driver and of each worker, on the `large` synthetic grid and on 8x its cells. Prints
figures and the goals of issue 13 as met / not met; asserts nothing.

    python benchmarks/bench_etl_dask.py                 # bakes the template with its defaults
    python benchmarks/bench_etl_dask.py --study DIR     # uses an existing baked study instead

Each ETL runs in a fresh subprocess (the driver). Its peak RSS is `getrusage` of that process
(with `local:2` it also hosts the scheduler and the two nannies, as a LocalCluster does); each
worker's peak is the kernel's high-water mark (`VmHWM` in /proc) of the worker process, read
every 0.1 s while it lives. CPU seconds are `getrusage` of the driver during the run and of its
reaped children (the workers). The two stores of a size are compared chunk by chunk (manifest
sha256s). Runs are interleaved (in process, local:2, in process, ...) when repeated.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_etl import bake, child, maxrss_mb, package_of  # the sibling benchmark's helpers

MODES = ("", "local:2")


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def high_water_mb(pid: int) -> float | None:
    """Peak RSS so far of a live process (Linux `VmHWM`), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class WorkerPeaks(threading.Thread):
    """Samples the peak RSS of this process's multiprocessing children (the dask workers)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peaks: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.stop.wait(0.1):
            for proc in me.children(recursive=True):
                try:
                    cmdline = " ".join(proc.cmdline())
                except psutil.Error:
                    continue
                if "multiprocessing" in cmdline and "resource_tracker" not in cmdline:
                    peak = high_water_mb(proc.pid)
                    if peak is not None:
                        self.peaks[proc.pid] = max(peak, self.peaks.get(proc.pid, 0.0))


# ---------------------------------------------------------------- child mode
def child_etl(ns: argparse.Namespace) -> None:
    import importlib

    package = package_of(ns.study)
    config = importlib.import_module(f"{package}.config")
    pipeline = importlib.import_module(f"{package}.etl.pipeline")
    importlib.import_module("sklearn.preprocessing")  # imported lazily by some transforms
    cfg = config.load_config(ns.study / "study.toml").override(
        {"data.raw_dir": str(ns.raw), "data.zarr_dir": str(ns.out), "etl.dask_scheduler": ns.scheduler}
    )
    baseline = maxrss_mb()
    cpu = cpu_seconds(resource.RUSAGE_SELF)
    load = os.getloadavg()[0]
    sampler = WorkerPeaks()
    sampler.start()
    started = time.perf_counter()
    store = pipeline.run_etl(cfg, overwrite=True)
    seconds = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    manifest = json.loads((store / "manifest.json").read_text())
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cells": manifest["arrays"][cfg.study.dataset_name]["shape"][0],
                "rss_after_imports_mb": baseline,
                "driver_peak_mb": maxrss_mb(),
                "driver_cpu_s": cpu_seconds(resource.RUSAGE_SELF) - cpu,
                "workers_cpu_s": cpu_seconds(resource.RUSAGE_CHILDREN),  # the workers, reaped when the cluster closed
                "load_before": load,
                "worker_peaks_mb": sorted(sampler.peaks.values()),
                "chunks": {k: v["sha256"] for k, v in manifest["arrays"].items()},
            }
        )
    )


def synth(study: Path, out: Path, ny: int, nx: int, years: int | None) -> None:
    env = {**os.environ, "PYTHONPATH": str(study / "src")}
    cmd = [sys.executable, "-m", package_of(study), "--config", str(study / "study.toml"), "synth"]
    extra = ["--size", "large", "--ny", str(ny), "--nx", str(nx), *(["--years", str(years)] if years else [])]
    subprocess.run([*cmd, "--out", str(out), "--overwrite", *extra], check=True, capture_output=True, env=env)


# ---------------------------------------------------------------- driver
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="run", choices=("run", "_etl"))
    parser.add_argument("--study", type=Path, help="a baked study (default: bake the template)")
    parser.add_argument("--years", type=int, help="years of synthetic data (default: the preset's 10)")
    parser.add_argument("--ny", type=int, default=20, help="rows of the base grid (the large preset: 20)")
    parser.add_argument("--nx", type=int, default=16, help="columns of the base grid (the large preset: 16)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each (mode, size), interleaved")
    parser.add_argument("--raw", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--scheduler", default="")
    ns = parser.parse_args()
    if ns.mode == "_etl":
        return child_etl(ns)

    with tempfile.TemporaryDirectory(prefix="bench_etl_dask_") as tmp:
        work = Path(tmp)
        study = ns.study.resolve() if ns.study else bake(work / "bake", 180, 64)
        sys.path.insert(0, str(study / "src"))
        cfg = __import__(f"{package_of(study)}.config", fromlist=["load_config"]).load_config(study / "study.toml")
        etl = cfg.etl
        print(
            f"study: {study}  (lookback {etl.time_lookback}, chunks of {etl.chunk_cells} cells, block_mb "
            f"{etl.block_mb}, {etl.transform}, features {', '.join(cfg.data.variables)})"
        )
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
        sizes = {"large": (ns.ny, ns.nx), "8x": (2 * ns.ny, 4 * ns.nx)}
        runs: dict[tuple[str, str], list[dict]] = {}
        for size, (ny, nx) in sizes.items():
            raw = work / f"raw_{size}"
            synth(study, raw, ny, nx, ns.years)
            for _ in range(ns.repeat):
                for mode in MODES:
                    args = ["_etl", "--raw", str(raw), "--out", str(work / "zarr"), "--scheduler", mode]
                    runs.setdefault((size, mode), []).append(child(args, study, __file__))

        print(
            f"{'grid':<6} {'cells':>6} {'with data':>9} {'scheduler':<10} {'seconds':>8} {'(range)':>11} "
            f"{'CPU s driver':>12} {'CPU s workers':>13} {'load':>5} {'driver peak':>11} {'(imports)':>9}  "
            "workers' peaks"
        )
        summary: dict[tuple[str, str], dict[str, float]] = {}
        for (size, mode), results in runs.items():
            ny, nx = sizes[size]
            seconds = statistics.median(r["seconds"] for r in results)
            driver = statistics.median(r["driver_peak_mb"] for r in results)
            workers = [max(r["worker_peaks_mb"][i] for r in results) for i in range(len(results[0]["worker_peaks_mb"]))]
            summary[size, mode] = {"seconds": seconds, "driver": driver}
            spread = f"{min(r['seconds'] for r in results):.1f}-{max(r['seconds'] for r in results):.1f}"
            cpu_driver = statistics.median(r["driver_cpu_s"] for r in results)
            cpu_workers = statistics.median(r["workers_cpu_s"] for r in results)
            load = statistics.median(r["load_before"] for r in results)
            print(
                f"{size:<6} {ny * nx:>6} {results[0]['cells']:>9} {mode or 'in process':<10} {seconds:>8.1f} "
                f"{spread:>11} {cpu_driver:>12.1f} {cpu_workers:>13.1f} {load:>5.1f} "
                f"{driver:>10.0f}M {results[0]['rss_after_imports_mb']:>8.0f}M  "
                + (", ".join(f"{w:.0f}M" for w in workers) or "-")
            )
        for size in sizes:
            same = all(r["chunks"] == runs[size, MODES[0]][0]["chunks"] for mode in MODES for r in runs[size, mode])
            print(f"{size}: every chunk identical in process and on local:2: {'yes' if same else 'NO'}")

        print("\ngoals (issue 13)")
        flat = summary["8x", "local:2"]["driver"] / summary["large", "local:2"]["driver"]
        print(
            f"  driver peak RSS with local:2 flat (within 20 %) as the grid grows 8x: {flat:.2f}x -> "
            f"{'met' if 0.8 <= flat <= 1.2 else 'not met'}"
        )
        for size in sizes:
            ratio = summary[size, "local:2"]["seconds"] / summary[size, ""]["seconds"]
            print(
                f"  local:2 not slower than in process, {size}: {ratio:.2f}x the time -> "
                f"{'met' if ratio <= 1.0 else 'not met'}"
            )
        print(
            "\n'cells' counts the input grid, 'with data' the cells stored; seconds are the median of the runs "
            "(their range); the driver's peak includes the scheduler and nannies of local:2; 'load' is the "
            "1-minute load average when the run started (other work on the machine)."
        )


if __name__ == "__main__":
    main()
