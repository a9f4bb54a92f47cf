"""Bake the template and install a baked study: shared by the demo and the template tests.

A baked study is installed editable, without dependencies, into a small virtual
environment that also sees the template's development environment (a .pth
file), so installing takes seconds and PyTorch is installed once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path
from typing import Any

from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parents[1]
LIBRARY = TEMPLATE / "labzarr"  # the library every study depends on (installed from here, offline)


class CommandFailed(RuntimeError):
    """A command exited non-zero; the message carries the end of its output."""


def tool_path() -> str:
    """PATH with this environment's scripts and nginx's folder first."""
    return os.pathsep.join([str(Path(sys.executable).parent), "/usr/sbin", "/sbin", os.environ.get("PATH", "")])


def run(
    cmd: list[str | Path],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command and capture text output; on failure raise with both streams."""
    full_env = {**os.environ, "PATH": tool_path(), **(env or {})}
    result = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise CommandFailed(
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
    """Install `study` editable into a new venv under `where` that sees this environment's
    packages; returns the venv's python."""
    env_dir = where / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # The dev environment's packages, and the template's own library source (editable there).
    (site / "_template_dev_env.pth").write_text(f"{sysconfig.get_paths()['purelib']}\n{LIBRARY / 'src'}\n")
    run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps",
         "--no-build-isolation", "--disable-pip-version-check", "-e", study],
    )  # fmt: skip
    return python
