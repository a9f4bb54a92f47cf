"""Shared fixtures of the study's tests: the study config and tiny synthetic inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
from labzarr.train.threads import prepare_threads

from ..config import Config, load_config
from ..synthetic import SIZES, write_synthetic

prepare_threads()  # before a test imports torch: its idle OpenMP threads sleep, as in the CLI

STUDY_ROOT = Path(__file__).resolve().parents[3]


def study_toml(path: Path, **values: object) -> Path:
    """A copy of the shipped study.toml at `path` with the given keys' values replaced
    (keys are unique across sections; values are written as TOML literals via repr)."""
    lines = (STUDY_ROOT / "study.toml").read_text().splitlines()
    for name, value in values.items():
        literal = f'"{value}"' if isinstance(value, str) else repr(value)
        matches = [i for i, line in enumerate(lines) if line.startswith(f"{name} = ")]
        assert len(matches) == 1, f"{name} is not one key of study.toml"
        lines[matches[0]] = f"{name} = {literal}"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(autouse=True)
def no_ambient_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests decide credentials and URLs themselves, whatever the developer has exported."""
    for name in ("DATA_URL", "DATA_TOKEN", "DATA_USER", "DATA_PASSWORD", "STUDY_CONFIG"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def study_config() -> Config:
    """The study's own study.toml, as shipped."""
    return load_config(STUDY_ROOT / "study.toml")


def tiny(cfg: Config, folder: Path) -> Config:
    """`cfg` pointed at `folder`, with a short lookback and small chunks."""
    return cfg.override(
        {
            "data.raw_dir": str(folder / "raw"),
            "data.zarr_dir": str(folder / "zarr"),
            "etl.time_lookback": 20,
            "etl.split_gap": 20,
            "etl.chunk_cells": 4,
            "train.out_dir": str(folder / "results"),
            "train.cache_dir": str(folder / "cache"),
        }
    )


@pytest.fixture
def tiny_config(study_config: Config, tmp_path: Path) -> Config:
    """The study config pointed at a temporary folder, with a short lookback and small chunks."""
    return tiny(study_config, tmp_path)


@pytest.fixture
def tiny_inputs(tiny_config: Config) -> Config:
    """`tiny_config` with tiny synthetic inputs written to its raw folder."""
    write_synthetic(
        tiny_config.path(tiny_config.data.raw_dir), tiny_config.data.variables, SIZES["tiny"],
        lookback=tiny_config.etl.time_lookback,
    )  # fmt: skip
    return tiny_config
