"""Fast tier: bake the template with every option and check the generated files statically."""

from __future__ import annotations

import ast
import json
import re
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml

from .conftest import OPTIONS, TEMPLATE, bake, require_tool, run

CHOICE_OPTIONS = {
    name: values for name, values in OPTIONS.items() if isinstance(values, list) and not name.startswith("_")
}
N_BAKES = max(len(values) for values in CHOICE_OPTIONS.values())
# Bake i takes choice i (mod its count) of every option, so every choice is baked at least once.
MATRIX = [{name: values[i % len(values)] for name, values in CHOICE_OPTIONS.items()} for i in range(N_BAKES)]
UNRENDERED = re.compile(r"(?<!\$)\{\{|\{%|cookiecutter\.")
EXPECTED = [
    "README.md",
    "pyproject.toml",
    "study.toml",
    ".gitignore",
    ".pre-commit-config.yaml",
    ".github/workflows/ci.yml",
    "data/raw/.gitkeep",
    "data/zarr/.gitkeep",
]
PACKAGE_FILES = ["__init__.py", "__main__.py", "cli.py", "config.py", "errors.py", "synthetic.py", "tests/conftest.py"]


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
        if path.suffix in {".yaml", ".yml"}:
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


def test_package_python_has_no_jinja() -> None:
    source = TEMPLATE / "{{cookiecutter.project_slug}}" / "src"
    for path in source.rglob("*.py"):
        text = path.read_text()
        assert "{{" not in text and "{%" not in text, f"Jinja in generated Python: {path}"


def test_linters_pass_on_the_baked_study(matrix_bake: tuple[dict, Path]) -> None:
    _, study = matrix_bake
    ruff = require_tool("ruff")
    run([ruff, "check", "--no-cache", "."], cwd=study)
    run([ruff, "format", "--check", "--no-cache", "."], cwd=study)
    run([require_tool("pre-commit"), "validate-config", ".pre-commit-config.yaml"], cwd=study)
    run([require_tool("actionlint"), "-no-color", ".github/workflows/ci.yml"], cwd=study)


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
