"""Fast tier: bake the template with every option and check the generated files statically."""

from __future__ import annotations

import ast
import json
import re
import shutil
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml

from .conftest import OPTIONS, TEMPLATE, bake, require_tool, run
from .precommit_offline import run_hooks

CHOICE_OPTIONS = {
    name: values for name, values in OPTIONS.items() if isinstance(values, list) and not name.startswith("_")
}
N_BAKES = max(len(values) for values in CHOICE_OPTIONS.values())
# Bake i takes choice i (mod its count) of every option, so every choice is baked at least once.
MATRIX = [{name: values[i % len(values)] for name, values in CHOICE_OPTIONS.items()} for i in range(N_BAKES)]
NEWEST_PYTHON = "3.14"  # the study's CI tests its lowest supported Python and this one
UNRENDERED = re.compile(r"(?<!\$)\{\{|\{%|(?<![.\w])cookiecutter\.")  # not .cookiecutter.json
EXPECTED = [
    "README.md",
    "CITATION.cff",
    "pyproject.toml",
    "study.toml",
    ".gitignore",
    ".pre-commit-config.yaml",
    ".github/workflows/ci.yml",
    ".github/dependabot.yml",
    ".cookiecutter.json",
    "requirements.lock",
    "data/raw/.gitkeep",
    "data/zarr/.gitkeep",
]
PACKAGE_FILES = [
    "__init__.py",
    "__main__.py",
    "cli.py",
    "config.py",
    "synthetic.py",
    "train/data.py",
    "tests/conftest.py",
]


def text_files(study: Path) -> list[Path]:
    return [p for p in study.rglob("*") if p.is_file() and p.suffix not in {".png", ".nc"}]


