"""Record the exact versions of the installed dependencies (a pip constraints file).

A study's results are reproducible only with the same library versions; the
pyproject keeps ranges (so Colab keeps its own torch), and this file pins what
actually ran: `pip install -c requirements.lock -e ".[etl,train]"` recreates it.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement

from .errors import StudyError


class LockError(StudyError):
    """The versions cannot be recorded (e.g. the study is not installed)."""


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dependency_versions(root: str, extras: tuple[str, ...] = ("etl", "train", "dev")) -> dict[str, str]:
    """Installed versions of `root`'s dependencies (with `extras`), recursively."""
    found: dict[str, str] = {}
    todo = [(root, extras)]
    while todo:
        name, wanted = todo.pop()
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        for spec in dist.requires or []:
            req = Requirement(spec)
            active = req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *wanted))
            if active and _norm(req.name) not in found:
                try:
                    found[_norm(req.name)] = md.version(req.name)
                except md.PackageNotFoundError:
                    continue
                todo.append((req.name, tuple(req.extras)))
    return dict(sorted(found.items()))


def own_distribution() -> str:
    """The installed distribution that provides this package (its console script names it;
    editable installs do not list their modules, so packages_distributions() is a fallback)."""
    for dist in md.distributions():
        if any(ep.value.startswith(f"{__package__}.cli:") for ep in dist.entry_points):
            return dist.metadata["Name"]
    names = md.packages_distributions().get(__package__, [])
    if not names:
        raise LockError(f"{__package__} is not installed; run `pip install -e .` in the study first")
    return names[0]


def write_lock(path: Path) -> dict[str, str]:
    """Write `path` (a pip constraints file) atomically; returns the pinned versions."""
    versions = dependency_versions(own_distribution())
    header = (
        f"# Exact versions that ran this study (written by `{__package__} lock`).\n"
        f"# Python {platform.python_version()} on {sys.platform}.\n"
        f'# Reproduce: pip install -c {path.name} -e ".[etl,train]"\n'
    )
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(header + "".join(f"{name}=={version}\n" for name, version in versions.items()))
    tmp.replace(path)
    return versions
