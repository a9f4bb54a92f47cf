"""`lock` records what runs the study as pip reports it, in a form pip installs from anywhere
(the rules are labzarr.lock's, tested there; here the study's own dependencies and command)."""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

from ..cli import main
from .conftest import STUDY_ROOT


def test_lock_pins_the_installed_versions_of_the_study_dependencies(tmp_path: Path) -> None:
    out = tmp_path / "requirements.lock"
    assert main(["--config", str(STUDY_ROOT / "study.toml"), "lock", "--out", str(out)]) == 0
    lines = [line for line in out.read_text().splitlines() if not line.startswith("#")]
    pins = dict(line.split("==") for line in lines)
    for name in ("numpy", "xarray", "zarr", "fsspec", "pytest"):  # runtime, extras and the dev group
        assert pins[name] == md.version(name).split("+")[0]
    assert "torch" in pins and "+" not in pins["torch"], "no local label: PyPI serves what the lock names"
    assert not [line for line in lines if " @ " in line or "-e " in line], "no paths, no editable installs"
    assert not list(tmp_path.glob(".*tmp*"))
