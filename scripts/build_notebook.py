"""Write the study's Colab notebook template from the cells below.

The notebook is a Jinja template inside the study folder (it carries the baked
URL, dataset and repository). Editing JSON by hand is error-prone, so its cells
live here as Python text; `python scripts/build_notebook.py` rewrites
`{{cookiecutter.project_slug}}/notebooks/colab_bootstrap.ipynb`, and a fast test
checks the committed file is up to date.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1]
NOTEBOOK = TEMPLATE / "{{cookiecutter.project_slug}}" / "notebooks" / "colab_bootstrap.ipynb"
PKG = "{{ cookiecutter.package_name }}"

CELLS: list[tuple[str, str]] = [
    (
        "markdown",
        """# {{ cookiecutter.project_name }}: train in Colab on data served by the lab

This notebook reads the study's zarr store from the lab's data server
(`{{ cookiecutter.data_url }}`) into this runtime and trains the model `study.toml` names
(`train.model`: the LSTM baseline, a TCN, or one you add; README: *Change the model*).
The store holds each grid cell's transformed series once; the training windows
are cut from them in this runtime, on the GPU when there is one.
Run it top to bottom (*Runtime → Run all*). Only the **configuration** cell is
meant to be edited.

1. **Setup**: install what Colab lacks (zarr, numcodecs, this study's package).
2. **Configuration**: the data URL and credentials come from Colab secrets
   (key icon in the left bar) or, outside Colab, from environment variables.
3. **The mapper**: open the remote store with fsspec, exactly as the original workflow did,
   and cut one training window from it with plain xarray.
4. **Throughput**: how fast this runtime reads from the lab server.
5. **Training**: the package's loader (one download, windows cut on the device), model,
   training loop, and the baselines the model must beat.
6. **Saving**: results to Google Drive, when mounted.""",
    ),
    (
        "markdown",
        """## Configuration

Secrets to add in Colab (*key icon → Add new secret*, and switch on notebook access):
`DATA_URL` (optional, defaults below)
{%- if cookiecutter.auth == 'token' %} and `DATA_TOKEN`
{%- elif cookiecutter.auth == 'basic' %}, `DATA_USER` and `DATA_PASSWORD`{% endif %}.
When the store is on an S3-compatible object store (`DATA_URL` = `s3://bucket/prefix`), add
`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` instead (s3fs is then installed).
Outside Colab, set the same names as environment variables.""",
    ),
    (
        "code",
        """# --- configuration: the only cell meant to be edited ---
import os

DEFAULT_DATA_URL = "{{ cookiecutter.data_url.rstrip('/') }}"
DATASET_NAME = "{{ cookiecutter.dataset_name }}"
GITHUB_REPO = "{{ cookiecutter.github_repo }}"
EPOCHS = None  # training epochs; None: train.epochs of study.toml (a test or the demo sets STUDY_EPOCHS)
if os.environ.get("STUDY_EPOCHS"):
    EPOCHS = int(os.environ["STUDY_EPOCHS"])
SAVE_TO_DRIVE = False  # copy checkpoint and metrics to Google Drive at the end
RESULTS_DIR = "results\"""",
    ),
    (
        "markdown",
        """## 1. Setup
Installs what Colab lacks (zarr, numcodecs, this study's package) and nothing else: every package
already in the runtime is a pip constraint, so Colab's own numpy, torch, xarray, fsspec, pandas
and aiohttp (which other Colab libraries depend on) can never change. The study's `pyproject.toml`
sets the zarr and numcodecs versions it is tested with.""",
    ),
    (
        "code",
        """import importlib
import importlib.metadata as md
import importlib.util
import subprocess
import sys
import tempfile

from packaging.version import InvalidVersion, Version

IN_COLAB = "google.colab" in sys.modules
PIP_SOURCE = os.environ.get("STUDY_PIP_SOURCE") or f"git+https://github.com/{GITHUB_REPO}"
# The study's pyproject.toml says where its library (labzarr) comes from; a test points elsewhere.
LIBRARY_SOURCE = os.environ.get("STUDY_LIBRARY_SOURCE")
WATCHED = ("numpy", "torch", "xarray", "fsspec", "pandas", "aiohttp")  # Colab's, used by the study


def installed() -> dict[str, str]:
    \"\"\"The version of every installed distribution, by lowercase name (the first on sys.path,
    the one `import` finds, when a name is installed twice).\"\"\"
    versions: dict[str, str] = {}
    for dist in md.distributions():
        if dist.metadata["Name"]:
            versions.setdefault(dist.metadata["Name"].lower(), dist.version)
    return versions


def pinnable(version: str) -> bool:
    try:
        Version(version)
    except InvalidVersion:
        return False  # pip cannot read it as a constraint; the check after the install still covers it
    return True


def install_keeping_runtime(*sources: str) -> None:
    \"\"\"pip install `sources` and their dependencies without changing any installed version.\"\"\"
    before = installed()
    with tempfile.TemporaryDirectory() as tmp:  # the constraints file goes with it
        pins = os.path.join(tmp, "runtime-constraints.txt")
        with open(pins, "w") as f:
            f.writelines(f"{name}=={version}\\n" for name, version in before.items() if pinnable(version))
        cmd = [sys.executable, "-m", "pip", "install", "--constraint", pins, *sources]
        done = subprocess.run(cmd, capture_output=True, text=True)
    if done.stderr.strip():
        print(done.stderr.strip())  # pip's warnings (resolver conflicts included), never swallowed
    if done.returncode:
        print(done.stdout[-4000:])
        lines = (done.stdout + done.stderr).splitlines()
        held = sorted({line.split("(constraint) ")[1].strip() for line in lines if "(constraint) " in line})
        raise RuntimeError(
            "Installing the study needs other versions of this runtime's own packages "
            f"({', '.join(held) or 'see pip above'}); "
            "the notebook never changes them (other Colab libraries depend on them), so nothing was changed. "
            "If you changed them yourself, restart with Colab's own (Runtime -> Disconnect and delete runtime) "
            "and run all again; otherwise this Colab release is outside the range the study is tested with: "
            "widen the range in the study's pyproject.toml, test it, and push."
        )
    after = installed()
    changed = [f"{name} {was} -> {after.get(name)}" for name, was in before.items() if after.get(name) != was]
    if changed:
        raise RuntimeError(
            f"pip changed this runtime's own packages despite the constraints: {', '.join(changed)}. "
            "Restart with Colab's own (Runtime -> Disconnect and delete runtime) before running again."
        )
    print("added:", ", ".join(f"{name} {after[name]}" for name in sorted(after.keys() - before.keys())))
    print("unchanged:", ", ".join(f"{name} {after[name]}" for name in WATCHED if name in after))


try:
    importlib.import_module("{{ cookiecutter.package_name }}")
except ImportError:
    install_keeping_runtime(*filter(None, (LIBRARY_SOURCE, PIP_SOURCE)))
    importlib.invalidate_caches()

from labzarr.train.threads import prepare_threads

prepare_threads()  # before torch loads OpenMP: its idle CPU threads then sleep instead of spinning
import fsspec
import numpy as np
import torch
import xarray as xr
import zarr

versions = {m.__name__: m.__version__ for m in (zarr, xr, fsspec, np, torch)}
print("  ".join(f"{k} {v}" for k, v in versions.items()), "| GPU:", torch.cuda.is_available())
if int(zarr.__version__.split(".")[0]) < 3:
    raise RuntimeError(
        f"zarr {zarr.__version__} is too old: zarr-python 2 turns network errors into NaN silently. "
        "Run `pip install -U 'zarr>=3.0.8'` and restart the runtime (Runtime -> Restart session)."
    )""",
    ),
    ("markdown", "## 2. Configuration: URL and credentials\nSecrets are read, never printed."),
    (
        "code",
        f"""from labzarr import remote
from {PKG}.config import load_config


def secret(name: str) -> str | None:
    \"\"\"A Colab secret when in Colab, else an environment variable; None when unset.\"\"\"
    if IN_COLAB:
        from google.colab import userdata

        try:
            return userdata.get(name)
        except (userdata.SecretNotFoundError, userdata.NotebookAccessError):
            return None
    return os.environ.get(name) or None


cfg = load_config()
DATA_URL = (secret("DATA_URL") or DEFAULT_DATA_URL).rstrip("/")
CREDENTIALS = {{"token": secret("DATA_TOKEN"), "user": secret("DATA_USER"), "password": secret("DATA_PASSWORD")}}
SOURCE = cfg.store_source(DATA_URL, **CREDENTIALS)  # the store's URL and credentials, checked once
STORE_URL = SOURCE.url
print("data server:", DATA_URL)
print("store:", STORE_URL)
if EPOCHS is None:
    EPOCHS = cfg.train.epochs
    print("epochs:", EPOCHS, "(train.epochs of study.toml)")
else:
    print("epochs:", EPOCHS, f"(set in this notebook; train.epochs of study.toml: {{cfg.train.epochs}})")
if DATA_URL.startswith("s3://"):  # an S3-compatible object store: botocore reads the AWS variables
    AWS = {{name: secret(name) for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}}
    os.environ.update({{name: value for name, value in AWS.items() if value}})
    print("credentials:", ", ".join(k for k, v in AWS.items() if v) or "none")
    if importlib.util.find_spec("s3fs") is None:
        install_keeping_runtime("s3fs")  # within Colab's fsspec, like everything else
        importlib.invalidate_caches()
else:
    print("credentials:", ", ".join(k for k, v in CREDENTIALS.items() if v) or "none")""",
    ),
    (
        "markdown",
        """## 3. The mapper: open the remote store with fsspec

The original workflow in four lines: an `HTTPFileSystem` (with a deadline per request),
a mapper on the store's URL, and `xr.open_zarr(..., consolidated=True)`, which reads only
the consolidated metadata (one request) until values are needed. The credentials go in a header,
never in the URL. The variable is the transformed series `(cell, time, feature)`:
each cell's whole record, stored once.""",
    ),
    (
        "code",
        """import aiohttp
from fsspec.implementations.http import HTTPFileSystem

headers = {"Authorization": f"Bearer {CREDENTIALS['token']}"} if CREDENTIALS["token"] else {}
basic = aiohttp.BasicAuth(CREDENTIALS["user"], CREDENTIALS["password"]) if CREDENTIALS["user"] else None
remote.check_access(SOURCE)  # stops here with a clear message on bad credentials

# A total deadline per request, so a server that trickles bytes cannot hold the cell forever.
# asynchronous=True: zarr drives the filesystem on its own event loop as it is (a synchronous
# one would be copied through JSON, which cannot carry the timeout).
deadline = aiohttp.ClientTimeout(total=remote.read_deadline_s(SOURCE.timeout_s, SOURCE.retry_budget_s))
fs = HTTPFileSystem(headers=headers, client_kwargs={"auth": basic, "timeout": deadline}, asynchronous=True)
if STORE_URL.startswith("s3://"):
    fs = fsspec.filesystem("s3")  # endpoint and keys from the AWS variables set above
http_map = fs.get_mapper(STORE_URL)
ds = xr.open_zarr(http_map, consolidated=True)[DATASET_NAME]
ds""",
    ),
    (
        "markdown",
        """A training sample is a lookback window of one cell, labelled with the drought
category of its last day. It is cut from the series when read, never stored (a stored
window would be a shifted copy of its neighbours). Here is one, with plain xarray:""",
    ),
    (
        "code",
        f"""from {PKG}.etl.categories import CATEGORIES

store = xr.open_zarr(http_map, consolidated=True)
lookback = store.attrs["time_lookback"]
train_days = store.attrs["splits"]["train"]  # label days of the training block (indices)
labels = store["category"].isel(cell=0, time=slice(train_days["start"], train_days["stop"])).load()
end = train_days["start"] + int(labels.notnull().values.nonzero()[0][-1])  # its last labelled day
window = ds.isel(cell=0, time=slice(end - lookback + 1, end + 1))
print(f"window {{dict(window.sizes)}} ending {{str(window.time.values[-1])[:10]}}, "
      f"label {{CATEGORIES[int(store['category'].isel(cell=0, time=end))]}}")
window.plot.line(x="time", hue="feature", figsize=(8, 3));""",
    ),
    (
        "markdown",
        """The same through labzarr's `remote` helper, which adds what a long training
run needs: read timeouts, retries with backoff for transient errors, a check of the
store's manifest, and an error (never silent fill values) for a missing chunk.""",
    ),
    (
        "code",
        """remote_ds = remote.open_remote(SOURCE)
remote_ds""",
    ),
    ("markdown", "## 4. Throughput from this runtime to the lab server"),
    (
        "code",
        """from labzarr.throughput import measure_throughput

speed = measure_throughput(SOURCE)
print(f"{speed['mb_per_s']:.1f} MB/s, {speed['cells_per_s']:,.0f} cell series/s over {speed['chunks']} chunks")
if speed["mb_per_s"] < 20:
    print(
        "The link is slow. The series are downloaded once per run (keep train.cache = 'disk' to "
        "reuse them in a later run); raise train.prefetch_chunks to keep more requests in flight."
    )""",
    ),
    ("markdown", "## 5. Training\nOn the GPU when the runtime has one (*Runtime → Change runtime type*)."),
    (
        "code",
        """from pathlib import Path

from IPython.display import Image, display

from {{ cookiecutter.package_name }}.train.loop import train

summary = train(cfg, source=SOURCE, epochs=EPOCHS, out_dir=Path(RESULTS_DIR))
print(f"CPU threads: {summary['threads']['threads']} ({summary['threads']['reason']})")
for plot in ("loss.png", "confusion_matrix.png"):
    display(Image(filename=str(Path(RESULTS_DIR) / plot)))""",
    ),
    (
        "markdown",
        """The model beside four baselines, on the same test windows: the majority class; `last_step`
(the category the drought thresholds give the window's last value when the labels are derived from
a variable, else the cell's most frequent category); a logistic regression and gradient-boosted
trees on engineered features of each window (last value, 7-, 30- and 90-day means, trend).""",
    ),
    (
        "code",
        """import pandas as pd

from {{ cookiecutter.package_name }}.etl.categories import CATEGORIES

rows = {cfg.train.model: summary["test"], **summary["baselines"]}  # the same test windows for all
metrics = pd.DataFrame(
    {"test accuracy": {k: v["accuracy"] for k, v in rows.items()},
     "test macro-F1": {k: v["macro_f1"] for k, v in rows.items()}}
)
f1 = pd.DataFrame(
    {cfg.train.model: {c: summary["test"]["per_class"][c]["f1-score"] for c in CATEGORIES},
     **{k: v["f1"] for k, v in summary["baselines"].items()}}
).T
print(f"{summary['epochs_run']} epochs; a model that does not beat the baselines has learnt nothing")
display(metrics)
display(f1.round(2))  # F1 of each category""",
    ),
    (
        "markdown",
        """Where is the model right? The test accuracy of every grid cell on a map, and the observed
and predicted categories over the test period of the worst, median and best cell (per-cell
figures in `results/test_by_cell.csv`).""",
    ),
    (
        "code",
        """for plot in ("accuracy_map.png", "test_series.png"):
    display(Image(filename=str(Path(RESULTS_DIR) / plot)))""",
    ),
    ("markdown", "## 6. Saving\nCheckpoint, metrics and plots are in `results/`; in Colab they can go to Drive."),
    (
        "code",
        """import shutil

if IN_COLAB and SAVE_TO_DRIVE:
    from google.colab import drive

    drive.mount("/content/drive")
    target = Path("/content/drive/MyDrive") / DATASET_NAME / "results"
    shutil.copytree(RESULTS_DIR, target, dirs_exist_ok=True)
    print("copied results to", target)
else:
    print("results are in", Path(RESULTS_DIR).resolve())""",
    ),
]


def build() -> str:
    """The notebook as JSON text (nbformat 4, no outputs)."""
    cells = []
    for number, (kind, source) in enumerate(CELLS):
        lines = source.splitlines(keepends=True)
        cell = {"cell_type": kind, "id": f"cell-{number:02d}", "metadata": {}, "source": lines}
        if kind == "code":
            cell.update(execution_count=None, outputs=[])
        cells.append(cell)
    notebook = {
        "cells": cells,
        "metadata": {
            "accelerator": "GPU",
            "colab": {"provenance": []},
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    # Sorted keys, one-space indent, trailing newline: what nbformat (and so nbstripout) writes.
    return json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    NOTEBOOK.parent.mkdir(parents=True, exist_ok=True)
    text = build()
    if "--check" in sys.argv:
        raise SystemExit(0 if NOTEBOOK.read_text() == text else f"{NOTEBOOK} is stale: run {__file__}")
    NOTEBOOK.write_text(text)
    print(f"wrote {NOTEBOOK}")
