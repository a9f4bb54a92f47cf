"""`lock` pins the exact versions that run the study."""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

from ..cli import main
from .conftest import STUDY_ROOT


def test_lock_pins_installed_dependencies(tmp_path: Path) -> None:
    out = tmp_path / "requirements.lock"
    assert main(["--config", str(STUDY_ROOT / "study.toml"), "lock", "--out", str(out)]) == 0
    pins = dict(line.split("==") for line in out.read_text().splitlines() if "==" in line)
    for name in ("numpy", "xarray", "zarr", "fsspec"):
        assert pins[name] == md.version(name)
    assert not list(tmp_path.glob(".*tmp*"))
