"""CITATION.cff: the keys Citation File Format 1.2.0 requires, and the version of pyproject.toml
(the study's one version: a release changes both files)."""

from __future__ import annotations

import re
import tomllib

from .conftest import STUDY_ROOT


def top_level(text: str) -> dict[str, str]:
    """The top-level `key: value` lines of a YAML file (values unquoted; nested blocks give '')."""
    pairs = re.findall(r"^([A-Za-z][\w-]*):[ \t]*(.*)$", text, flags=re.MULTILINE)
    return {key: value.strip().strip("\"'") for key, value in pairs}


def test_citation_has_the_required_keys_and_the_version_of_pyproject() -> None:
    citation = top_level((STUDY_ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0"
    assert citation["message"] and citation["title"] and "authors" in citation
    pyproject = tomllib.loads((STUDY_ROOT / "pyproject.toml").read_text())
    assert citation["version"] == pyproject["project"]["version"], (
        "CITATION.cff and pyproject.toml give different versions: change both together"
    )
