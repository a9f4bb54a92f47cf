"""Shared fixtures of the template tests: bake, install a baked study, run commands.

Optional tools (nginx, docker-compose, linters) skip their tests on a developer
machine that lacks them, and fail in CI (CI=true or STUDY_REQUIRE_ALL=1), so a
missing tool can never pass as a green run.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from bakery import LIBRARY, TEMPLATE, bake, install_study, run
from servers import study_package

__all__ = ["LIBRARY", "LOCAL_STATE", "TEMPLATE", "bake", "install_study", "require_tool", "run", "study_package"]

OPTIONS: dict[str, Any] = json.loads((TEMPLATE / "cookiecutter.json").read_text())
REQUIRE_ALL = os.environ.get("CI", "").lower() == "true" or os.environ.get("STUDY_REQUIRE_ALL") == "1"
# The template working tree's local state (git-ignored), left out when a test copies the template.
LOCAL_STATE = shutil.ignore_patterns(
    ".git", ".venv", ".cache", "__pycache__", ".pytest_cache", ".ruff_cache", "demo-output"
)
# Small settings for baked studies whose pipeline actually runs in tests.
FAST_CONTEXT = {"time_lookback": "30", "chunk_cells": "8"}


def require_tool(name: str) -> str:
    """Path of a command-line tool; skip without it locally, fail without it in CI."""
    bin_dir = Path(sys.executable).parent
    path = shutil.which(name, path=os.pathsep.join([str(bin_dir), "/usr/sbin", "/sbin", os.environ["PATH"]]))
    if path:
        return path
    message = f"{name!r} is not installed (python3 tasks.py setup installs it)"
    if REQUIRE_ALL:
        pytest.fail(f"{message}; it is required in CI")
    pytest.skip(message)


@pytest.fixture(scope="session")
def baked_default(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The study baked with every default answer (not to be modified by tests)."""
    return bake(tmp_path_factory.mktemp("default"))


@pytest.fixture(scope="session")
def fast_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A study baked with a short lookback and small chunks and installed: (folder, python).
    Tests that run its pipeline copy or write into their own tmp folders."""
    where = tmp_path_factory.mktemp("fast")
    study = bake(where / "bake", **FAST_CONTEXT)
    return study, install_study(study, where)


@pytest.fixture(scope="session")
def fast_store(fast_study: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A working folder with the fast study's config, tiny synthetic inputs and the ETL's
    store: (study.toml copy, data/zarr folder). Run the study's commands with
    `--config <that study.toml>`; read-only for tests."""
    study, python = fast_study
    work = tmp_path_factory.mktemp("store")
    config = work / "study.toml"
    shutil.copy(study / "study.toml", config)
    package = study_package(study)
    run([python, "-m", package, "--config", config, "synth", "--size", "tiny"], cwd=work)
    run([python, "-m", package, "--config", config, "etl"], cwd=work, timeout=300)
    return config, work / "data" / "zarr"


# The longest test files, first (in this order).
FIRST = ("test_study_suite.py", "test_study_matrix.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first: the baked study's own suite (about 4 minutes here) and the answer
    matrix's two studies then run on the two `-n 2 --dist loadfile` workers beside each other,
    and the other files fill in after them, instead of one starting after most of the others.
    (`--no-loadscope-reorder` in pyproject.toml keeps this order: by default xdist sends the
    files with the most tests first.)"""
    items.sort(key=lambda item: FIRST.index(item.path.name) if item.path.name in FIRST else len(FIRST))
