"""A Jupyter kernel with Google Colab's own package versions, to run the study's notebook as Colab does.

Colab's preinstalled packages are published by Google (github.com/googlecolab/backend-info,
`pip-freeze.gpu.txt`). `colab_packages.txt` beside this file keeps the part of that list the
notebook runs on (ROOTS below and everything they depend on) at exactly Colab's versions, with
its source and date; `python scripts/colab_env.py pin <pip-freeze.gpu.txt> --source ...` rewrites
it from a newer freeze.

The kernel's environment is installed from that file with pip (`--no-deps`: the file is already a
complete resolution, so no resolver runs) and cached under `.cache/colab-kernel/<hash>`, keyed on
the file, the Python version and the torch build, so it is built once per change of any of them.
torch itself is linked from the development environment: Colab's is a CUDA build, and a CPU
build for this Python lies on this machine's disk. Each notebook run gets a fresh overlay venv
that sees the cached environment, so the notebook's install cell installs zarr, numcodecs and
the study into a runtime that has never seen them, as in a new Colab session, and the cache stays
untouched.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1]
PINS = Path(__file__).with_name("colab_packages.txt")
CACHE = Path(os.environ.get("COLAB_KERNEL_CACHE", TEMPLATE / ".cache" / "colab-kernel"))
# What the notebook's runtime uses from Colab: the notebook and the study package (numpy ... tqdm),
# the kernel and its widgets (ipykernel, ipython, ipywidgets), and numba, whose numpy ceiling is
# what an install that upgrades numpy breaks in Colab. Their dependencies are pinned too.
ROOTS = (
    "numpy", "pandas", "xarray", "fsspec", "aiohttp", "requests", "packaging", "google-crc32c",
    "scikit-learn", "matplotlib", "scipy", "dask", "h5netcdf", "h5py", "tqdm", "numba",
    "ipykernel", "ipython", "ipywidgets", "pip",
)  # fmt: skip
# Absent from Colab's list (checked by `pin`): the notebook must install zarr and numcodecs, and
# nothing it runs may need netCDF4 or cftime.
COLAB_LACKS = ("zarr", "numcodecs", "netCDF4", "cftime")
# Colab's torch (a CUDA build) is replaced by the development environment's; see the module docstring.
LINKED = ("torch",)
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def norm(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path = PINS) -> dict[str, str]:
    """The `name==version` lines of a pins or freeze file, by normalised name (others skipped)."""
    pins = {}
    for line in path.read_text().splitlines():
        if match := PIN.match(line.strip()):
            pins[norm(match[1])] = match[2]
    return pins


COLAB_SHIPS = tuple(read_pins())


def _key() -> str:
    """Cache key: the pins file, this Python and the torch build that is linked in."""
    torch = md.distribution("torch")
    parts = [PINS.read_bytes(), sys.version.encode(), torch.version.encode(), str(torch.locate_file("")).encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def _site_packages(env: Path) -> Path:
    return next((env / "lib").glob("python3*/site-packages"))


def _link_distribution(name: str, site: Path) -> None:
    """Symlink an installed distribution of this environment (its top-level files) into `site`."""
    dist = md.distribution(name)
    source = Path(str(dist.locate_file("")))
    tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
    for top in sorted(tops):
        if (source / top).exists() and not top.endswith(".pth"):
            (site / top).symlink_to(source / top)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (the demo and a test run may build at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _pip(*args: str | Path) -> None:
    """This environment's pip (any target via --python); stop with its output on failure."""
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def colab_base(cache: Path = CACHE) -> Path:
    """The cached environment with Colab's packages (built on first use); returns its folder."""
    base = cache / _key()
    with _locked(cache / ".lock"):
        if (base / ".complete").is_file():
            return base
        shutil.rmtree(base, ignore_errors=True)  # an interrupted build
        start = time.perf_counter()
        print(f"building the Colab kernel environment in {base} (once per {PINS.name} change)", flush=True)
        venv.EnvBuilder(with_pip=False, symlinks=True).create(base)
        python = base / "bin" / "python"
        # --no-compile: Python writes the bytecode of what the kernel imports, on first import.
        _pip(
            "--python", python, "install", "--quiet", "--no-deps", "--no-compile", "--only-binary", ":all:", "-r", PINS
        )
        for name in LINKED:
            _link_distribution(name, _site_packages(base))
        check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True)
        if check.returncode:
            raise RuntimeError(f"the Colab kernel environment is inconsistent:\n{check.stdout}{check.stderr}")
        (base / ".complete").write_text(f"{time.perf_counter() - start:.1f} s to build\n")
        print(f"built in {time.perf_counter() - start:.0f} s", flush=True)
    return base


