"""The README's bake instructions in a clean environment: a venv holding only cookiecutter (or only
cruft) and what they depend on, from PyPI. The hooks run in that venv's Python, so a hook that
needed anything of the study's (numpy, ...) fails here. Installing from PyPI is required, never
skipped: without it these tests fail."""

from __future__ import annotations

import json
import os
import shutil
import sys
import venv
from pathlib import Path

import pytest

from readme_sections import SECTIONS, read

from .conftest import LOCAL_STATE, TEMPLATE, run
from .test_update import GIT_ENV, commit_all

COOKIECUTTER = "cookiecutter==2.7.1"
CRUFT = "cruft==2.16.0"
STUDY_FILES = ["README.md", "pyproject.toml", "study.toml", ".cookiecutter.json", "src/columbia_drought_study/cli.py"]


def tool_venv(where: Path, requirement: str) -> Path:
    """A venv (without pip) holding `requirement` and its dependencies only; returns its bin/."""
    venv.EnvBuilder(with_pip=False).create(where)
    python = where / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--disable-pip-version-check",
         "--no-compile", requirement], timeout=300)  # fmt: skip
    listed = run([sys.executable, "-m", "pip", "--python", python, "list", "--format", "json"]).stdout
    names = {p["name"].lower() for p in json.loads(listed)}
    assert not names & {"numpy", "xarray", "torch", "zarr"}, names
    return where / "bin"


def clean_env(bin_dir: Path) -> dict[str, str]:
    """Only the clean venv's tools and the system's (git) on PATH; nothing of the dev venv."""
    path = os.pathsep.join([str(bin_dir), *(p for p in os.environ["PATH"].split(os.pathsep)
                                            if Path(sys.executable).parent != Path(p))])  # fmt: skip
    return {"PATH": path, "PYTHONPATH": "", "VIRTUAL_ENV": str(bin_dir.parent), "PYTHONDONTWRITEBYTECODE": ""}


@pytest.fixture(scope="session")
def cookiecutter_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tool_venv(tmp_path_factory.mktemp("cookiecutter-venv") / "venv", COOKIECUTTER)


@pytest.fixture(scope="session")
def cruft_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tool_venv(tmp_path_factory.mktemp("cruft-venv") / "venv", CRUFT)


def check_study(study: Path, output: str) -> None:
    for rel in STUDY_FILES:
        assert (study / rel).is_file(), rel
    sections = read((study / "README.md").read_text(encoding="utf-8"))
    assert set(sections) == set(SECTIONS) and all(s.startswith("| ") for s in sections.values()), sections
    assert "`train`" in sections["commands"] and "`etl.time_lookback`" in sections["config-reference"]
    assert not list(study.rglob("__pycache__")), "the bake left bytecode in the study"
    assert output.count("Next steps:") == 1 and "cd columbia_drought_study" in output, output


@pytest.mark.slow
def test_bake_with_only_cookiecutter(cookiecutter_only: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run(
        [cookiecutter_only / "cookiecutter", "--no-input", "-o", out, TEMPLATE], env=clean_env(cookiecutter_only)
    )
    check_study(out / "columbia_drought_study", result.stdout)


@pytest.mark.slow
def test_cruft_create_and_update_with_only_cruft(cruft_only: Path, tmp_path: Path) -> None:
    """`cruft create`, then `cruft update` with a changed answer: update renders the template
    twice in scratch folders, which must print no "Study created" banner."""
    template = tmp_path / "template"
    shutil.copytree(TEMPLATE, template, ignore=LOCAL_STATE)
    run(["git", "init", "-q", "-b", "main"], cwd=template)
    commit_all(template, "template")
    env = {**clean_env(cruft_only), **GIT_ENV}
    out = tmp_path / "out"
    created = run([cruft_only / "cruft", "create", "--no-input", "--output-dir", out, template], env=env)
    study = out / "columbia_drought_study"
    check_study(study, created.stdout)
    run(["git", "init", "-q", "-b", "main"], cwd=study)
    commit_all(study, "baked")

    updated = run([cruft_only / "cruft", "update", "--project-dir", study, "--skip-apply-ask",
                   "--variables-to-update", '{"auth": "basic"}'], env=env)  # fmt: skip
    assert "Next steps" not in updated.stdout and "Study created" not in updated.stdout, updated.stdout
    assert json.loads((study / ".cruft.json").read_text())["context"]["cookiecutter"]["auth"] == "basic"
    assert not list(study.rglob("__pycache__"))
