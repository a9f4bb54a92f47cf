#!/usr/bin/env python3
"""Task runner of the template: `python3 tasks.py help` lists the tasks.

Only the standard library is used here, so it runs on a fresh machine with
Python 3.10+. Every task first makes sure the development environment exists
(.venv with PyTorch CPU, then requirements-dev.txt; nginx from Debian when
running as root), so each task is one command from a fresh clone.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
# The template's own Python; the Jinja folder is linted after baking (its pyproject.toml
# is a Jinja template, so ruff must not walk into it).
OWN_PYTHON = ["tasks.py", "hooks", "tests", "scripts", "benchmarks", "labzarr"]
VENV = Path(os.environ.get("TEMPLATE_VENV", ROOT / ".venv"))
BIN = VENV / "bin"
PYTHON = BIN / "python"
REQUIREMENTS = ROOT / "requirements-dev.txt"
# requirements-dev.txt installs the study's dependencies from the lock every baked study starts with.
STUDY_LOCK = ROOT / "{{cookiecutter.project_slug}}" / "requirements.lock"
NO_DEPS = ROOT / "requirements-nodeps.txt"  # installed with --no-deps (test data that declares iris)
# The studies' machinery library, installed editable (its dependencies are in the study's lock).
LIBRARY = ROOT / "labzarr"
# Installed before anything that depends on torch, so pip keeps this CPU build.
TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")
NGINX_INSTALL = "sudo apt-get update && sudo apt-get install -y nginx"
REQUIRE_ALL = os.environ.get("CI", "").lower() == "true" or os.environ.get("STUDY_REQUIRE_ALL") == "1"


def say(message: str) -> None:
    print(f"[tasks] {message}", flush=True)


def run(*cmd: str | Path, **kwargs) -> None:
    """Run a command, echoing it; stop with its exit status when it fails."""
    say("$ " + " ".join(str(c) for c in cmd))
    result = subprocess.run([str(c) for c in cmd], env=tool_env(), **kwargs)
    if result.returncode:
        raise SystemExit(result.returncode)


def tool_env() -> dict[str, str]:
    """Environment with the venv's tools and nginx's folder first on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(BIN), "/usr/sbin", "/sbin", env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(VENV)
    return env


def own_python() -> list[str]:
    return [p for p in OWN_PYTHON if (ROOT / p).exists()]


def ensure_venv() -> None:
    """Create .venv and install torch (CPU) first, then the pinned dev requirements."""
    stamp = VENV / ".tasks-stamp"
    pins = (
        REQUIREMENTS.read_bytes() + STUDY_LOCK.read_bytes() + NO_DEPS.read_bytes()
        + (LIBRARY / "pyproject.toml").read_bytes()
    )  # fmt: skip
    digest = hashlib.sha256(pins + TORCH_SPEC.encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest and PYTHON.exists():
        return
    if not PYTHON.exists():
        say(f"creating {VENV}")
        venv.EnvBuilder(with_pip=True, clear=False).create(VENV)
    pip = (PYTHON, "-m", "pip", "install", "--disable-pip-version-check")
    run(*pip, "--quiet", "--upgrade", "pip")
    run(*pip, "--quiet", TORCH_SPEC)
    run(*pip, "--quiet", "-r", REQUIREMENTS)
    run(*pip, "--quiet", "--no-deps", "-r", NO_DEPS)
    run(*pip, "--quiet", "--no-deps", "-e", LIBRARY)
    stamp.write_text(digest)


def ensure_colab_kernel() -> None:
    """Build (once per change of scripts/colab_packages.txt) the environment with Colab's package
    versions that the notebook test and the demo run the notebook in; cached under .cache/."""
    run(PYTHON, ROOT / "scripts" / "colab_env.py", "build")


def find_nginx() -> str | None:
    return shutil.which("nginx", path=os.pathsep.join(["/usr/sbin", "/sbin", os.environ.get("PATH", "")]))


def ensure_nginx(required: bool) -> None:
    """Install Debian's nginx when root and it is missing; otherwise say how, exactly."""
    if find_nginx():
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        say("nginx is missing: installing Debian's nginx")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "nginx"], check=True, env=env)
        subprocess.run(["sh", "-c", "service nginx stop >/dev/null 2>&1 || true"], check=False)
        return
    message = f"nginx is not installed; install it with:\n    {NGINX_INSTALL}"
    if required:
        raise SystemExit(f"[tasks] {message}")
    say(f"WARNING: {message}\n         tests that need nginx will be skipped")


def task_setup(args: list[str]) -> None:
    """create .venv (PyTorch CPU + pinned dev tools) and the Colab kernel env; install nginx if root"""
    ensure_venv()
    ensure_colab_kernel()
    ensure_nginx(required=REQUIRE_ALL)


def task_test(args: list[str]) -> None:
    """run the library's test suite, then the template's (baked studies' suites included; args go to it)"""
    task_setup([])
    # No thread settings here: the tests train tiny CPU models in several processes at once
    # (pytest workers, study subprocesses, torchrun ranks), each with the package's own choice
    # (labzarr.train.threads: one thread for a small recurrent model, idle threads sleeping).
    run(PYTHON, "-m", "pytest", "-n", "2", "-p", "no:cacheprovider", cwd=LIBRARY)
    run(PYTHON, "-m", "pytest", *args, cwd=ROOT)


