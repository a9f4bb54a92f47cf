"""Template updates: a study baked with cruft takes a changed answer (and later template
versions) with `cruft update`, keeping the owner's own changes; a study baked with plain
cookiecutter links to the template with the answers it recorded (.cookiecutter.json), never
re-typed, and then updates the same way."""

from __future__ import annotations

import json
import re
import shutil
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

import pytest

from .conftest import LIBRARY, LOCAL_STATE, TEMPLATE, require_tool, run

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


def _wheel(library: Path, out: Path) -> Path:
    """A wheel of `library` (its own folder), built offline with the dev environment's hatchling."""
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", out, library])
    return next(out.glob("labzarr-*.whl"))


@pytest.mark.slow
def test_a_library_release_reaches_a_study_by_a_version_bump(fast_study: tuple[Path, Path], tmp_path: Path) -> None:
    """The update path of the study README: a newer labzarr installed within the study's range,
    and the study (its ETL through the library, its training package's imports) runs on it; a
    release outside the range is refused by pip."""
    study, _ = fast_study
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # the dev environment's packages (torch, xarray, ...) but not the template's library source:
    # this venv's own labzarr, installed from wheels, is the one imported
    (site / "_template_dev_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps"]

    def release(version: str) -> Path:
        copy = tmp_path / f"labzarr-{version}"
        shutil.copytree(LIBRARY, copy, ignore=LOCAL_STATE)
        pyproject = copy / "pyproject.toml"
        pyproject.write_text(re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', pyproject.read_text()))
        return _wheel(copy, tmp_path / f"wheels-{version}")

    run([*pip, release("1.1.0")])
    run([*pip, "--no-build-isolation", "-e", study])
    package = study.name
    work = tmp_path / "work"
    work.mkdir()
    config = work / "study.toml"
    shutil.copy(study / "study.toml", config)
    probe = "import labzarr, importlib; importlib.import_module(f'{}.train.loop'); print(labzarr.__version__)"
    assert run([python, "-c", probe.replace("{}", package)]).stdout.split()[-1] == "1.1.0"

    run([*pip, release("1.2.0")])  # the bump: `pip install -U` within labzarr>=1.1,<2
    assert run([python, "-c", probe.replace("{}", package)]).stdout.split()[-1] == "1.2.0"
    run([python, "-m", package, "--config", config, "synth", "--size", "tiny"], cwd=work)
    run([python, "-m", package, "--config", config, "etl"], cwd=work, timeout=300)
    stored = json.loads((work / "data" / "zarr" / "columbia_gridcells.zarr" / ".zattrs").read_text())
    assert stored["provenance"]["labzarr_version"] == "1.2.0", "the store records the library that wrote it"

    refused = run([sys.executable, "-m", "pip", "--python", python, "install", "--dry-run", "--no-index",
                   "--no-build-isolation",
                   "--find-links", release("2.0.0").parent, f"{study}", "labzarr==2.0.0"],
                  check=False)  # fmt: skip
    assert refused.returncode != 0 and "and labzarr==2.0.0 because these package versions have conflicting" in (
        refused.stderr
    ), "2.0 is outside the range"
