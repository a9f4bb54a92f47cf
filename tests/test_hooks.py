"""Bad answers are rejected with a message naming the field, the value and what is allowed,
and a rejected bake leaves nothing on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
from cookiecutter.exceptions import FailedHookException

from .conftest import bake

BAD_ANSWERS = [
    ({"project_slug": "1study"}, ["project_slug", "'1study'", "allowed"]),
    ({"project_slug": "my study"}, ["project_slug", "'my study'"]),
    ({"package_name": "my-pkg"}, ["package_name", "'my-pkg'", "identifier"]),
    ({"package_name": "json"}, ["package_name", "'json'", "standard-library"]),
    ({"package_name": "xarray"}, ["package_name", "'xarray'", "dependency"]),
    ({"package_name": "torch"}, ["package_name", "'torch'", "dependency"]),
    ({"project_slug": "zarr"}, ["project_slug", "'zarr'", "dependency"]),
    ({"package_name": "class"}, ["package_name", "keyword"]),
    ({"data_url": "ftp://data.example.edu/zarr"}, ["data_url", "ftp://data.example.edu/zarr", "http"]),
    ({"data_url": "data.example.edu"}, ["data_url", "http"]),
    ({"data_url": 'https://x.edu/"quoted"'}, ["data_url", "not allowed"]),
    ({"data_url": "https://me:secret@data.example.edu/"}, ["data_url", "credentials"]),
    ({"time_lookback": "0"}, ["time_lookback", "0", "1 to 3660"]),
    ({"time_lookback": "-5"}, ["time_lookback", "-5"]),
    ({"time_lookback": "99999"}, ["time_lookback", "99999"]),
    ({"time_lookback": "ten"}, ["time_lookback", "'ten'", "integer"]),
    ({"chunk_cells": "0"}, ["chunk_cells", "0"]),
    ({"chunk_cells": "ten"}, ["chunk_cells", "not an integer"]),
    ({"github_repo": "just-a-name"}, ["github_repo", "'just-a-name'", "owner/repo"]),
    ({"github_repo": "a/b/c"}, ["github_repo", "'a/b/c'"]),
    ({"variables": "soil moisture,swe"}, ["variables", "'soil moisture'"]),
    ({"variables": "sm,sm"}, ["variables", "repeats"]),
    ({"variables": "1st"}, ["variables", "'1st'"]),
    ({"dataset_name": "my-data"}, ["dataset_name", "'my-data'"]),
    ({"author_email": "nobody"}, ["author_email", "'nobody'"]),
]


@pytest.mark.parametrize(("answers", "expected"), BAD_ANSWERS, ids=[str(a) for a, _ in BAD_ANSWERS])
def test_bad_answer_is_rejected_and_leaves_nothing(
    answers: dict[str, str], expected: list[str], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    with pytest.raises(FailedHookException):
        bake(out, **answers)
    message = capfd.readouterr().err
    for piece in expected:
        assert piece in message, f"{piece!r} not in hook message:\n{message}"
    assert not any(out.iterdir()), f"left behind: {list(out.iterdir())}"


def test_code_injection_in_an_answer_is_only_data(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    evil = f'x"""; open("{marker}", "w"); """'
    with pytest.raises(FailedHookException):
        bake(tmp_path / "out", project_slug=evil, package_name="ok_name")
    assert "project_slug" in capfd.readouterr().err
    assert not marker.exists()
