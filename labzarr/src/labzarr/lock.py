"""Record the exact versions that run the study, as pip reports them, in a file pip installs from.

The pyproject keeps ranges (so Colab keeps its own torch and numpy); `requirements.lock` pins what
actually ran. It is `pip freeze --exclude-editable`, kept to the study's own dependencies (every
extra and dependency group, and what they pull in), with local version labels removed:
`torch==2.13.0+cpu` becomes `torch==2.13.0`, which PyPI serves and the PyTorch CPU index serves as
its `+cpu` build. Reproduce the environment with

    pip install -r requirements.lock && pip install --no-deps -e .

or use it as constraints of a partial install, as the ETL image does:
`pip install -c requirements.lock ".[etl]"`.
"""

from __future__ import annotations

import importlib.metadata as md
import platform
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from .atomic import write_text
from .errors import StudyError

LOCAL_LABEL = re.compile(r"^(?P<pin>[A-Za-z0-9][A-Za-z0-9._-]*==[^+\s;]+)\+\S+")
DIRECT = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*) @ (?P<url>\S+)")


class LockError(StudyError):
    """The versions cannot be recorded (e.g. the study is not installed)."""


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def own_distribution(package: str) -> md.Distribution:
    """The installed distribution that provides the study's `package` (its console script names it)."""
    for dist in md.distributions():
        if any(ep.value.startswith(f"{package}.cli:") for ep in dist.entry_points):
            return dist
    raise LockError(f"{package} is not installed; run `pip install -e .` in the study first")


def group_requirements(pyproject: Path) -> list[Requirement]:
    """Every requirement of every [dependency-groups] group (PEP 735) of `pyproject`."""
    if not pyproject.is_file():
        return []
    groups = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("dependency-groups", {})
    return [Requirement(item) for items in groups.values() for item in items if isinstance(item, str)]


def study_dependencies(dist: md.Distribution, groups: list[Requirement]) -> set[str]:
    """Normalised names of what `dist` (with all its extras) and `groups` need, recursively."""
    extras = set(dist.metadata.get_all("Provides-Extra") or ())
    todo = [(Requirement(spec), extras) for spec in dist.requires or []] + [(req, set()) for req in groups]
    seen: set[tuple[str, frozenset[str]]] = set()
    found: set[str] = set()
    while todo:
        req, extras = todo.pop()  # a requirement, and the extras asked of the package that has it
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in ("", *extras)):
            continue
        key = (_norm(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            needs = md.distribution(req.name).requires or []
        except md.PackageNotFoundError:
            continue  # not for this platform or Python; pip freeze does not list it either
        found.add(key[0])
        todo += [(Requirement(spec), set(req.extras)) for spec in needs]
    return found


def freeze() -> list[str]:
    """`pip freeze --exclude-editable` of the running Python."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise LockError(f"pip freeze failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.splitlines()


def lock_lines(lines: list[str], wanted: set[str]) -> list[str]:
    """The `wanted` lines of a freeze, each `name==version` without a local label."""
    pins = []
    for line in lines:
        if direct := DIRECT.match(line):
            name = direct["name"]
            if _norm(name) in wanted and direct["url"].startswith("git+"):
                pins.append(line)  # from a repository (the library at a tag): installable as it is
                continue
            if _norm(name) in wanted and direct["url"].startswith("file:"):
                # a local folder (the template's own library) is not installable elsewhere: say so
                pins.append(f"# {name}=={md.version(name)} was installed from a local folder")
                continue
            line = f"{name}=={md.version(name)}"  # a wheel file or archive URL: pin the version it has
        name = line.split("==")[0].strip()
        if "==" in line and _norm(name) in wanted:
            pins.append(LOCAL_LABEL.sub(r"\g<pin>", line))
    return sorted(pins, key=lambda pin: _norm(re.split(r"==| @ ", pin.lstrip("# "))[0]))


def write_lock(path: Path, root: Path, package: str) -> list[str]:
    """Write `path` atomically for the study `package` whose pyproject.toml is in `root`; returns the pins."""
    dist = own_distribution(package)
    pins = lock_lines(freeze(), study_dependencies(dist, group_requirements(root / "pyproject.toml")))
    header = (
        f"# Exact versions that ran this study (`{package} lock`): pip freeze --all\n"
        f"# --exclude-editable on Python {platform.python_version()} ({sys.platform}), limited to the\n"
        "# study's dependencies, local labels (+cpu) removed. Reproduce:\n"
        f"#   pip install -r {path.name} && pip install --no-deps -e .\n"
    )
    write_text(path, header + "".join(f"{pin}\n" for pin in pins))
    return pins
