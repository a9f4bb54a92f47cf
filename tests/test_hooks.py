"""Bad answers are rejected with a message naming the field, the value and what is allowed,
and a rejected bake leaves nothing on disk."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from cookiecutter.exceptions import FailedHookException

from .conftest import TEMPLATE, bake, require_tool, run

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


@pytest.mark.parametrize("hook", ["pre_gen_project.py", "post_gen_project.py"])
def test_hooks_use_only_the_standard_library(hook: str) -> None:
    """cookiecutter and cruft run the hooks with their own Python, which has none of the study's
    dependencies (the study's package is not importable there either)."""
    tree = ast.parse((TEMPLATE / "hooks" / hook).read_text())
    modules = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names}  # fmt: skip
    modules |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert modules <= sys.stdlib_module_names | {"__future__"}, modules - sys.stdlib_module_names
    assert "importlib" not in modules and "sys.path" not in ast.unparse(tree), "imports nothing of the study"


def test_cli_shows_the_message_and_says_the_traceback_is_cookiecutters(tmp_path: Path) -> None:
    """What a student sees: the problem first, then a line saying that the traceback cookiecutter
    adds is not the problem."""
    result = run([require_tool("cookiecutter"), "--no-input", "-o", tmp_path, TEMPLATE, "package_name=json"],
                 check=False)  # fmt: skip
    assert result.returncode == 1
    message = result.stderr
    problem = message.find("package_name: 'json' shadows the standard-library module")
    assert 0 <= problem < message.find("Nothing was generated."), message
    assert message.rstrip().endswith("only says that this check stopped the bake."), message
    assert not any(tmp_path.iterdir())


@pytest.mark.xfail(
    strict=True,
    reason="cookiecutter 2.7.1 logs every failed hook with logger.exception (hooks.run_hook_from_repo_dir), "
    "whatever the hook does: a hook cannot suppress the traceback. This passes once cookiecutter stops.",
)
def test_cli_shows_no_traceback(tmp_path: Path) -> None:
    result = run([require_tool("cookiecutter"), "--no-input", "-o", tmp_path, TEMPLATE, "package_name=json"],
                 check=False)  # fmt: skip
    assert "package_name" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
