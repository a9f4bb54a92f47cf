"""The template's own tooling: lint-clean, valid pre-commit config, CI calls the README's command."""

from __future__ import annotations

import re

from .conftest import TEMPLATE, require_tool, run


def test_template_python_is_ruff_clean() -> None:
    ruff = require_tool("ruff")
    paths = [p for p in ("tasks.py", "hooks", "tests", "scripts", "benchmarks") if (TEMPLATE / p).exists()]
    run([ruff, "check", "--no-cache", *paths], cwd=TEMPLATE)
    run([ruff, "format", "--check", "--no-cache", *paths], cwd=TEMPLATE)


def test_pre_commit_config_is_valid() -> None:
    run([require_tool("pre-commit"), "validate-config", ".pre-commit-config.yaml"], cwd=TEMPLATE)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (TEMPLATE / "README.md").read_text()
    commands = re.findall(r"^python3 tasks\.py \w+$", readme, flags=re.MULTILINE)
    assert "python3 tasks.py demo" in commands and "python3 tasks.py test" in commands
    ci = (TEMPLATE / ".ci" / "run").read_text()
    assert re.search(r"^exec python3 tasks\.py test$", ci, flags=re.MULTILINE)
    assert "STUDY_REQUIRE_ALL=1" in ci, "optional checks are mandatory in CI"
