"""Run a repository's real pre-commit configuration without reaching GitHub.

`pre-commit run` clones each hook repository from GitHub, which CI cannot reach. Here every
remote hook becomes a local one that keeps what the configuration says (id, args, files,
exclude) and what its repository's manifest says (entry, file types, serial), and runs the same
tool at the same version: the PyPI distribution each repository wraps, installed in the template's
development environment (requirements-dev.txt). A rev that differs from the installed version is
an error, so the configuration, the dev requirements and what runs here cannot drift apart.
Then the real `pre-commit run --all-files` does the rest: file selection, and failing when a
hook rewrites a file.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

# Facts from each hook repository's .pre-commit-hooks.yaml at the revs in use, and the PyPI
# distribution whose version the repository's rev names.
MANIFESTS: dict[str, tuple[str, dict[str, dict[str, Any]]]] = {
    "https://github.com/astral-sh/ruff-pre-commit": (
        "ruff",
        {
            "ruff-check": {
                "entry": "ruff check --force-exclude",
                "types_or": ["python", "pyi", "jupyter"],
                "require_serial": True,
            },
            "ruff-format": {
                "entry": "ruff format --force-exclude",
                "types_or": ["python", "pyi", "jupyter"],
                "require_serial": True,
            },
        },
    ),
    "https://github.com/kynan/nbstripout": (
        "nbstripout",
        {"nbstripout": {"entry": "nbstripout", "types": ["jupyter"]}},
    ),
    "https://github.com/pre-commit/pre-commit-hooks": (
        "pre-commit-hooks",
        {
            "check-yaml": {"entry": "check-yaml", "types": ["yaml"]},
            "check-toml": {"entry": "check-toml", "types": ["toml"]},
            "check-json": {"entry": "check-json", "types": ["json"]},
            "end-of-file-fixer": {"entry": "end-of-file-fixer", "types": ["text"]},
            "trailing-whitespace": {"entry": "trailing-whitespace-fixer", "types": ["text"]},
            "check-added-large-files": {"entry": "check-added-large-files"},
            "detect-private-key": {"entry": "detect-private-key", "types": ["text"]},
        },
    ),
    "https://github.com/codespell-project/codespell": (
        "codespell",
        {"codespell": {"entry": "codespell", "types": ["text"]}},
    ),
    "https://github.com/zizmorcore/zizmor-pre-commit": (
        "zizmor",
        {
            "zizmor": {
                "entry": "zizmor",
                "types": ["yaml"],
                "require_serial": True,
                "args": ["--no-progress"],
                "files": r"(\.github/(workflows/.*|dependabot.ya?ml))|(action\.ya?ml)$",
            },
        },
    ),
}
# What a configuration may set on a hook of a remote repository, carried over as is.
USER_KEYS = ("args", "files", "exclude", "types", "types_or", "exclude_types", "stages", "always_run")


class HookDrift(AssertionError):
    """A hook the table above does not know, or a rev that differs from the installed tool."""


def offline_config(config: Path) -> dict[str, Any]:
    """The configuration at `config` with every remote repository replaced by local hooks."""
    original = yaml.safe_load(config.read_text())
    hooks = []
    for repo in original["repos"]:
        if repo["repo"] not in MANIFESTS:
            raise HookDrift(f"{config}: no offline recipe for {repo['repo']}; add it to MANIFESTS in {__file__}")
        dist, manifest = MANIFESTS[repo["repo"]]
        installed = md.version(dist)
        if repo["rev"].removeprefix("v") != installed:
            raise HookDrift(
                f"{config}: {repo['repo']} is at rev {repo['rev']} but the development environment has "
                f"{dist} {installed}; use one version (requirements-dev.txt and both pre-commit configs)"
            )
        for hook in repo["hooks"]:
            if hook["id"] not in manifest:
                raise HookDrift(f"{config}: no manifest for hook {hook['id']!r}; add it to MANIFESTS in {__file__}")
            local = {"id": hook["id"], "name": hook["id"], "language": "system", **manifest[hook["id"]]}
            local.update({key: hook[key] for key in USER_KEYS if key in hook})
            hooks.append(local)
    offline = {key: value for key, value in original.items() if key != "repos"}
    return {**offline, "repos": [{"repo": "local", "hooks": hooks}]}


def run_hooks(repo: Path, config: Path, work: Path) -> subprocess.CompletedProcess[str]:
    """`pre-commit run --all-files` in the git repository `repo` with `config` made offline."""
    local = work / "offline-pre-commit-config.yaml"
    local.write_text(yaml.safe_dump(offline_config(config), sort_keys=False))
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
        "PRE_COMMIT_HOME": str(work / "pre-commit-home"),
        "ZIZMOR_OFFLINE": "true",  # as without a GitHub token: no online audits
    }
    return subprocess.run(
        [sys.executable, "-m", "pre_commit", "run", "--all-files", "--color", "never", "--config", local],
        cwd=repo, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
