"""Loader benchmark: the series store and its window loader against the old window store, in one run.

Usage (from the template repository, in its dev environment `.venv`, created by `python3 tasks.py setup`):

    .venv/bin/python benchmarks/bench_loader.py [--repeat 5] [--skill-steps 300] [--skill-seeds 1]

About 11 minutes on a 2-core VM shared with other busy work, two thirds of it the two skill runs
(300 LSTM steps per loader, on one thread each); `--repeat 3 --skill-steps 100` shortens it.
`--skip-old` drops the old study (and every ratio to it); `--workdir DIR --reuse` keeps and reuses
the bakes, venvs and stores of an earlier run in DIR.

Setup: bakes this template (lookback 180, zarr 2, token auth: the defaults) and the template at
`--old-commit` (f940a39, the last commit with the window store; `git archive` of this clone, so no
old code stays in the package), installs each into its own venv (both have the same package name),
writes the synthetic inputs once (`synth --size large`: 20x16 cells, 10 years) and runs both
studies' ETLs on those same files. One real nginx (the study's own `serve`, token auth, on
127.0.0.1, its per-client request limit lifted for the naive pattern) serves both stores.

Timed, each pattern in a fresh process, `--repeat` times interleaved (medians and min-max printed;
every ratio is taken within a repeat, then its median shown):

  (a) the OLD layout and loader, cold: its ChunkLoader over its train store (every lookback window
      stored as a sample, chunks of 10,000 samples, a 3-chunk shuffle buffer): open + one epoch,
      chunk cache off (its fastest cold pass);
  (b) the NEW loader (`Series` + `WindowLoader`): cold = open + first epoch, the download of the
      series included; warm = later epochs (windows cut from the resident series);
  (c) raw concurrent GETs + decode of every chunk the new loader reads (features, labels, complete
      mask), as many in flight as the loader: the limit of any reader over this link, as train
      windows per second of fetching the series once;
  (d) memcpy of the same batch bytes: batch-sized contiguous blocks from random offsets of a buffer
      as large as the series (the limit of batch assembly: memory bandwidth); beside it the
      loader's gather alone (random windows) and the same gather of one batch again and again
      (cache-hot), which split the gap between the warm epoch and memcpy into its causes; and a
      cold ceiling: the raw download (c) followed by assembly at memcpy speed;
  (e) the naive per-sample pattern (a torch Dataset whose __getitem__ slices one window out of the
      remotely opened xarray series through the fsspec mapper, in a DataLoader(shuffle=True); timed
      on --naive-samples samples, extrapolated to an epoch) and xbatcher (a BatchGenerator of
      180-day windows of 256 cells in a DataLoader(shuffle=True), if `pip install xbatcher` works
      in a throwaway venv; timed on a few batches).

Also: batch diversity (median distinct cells per batch of the cold epoch against a uniform draw's
C * (1 - (1 - 1/C)^B); the old loader's windows are identified by hashing their bytes against its
store's samples and per-sample lat/lon), bytes on the wire per cold epoch against the store's size on
disk, and training skill at equal steps: the same `build_model`, init seed, Adam, class weights and
number of steps fed by the old loader and by the new one, scored on the same test windows (checked
by a digest), per seed (`--skill-seeds`: 42, 43, ...; both loaders train at once, one thread each).

Prints figures, ratios and the goals of issue 12; asserts nothing (speed goals are not tests).
Figures depend on the machine and on what else it runs; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import venv
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np

TEMPLATE = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TEMPLATE), str(TEMPLATE / "scripts")]

OLD_COMMIT = "f940a39"  # the last commit with the window store and the chunk loader (issue 12)
BATCH = 256  # the study's train.batch_size
N_CLASSES = 11
HASH_SEED = 12


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="large", help="synthetic preset (default large: 20x16 cells, 10 years)")
    p.add_argument("--years", type=int, help="years of synthetic data (default: the preset's)")
    p.add_argument("--repeat", type=int, default=5, help="interleaved repeats of the timed patterns (default 5)")
    p.add_argument("--warm-epochs", type=int, default=3, help="warm epochs per repeat (default 3)")
    p.add_argument("--skill-steps", type=int, default=300, help="optimizer steps per loader (0: skip)")
    p.add_argument(
        "--skill-seeds", type=int, default=1, help="seeds (init and batch order: 42, 43, ...) per loader (default 1)"
    )
    p.add_argument(
        "--skill-test-stride", type=int, default=8, help="score every k-th test window, in store order (default 8)"
    )
    p.add_argument("--naive-samples", type=int, default=200, help="samples timed for the naive pattern (0: skip)")
    p.add_argument("--xbatcher-batches", type=int, default=4, help="batches timed for xbatcher (0: skip)")
    p.add_argument("--old-commit", default=OLD_COMMIT, help=f"commit of the old template (default {OLD_COMMIT})")
    p.add_argument("--skip-old", action="store_true", help="measure the new study only")
    p.add_argument("--workdir", help="folder for bakes, venvs and stores (default: a temporary one, removed)")
    p.add_argument("--reuse", action="store_true", help="reuse the bakes, venvs and stores in --workdir")
    p.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one pattern in a fresh process
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------ helpers


def window_hash(x: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each window's bytes (windows along axis 0): identifies a sample."""
    words = np.ascontiguousarray(x).reshape(len(x), -1).view(np.uint32)
    weights = np.random.default_rng(HASH_SEED).integers(1, 2**63, size=words.shape[1], dtype=np.uint64) | 1
    return (words.astype(np.uint64) * weights).sum(axis=1)  # wraps modulo 2**64, on purpose


