"""Loader benchmark: streaming a served zarr store into batches, side by side in one run.

Usage (from the template repository, in its dev environment; about 2 minutes):

    .venv/bin/python benchmarks/bench_loader.py [--samples 1000000] [--limit-rate 8m]

What it does: bakes a study (lookback 180, chunks of 10,000 samples, zarr 2,
token auth), writes a synthetic split store of `--samples` samples
(samples, 180, 2) float32 in the ETL's layout and codec (sliding windows of
AR(1) "normal scores", Zstd level 3, the ETL's manifest). By default the
samples are stored in shuffled order, so the overlapping windows do not
compress away and the wire carries ~30 % of the decoded size; `--layout
cell-major` is the ETL's own order, which compresses ~150x. It serves the store
with the study's own `serve` command (real nginx on 127.0.0.1) and measures,
in samples/s, each timed pattern in a fresh process:

  (a) raw: concurrent GETs of every chunk file (features and labels, as many
      in flight as the loader has chunks in flight) plus decompression: the
      limit for any loader (median of 7 runs); and the same keeping every
      downloaded body in memory, which is what a chunk cache must do in its
      first epoch (fresh memory is not free: the baseline for (b) with cache);
  (b) the study's ChunkLoader (shuffled batches of 256 as tensors, every chunk
      verified against the manifest's CRC32C): a cold epoch, then a warm one from
      its memory chunk cache; and a cold epoch with the cache off (medians of 7
      fresh loaders, interleaved with the raw runs);
  (c) naive: a torch Dataset whose __getitem__ does ds.isel(samples=i).values
      on the remotely opened dataset (the notebook's fsspec mapper), in a
      DataLoader(shuffle=True); timed on --naive-samples samples and
      extrapolated to an epoch;
  (d) xbatcher's torch MapDataset (BatchGenerator of 256-sample batches) in a
      DataLoader(shuffle=True), if `pip install xbatcher` works in a throwaway
      venv that sees the dev environment; timed on --xbatcher-batches batches;
  (e) cold vs warm epoch of the loader through nginx `limit_rate` (per
      connection; a slow link).

Goals (issue 5, on a store of at least 200k samples): cold loader >= 0.8x raw;
>= 1000x naive; warm >= 5x cold over the slow link. "Cold loader" is the
loader streaming (cache off); with its optional memory cache it also keeps
every downloaded chunk, so that cold epoch is held against raw keeping its
bodies too. Figures depend on the machine (and on what else it runs); the
ratios are what to compare. The default is 1M samples (a 1.2 s pass): at
200k a pass takes 0.2 s, of which start-up and the first touch of fresh
memory are a large, variable part, so ratios move by +-15 % from run to run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
import venv
from pathlib import Path

import numpy as np

TEMPLATE = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TEMPLATE), str(TEMPLATE / "scripts")]

BATCH = 256
REPEAT = 7  # fast passes are timed this many times; the median is shown


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=1_000_000, help="samples in the store (default 1000000)")
    p.add_argument("--chunk", type=int, default=10_000, help="samples per chunk (default 10000)")
    p.add_argument("--lookback", type=int, default=180, help="time_lookback (default 180)")
    p.add_argument("--limit-rate", default="8m", help="nginx limit_rate per connection (default 8m)")
    p.add_argument(
        "--layout",
        choices=("shuffled", "cell-major"),
        default="shuffled",
        help="sample order in the store: shuffled (default; windows do not compress, the network "
        "carries the full size) or cell-major (the ETL's order; overlapping windows compress ~150x)",
    )
    p.add_argument("--naive-samples", type=int, default=24, help="samples timed for the naive pattern")
    p.add_argument("--xbatcher-batches", type=int, default=12, help="batches timed for xbatcher")
    p.add_argument("--workdir", help="folder for the bake and the store (default: a temporary one)")
    p.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one timed pattern in a fresh process
    return p.parse_args(argv)


# ------------------------------------------------------------------------------ the store


def realistic_samples(n: int, lookback: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cell-major sliding windows of two AR(1) features, as the ETL lays them out.

    Feature 0 is a slowly varying normal score scaled toward +-1 (soil moisture),
    feature 1 a zero-inflated one (snow); the label is the drought category of
    the last 30 days' mean of feature 0.
    """
    from scipy.signal import lfilter
    from scipy.stats import norm

    rng = np.random.default_rng(seed)
    per_cell = 2000
    cells = -(-n // per_cell)
    length = per_cell + lookback - 1
    shocks = rng.standard_normal((cells, length, 2))
    series = lfilter([1.0], [1.0, -0.985], shocks, axis=1) * np.sqrt(1 - 0.985**2)
    series[:, :, 1] = np.where(series[:, :, 1] > 0.3, series[:, :, 1], -1.0)  # zero-inflated
    series = np.clip(series / 3.09, -1, 1).astype(np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(series, lookback, axis=1)  # cells, per_cell, 2, L
    x = np.ascontiguousarray(windows.transpose(0, 1, 3, 2).reshape(-1, lookback, 2)[:n])
    recent = x[:, -30:, 0].mean(axis=1)
    p = norm.cdf(recent / recent.std())
    dry = np.searchsorted([0.02, 0.05, 0.10, 0.20, 0.30], p, side="left")
    wet = np.searchsorted([0.70, 0.80, 0.90, 0.95, 0.98], p, side="right")
    y = np.where(dry < 5, 10 - dry, np.where(wet > 0, 5 - wet, 5)).astype(np.int8)
    return x, y


def write_store(path: Path, pkg: str, name: str, n: int, lookback: int, chunk: int, layout: str) -> dict[str, float]:
    """The split store in the ETL's layout and codec, with the ETL's manifest."""
    import importlib
    import warnings

    import xarray as xr

    etl_store = importlib.import_module(f"{pkg}.etl.store")
    x, y = realistic_samples(n, lookback)
    if layout == "shuffled":
        order = np.random.default_rng(1).permutation(n)
        x, y = x[order], y[order]
    ds = xr.Dataset({name: (("samples", "time_lookback", "features"), x), "category": (("samples",), y)})
    codec = etl_store.compressor(2, 3)
    encoding = {
        name: {"chunks": (chunk, lookback, 2), "compressors": (codec,)},
        "category": {"chunks": (chunk,), "compressors": (codec,)},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.to_zarr(path, mode="w", consolidated=True, zarr_format=2, encoding=encoding, write_empty_chunks=True)
    etl_store.write_manifest(path)
    stored = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return {"decoded_mb": (x.nbytes + y.nbytes) / 1e6, "stored_mb": stored / 1e6}


# ------------------------------------------------------------------------------ (a) raw


async def raw_fetch(store_url: str, keys: list[str], token: str, in_flight: int, keep: bool = False) -> tuple[int, int]:
    """GET every chunk file with `in_flight` requests at once; decompress each in a thread.
    With `keep`, every body stays in memory until the end (as in a chunk cache)."""
    import aiohttp
    import numcodecs

    codec = numcodecs.Zstd()
    semaphore = asyncio.Semaphore(in_flight)
    headers = {"Authorization": f"Bearer {token}"}
    total = 0
    kept: list[bytes] = []

    async with aiohttp.ClientSession(headers=headers) as session:

        async def one(key: str) -> int:
            async with semaphore:
                async with session.get(f"{store_url}/{key}") as response:
                    response.raise_for_status()
                    data = await response.read()
                if keep:
                    kept.append(data)
                decoded = await asyncio.to_thread(codec.decode, data)
                return len(data) + 0 * len(decoded)

        for size in await asyncio.gather(*(one(k) for k in keys)):
            total += size
    return len(keys), total


# ------------------------------------------------------------------------------ (c) naive


def naive_rate(store_url: str, name: str, token: str, n: int) -> float:
    """samples/s of Dataset.__getitem__ -> ds.isel(samples=i).values in DataLoader(shuffle=True)."""
    import torch
    import xarray as xr
    from fsspec.implementations.http import HTTPFileSystem

    fs = HTTPFileSystem(headers={"Authorization": f"Bearer {token}"})
    ds = xr.open_zarr(fs.get_mapper(store_url), consolidated=True)

    class Naive(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return ds.sizes["samples"]

        def __getitem__(self, i: int):
            sample = ds.isel(samples=i)
            return torch.from_numpy(sample[name].values), int(sample["category"].values)

    shuffled = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(Naive(), batch_size=8, shuffle=True, generator=shuffled)
    seen, start = 0, time.perf_counter()
    for xb, _ in loader:
        seen += len(xb)
        if seen >= n:
            break
    return seen / (time.perf_counter() - start)


# ------------------------------------------------------------------------------ (d) xbatcher


def xbatcher_worker(spec: dict) -> dict:
    """Runs inside the throwaway venv that has xbatcher."""
    import torch
    import xarray as xr
    import xbatcher
    from fsspec.implementations.http import HTTPFileSystem
    from xbatcher.loaders.torch import MapDataset

    fs = HTTPFileSystem(headers={"Authorization": f"Bearer {os.environ['BENCH_TOKEN']}"})
    ds = xr.open_zarr(fs.get_mapper(spec["url"]), consolidated=True)
    lookback = ds.sizes["time_lookback"]
    x_gen = xbatcher.BatchGenerator(
        ds[spec["name"]], input_dims={"samples": BATCH, "time_lookback": lookback, "features": 2}
    )
    y_gen = xbatcher.BatchGenerator(ds["category"], input_dims={"samples": BATCH})
    loader = torch.utils.data.DataLoader(
        MapDataset(x_gen, y_gen), batch_size=None, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    seen, start = 0, time.perf_counter()
    for i, (xb, yb) in enumerate(loader):
        assert xb.shape[1:] == (lookback, 2) and len(xb) == len(yb)
        seen += len(xb)
        if i + 1 >= spec["batches"]:
            break
    return {"samples_per_s": seen / (time.perf_counter() - start), "version": xbatcher.__version__}


def xbatcher_rate(work: Path, store_url: str, name: str, token: str, batches: int) -> tuple[float | None, str]:
    """Install xbatcher into a throwaway venv that sees the dev env, run (d) there."""
    env_dir = work / "xbatcher-venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    Path(site, "_dev_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "xbatcher"],
        capture_output=True, text=True,
    )  # fmt: skip
    if install.returncode:
        return None, f"xbatcher did not install: {install.stderr.strip().splitlines()[-1:]}"
    try:
        result = measure("xbatcher", {"url": store_url, "name": name, "batches": batches}, token, python)
    except RuntimeError as exc:
        return None, f"xbatcher installed but failed: {exc}"
    return result["samples_per_s"], f"xbatcher {result['version']}"


def measure(kind: str, spec: dict, token: str, python: Path | str = sys.executable) -> dict:
    """Time one pattern in a fresh process: earlier runs in the same process (allocator
    state, threads) would otherwise change what the next pattern measures."""
    done = subprocess.run(
        [python, __file__, "--measure", json.dumps({"kind": kind, **spec})], capture_output=True, text=True,
        env={**os.environ, "BENCH_TOKEN": token}, timeout=3600,
    )  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"{kind} failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_worker(spec: dict) -> dict:
    """The child side of `measure`."""
    token = os.environ["BENCH_TOKEN"]
    kind = spec.pop("kind")
    if kind == "raw":
        import aiohttp  # noqa: F401  imported before the clock starts, as the loader's modules are
        import numcodecs  # noqa: F401

        start = time.perf_counter()
        files, nbytes = asyncio.run(
            raw_fetch(spec["url"], spec["keys"], token, spec["in_flight"], spec.get("keep", False))
        )
        return {"seconds": time.perf_counter() - start, "files": files, "bytes": nbytes}
    if kind == "loader":
        cold, warm = loader_epochs(spec["pkg"], spec["url"], token, spec["in_flight"], spec.get("cache", "memory"))
        return {"cold": cold.as_dict(), "warm": warm.as_dict()}
    if kind == "naive":
        return {"samples_per_s": naive_rate(spec["url"], spec["name"], token, spec["samples"])}
    if kind == "xbatcher":
        return xbatcher_worker(spec)
    raise ValueError(kind)


# ------------------------------------------------------------------------------ the loader


def loader_epochs(pkg: str, store_url: str, token: str, in_flight: int, cache: str = "memory", epochs: int = 2) -> list:
    """LoaderStats of `epochs` passes of one ChunkLoader over the store."""
    import importlib

    loader_mod = importlib.import_module(f"{pkg}.train.loader")
    remote = importlib.import_module(f"{pkg}.remote")
    source = loader_mod.SplitSource(
        store_url=store_url, credentials=remote.Credentials(token=token), cache=cache, cache_max_mb=8192
    )
    loader = loader_mod.ChunkLoader(source, batch_size=BATCH, shuffle=True, seed=0, prefetch_chunks=in_flight)
    _ = loader.reader  # open (manifest, metadata) outside the timed passes
    stats = []
    for _ in range(epochs):
        n = sum(len(yb) for _, yb in loader)
        assert n == loader.n_samples
        stats.append(loader.stats)
    loader.close()
    return stats


def median_pass(passes: list[dict], which: str) -> dict:
    """The pass with the median samples/s."""
    ordered = sorted((p[which] for p in passes), key=lambda st: st["samples_per_s"])
    return ordered[len(ordered) // 2]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.measure:
        print(json.dumps(measure_worker(json.loads(args.measure))))
        return 0
    from bakery import bake
    from servers import study_package, study_server

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_loader_"))
    shutil.rmtree(work / "bake", ignore_errors=True)
    shutil.rmtree(work / "xbatcher-venv", ignore_errors=True)
    study = bake(work / "bake", time_lookback=args.lookback, chunk_samples=args.chunk, auth="token", zarr_format=2)
    pkg = study_package(study)
    # nginx's per-client request limit would answer the naive pattern with 429s: lift it here.
    toml = study / "study.toml"
    text = toml.read_text().replace("requests_per_second = 200", "requests_per_second = 100000")
    toml.write_text(text.replace("burst = 50", "burst = 100000"))
    sys.path.insert(0, str(study / "src"))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(study / "src"), os.environ.get("PYTHONPATH", "")])
    from importlib import import_module

    cfg = import_module(f"{pkg}.config").load_config(toml)
    name, in_flight = cfg.study.dataset_name, cfg.train.prefetch_chunks
    data = work / "zarr"
    store = data / cfg.store_name / "train.zarr"
    started = time.perf_counter()
    sizes = write_store(store, pkg, name, args.samples, args.lookback, args.chunk, args.layout)
    manifest = json.loads((store / "manifest.json").read_text())
    keys = [k for entry in manifest["arrays"].values() for k in entry["checksums"]]
    print(f"store: {args.samples:,} samples x ({args.lookback}, 2) float32 in chunks of {args.chunk:,}: "
          f"{sizes['decoded_mb']:.0f} MB decoded, {sizes['stored_mb']:.1f} MB stored (Zstd 3, {args.layout} "
          f"sample order), {len(keys)} chunk files; written in "
          f"{time.perf_counter() - started:.0f} s")  # fmt: skip

    token = secrets.token_urlsafe(32)
    rows: list[tuple[str, float | None, str]] = []
    with study_server(Path(sys.executable), study, data, auth_env={"DATA_TOKEN": token}) as url:
        store_url = f"{url}/{cfg.store_name}/train.zarr"
        raw_runs, kept_runs, passes, uncached = [], [], [], []
        loader_spec = {"pkg": pkg, "url": store_url, "in_flight": in_flight}
        raw_spec = {"url": store_url, "keys": keys, "in_flight": in_flight}
        for _ in range(REPEAT):  # interleaved, so a busy moment of the machine hits all alike
            raw_runs.append(measure("raw", raw_spec, token))
            kept_runs.append(measure("raw", {**raw_spec, "keep": True}, token))
            passes.append(measure("loader", loader_spec, token))
            uncached.append(measure("loader", {**loader_spec, "cache": "none"}, token))
        raw_s = statistics.median(r["seconds"] for r in raw_runs)
        raw = args.samples / raw_s
        raw_kept = args.samples / statistics.median(r["seconds"] for r in kept_runs)
        nbytes = raw_runs[0]["bytes"]
        rows.append(("(a) raw concurrent GETs + decode", raw, f"{len(keys)} files, {nbytes / 1e6 / raw_s:.0f} MB/s"))
        rows.append(("(a) raw, keeping every body in memory", raw_kept,
                     f"{nbytes / 1e6:.0f} MB of fresh memory, as a cache needs"))  # fmt: skip
        cold = median_pass(passes, "cold")
        warm = median_pass(passes, "warm")
        rows.append(("(b) ChunkLoader, cold epoch", cold["samples_per_s"], f"{cold['requests']} requests, "
                     f"waiting {cold['wait_s']:.2f} of {cold['elapsed_s']:.2f} s"))  # fmt: skip
        no_cache = median_pass(uncached, "cold")
        rows.append(("(b) ChunkLoader, cold epoch, cache off", no_cache["samples_per_s"],
                     f"waiting {no_cache['wait_s']:.2f} of {no_cache['elapsed_s']:.2f} s"))  # fmt: skip
        rows.append(("(b) ChunkLoader, warm epoch (memory cache)", warm["samples_per_s"],
                     f"{warm['requests']} requests, {warm['cache_hits']} cache hits"))  # fmt: skip
        spec = {"url": store_url, "name": name, "samples": args.naive_samples}
        naive = measure("naive", spec, token)["samples_per_s"]
        rows.append(("(c) naive Dataset.__getitem__ + DataLoader", naive,
                     f"timed on {args.naive_samples} samples; an epoch would take "
                     f"{args.samples / naive / 3600:.1f} h"))  # fmt: skip
        xb, note = xbatcher_rate(work, store_url, name, token, args.xbatcher_batches)
        rows.append(("(d) xbatcher MapDataset + DataLoader", xb, note + (
            f"; timed on {args.xbatcher_batches} batches of {BATCH}" if xb else "")))  # fmt: skip
    with study_server(Path(sys.executable), study, data, auth_env={"DATA_TOKEN": token},
                      limit_rate=args.limit_rate) as url:  # fmt: skip
        spec = {"pkg": pkg, "url": f"{url}/{cfg.store_name}/train.zarr", "in_flight": in_flight}
        slow = measure("loader", spec, token)
        slow_cold, slow_warm = slow["cold"], slow["warm"]
        rows.append((f"(e) ChunkLoader cold, limit_rate {args.limit_rate}", slow_cold["samples_per_s"],
                     f"{slow_cold['mb_per_s']:.1f} MB/s on the wire"))  # fmt: skip
        rows.append((f"(e) ChunkLoader warm, limit_rate {args.limit_rate}", slow_warm["samples_per_s"],
                     f"{slow_warm['requests']} requests"))  # fmt: skip

    print(f"\n{'pattern':<48} {'samples/s':>12}  notes")
    for label, rate, note in rows:
        shown = f"{rate:>12,.0f}" if rate is not None else f"{'n/a':>12}"
        print(f"{label:<48} {shown}  {note}")
    print("\nratios (goal in brackets):")
    print(f"  cold, cache off / raw limit    {no_cache['samples_per_s'] / raw:8.2f}x   [>= 0.8]")
    print(f"  cold, memory cache / raw kept  {cold['samples_per_s'] / raw_kept:8.2f}x   [>= 0.8]")
    print(f"  cold, memory cache / raw limit {cold['samples_per_s'] / raw:8.2f}x   (holding the data costs too)")
    print(f"  cold loader / naive            {cold['samples_per_s'] / naive:8,.0f}x   [>= 1000]")
    if xb:
        print(f"  cold loader / xbatcher         {cold['samples_per_s'] / xb:8,.1f}x")
    slow_ratio = slow_warm["samples_per_s"] / slow_cold["samples_per_s"]
    print(f"  warm / cold, limit_rate {args.limit_rate:<6} {slow_ratio:8.1f}x   [>= 5]")
    print(f"  warm / cold, loopback          {warm['samples_per_s'] / cold['samples_per_s']:8.1f}x")
    print(f"\n(work folder: {work})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
