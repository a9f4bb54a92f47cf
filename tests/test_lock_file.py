"""The lock file a baked study starts with: what `<package> lock` writes in the environment the
template is tested in, and installable by plain pip into an empty venv, as a user reproducing the
study (or the ETL image) does it."""

from __future__ import annotations

import sys
import venv
from pathlib import Path

import pytest

from .conftest import LIBRARY, run, study_package

LOCK = "requirements.lock"


def pins(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]


@pytest.mark.slow
def test_the_shipped_lock_is_what_lock_records_here(fast_study: tuple[Path, Path], tmp_path: Path) -> None:
    """requirements-dev.txt installs the shipped lock, so `lock` in that environment gives it back:
    the lock is current (`python3 tasks.py relock` re-resolves it)."""
    study, python = fast_study
    out = tmp_path / LOCK
    run([python, "-m", study_package(study), "lock", "--out", out], cwd=study)
    assert pins(out) == pins(study / LOCK)
    assert not [pin for pin in pins(study / LOCK) if "+" in pin or " @ " in pin], "PyPI can serve every pin"


@pytest.mark.slow
def test_the_lock_installs_into_an_empty_venv(baked_default: Path, tmp_path: Path) -> None:
    """The whole lock, then the study as the ETL image installs it (`-c requirements.lock ".[etl]"`,
    the Dockerfile's command): pip finds nothing missing or conflicting, the versions are the lock's."""
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", python, "--disable-pip-version-check"]
    lock = baked_default / LOCK
    dockerfile = (baked_default / "Dockerfile").read_text()
    assert f'grep -v " @ " {LOCK} > /tmp/constraints.txt' in dockerfile
    assert '-c /tmp/constraints.txt "./[etl]"' in dockerfile
    run([*pip, "install", "--quiet", "--no-compile", "-r", lock], timeout=900)
    # labzarr as a study gets it where pyproject.toml says (an index or a git tag); here, this repository's
    run([*pip, "install", "--quiet", "--no-compile", "--no-deps", LIBRARY], timeout=900)
    run([*pip, "install", "--quiet", "--no-compile", "-c", lock, f"{baked_default}[etl]"], timeout=900)
    run([*pip, "check"])
    installed = {line.split("+")[0] for line in run([*pip, "freeze", "--all"]).stdout.splitlines()}
    assert set(pins(lock)) <= installed, set(pins(lock)) - installed
    package = study_package(baked_default)
    run([python, "-c", f"import torch, zarr, {package}.train.loop, {package}.etl.pipeline"])