def uniform_distinct(cells: int, batch: int) -> float:
    """Expected distinct cells in a batch of `batch` uniform draws over `cells` cells."""
    return cells * (1 - (1 - 1 / cells) ** batch)


def sqrt_class_weights(labels: np.ndarray) -> Any:
    """The study's "sqrt" class weights (train.loop.class_weights), the same on both sides."""
    import torch

    counts = np.bincount(labels[labels >= 0], minlength=N_CLASSES).astype(np.float64)
    weights = np.ones(N_CLASSES)
    present = counts > 0
    weights[present] = np.sqrt(counts[present].sum() / (present.sum() * counts[present]))
    return torch.tensor(weights, dtype=torch.float32)


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} [{min(values):,.0f}-{max(values):,.0f}]"


# ------------------------------------------------------------------------------------ workers
# Each runs in a fresh process (`measure`), in the venv of the study it measures.


def worker_new(spec: dict, token: str) -> dict:
    """(b): open + first epoch (cold), then warm epochs, of the new loader; its batch diversity."""
    import torch  # noqa: F401  imported before the clock, as a training script has

    pkg = spec["pkg"]
    loader_mod = import_module(f"{pkg}.train.data")  # the study's make_loader
    cfg = import_module(f"{pkg}.config").load_config(spec["config"])
    started = time.perf_counter()
    from labzarr.train.loader import Series

    source = cfg.store_source(spec["url"], token=token, cache="none")
    series = Series(source, resident_max_mb=cfg.train.resident_max_mb)
    loader = loader_mod.make_loader(cfg, series, "train", progress=False)
    samples = sum(len(yb) for _, yb in loader)
    cold_s = time.perf_counter() - started
    wire = series.remote.stats.snapshot()
    cold_epoch = loader.stats.as_dict()
    warm = []
    for _ in range(spec["warm_epochs"]):
        sum(len(yb) for _, yb in loader)
        warm.append(loader.stats.samples_per_s)
    cells = loader.order(0) // series.n_time  # epoch 0: the cold epoch's batches
    full = len(cells) // BATCH * BATCH
    distinct = [len(np.unique(b)) for b in cells[:full].reshape(-1, BATCH)]
    result = {
        "samples": samples,
        "cold_s": cold_s,
        "cold_epoch": cold_epoch,
        "warm": warm,
        "wire_bytes": wire["bytes"],
        "requests": wire["requests"],
        "resident": series.resident,
        "cells": len(np.unique(loader.pairs // series.n_time)),
        "n_cells": series.n_cells,
        "n_time": series.n_time,
        "n_features": series.n_features,
        "median_distinct": float(np.median(distinct)),
    }
    series.close()
    return result


def worker_old(spec: dict, token: str) -> dict:
    """(a): open + one epoch (cold) of the old ChunkLoader over its train store."""
    import torch  # noqa: F401

    pkg = spec["pkg"]
    loader_mod = import_module(f"{pkg}.train.loader")
    cfg = import_module(f"{pkg}.config").load_config(spec["config"])
    started = time.perf_counter()
    loader = loader_mod.make_loader(cfg, "train", url=spec["url"], token=token, progress=False, cache=spec["cache"])
    samples = sum(len(yb) for _, yb in loader)
    cold_s = time.perf_counter() - started
    wire = loader.remote.stats.snapshot()
    loader.close()
    return {"samples": samples, "cold_s": cold_s, "wire_bytes": wire["bytes"], "requests": wire["requests"]}


def worker_old_diversity(spec: dict, token: str) -> dict:
    """Distinct cells per batch of the old loader's epoch 0 (the cold epoch's batches): each
    window's hash is looked up among the hashes of its train store's samples, read from disk
    with their per-sample lat/lon."""
    import zarr

    pkg = spec["pkg"]
    loader_mod = import_module(f"{pkg}.train.loader")
    cfg = import_module(f"{pkg}.config").load_config(spec["config"])
    group = zarr.open_group(spec["store"], mode="r")
    x = group[spec["name"]]
    _, cell_of = np.unique(np.stack([group["lat"][:], group["lon"][:]], axis=1), axis=0, return_inverse=True)
    step = x.chunks[0]
    hashes = np.concatenate([window_hash(x[i : i + step]) for i in range(0, x.shape[0], step)])
    order = np.argsort(hashes)
    known, cell_of = hashes[order], cell_of.reshape(-1)[order]
    unique_hashes = bool((np.diff(known) != 0).all())
    loader = loader_mod.make_loader(cfg, "train", url=spec["url"], token=token, progress=False, cache="none")
    distinct, unmatched = [], 0
    for xb, _ in loader:
        if len(xb) < BATCH:
            continue
        h = window_hash(xb.numpy())
        at = np.minimum(np.searchsorted(known, h), len(known) - 1)
        unmatched += int((known[at] != h).sum())
        distinct.append(len(np.unique(cell_of[at])))
    loader.close()
    return {
        "median_distinct": float(np.median(distinct)),
        "cells": int(cell_of.max() + 1),
        "unique_hashes": unique_hashes,
        "unmatched": unmatched,
        "batches": len(distinct),
    }


def worker_skill(spec: dict, token: str) -> dict:
    """Train `build_model` for `steps` optimizer steps on one loader's batches, score it on the
    test windows (every `stride`-th, in store order). One thread: both sides train at once."""
    import torch
    from torch import nn

    torch.set_num_threads(1)
    pkg, side = spec["pkg"], spec["side"]
    # the new study's make_loader is in train/data.py (its series is labzarr's); the old one's in train/loader.py
    loader_mod = import_module(f"{pkg}.train.data" if side == "new" else f"{pkg}.train.loader")
    cfg = import_module(f"{pkg}.config").load_config(spec["config"]).override({"train.seed": spec["seed"]})
    t = cfg.train
    if side == "new":
        from labzarr.train.loader import Series

        source = cfg.store_source(spec["url"], token=token, cache="none")
        series = Series(source, resident_max_mb=cfg.train.resident_max_mb)
        train = loader_mod.make_loader(cfg, series, "train", progress=False)
        test = loader_mod.make_loader(cfg, series, "test", shuffle=False, progress=False)
        labels, n_features, closers = train.labels(), series.n_features, [series]
    else:
        kw = {"url": spec["url"], "token": token, "progress": False, "cache": "memory"}
        train = loader_mod.make_loader(cfg, "train", **kw)
        test = loader_mod.make_loader(cfg, "test", shuffle=False, **kw)
        labels, n_features, closers = train.reader.read_labels(), train.reader.sample_shape[-1], [train, test]
    torch.manual_seed(t.seed)
    if side == "new":  # the model of study.toml (train.model, [train.model_options])
        model = import_module(f"{pkg}.train.models").build_model(
            t.model, t.model_options, n_features, N_CLASSES, time_lookback=cfg.etl.time_lookback
        )
    else:  # the old template's LSTM, with its [train] sizes
        model = import_module(f"{pkg}.train.model").build_model(
            n_features, N_CLASSES, hidden_size=t.hidden_size, num_layers=t.num_layers, dropout=t.dropout
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=t.learning_rate)
    loss_fn = nn.CrossEntropyLoss(weight=sqrt_class_weights(labels))
    model.train()
    steps = 0
    started = time.perf_counter()
    while steps < spec["steps"]:
        for xb, yb in train:
            loss = loss_fn(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            if steps == spec["steps"]:
                break
    train_s = time.perf_counter() - started
    model.eval()
    y_true, y_pred, digest, index = [], [], 0, 0
    with torch.no_grad():
        for xb, yb in test:
            keep = (np.arange(index, index + len(yb)) % spec["stride"]) == 0
            index += len(yb)
            x, y = xb[torch.from_numpy(keep)], yb[torch.from_numpy(keep)]
            if not len(y):
                continue
            digest = (digest + int((window_hash(x.numpy()) ^ y.numpy().astype(np.uint64)).sum())) % 2**64
            y_true.append(y.numpy())
            y_pred.append(model(x).argmax(dim=1).numpy())
    for c in closers:
        c.close()
    y_true_all, y_pred_all = np.concatenate(y_true), np.concatenate(y_pred)
    return {
        **scores(y_true_all, y_pred_all),
        "test_windows": len(y_true_all),
        "digest": f"{digest:016x}",
        "steps": steps,
        "train_s": train_s,
    }


async def raw_fetch(store_url: str, keys: list[str], codecs: dict[str, Any], token: str, in_flight: int) -> int:
    """GET every key with `in_flight` requests at once; decode each body in a thread."""
    import aiohttp

    semaphore = asyncio.Semaphore(in_flight)
    total = 0
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:

        async def one(key: str) -> int:
            async with semaphore, session.get(f"{store_url}/{key}") as response:
                response.raise_for_status()
                data = await response.read()
            await asyncio.to_thread(codecs[key.split("/")[0]].decode, data)
            return len(data)

        total = sum(await asyncio.gather(*(one(k) for k in keys)))
    return total


def worker_raw(spec: dict, token: str) -> dict:
    """(c): every chunk the new loader reads, fetched and decoded once."""
    import aiohttp  # noqa: F401  imported before the clock
    import numcodecs

    codecs = {name: numcodecs.get_codec(conf) for name, conf in spec["codecs"].items()}
    started = time.perf_counter()
    nbytes = asyncio.run(raw_fetch(spec["url"], spec["keys"], codecs, token, spec["in_flight"]))
    return {"seconds": time.perf_counter() - started, "bytes": nbytes}


def worker_memcpy(spec: dict, token: str) -> dict:
    """(d): the limits of batch assembly, on a random series of the store's shape, as many batches
    as an epoch has, 5 passes interleaved (medians): `memcpy`, batch-sized contiguous blocks from
    random offsets into one reused buffer (memory bandwidth); `gather`, the loader's gather alone
    (numpy fancy indexing of the strided window view at random rows, as loader.py does on the CPU);
    `hot`, the same gather of one batch's windows again and again (cache-hot: the per-window copy)."""
    rng = np.random.default_rng(0)
    n_cells, n_time, n_features, lookback = spec["shape"]
    flat = rng.standard_normal(n_cells * n_time * n_features, dtype=np.float32)
    block, batches = BATCH * lookback * n_features, spec["batches"]
    out = np.empty(block, dtype=np.float32)
    offsets = rng.integers(0, len(flat) - block, batches).tolist()
    rows = np.lib.stride_tricks.as_strided(
        flat, (n_cells * n_time - lookback + 1, lookback * n_features), (n_features * 4, 4), writeable=False
    )
    starts = rng.integers(0, len(rows), batches * BATCH)

    def memcpy() -> None:
        for o in offsets:
            np.copyto(out, flat[o : o + block])

    def gather() -> None:
        for b0 in range(0, len(starts), BATCH):
            rows[starts[b0 : b0 + BATCH]]

    def hot() -> None:
        one = starts[:BATCH]
        for _ in range(batches):
            rows[one]

    rates: dict[str, list[float]] = {"memcpy": [], "gather": [], "hot": []}
    for _ in range(5):
        for name, func in (("memcpy", memcpy), ("gather", gather), ("hot", hot)):
            started = time.perf_counter()
            func()
            rates[name].append(batches * BATCH / (time.perf_counter() - started))
    return {name: statistics.median(values) for name, values in rates.items()}


def worker_naive(spec: dict, token: str) -> dict:
    """(e): Dataset.__getitem__ slicing one window out of the remote xarray series (the notebook's
    fsspec mapper), DataLoader(shuffle=True); `samples` timed and extrapolated."""
    import torch
    import xarray as xr
    from fsspec.implementations.http import HTTPFileSystem

    fmt = import_module(f"{spec['pkg']}.store_format")
    fs = HTTPFileSystem(headers={"Authorization": f"Bearer {token}"})
    ds = xr.open_zarr(fs.get_mapper(spec["url"]), consolidated=True)
    lookback, n_time = int(ds.attrs["time_lookback"]), ds.sizes["time"]
    ends = fmt.window_ends(fmt.blocks_from_attrs(ds.attrs)["train"], lookback)
    pairs = fmt.valid_pairs(ds[fmt.LABELS].values, ds[fmt.COMPLETE].values, ends, lookback)
    features = ds[spec["name"]]

    class Naive(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(pairs)

        def __getitem__(self, i: int):
            cell, end = divmod(int(pairs[i]), n_time)
            window = features.isel(cell=cell, time=slice(end - lookback + 1, end + 1)).values
            label = int(ds[fmt.LABELS].isel(cell=cell, time=end).values)
            return torch.from_numpy(window), label

    loader = torch.utils.data.DataLoader(
        Naive(), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    seen, started = 0, time.perf_counter()
    for xb, _ in loader:
        seen += len(xb)
        if seen >= spec["samples"]:
            break
    return {"samples_per_s": seen / (time.perf_counter() - started), "epoch_samples": len(pairs)}


def worker_xbatcher(spec: dict, token: str) -> dict:
    """(e): xbatcher's MapDataset over the remote series: each batch the 180-day windows of 256
    cells ending on one day, in a DataLoader(shuffle=True). Runs in the throwaway venv."""
    import torch
    import xarray as xr
    import xbatcher
    from fsspec.implementations.http import HTTPFileSystem
    from xbatcher.loaders.torch import MapDataset

    fs = HTTPFileSystem(headers={"Authorization": f"Bearer {token}"})
    ds = xr.open_zarr(fs.get_mapper(spec["url"]), consolidated=True)
    lookback = int(ds.attrs["time_lookback"])
    train = ds.attrs["splits"]["train"]
    days = slice(0, train["stop"])
    x_gen = xbatcher.BatchGenerator(
        ds[spec["name"]].isel(time=days),
        input_dims={"time": lookback, "feature": ds.sizes["feature"]},
        input_overlap={"time": lookback - 1},
        batch_dims={"cell": BATCH},
    )
    y_gen = xbatcher.BatchGenerator(
        ds["category"].isel(time=slice(lookback - 1, train["stop"])), input_dims={"time": 1}, batch_dims={"cell": BATCH}
    )
    loader = torch.utils.data.DataLoader(
        MapDataset(x_gen, y_gen), batch_size=None, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    seen, started = 0, time.perf_counter()
    for i, (xb, yb) in enumerate(loader):
        assert xb.shape[-2:] == (lookback, ds.sizes["feature"]) and xb.shape[0] == yb.shape[0], (xb.shape, yb.shape)
        seen += xb.shape[0]
        if i + 1 >= spec["batches"]:
            break
    return {"samples_per_s": seen / (time.perf_counter() - started), "version": xbatcher.__version__}


WORKERS = {
    "new": worker_new,
    "old": worker_old,
    "old_diversity": worker_old_diversity,
    "skill": worker_skill,
    "raw": worker_raw,
    "memcpy": worker_memcpy,
    "naive": worker_naive,
    "xbatcher": worker_xbatcher,
}


def launch(kind: str, spec: dict, token: str, python: Path | str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(python), __file__, "--measure", json.dumps({"kind": kind, **spec})],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "BENCH_TOKEN": token},
    )


def collect(kind: str, proc: subprocess.Popen[str], timeout: float = 3600) -> dict:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"{kind} failed:\n{err.strip()[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def measure(kind: str, spec: dict, token: str, python: Path | str) -> dict:
    """Run one pattern in a fresh process of `python` (the venv of the study it measures)."""
    return collect(kind, launch(kind, spec, token, python))


# ------------------------------------------------------------------------------------ setup


def quiet(func: Any, *args: Any, **kwargs: Any) -> Any:
    """Call func with stdout swallowed, also that of the subprocesses it runs (cookiecutter's
    post-gen hook prints the next steps)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
        with contextlib.redirect_stdout(io.StringIO()):
            return func(*args, **kwargs)
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def old_template(commit: str, where: Path) -> Path:
    """The template as it was at `commit`, extracted from this clone's history."""
    archive = subprocess.run(["git", "-C", str(TEMPLATE), "archive", "--format=tar", commit], capture_output=True)
    if archive.returncode:
        raise SystemExit(
            f"cannot extract the old template at {commit} (is this a git clone with its history?): "
            f"{archive.stderr.decode().strip()}; use --skip-old to measure the new study alone"
        )
    where.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(where, filter="data")
    return where


def configure(study: Path, raw: Path, data: Path, *, lift_limits: bool = False) -> Path:
    """Point the study at the shared inputs and store folder (absolute paths in study.toml)."""
    toml = study / "study.toml"
    text = toml.read_text().replace('raw_dir = "data/raw"', f'raw_dir = "{raw}"')
    text = text.replace('zarr_dir = "data/zarr"', f'zarr_dir = "{data}"')
    if lift_limits:  # nginx's per-client request limit would answer the naive pattern with 429s
        text = re.sub(r"(?m)^requests_per_second = \d+$", "requests_per_second = 100000", text)
        text = re.sub(r"(?m)^burst = \d+$", "burst = 100000", text)
    toml.write_text(text)
    return toml


def prepare(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Bake and install both studies, write the inputs once, run both ETLs on them."""
    from bakery import bake, install_study, run
    from servers import study_package

    raw, data = work / "raw", work / "data"
    ready = work / "ready.json"
    if args.reuse and ready.exists():
        print(f"reusing the studies and stores in {work}")
        return json.loads(ready.read_text())
    for name in ("new", "old", "old-template", "raw", "data", "xbatcher-venv"):
        shutil.rmtree(work / name, ignore_errors=True)
    info: dict[str, Any] = {}
    started = time.perf_counter()
    new = quiet(bake, work / "new", time_lookback=180, auth="token", zarr_format=2)
    info["new"] = {"study": str(new), "python": str(install_study(new, work / "new")), "pkg": study_package(new)}
    info["new"]["config"] = str(configure(new, raw, data, lift_limits=True))
    if not args.skip_old:
        from cookiecutter.main import cookiecutter

        template = old_template(args.old_commit, work / "old-template")
        old = Path(
            quiet(
                cookiecutter,
                str(template),
                no_input=True,
                output_dir=str(work / "old"),
                extra_context={"time_lookback": "180", "auth": "token", "zarr_format": "2"},
            )
        )
        info["old"] = {"study": str(old), "python": str(install_study(old, work / "old")), "pkg": study_package(old)}
        info["old"]["config"] = str(configure(old, raw, data))
    print(f"baked and installed in {time.perf_counter() - started:.0f} s")
    new_py, pkg = info["new"]["python"], info["new"]["pkg"]
    cmd = [new_py, "-m", pkg, "--config", info["new"]["config"], "synth", "--size", args.size, "--out", raw]
    synth = run([*cmd, *(["--years", str(args.years)] if args.years else [])])
    print(synth.stdout.strip().splitlines()[0])
    for side in ("new", "old"):
        if side in info:
            started = time.perf_counter()
            s = info[side]
            run([s["python"], "-m", s["pkg"], "--config", s["config"], "etl", "--overwrite"], timeout=1800)
            info[side]["etl_s"] = time.perf_counter() - started
    ready.write_text(json.dumps(info))
    return info


def store_facts(info: dict[str, Any], data: Path) -> dict[str, Any]:
    """Names, paths, sizes on disk and the chunk keys of both stores."""
    cfg_new = import_config(info["new"])
    name = cfg_new.study.dataset_name
    new_store = data / f"{name}.zarr"
    manifest = json.loads((new_store / "manifest.json").read_text())
    read = [name, "category", "complete"]  # the arrays the loader reads (plus metadata)
    keys = [k for array in read for k in manifest["arrays"][array]["sha256"]]
    codecs = {a: json.loads((new_store / a / ".zarray").read_text())["compressor"] for a in read}
    facts = {
        "name": name,
        "new_store": new_store,
        "new_disk": dir_bytes(new_store),
        "new_read_disk": sum(dir_bytes(new_store / a) for a in read),
        "keys": keys,
        "codecs": codecs,
        "in_flight": cfg_new.train.prefetch_chunks,
    }
    if "old" in info:
        old_dir = data / f"{name}_lb180"
        facts.update(old_train=old_dir / "train.zarr", old_train_disk=dir_bytes(old_dir / "train.zarr"))
    return facts


def import_config(side: dict[str, Any]) -> Any:
    """The study's config, read with that study's own code (the new study's source is importable
    from this process: its folder goes on sys.path)."""
    src = str(Path(side["study"]) / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    return import_module(f"{side['pkg']}.config").load_config(side["config"])


# ------------------------------------------------------------------------------------ xbatcher


def xbatcher_python(work: Path) -> tuple[Path | None, str]:
    """A throwaway venv that sees the dev environment, with xbatcher installed (or why not)."""
    env_dir = work / "xbatcher-venv"
    python = env_dir / "bin" / "python"
    if not python.exists():
        venv.EnvBuilder(with_pip=False).create(env_dir)
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "_dev_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
            "xbatcher",
        ],
        capture_output=True,
        text=True,
    )
    if install.returncode:
        return None, f"xbatcher did not install: {install.stderr.strip().splitlines()[-1:]}"
    return python, ""


# ------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.measure:
        spec = json.loads(args.measure)
        print(json.dumps(WORKERS[spec.pop("kind")](spec, os.environ["BENCH_TOKEN"])))
        return 0
    from servers import study_server

    work = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="bench_loader_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, work folder {work}")
    info = prepare(args, work)
    data = work / "data"
    facts = store_facts(info, data)
    new, old = info["new"], info.get("old")
    token = secrets.token_urlsafe(32)
    r: dict[str, Any] = {"old": [], "new": [], "raw": [], "memcpy": []}
    with study_server(Path(new["python"]), Path(new["study"]), data, auth_env={"DATA_TOKEN": token}) as url:
        new_url = f"{url}/{facts['name']}.zarr"
        new_spec = {"pkg": new["pkg"], "config": new["config"], "url": url, "warm_epochs": args.warm_epochs}
        old_spec = {"pkg": old["pkg"], "config": old["config"], "url": url, "cache": "none"} if old else {}
        raw_spec = {"url": new_url, "keys": facts["keys"], "codecs": facts["codecs"], "in_flight": facts["in_flight"]}
        for i in range(args.repeat):  # interleaved: a busy moment of the machine hits every pattern alike
            started = time.perf_counter()
            if old:
                r["old"].append(measure("old", old_spec, token, old["python"]))
            r["new"].append(measure("new", new_spec, token, new["python"]))
            r["raw"].append(measure("raw", raw_spec, token, new["python"]))
            if i == 0:
                first = r["new"][0]
                mem_spec = {
                    "shape": [first["n_cells"], first["n_time"], first["n_features"], 180],
                    "batches": math.ceil(first["samples"] / BATCH),
                }
            r["memcpy"].append(measure("memcpy", mem_spec, token, new["python"]))
            print(f"repeat {i + 1}/{args.repeat} done in {time.perf_counter() - started:.0f} s", flush=True)
        old_div = None
        if old:
            div_spec = {**old_spec, "store": str(facts["old_train"]), "name": facts["name"]}
            old_div = measure("old_diversity", div_spec, token, old["python"])
        skill: dict[str, list[dict]] = {}
        if args.skill_steps:
            started = time.perf_counter()
            for seed in range(42, 42 + args.skill_seeds):  # both loaders at once, one thread each
                sk = {"steps": args.skill_steps, "stride": args.skill_test_stride, "url": url, "seed": seed}
                procs = {
                    side: launch(
                        "skill", {**sk, "side": side, "pkg": s["pkg"], "config": s["config"]}, token, s["python"]
                    )
                    for side, s in (("new", new), ("old", old))
                    if s
                }
                for side, proc in procs.items():
                    skill.setdefault(side, []).append(collect("skill", proc))
            print(f"skill runs done in {time.perf_counter() - started:.0f} s")
        naive = None
        if args.naive_samples:
            naive_spec = {"pkg": new["pkg"], "url": new_url, "name": facts["name"], "samples": args.naive_samples}
            naive = measure("naive", naive_spec, token, new["python"])
        xb, xb_note = None, "skipped (--xbatcher-batches 0)"
        if args.xbatcher_batches:
            python, xb_note = xbatcher_python(work)
            if python is not None:
                try:
                    xb_spec = {"url": new_url, "name": facts["name"], "batches": args.xbatcher_batches}
                    xb = measure("xbatcher", xb_spec, token, python)
                    xb_note = f"xbatcher {xb['version']}, timed on {args.xbatcher_batches} batches"
                except RuntimeError as exc:
                    xb_note = f"xbatcher installed but failed: {str(exc).strip().splitlines()[-1]}"
    report(args, info, facts, r, old_div, skill, naive, xb, xb_note)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def report(args, info, facts, r, old_div, skill, naive, xb, xb_note) -> None:
    first = r["new"][0]
    samples = first["samples"]
    old = bool(r["old"])

    def ratio(num: list[float], den: list[float]) -> list[float]:
        return [a / b for a, b in zip(num, den, strict=True)]

    cold_new = [n["samples"] / n["cold_s"] for n in r["new"]]
    warm_new = [statistics.median(n["warm"]) for n in r["new"]]
    raw_s = [x["seconds"] for x in r["raw"]]
    raw = [samples / s for s in raw_s]
    raw_mb = statistics.median(x["bytes"] / 1e6 / x["seconds"] for x in r["raw"])
    memcpy = [m["memcpy"] for m in r["memcpy"]]
    gather = [m["gather"] for m in r["memcpy"]]
    hot = [m["hot"] for m in r["memcpy"]]
    ceiling = [samples / (s + samples / m) for s, m in zip(raw_s, memcpy, strict=True)]
    cold_old = [o["samples"] / o["cold_s"] for o in r["old"]]
    series_mb = first["n_cells"] * first["n_time"] * first["n_features"] * 4 / 1e6
    windows_mb = samples * 180 * first["n_features"] * 4 / 1e6
    print(
        f"\nstores: {first['n_cells']} cells x {first['n_time']} days x {first['n_features']} features, lookback 180, "
        f"{samples:,} train windows per epoch ({windows_mb:.0f} MB of batches)"
    )
    print(
        f"  new series store: {facts['new_disk'] / 1e6:.1f} MB on disk ({facts['new_read_disk'] / 1e6:.1f} MB in the "
        f"arrays the loader reads, the rest is the climatology), {series_mb:.1f} MB of decoded series "
        f"(resident: {first['resident']}); ETL {info['new']['etl_s']:.0f} s"
    )
    if old:
        print(
            f"  old window store, train split: {facts['old_train_disk'] / 1e6:.1f} MB on disk, {windows_mb:.0f} MB of "
            f"decoded windows per epoch ({windows_mb / series_mb:.0f}x the series); ETL {info['old']['etl_s']:.0f} s"
        )
    print(
        f"\nmedian [min-max] of {args.repeat} interleaved repeats, each pattern in a fresh process; "
        f"samples = train windows"
    )
    print(f"{'pattern':<52} {'samples/s':>27}  bound by")
    rows = []
    if old:
        rows.append(
            (
                "(a) old window store + ChunkLoader, cold",
                cold_old,
                f"decoding {windows_mb:.0f} MB of stored windows + gathering them (3 threads)",
            )
        )
    rows += [
        ("(b) new loader, cold (open + download + epoch)", cold_new, "batch assembly, then the download (below)"),
        ("(b) new loader, warm epoch (resident series)", warm_new, "batch assembly: random window reads in memory"),
        (
            "(c) raw GETs + decode of the new store",
            raw,
            f"loopback HTTP + zstd ({raw_mb:.0f} MB/s, in {len(facts['keys'])} GETs)",
        ),
        ("(d) memcpy of the same batch bytes", memcpy, "memory bandwidth, one core"),
        (
            "(d) the loader's gather alone, random windows",
            gather,
            "cache misses: 1440-byte windows all over the series",
        ),
        ("(d) the same gather, one batch again (cache-hot)", hot, "per-window copy"),
        ("    cold ceiling: (c) then assembly at (d) memcpy", ceiling, "network + decode, then memory bandwidth"),
    ]
    for label, values, bound in rows:
        print(f"{label:<52} {spread(values):>27}  {bound}")
    if naive:
        epoch_h = naive["epoch_samples"] / naive["samples_per_s"] / 3600
        print(
            f"{'(e) naive Dataset.__getitem__ + DataLoader':<52} {naive['samples_per_s']:>27,.1f}  "
            f"a whole chunk fetched + decoded per window (timed on {args.naive_samples}; an epoch: "
            f"{epoch_h:.1f} h)"
        )
    shown = f"{xb['samples_per_s']:>27,.0f}" if xb else f"{'n/a':>27}"
    print(f"{'(e) xbatcher MapDataset + DataLoader':<52} {shown}  {xb_note}")

    print("\nratios (median [min-max] of per-repeat ratios)")

    def show(label: str, values: list[float], note: str = "") -> None:
        print(f"  {label:<46} {statistics.median(values):8.2f}x [{min(values):.2f}-{max(values):.2f}]  {note}")

    if old:
        show("new cold / old cold", ratio(cold_new, cold_old))
    show("new warm / new cold", ratio(warm_new, cold_new))
    show("new cold / cold ceiling", ratio(cold_new, ceiling))
    show("new warm / memcpy", ratio(warm_new, memcpy))
    show("new warm / gather alone", ratio(warm_new, gather), "(the loader around the gather)")
    show("gather alone / memcpy", ratio(gather, memcpy))
    show("gather cache-hot / memcpy", ratio(hot, memcpy))
    if naive:
        print(f"  {'new cold / naive':<46} {statistics.median(cold_new) / naive['samples_per_s']:8,.0f}x")
    if xb:
        print(f"  {'new cold / xbatcher':<46} {statistics.median(cold_new) / xb['samples_per_s']:8,.0f}x")

    wire = statistics.median(n["wire_bytes"] for n in r["new"])
    print("\nbytes on the wire per cold epoch (response bodies counted by the store, HTTP headers not included):")
    print(
        f"  new: {wire / 1e6:.2f} MB in {first['requests']} requests = {wire / facts['new_disk']:.2f}x the store "
        f"on disk ({wire / facts['new_read_disk']:.2f}x the arrays it reads)"
    )
    if old:
        old_wire = statistics.median(o["wire_bytes"] for o in r["old"])
        print(
            f"  old: {old_wire / 1e6:.2f} MB in {r['old'][0]['requests']} requests = "
            f"{old_wire / facts['old_train_disk']:.2f}x its train store on disk"
        )

    expected = uniform_distinct(first["cells"], BATCH)
    print(
        f"\nbatch diversity: median distinct cells per batch of {BATCH} in the cold epoch (a uniform draw over "
        f"the {first['cells']} cells: {expected:.0f})"
    )
    print(f"  new: {first['median_distinct']:.0f}")
    if old_div:
        ok = not old_div["unmatched"] and old_div["unique_hashes"]
        check = (
            "every window identified by its hash"
            if ok
            else (f"{old_div['unmatched']} windows unidentified, hashes unique: {old_div['unique_hashes']}")
        )
        print(f"  old: {old_div['median_distinct']:.0f}  ({old_div['batches']} batches; {check})")

    if skill:
        print(
            f"\nskill at equal steps: {args.skill_steps} steps of {BATCH}, the same build_model, init seed, Adam, "
            f"class weights; every {args.skill_test_stride}th test window (model-bound: one thread per run)"
        )
        for side, runs in skill.items():
            for seed, s in enumerate(runs, start=42):
                print(
                    f"  {side} seed {seed}: test accuracy {s['accuracy']:.3f}, macro-F1 {s['macro_f1']:.3f} "
                    f"({s['test_windows']:,} windows, digest {s['digest']}, trained in {s['train_s']:.0f} s)"
                )
        if "old" in skill:
            digests = {s["digest"] for runs in skill.values() for s in runs}
            print(f"  the same test windows in every run: {'yes' if len(digests) == 1 else 'NO (digests differ)'}")

    print("\ngoals (issue 12):")

    def goal(label: str, met: bool, value: str, bound: str) -> None:
        print(f"  [{'met' if met else 'NOT MET'}] {label:<48} {value:<22} {bound}")

    if old:
        v = statistics.median(ratio(cold_new, cold_old))
        c = statistics.median(ratio(ceiling, cold_old))
        goal(
            "new cold epoch >= 5x the old loader's samples/s",
            v >= 5,
            f"{v:.2f}x",
            f"batch assembly + download (ceiling: {c:.1f}x)",
        )
    v = statistics.median(ratio(warm_new, memcpy))
    g = statistics.median(ratio(gather, memcpy))
    goal(
        "warm epoch >= 0.5x the memcpy limit",
        v >= 0.5,
        f"{v:.2f}x",
        f"random window reads (the gather alone: {g:.2f}x)",
    )
    v = wire / facts["new_disk"]
    goal("bytes on the wire per cold epoch <= 1.1x on disk", v <= 1.1, f"{v:.2f}x", "each chunk is fetched once")
    v = first["median_distinct"] / expected
    old_v = f" (old: {old_div['median_distinct'] / uniform_distinct(old_div['cells'], BATCH):.2f}x)" if old_div else ""
    goal("median distinct cells per batch >= 0.9x uniform", v >= 0.9, f"{v:.2f}x{old_v}", "a uniform permutation")
    if "old" in skill:
        mean = {
            side: {k: statistics.mean(s[k] for s in runs) for k in ("accuracy", "macro_f1")}
            for side, runs in skill.items()
        }
        da = mean["new"]["accuracy"] - mean["old"]["accuracy"]
        df = mean["new"]["macro_f1"] - mean["old"]["macro_f1"]
        goal(
            "skill not worse than the old loader, equal steps",
            da >= 0 and df >= 0,
            f"acc {da:+.3f}, F1 {df:+.3f}",
            f"mean of {args.skill_seeds} seed(s), new - old",
        )


if __name__ == "__main__":
    raise SystemExit(main())
