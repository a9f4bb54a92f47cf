"""Slow tier: studies baked with other answers pass their own suites, the scale-out tests included.

The default answers' study runs its suite in test_study_suite.py. One more bake sets every
answer that changes a code path away from the default (below). The time step is no answer
(etl.time_step in study.toml): every study's suite runs a monthly study through ETL, loader and
training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .conftest import FAST_CONTEXT, REQUIRE_ALL, bake, install_study, run, study_package

# One more bake, with every answer that changes a code path set away from the default: Zarr v3 (the
# store's keys and consolidated metadata, on S3 and dask too: the scale-out tests that write the
# format run here), one variable (the features axis at its edge), basic auth (the serving config and
# the loader's credentials). The third auth mode, none, is served by real nginx in test_nginx.py;
# the default bake (Zarr v2, two variables, token) runs in test_study_suite.py. A second matrix bake
# (Zarr v2, one variable, no auth) cost two minutes of the suite's ten and is folded into this one.
SCALEOUT = {"zarr3-one-variable-basic-auth"}
# What no answer reaches is left to the default bake's run: the input checks name their own two
# variables whatever the study's (etl_support.NAMED_VARIABLES), and the misalignment test is about the
# synthetic science. Of the scale-out tests, the ones that write the format or read it from a bucket
# run here; the failure paths of dask and S3 (a killed worker, a refused key) are format-blind.
ANSWER_BLIND = ["--ignore", "src/{package}/tests/test_etl_inputs.py", "-k", "not shifted_by_a_month"]
SCALEOUT_FORMAT = "same_chunks or reads_the_bucket"
SCALEOUT_FORMAT_TESTS = 3  # dask and S3 write the same chunks; training reads the bucket (a rename shows)
MATRIX: dict[str, dict[str, Any]] = {
    "zarr3-one-variable-basic-auth": {
        "zarr_format": 3,
        "variables": "soil_moisture",
        "auth": "basic",
        "license": "BSD-3-Clause",
    },
}


def passed(result: Any, *, skips_allowed: bool) -> None:
    """The run's summary line (e.g. `175 passed, 8 deselected in 98.21s`) has passes only."""
    summary = result.stdout.strip().splitlines()[-1]
    counts = {word.rstrip(",") for word in summary.split()}
    assert "passed" in counts and not counts & {"failed", "error", "errors"}, result.stdout[-3000:]
    if not skips_allowed:
        assert "skipped" not in counts, result.stdout[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("name", MATRIX)
def test_a_study_of_other_answers_passes_its_own_tests(name: str, tmp_path: Path) -> None:
    study = bake(tmp_path / "bake", **FAST_CONTEXT, **MATRIX[name])
    python = install_study(study, tmp_path)
    pytest_cmd = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    blind = [arg.format(package=study_package(study)) for arg in ANSWER_BLIND]
    passed(run([*pytest_cmd, *blind], cwd=study, timeout=900), skips_allowed=not REQUIRE_ALL)
    if name in SCALEOUT:  # the ETL on dask and S3 via SeaweedFS write the store's format; torchrun
        # reads the store as the loader does, format-blind, and runs on the default bake only (39 s)
        scaleout = [*pytest_cmd, "-m", "scaleout", "-k", SCALEOUT_FORMAT]
        result = run(scaleout, cwd=study, timeout=900)
        passed(result, skips_allowed=False)
        assert f"{SCALEOUT_FORMAT_TESTS} passed" in result.stdout.strip().splitlines()[-1], result.stdout[-3000:]