@pytest.fixture(scope="module", params=range(N_BAKES), ids=lambda i: "-".join(map(str, MATRIX[i].values())))
def matrix_bake(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    answers = MATRIX[request.param]
    return answers, bake(tmp_path_factory.mktemp("matrix"), **answers)


def test_matrix_covers_every_choice() -> None:
    for name, values in CHOICE_OPTIONS.items():
        assert {bake_answers[name] for bake_answers in MATRIX} == set(values)


def test_defaults_give_a_complete_study(baked_default: Path) -> None:
    assert baked_default.name == "columbia_drought_study"
    for rel in EXPECTED:
        assert (baked_default / rel).is_file(), rel
    package = baked_default / "src" / "columbia_drought_study"
    for rel in PACKAGE_FILES:
        assert (package / rel).is_file(), rel
    config = tomllib.loads((baked_default / "study.toml").read_text())
    assert config["study"]["dataset_name"] == "columbia_gridcells"
    assert config["data"]["variables"] == ["soil_moisture", "snow_water_equivalent"]
    assert config["etl"]["time_lookback"] == 180
    assert config["etl"]["chunk_cells"] == 64
    assert config["etl"]["zarr_format"] == 2, "the default must be readable by zarr-python 2 and 3"
    assert (baked_default / "LICENSE").read_text().startswith("MIT License")


def test_every_file_rendered_and_parses(matrix_bake: tuple[dict, Path]) -> None:
    answers, study = matrix_bake
    for path in text_files(study):
        text = path.read_text()
        assert not UNRENDERED.search(text), f"unrendered Jinja in {path.relative_to(study)}"
        assert str(TEMPLATE) not in text and str(study.parent) not in text, f"absolute path in {path}"
        if path.suffix in {".yaml", ".yml", ".cff"}:
            yaml.safe_load(text)
        elif path.suffix == ".toml":
            tomllib.loads(text)
        elif path.suffix == ".json":
            json.loads(text)
        elif path.suffix == ".ipynb":
            nbformat.validate(nbformat.reads(text, as_version=4))
        elif path.suffix == ".py":
            ast.parse(text)
    assert not [p for p in study.rglob("*") if p.is_file() and p.stat().st_size == 0 and p.name != ".gitkeep"
                and p.name not in {"__init__.py", "py.typed"}], "empty Jinja artefacts left"  # fmt: skip
    config = tomllib.loads((study / "study.toml").read_text())
    assert config["server"]["auth"] == answers["auth"]
    assert config["etl"]["zarr_format"] == int(answers["zarr_format"])
    assert (study / "LICENSE").exists() == (answers["license"] != "none")
    pyproject = tomllib.loads((study / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == f">={answers['python_min']}"


CFF_REQUIRED = {"cff-version", "message", "title", "authors"}


def check_cff(citation: dict) -> None:
    """The keys and types Citation File Format 1.2.0 requires."""
    assert set(citation) >= CFF_REQUIRED, CFF_REQUIRED - set(citation)
    assert citation["cff-version"] == "1.2.0"
    assert isinstance(citation["message"], str) and isinstance(citation["title"], str)
    assert citation["authors"] and all(isinstance(a, dict) for a in citation["authors"])
    for author in citation["authors"]:
        assert author.get("name") or author.get("family-names"), author
    if "version" in citation:
        assert isinstance(citation["version"], str), "a string: YAML would read 1.10 as 1.1"


def test_citation_is_filled_from_the_answers(matrix_bake: tuple[dict, Path]) -> None:
    answers, study = matrix_bake
    citation = yaml.safe_load((study / "CITATION.cff").read_text())
    check_cff(citation)
    pyproject = tomllib.loads((study / "pyproject.toml").read_text())["project"]
    assert citation["title"] == OPTIONS["project_name"] and citation["abstract"] == OPTIONS["description"]
    assert citation["version"] == pyproject["version"], "the study's one version"
    assert citation["authors"] == [{"given-names": "A.", "family-names": "Student", "email": OPTIONS["author_email"]}]
    assert citation.get("license", "none") == answers["license"]
    assert citation["repository-code"] == "https://github.com/my-lab/columbia-drought-study"


def test_citation_of_a_one_word_author_is_an_entity(tmp_path: Path) -> None:
    study = bake(tmp_path, author_name="Hydrolab", description='Snow "drought" {x}: a test', license="none")
    citation = yaml.safe_load((study / "CITATION.cff").read_text())
    check_cff(citation)
    assert citation["authors"] == [{"name": "Hydrolab", "email": OPTIONS["author_email"]}]
    assert citation["abstract"] == 'Snow "drought" {x}: a test' and "license" not in citation


def test_the_template_has_a_citation_file() -> None:
    citation = yaml.safe_load((TEMPLATE / "CITATION.cff").read_text())
    check_cff(citation)
    assert "template" in citation["title"]


def test_package_python_has_no_jinja() -> None:
    source = TEMPLATE / "{{cookiecutter.project_slug}}" / "src"
    for path in source.rglob("*.py"):
        text = path.read_text()
        assert "{{" not in text and "{%" not in text, f"Jinja in generated Python: {path}"


def first_commit(study: Path, where: Path) -> Path:
    """A copy of `study` as its owner's first commit stages it: `git init && git add -A`."""
    repo = where / study.name
    shutil.copytree(study, repo)
    run(["git", "init", "-q"], cwd=repo)
    run(["git", "add", "-A"], cwd=repo)
    return repo


def test_first_pre_commit_run_passes_and_rewrites_nothing(matrix_bake: tuple[dict, Path], tmp_path: Path) -> None:
    """The study's own hooks (ruff, nbstripout, pre-commit-hooks, codespell, zizmor), run by the real
    pre-commit at the configured versions, accept the baked study as it is."""
    _, study = matrix_bake
    repo = first_commit(study, tmp_path)
    result = run_hooks(repo, repo / ".pre-commit-config.yaml", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert run(["git", "diff", "--name-only"], cwd=repo).stdout == "", "a hook rewrote a file"
    assert "Passed" in result.stdout and "ruff-check" in result.stdout and "nbstripout" in result.stdout


def test_the_hooks_do_check(baked_default: Path, tmp_path: Path) -> None:
    """The same run fails on what the hooks exist for: output left in the notebook, a line the
    formatter would change, trailing spaces."""
    repo = first_commit(baked_default, tmp_path)
    notebook = repo / "notebooks" / "colab_bootstrap.ipynb"
    nb = nbformat.read(notebook, as_version=4)
    code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    nb.cells[code].outputs = [nbformat.v4.new_output("stream", text="an output\n")]
    nbformat.write(nb, notebook)
    (repo / "src" / "sloppy.py").write_text("x   =  1\n")
    with (repo / "README.md").open("a") as readme:
        readme.write("A line with trailing spaces.   \n")
    run(["git", "add", "-A"], cwd=repo)
    result = run_hooks(repo, repo / ".pre-commit-config.yaml", tmp_path)
    assert result.returncode != 0
    for hook in ("nbstripout", "ruff-format", "trailing-whitespace"):
        assert re.search(rf"^{hook}\.+Failed$", result.stdout, re.MULTILINE), (hook, result.stdout)
    assert not nbformat.read(notebook, as_version=4).cells[code].outputs, "nbstripout stripped it"


def test_workflow_is_clean_for_actionlint_and_zizmor(matrix_bake: tuple[dict, Path]) -> None:
    _, study = matrix_bake
    run([require_tool("actionlint"), "-no-color", ".github/workflows/ci.yml"], cwd=study)
    result = run([require_tool("zizmor"), "--offline", "--no-progress", "--persona", "pedantic", ".github"],
                 cwd=study, check=False)  # fmt: skip
    assert result.returncode == 0 and "No findings" in result.stdout, result.stdout + result.stderr


def test_ci_lints_with_pre_commit_and_tests_lowest_and_newest_python(matrix_bake: tuple[dict, Path]) -> None:
    answers, study = matrix_bake
    ci = yaml.safe_load((study / ".github" / "workflows" / "ci.yml").read_text())
    lint = "\n".join(step.get("run", "") for step in ci["jobs"]["lint"]["steps"])
    assert "pre-commit run --all-files" in lint and "ruff" not in lint, "tool versions come from pre-commit only"
    pythons = [entry["python-version"] for entry in ci["jobs"]["test"]["strategy"]["matrix"]["include"]]
    assert pythons[0] == answers["python_min"] and pythons[-1] == NEWEST_PYTHON
    assert "workflow_dispatch" in ci[True] and ci["concurrency"]["cancel-in-progress"] is True


def test_sp_repo_review_passes_with_recorded_exceptions(matrix_bake: tuple[dict, Path]) -> None:
    """The Scientific Python development guide's checks: all pass, or are skipped with a reason
    under [tool.repo-review.ignore] in the study's pyproject.toml."""
    _, study = matrix_bake
    ignored = tomllib.loads((study / "pyproject.toml").read_text())["tool"]["repo-review"]["ignore"]
    assert isinstance(ignored, dict) and all(isinstance(r, str) and len(r) > 20 for r in ignored.values())
    result = run([require_tool("repo-review"), "--format", "json", "."], cwd=study, check=False)
    checks = json.loads(result.stdout)["checks"]
    failed = {name: c["err_msg"] for name, c in checks.items() if c["result"] is False}
    assert not failed and result.returncode == 0, failed
    skipped_by_us = {name for name, c in checks.items() if c["result"] is None and c["skip_reason"] in ignored.values()}
    assert skipped_by_us == set(ignored), "every recorded exception is still needed"


def test_answers_with_quotes_and_braces_are_data_not_code(tmp_path: Path) -> None:
    study = bake(
        tmp_path,
        project_name='O\'Brien "Lab" Study',
        project_slug="obrien_lab",
        description='Tricky "quotes", back\\slash and {braces}',
        author_name='Ann "Nan" O\'Hara',
        variables="precip, soil_moisture ,snow_depth",
    )
    pyproject = tomllib.loads((study / "pyproject.toml").read_text())
    assert pyproject["project"]["description"] == 'Tricky "quotes", back\\slash and {braces}'
    assert pyproject["project"]["authors"][0]["name"] == 'Ann "Nan" O\'Hara'
    config = tomllib.loads((study / "study.toml").read_text())
    assert config["study"]["name"] == 'O\'Brien "Lab" Study'
    assert config["data"]["variables"] == ["precip", "soil_moisture", "snow_depth"]


def test_post_gen_prints_next_steps(tmp_path: Path) -> None:
    result = run([require_tool("cookiecutter"), "--no-input", "-o", tmp_path, TEMPLATE])
    assert "Next steps" in result.stdout and "columbia_drought_study synth" in result.stdout
