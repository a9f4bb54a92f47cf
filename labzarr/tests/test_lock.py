"""`labzarr.lock` records what runs a study as pip reports it, in a form pip installs from anywhere.

The study here is this library itself (its extras and a dependency group of a pyproject.toml
under tmp_path); a baked study's `lock` command is tested by the study.
"""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

import pytest

from labzarr import lock
from labzarr.lock import LockError, lock_lines, own_distribution, write_lock


def test_lock_pins_the_installed_versions_of_the_dependencies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lock, "own_distribution", lambda package: md.distribution("labzarr"))
    (tmp_path / "pyproject.toml").write_text('[dependency-groups]\ntest = ["pytest>=8"]\n')
    out = tmp_path / "requirements.lock"
    pins = write_lock(out, tmp_path, "labzarr")
    text = out.read_text()
    assert text.startswith("# Exact versions that ran this study (`labzarr lock`)")
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == [pin for pin in pins if not pin.startswith("#")]
    versions = dict(line.split("==") for line in lines)
    for name in ("numpy", "xarray", "zarr", "fsspec", "pytest"):  # runtime, extras and the group
        assert versions[name] == md.version(name).split("+")[0]
    assert "torch" in versions and "+" not in versions["torch"], (
        "no local label: PyPI serves what the lock names"
    )
    assert "labzarr" not in versions, "the editable install itself is not pinned"
    assert not [line for line in lines if " @ " in line or "-e " in line], "no paths, no editable installs"
    assert not list(tmp_path.glob(".*tmp*"))


def test_local_labels_go_and_only_the_study_dependencies_stay() -> None:
    freeze = ["numpy==2.4.6", "torch==2.13.0+cpu", "cookiecutter==2.7.1", "Jinja2==3.1.6"]
    wanted = {"numpy", "torch", "jinja2"}
    assert lock_lines(freeze, wanted) == ["Jinja2==3.1.6", "numpy==2.4.6", "torch==2.13.0"]


def test_direct_references_are_kept_from_git_and_named_from_a_folder() -> None:
    freeze = [
        "labzarr @ file:///home/me/template/labzarr",
        "other @ git+https://example.org/other@v1.2",
        "numpy==2.4.6",
    ]
    assert lock_lines(freeze, {"labzarr", "other", "numpy"}) == [
        f"# labzarr=={md.version('labzarr')} was installed from a local folder",
        "numpy==2.4.6",
        "other @ git+https://example.org/other@v1.2",
    ]


def test_a_study_that_is_not_installed_is_named() -> None:
    with pytest.raises(LockError, match=r"no_such_study is not installed; run `pip install -e \.`"):
        own_distribution("no_such_study")
