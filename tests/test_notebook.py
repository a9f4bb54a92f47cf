"""The Colab notebook: static checks, and a real top-to-bottom execution in a kernel that has
only what Colab ships (tests/colab_env.py), against the study's real nginx with token auth."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from colab_env import build_colab_like_python, write_kernelspec
from servers import study_server

from .conftest import TEMPLATE, require_tool, run

NOTEBOOK = Path("notebooks") / "colab_bootstrap.ipynb"


def test_notebook_template_is_built_from_its_source() -> None:
    run(["python", TEMPLATE / "scripts" / "build_notebook.py", "--check"])


def test_baked_notebook_is_clean_and_carries_the_answers(baked_default: Path) -> None:
    nb = nbformat.read(baked_default / NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), "outputs stripped"
    text = json.dumps(nb)
    for expected in ("https://data.example.edu/zarr", "columbia_gridcells", "my-lab/columbia-drought-study"):
        assert expected in text
    source = "\n".join(c.source for c in code)
    assert "HTTPFileSystem" in source and "get_mapper" in source and "consolidated=True" in source
    assert "torch" not in [line.split()[-1] for line in source.splitlines() if "pip_install(" in line]
    readme = (baked_default / "README.md").read_text()
    assert "colab.research.google.com/github/my-lab/columbia-drought-study/blob/main/notebooks" in readme


@pytest.fixture(scope="module")
def colab_kernel(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A registered Colab-like kernel: (kernel name, JUPYTER_PATH folder)."""
    where = tmp_path_factory.mktemp("colab")
    python = build_colab_like_python(where)
    return write_kernelspec(where / "jupyter", python), where / "jupyter"


def execute(nb: nbformat.NotebookNode, kernel: str, cwd: Path) -> None:
    NotebookClient(nb, kernel_name=kernel, timeout=600, resources={"metadata": {"path": str(cwd)}}).execute()


@pytest.mark.slow
def test_notebook_trains_end_to_end_and_stops_cleanly_on_a_wrong_token(
    fast_study: tuple[Path, Path],
    fast_store: tuple[Path, Path],
    colab_kernel: tuple[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_tool("nginx")
    study, python = fast_study
    _, data = fast_store
    kernel, jupyter_path = colab_kernel
    token = secrets.token_urlsafe(24)
    for name in ("DATA_USER", "DATA_PASSWORD", "STUDY_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
    monkeypatch.setenv("STUDY_PIP_SOURCE", str(study))
    monkeypatch.setenv("STUDY_EPOCHS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    workdir = tmp_path / "content"  # like Colab's /content: no study.toml above it
    workdir.mkdir()
    with study_server(python, study, data, auth_env={"DATA_TOKEN": token}) as url:
        monkeypatch.setenv("DATA_URL", url)
        monkeypatch.setenv("DATA_TOKEN", token)
        nb = nbformat.read(study / NOTEBOOK, as_version=4)
        execute(nb, kernel, workdir)
        outputs = json.dumps([c.get("outputs", []) for c in nb.cells])
        assert token not in outputs, "the token is never printed"
        assert "image/png" in outputs, "loss curves and confusion matrix shown inline"
        assert "test accuracy" in outputs and "MB/s" in outputs
        summary = json.loads((workdir / "results" / "summary.json").read_text())
        assert summary["epochs_run"] == 1
        assert (workdir / "results" / "checkpoints" / "last.pt").is_file()

        monkeypatch.setenv("DATA_TOKEN", "wrong-" + token)
        nb = nbformat.read(study / NOTEBOOK, as_version=4)
        with pytest.raises(CellExecutionError) as info:
            execute(nb, kernel, workdir)
        assert "credentials" in str(info.value).lower()
        assert "wrong-" not in str(info.value), "the token is not echoed in the error"
        failed = [
            i for i, c in enumerate(nb.cells) if any(o.get("output_type") == "error" for o in c.get("outputs", []))
        ]
        assert failed and "check_access" in nb.cells[failed[0]].source, "stops at the open step"