def task_demo(args: list[str]) -> None:
    """bake a study with defaults and run its whole pipeline on the synthetic data"""
    ensure_venv()
    ensure_colab_kernel()
    ensure_nginx(required=True)
    run(PYTHON, ROOT / "scripts" / "demo.py", *args, cwd=ROOT)


def task_lint(args: list[str]) -> None:
    """ruff check and format check of the template's own Python, pre-commit config check"""
    ensure_venv()
    run(BIN / "ruff", "check", *own_python(), cwd=ROOT)
    run(BIN / "ruff", "format", "--check", *own_python(), cwd=ROOT)
    run(BIN / "pre-commit", "validate-config", ".pre-commit-config.yaml", cwd=ROOT)


def task_fmt(args: list[str]) -> None:
    """format and auto-fix the template's Python, including the study package (via a bake)"""
    import tempfile

    ensure_venv()
    run(BIN / "ruff", "format", *own_python(), cwd=ROOT)
    run(BIN / "ruff", "check", "--fix", *own_python(), cwd=ROOT)
    template_pkg = next((ROOT / "{{cookiecutter.project_slug}}" / "src").iterdir())
    with tempfile.TemporaryDirectory() as tmp:
        run(BIN / "cookiecutter", "--no-input", "--output-dir", tmp, ROOT, stdout=subprocess.DEVNULL)
        study = next(Path(tmp).iterdir())
        run(BIN / "ruff", "format", ".", cwd=study)
        run(BIN / "ruff", "check", "--fix", "--exit-zero", ".", cwd=study)
        baked_pkg = next((study / "src").iterdir())
        # Study Python holds no Jinja, so formatted files copy back byte for byte.
        for path in baked_pkg.rglob("*.py"):
            target = template_pkg / path.relative_to(baked_pkg)
            if target.exists() and target.read_bytes() != path.read_bytes():
                target.write_bytes(path.read_bytes())
                say(f"formatted {target.relative_to(ROOT)}")


def task_relock(args: list[str]) -> None:
    """re-resolve the study's dependencies within its pyproject ranges; rewrite its requirements.lock"""
    import tempfile

    ensure_venv()
    with tempfile.TemporaryDirectory() as tmp:
        run(BIN / "cookiecutter", "--no-input", "--output-dir", tmp, ROOT, stdout=subprocess.DEVNULL)
        study = next(p for p in Path(tmp).iterdir() if p.is_dir())
        package = next(p.name for p in (study / "src").iterdir() if (p / "__init__.py").is_file())
        env = Path(tmp) / "venv"
        venv.EnvBuilder(with_pip=True).create(env)  # `lock` runs this venv's own pip freeze
        pip = (PYTHON, "-m", "pip", "--python", env / "bin" / "python", "install", "--quiet", "--no-compile")
        run(*pip, TORCH_SPEC)
        run(*pip, ROOT / "labzarr")  # the library from this repository (the lock notes it, unpinned)
        run(*pip, "-e", f"{study}[etl,train]", "--group", f"{study / 'pyproject.toml'}:dev")
        run(env / "bin" / "python", "-m", package, "lock", "--out", Path(tmp) / "requirements.lock", cwd=study)
        text = (Path(tmp) / "requirements.lock").read_text()
        STUDY_LOCK.write_text(text.replace(f"`{package} lock`", "`{{ cookiecutter.package_name }} lock`"))
    say(f"wrote {STUDY_LOCK.relative_to(ROOT)}; `python3 tasks.py setup` installs it")


def task_docs(args: list[str]) -> None:
    """rewrite the study README's command table and config reference from a fresh bake"""
    ensure_venv()
    run(PYTHON, ROOT / "scripts" / "readme_sections.py", *args, cwd=ROOT)


def task_help(args: list[str]) -> None:
    """list the tasks"""
    print("usage: python3 tasks.py TASK [ARGS]\n")
    for name, func in TASKS.items():
        print(f"  {name:<7} {func.__doc__}")


TASKS = {
    "demo": task_demo,
    "test": task_test,
    "setup": task_setup,
    "lint": task_lint,
    "fmt": task_fmt,
    "relock": task_relock,
    "docs": task_docs,
    "help": task_help,
}

if __name__ == "__main__":
    if sys.version_info < (3, 11):  # noqa: UP036 - the check that tells older Pythons why
        # zarr-python 3 (the only zarr that fails loudly on network errors) needs 3.11+.
        raise SystemExit(
            f"tasks.py needs Python 3.11 or newer (this is {sys.version.split()[0]}): "
            "run it with python3.11 or later, e.g. `python3.12 tasks.py test`"
        )
    name, *rest = sys.argv[1:] or ["help"]
    if name not in TASKS:
        task_help([])
        raise SystemExit(f"\nunknown task {name!r}")
    TASKS[name](rest)
