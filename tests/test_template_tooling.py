"""The template's own tooling: lint-clean, its own hooks pass, one version per tool, CI calls the
README's command."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import yaml

from .conftest import LOCAL_STATE, TEMPLATE, require_tool, run
from .precommit_offline import MANIFESTS, run_hooks

CONFIGS = [TEMPLATE / ".pre-commit-config.yaml", TEMPLATE / "{{cookiecutter.project_slug}}" / ".pre-commit-config.yaml"]


def test_template_python_is_ruff_clean() -> None:
    ruff = require_tool("ruff")
    paths = [p for p in ("tasks.py", "hooks", "tests", "scripts", "benchmarks") if (TEMPLATE / p).exists()]
    run([ruff, "check", "--no-cache", *paths], cwd=TEMPLATE)
    run([ruff, "format", "--check", "--no-cache", *paths], cwd=TEMPLATE)


def test_pre_commit_config_is_valid() -> None:
    run([require_tool("pre-commit"), "validate-config", ".pre-commit-config.yaml"], cwd=TEMPLATE)


def test_one_version_of_each_hook_tool() -> None:
    """The template's and the study's pre-commit configs and requirements-dev.txt name one version
    of each tool (ruff, pre-commit-hooks, nbstripout, codespell, zizmor)."""
    pinned = dict(
        re.match(r"^([A-Za-z0-9._-]+)(?:\[[^]]*\])?==(\S+)", line).groups()
        for line in (TEMPLATE / "requirements-dev.txt").read_text().splitlines()
        if re.match(r"^[A-Za-z0-9._-]+(\[[^]]*\])?==", line)
    )
    for config in CONFIGS:
        for repo in yaml.safe_load(config.read_text())["repos"]:
            dist, _ = MANIFESTS[repo["repo"]]
            assert repo["rev"].removeprefix("v") == pinned[dist], (config, repo["repo"], pinned[dist])


def test_template_passes_its_own_hooks(tmp_path: Path) -> None:
    repo = tmp_path / "template"
    shutil.copytree(TEMPLATE, repo, ignore=LOCAL_STATE)
    run(["git", "init", "-q"], cwd=repo)
    run(["git", "add", "-A"], cwd=repo)
    result = run_hooks(repo, repo / ".pre-commit-config.yaml", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (TEMPLATE / "README.md").read_text()
    commands = re.findall(r"^python3 tasks\.py \w+$", readme, flags=re.MULTILINE)
    assert "python3 tasks.py demo" in commands and "python3 tasks.py test" in commands
    ci = (TEMPLATE / ".ci" / "run").read_text()
    assert re.search(r"^exec python3 tasks\.py test$", ci, flags=re.MULTILINE)
    assert "STUDY_REQUIRE_ALL=1" in ci, "optional checks are mandatory in CI"
