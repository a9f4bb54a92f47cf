"""Template updates: a study baked with cruft takes a changed answer (and later template
versions) with `cruft update`, keeping the owner's own changes; a study baked with plain
cookiecutter links to the template with the answers it recorded (.cookiecutter.json), never
re-typed, and then updates the same way."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest

from .conftest import LOCAL_STATE, TEMPLATE, require_tool, run

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.edu",
    "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.edu",
}  # fmt: skip


def commit_all(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], cwd=repo)
    run(["git", "commit", "-q", "-m", message], cwd=repo, env=GIT_ENV)


@pytest.fixture
def template_repo(tmp_path: Path) -> Path:
    """The template's working tree as a git repository (cruft works from git)."""
    repo = tmp_path / "template"
    shutil.copytree(TEMPLATE, repo, ignore=LOCAL_STATE)
    run(["git", "init", "-q", "-b", "main"], cwd=repo)
    commit_all(repo, "template")
    return repo


@pytest.mark.slow
def test_change_an_answer_and_keep_own_edits(template_repo: Path, tmp_path: Path) -> None:
    cruft = require_tool("cruft")
    out = tmp_path / "out"
    created = run([cruft, "create", "--no-input", "--output-dir", out, template_repo])
    assert created.stdout.count("Next steps:") == 1, created.stdout
    study = out / "columbia_drought_study"
    assert json.loads((study / ".cruft.json").read_text())["context"]["cookiecutter"]["auth"] == "token"
    run(["git", "init", "-q", "-b", "main"], cwd=study)
    commit_all(study, "baked")
    notes = study / "NOTES.md"
    notes.write_text("my own notes\n")
    with (study / "study.toml").open("a") as f:
        f.write("# my comment\n")
    commit_all(study, "own edits")

    updated = run(
        [cruft, "update", "--project-dir", study, "--skip-apply-ask", "--variables-to-update", '{"auth": "basic"}']
    )
    # cruft renders the old and the new template version in scratch folders: no "Study created" banner.
    assert "Study created" not in updated.stdout and "Next steps" not in updated.stdout, updated.stdout

    config = tomllib.loads((study / "study.toml").read_text())
    assert config["server"]["auth"] == "basic"
    assert "# my comment" in (study / "study.toml").read_text()
    assert notes.read_text() == "my own notes\n"
    assert json.loads((study / ".cruft.json").read_text())["context"]["cookiecutter"]["auth"] == "basic"
    assert "DATA_USER" in (study / "README.md").read_text()


@pytest.mark.slow
def test_plain_cookiecutter_study_links_with_its_recorded_answers(template_repo: Path, tmp_path: Path) -> None:
    cruft = require_tool("cruft")
    out = tmp_path / "out"
    run([require_tool("cookiecutter"), "--no-input", "-o", out, template_repo, "auth=basic", "time_lookback=90"])
    study = out / "columbia_drought_study"
    recorded = (study / ".cookiecutter.json").read_text()
    answers = json.loads(recorded)
    assert answers["auth"] == "basic" and answers["time_lookback"] == "90"
    assert not [key for key in answers if key.startswith("_")], "answers only: no paths, no prompts"
    run(["git", "init", "-q", "-b", "main"], cwd=study)
    commit_all(study, "baked with cookiecutter")
    (study / "NOTES.md").write_text("my own notes\n")
    commit_all(study, "own edits")

    # The README's update path: link once with the recorded answers, then `cruft update`.
    run([cruft, "link", "--no-input", "--project-dir", study, "--extra-context", recorded, template_repo])
    assert json.loads((study / ".cruft.json").read_text())["context"]["cookiecutter"] == {
        **json.loads((study / ".cruft.json").read_text())["context"]["cookiecutter"],
        **answers,
    }
    commit_all(study, "link to the template")
    readme = template_repo / "{{cookiecutter.project_slug}}" / "storage" / "README.md"
    readme.write_text(readme.read_text() + "\nA section a later template version adds.\n")
    commit_all(template_repo, "template: a new section")
    updated = run([cruft, "update", "--project-dir", study, "--skip-apply-ask"])
    assert "Next steps" not in updated.stdout, updated.stdout

    assert "A section a later template version adds." in (study / "storage" / "README.md").read_text()
    config = tomllib.loads((study / "study.toml").read_text())
    assert config["server"]["auth"] == "basic" and config["etl"]["time_lookback"] == 90, "answers kept"
    assert (study / "NOTES.md").read_text() == "my own notes\n"