def build_colab_like_python(where: Path, cache: Path = CACHE) -> Path:
    """A new venv under `where` that sees the cached Colab environment; returns its python.

    Whatever the notebook installs lands in this venv, never in the cache."""
    base_site = _site_packages(colab_base(cache))
    env_dir = where / "kernel-venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)
    # `import` lines of a .pth run at start-up: addsitedir also processes the base's own .pth files.
    (_site_packages(env_dir) / "_colab_base.pth").write_text(f"import site; site.addsitedir({str(base_site)!r})\n")
    return env_dir / "bin" / "python"


def write_kernelspec(jupyter_path: Path, python: Path, name: str = "colab-like") -> str:
    """Register a kernel running `python` under JUPYTER_PATH=`jupyter_path`; returns its name."""
    spec_dir = jupyter_path / "kernels" / name
    spec_dir.mkdir(parents=True)
    spec = {
        # -Xfrozen_modules=off and PYDEVD_DISABLE_FILE_VALIDATION: the kernel's debugger (debugpy)
        # otherwise warns at every start that frozen modules may make it miss breakpoints.
        "argv": [str(python), "-Xfrozen_modules=off", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "env": {"PYDEVD_DISABLE_FILE_VALIDATION": "1"},
        "display_name": "Python 3 (Colab-like)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return name


def pin(freeze: Path, source: str) -> None:
    """Rewrite PINS from Colab's `pip-freeze.gpu.txt`: ROOTS and their dependencies at Colab's
    versions, resolved by pip for this Python with this environment's torch."""
    colab = read_pins(freeze)
    present = [name for name in COLAB_LACKS if norm(name) in colab]
    if present:
        raise SystemExit(f"Colab now ships {present}: update COLAB_LACKS and the notebook's install cell")
    torch = f"torch=={md.version('torch').split('+')[0]}"
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "colab-constraints.txt"
        # Not constrained: torch (replaced) and what the replacement needs newer (setuptools).
        free = {"torch", "setuptools"}
        constraints.write_text("".join(f"{n}=={v}\n" for n, v in colab.items() if n not in free and "+" not in v))
        report = Path(tmp) / "report.json"
        _pip("install", "--quiet", "--dry-run", "--ignore-installed", "--only-binary", ":all:",
             "--report", report, "-c", constraints, *ROOTS, torch)  # fmt: skip
        resolved = {
            norm(item["metadata"]["name"]): item["metadata"]["version"]
            for item in json.loads(report.read_text())["install"]
        }
    lines = [
        "# Google Colab's preinstalled Python packages (GPU runtime): the part the study's notebook runs on.",
        f"# Source: {source}",
        f"# Selection: {', '.join(ROOTS)} and their dependencies, at Colab's versions",
        "#   (scripts/colab_env.py ROOTS), written by `python scripts/colab_env.py pin`.",
        f"# Not in Colab, so the notebook installs them: {', '.join(COLAB_LACKS)}.",
        f"# The test kernel runs Python {sys.version.split()[0]}, the development environment's (the Python of the",
        "#   CPU torch build it links in, unlisted here; Colab's own is a CUDA build). A version that",
        "#   differs from Colab's says why.",
    ]
    for name, version in sorted(resolved.items()):
        if name in LINKED:
            continue
        if name not in colab:
            why = "  # not in Colab's list: a dependency pip resolved"
        elif colab[name] != version:
            why = f"  # Colab: {colab[name]}; the kernel's {torch} needs this one"
        else:
            why = ""
        lines.append(f"{name}=={version}{why}")
    PINS.write_text("\n".join(lines) + "\n")
    print(f"wrote {len(resolved) - len(LINKED)} pins to {PINS}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pin", help="rewrite colab_packages.txt from Colab's pip-freeze.gpu.txt")
    p.add_argument("freeze", type=Path, help="pip-freeze.gpu.txt of googlecolab/backend-info")
    p.add_argument("--source", required=True, help="where the file came from: repository, commit, date")
    sub.add_parser("build", help="build (or find) the cached kernel environment and print its folder")
    args = parser.parse_args()
    if args.command == "pin":
        pin(args.freeze, args.source)
    else:
        print(colab_base())
