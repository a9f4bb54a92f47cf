"""Shared fixtures of the template tests: bake, install a baked study, run commands.

Optional tools (nginx, docker-compose, linters) skip their tests on a developer
machine that lacks them, and fail in CI (CI=true or STUDY_REQUIRE_ALL=1), so a
missing tool can never pass as a green run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path
from typing import Any

import pytest
from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parents[1]
OPTIONS: dict[str, Any] = json.loads((TEMPLATE / "cookiecutter.json").read_text())
REQUIRE_ALL = os.environ.get("CI", "").lower() == "true" or os.environ.get("STUDY_REQUIRE_ALL") == "1"
# Small settings for baked studies whose pipeline actually runs in tests.
FAST_CONTEXT = {"time_lookback": "30", "chunk_samples": "2000"}


def require_tool(name: str) -> str:
    """Path of a command-line tool; skip without it locally, fail without it in CI."""
    bin_dir = Path(sys.executable).parent
    path = shutil.which(name, path=os.pathsep.join([str(bin_dir), "/usr/sbin", "/sbin", os.environ["PATH"]]))
    if path:
        return path
    message = f"{name!r} is not installed (python3 tasks.py setup installs it)"
    if REQUIRE_ALL:
        pytest.fail(f"{message}; it is required in CI")
    pytest.skip(message)


def run(cmd: list[str | Path], *, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run a command and capture text output; on failure show both streams."""
    full_env = dict(os.environ)
    full_env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), "/usr/sbin", full_env["PATH"]])
    full_env.update(env or {})
    result = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"command failed ({result.returncode}): {' '.join(map(str, cmd))}\n"
            f"--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}"
        )
    return result


def bake(output_dir: Path, **context: Any) -> Path:
    """Bake the template with defaults overridden by `context`; returns the study folder."""
    output_dir.mkdir(parents=True, exist_ok=True)
    return Path(
        cookiecutter(
            str(TEMPLATE),
            no_input=True,
            extra_context={k: str(v) for k, v in context.items()},
            output_dir=str(output_dir),
        )
    )


def install_study(study: Path, where: Path) -> Path:
    """A virtual environment that sees the dev environment's packages, with the study
    installed editable and without dependencies (they are all in the dev env). Returns
    its python."""
    env_dir = where / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "_template_dev_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "--python", python, "-e", study],
    )  # fmt: skip
    return python


@pytest.fixture(scope="session")
def baked_default(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The study baked with every default answer (not to be modified by tests)."""
    return bake(tmp_path_factory.mktemp("default"))


@pytest.fixture(scope="session")
def fast_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A study baked with small lookback and chunks and installed: (folder, python).
    Tests that run its pipeline copy or write into their own tmp folders."""
    where = tmp_path_factory.mktemp("fast")
    study = bake(where / "bake", **FAST_CONTEXT)
    return study, install_study(study, where)
