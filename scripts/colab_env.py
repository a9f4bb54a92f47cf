"""A Jupyter kernel whose Python has what Google Colab ships, and not what it lacks.

Colab (2026) preinstalls numpy, pandas, xarray, fsspec, aiohttp, torch, scikit-learn,
matplotlib, scipy, dask, netCDF4, tqdm, requests and IPython/ipykernel, but not zarr
or numcodecs. The kernel's environment is built from the dev environment: a folder of
symlinks to exactly the distributions in COLAB_SHIPS and their dependencies (so it
takes milliseconds and no downloads), plus a venv with pip, so the notebook's own
install cell has to install zarr, numcodecs and the study like it does in Colab.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import re
import venv
from pathlib import Path

from packaging.requirements import Requirement

# Preinstalled on Colab and used by the notebook or the study package (documented list).
COLAB_SHIPS = [
    "numpy", "pandas", "xarray", "fsspec", "aiohttp", "requests", "torch", "scikit-learn",
    "matplotlib", "scipy", "dask", "netCDF4", "cftime", "tqdm", "ipykernel", "ipython",
]  # fmt: skip
# What Colab lacks; the notebook must install it. Never linked, even as a dependency.
COLAB_LACKS = {"zarr", "numcodecs", "donfig"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(roots: list[str]) -> dict[str, md.Distribution]:
    """The distributions in `roots` and, recursively, their unconditional dependencies."""
    found: dict[str, md.Distribution] = {}
    todo = list(roots)
    while todo:
        name = _norm(todo.pop())
        if name in found or name in COLAB_LACKS:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # optional on this platform (e.g. a Windows-only dependency)
        found[name] = dist
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return found


def build_colab_like_python(where: Path) -> Path:
    """Create the environment under `where`; returns its python."""
    farm = where / "colab-site"
    farm.mkdir(parents=True)
    for dist in _closure(COLAB_SHIPS).values():
        site = Path(dist.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            source = site / top
            if source.exists() and not (farm / top).exists() and not top.endswith(".pth"):
                (farm / top).symlink_to(source)
    env_dir = where / "kernel-venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site_packages = next((env_dir / "lib").glob("python3*/site-packages"))
    (site_packages / "_colab_site.pth").write_text(f"{farm}\n")
    return python


def write_kernelspec(jupyter_path: Path, python: Path, name: str = "colab-like") -> str:
    """Register a kernel running `python` under JUPYTER_PATH=`jupyter_path`; returns its name."""
    spec_dir = jupyter_path / "kernels" / name
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (Colab-like)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return name
