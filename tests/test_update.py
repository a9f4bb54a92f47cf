"""Template updates: a study baked with cruft takes a changed answer (and later template
versions) with `cruft update`, keeping the owner's own changes."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest

from .conftest import TEMPLATE, require_tool, run

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.edu",
    "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.edu",
}  # fmt: skip
IGNORED = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", "demo-output")


def commit_all(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], cwd=repo)
    run(["git", "commit", "-q", "-m", message], cwd=repo, env=GIT_ENV)


@pytest.fixture
def template_repo(tmp_path: Path) -> Path:
    """The template's working tree as a git repository (cruft works from git)."""
    repo = tmp_path / "template"
    shutil.copytree(TEMPLATE, repo, ignore=IGNORED)
    run(["git", "init", "-q", "-b", "main"], cwd=repo)
    commit_all(repo, "template")
    return repo


@pytest.mark.slow
def test_change_an_answer_and_keep_own_edits(template_repo: Path, tmp_path: Path) -> None:
    cruft = require_tool("cruft")
    out = tmp_path / "out"
    run([cruft, "create", "--no-input", "--output-dir", out, template_repo])
    study = out / "columbia_drought_study"
    assert json.loads((study / ".cruft.json").read_text())["context"]["cookiecutter"]["auth"] == "token"
    run(["git", "init", "-q", "-b", "main"], cwd=study)
    commit_all(study, "baked")
    notes = study / "NOTES.md"
    notes.write_text("my own notes\n")
    with (study / "study.toml").open("a") as f:
        f.write("# my comment\n")
    commit_all(study, "own edits")

    run([cruft, "update", "--project-dir", study, "--skip-apply-ask", "--variables-to-update", '{"auth": "basic"}'])

    config = tomllib.loads((study / "study.toml").read_text())
    assert config["server"]["auth"] == "basic"
    assert "# my comment" in (study / "study.toml").read_text()
    assert notes.read_text() == "my own notes\n"
    assert json.loads((study / ".cruft.json").read_text())["context"]["cookiecutter"]["auth"] == "basic"
    assert "DATA_USER" in (study / "README.md").read_text()
