"""Slow tier: install the baked study as a user would and run its own test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import run


@pytest.mark.slow
def test_baked_study_installs_and_its_tests_pass(fast_study: tuple[Path, Path]) -> None:
    study, python = fast_study
    command = python.parent / study.name.replace("-", "_")
    assert "synth" in run([command, "--help"], cwd=study).stdout, "console script installed"
    result = run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=study, timeout=900)
    assert " passed" in result.stdout and " failed" not in result.stdout
    # the scale-out tests (the study's addopts leave them out of the run above) run here, as in the
    # study's CI workflow: its ETL on dask, stores on S3, training with torchrun
    result = run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "scaleout"], cwd=study, timeout=900)
    assert " passed" in result.stdout and " failed" not in result.stdout and " skipped" not in result.stdout
