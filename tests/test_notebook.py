"""The Colab notebook: static checks, and real executions in a kernel with Colab's own package
versions (scripts/colab_packages.txt, built by scripts/colab_env.py): top to bottom against the
study's real nginx with token auth, up to the training against a real SeaweedFS (an s3:// DATA_URL),
and an install into a runtime whose packages the study's ranges do not fit, which must stop with a
clear message and change nothing."""

from __future__ import annotations

import getpass
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from colab_env import COLAB_LACKS, COLAB_SHIPS, PINS, build_colab_like_python, read_pins, write_kernelspec
from servers import study_server

from .conftest import LIBRARY, TEMPLATE, require_tool, run

NOTEBOOK = Path("notebooks") / "colab_bootstrap.ipynb"
WIDGET = "application/vnd.jupyter.widget-view+json"
# Colab's packages the install cell reports as unchanged (the study imports them).
WATCHED = ("numpy", "xarray", "fsspec", "pandas", "aiohttp")


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


def test_colab_pins_record_their_source_and_what_colab_lacks() -> None:
    header = [line for line in PINS.read_text().splitlines() if line.startswith("#")]
    assert any("googlecolab/backend-info" in line and "pip-freeze.gpu.txt" in line for line in header)
    assert any(re.search(r"\b20\d\d-\d\d-\d\d\b", line) for line in header), "the date of the list"
    pins = read_pins()
    for name in ("numpy", "pandas", "xarray", "fsspec", "aiohttp", "ipykernel", "ipywidgets", "tqdm", "numba"):
        assert name in pins, name
    lacks = {name.lower() for name in COLAB_LACKS}
    assert {"zarr", "numcodecs", "netcdf4", "cftime"} <= lacks
    assert not lacks & set(pins) and not lacks & {n.lower() for n in COLAB_SHIPS}, "Colab does not ship these"


def test_the_epochs_come_from_study_toml_unless_overridden(baked_default: Path) -> None:
    """No epoch count of the notebook's own: None in the configuration cell means train.epochs of
    study.toml (read once the config is loaded); STUDY_EPOCHS (tests, the demo) overrides it."""
    nb = nbformat.read(baked_default / NOTEBOOK, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    configuration = next(source for source in code if "the only cell meant to be edited" in source)
    assert not re.search(r"STUDY_EPOCHS\", *\"\d", configuration), "no literal default beside the variable"
    for env, expected in (({}, None), ({"STUDY_EPOCHS": "3"}, 3)):
        names: dict = {}
        saved = os.environ.pop("STUDY_EPOCHS", None)
        os.environ.update(env)
        try:
            exec(configuration, names)
        finally:
            os.environ.pop("STUDY_EPOCHS", None)
            if saved is not None:
                os.environ["STUDY_EPOCHS"] = saved
        assert names["EPOCHS"] == expected, env
    resolve = next(source for source in code if "cfg = load_config()" in source)
    assert "EPOCHS = cfg.train.epochs" in resolve
    training = next(source for source in code if "train.loop import train" in source)
    assert "epochs=EPOCHS" in training


@pytest.fixture(scope="module")
def colab_kernel(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A registered kernel with Colab's packages: (kernel name, JUPYTER_PATH folder)."""
    where = tmp_path_factory.mktemp("colab")
    python = build_colab_like_python(where)
    return write_kernelspec(where / "jupyter", python), where / "jupyter"


def execute(nb: nbformat.NotebookNode, kernel: str, cwd: Path) -> None:
    NotebookClient(nb, kernel_name=kernel, timeout=600, resources={"metadata": {"path": str(cwd)}}).execute()


def outputs_text(nb: nbformat.NotebookNode) -> str:
    return json.dumps([c.get("outputs", []) for c in nb.cells])


def test_the_kernel_starts_without_the_debuggers_frozen_modules_warning(
    colab_kernel: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ipykernel's debugger (debugpy) warns on stderr at every start under Python 3.11+ unless
    frozen modules are off: noise in the demo's output."""
    from jupyter_client.manager import KernelManager

    kernel, jupyter_path = colab_kernel
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
    monkeypatch.delenv("PYDEVD_DISABLE_FILE_VALIDATION", raising=False)
    manager = KernelManager(kernel_name=kernel)
    log = tmp_path / "kernel.log"
    with log.open("w") as stream:
        manager.start_kernel(stdout=stream, stderr=subprocess.STDOUT)
        client = manager.client()
        client.start_channels()
        try:
            client.wait_for_ready(timeout=120)
        finally:
            client.stop_channels()
            manager.shutdown_kernel(now=False)
    text = log.read_text()
    assert "frozen modules" not in text and "Debugger warning" not in text, text


@pytest.mark.slow
def test_notebook_trains_end_to_end_and_stops_cleanly_on_a_wrong_token(
    fast_study: tuple[Path, Path],
    fast_store: tuple[Path, Path],
    colab_kernel: tuple[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_tool("nginx")
    baked, python = fast_study
    _, data = fast_store
    kernel, jupyter_path = colab_kernel
    token = secrets.token_urlsafe(24)
    # The notebook trains for train.epochs of the study's study.toml (here 2) when nothing overrides it.
    study = tmp_path / "study"
    shutil.copytree(baked, study)
    config = (study / "study.toml").read_text()
    assert config.count("\nepochs = 10\n") == 1
    (study / "study.toml").write_text(config.replace("\nepochs = 10\n", "\nepochs = 2\n"))
    for name in ("DATA_USER", "DATA_PASSWORD", "STUDY_CONFIG", "STUDY_EPOCHS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
    monkeypatch.setenv("STUDY_PIP_SOURCE", str(study))
    monkeypatch.setenv("STUDY_LIBRARY_SOURCE", str(LIBRARY))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    workdir = tmp_path / "content"  # like Colab's /content: no study.toml above it
    workdir.mkdir()
    with study_server(python, study, data, auth_env={"DATA_TOKEN": token}) as url:
        monkeypatch.setenv("DATA_URL", url)
        monkeypatch.setenv("DATA_TOKEN", token)
        # The kernel's temporary folder (the server, started above, keeps its own): everything the
        # run writes there (pip's build folders, the install cell's constraints file) is gone when it
        # ends. Only torch's compile cache folder stays, as torch means it to (made at the first
        # optimizer step, empty here).
        tmp = tmp_path / "tmp"
        tmp.mkdir()
        monkeypatch.setenv("TMPDIR", str(tmp))
        nb = nbformat.read(study / NOTEBOOK, as_version=4)
        execute(nb, kernel, workdir)
        outputs = outputs_text(nb)
        assert token not in outputs, "the token is never printed"
        assert "image/png" in outputs, "loss curves and confusion matrix shown inline"
        assert "test accuracy" in outputs and "MB/s" in outputs
        assert WIDGET in outputs, "progress bars are widgets where ipywidgets is installed (as in Colab)"
        unchanged = re.search(r"unchanged: ([^\"]*?)\\n", outputs)
        assert unchanged, "the install cell reports Colab's versions after the install"
        pins = read_pins()
        for name in WATCHED:
            assert f"{name} {pins[name]}" in unchanged[1], f"Colab's {name} {pins[name]} kept"
        assert re.search(r"added: [^\"]*\bzarr 3\.", outputs), "the install added zarr 3"
        assert "epochs: 2 (train.epochs of study.toml)" in outputs
        summary = json.loads((workdir / "results" / "summary.json").read_text())
        assert summary["epochs_run"] == 2
        # The setup cell chose the CPU threads' wait policy before torch was imported.
        assert summary["threads"]["wait_source"] == "policy" and "CPU threads: " in outputs, summary["threads"]
        assert (workdir / "results" / "checkpoints" / "last.pt").is_file()
        left = {p.name for p in tmp.iterdir()} - {f"torchinductor_{getpass.getuser()}"}
        assert not left, f"left in the temporary folder: {sorted(left)}"

        monkeypatch.setenv("DATA_TOKEN", "wrong-" + token)
        monkeypatch.setenv("STUDY_EPOCHS", "1")
        nb = nbformat.read(study / NOTEBOOK, as_version=4)
        with pytest.raises(CellExecutionError) as info:
            execute(nb, kernel, workdir)
        assert "credentials" in str(info.value).lower()
        assert "wrong-" not in str(info.value), "the token is not echoed in the error"
        assert "epochs: 1 (set in this notebook; train.epochs of study.toml: 2)" in outputs_text(nb)
        failed = [
            i for i, c in enumerate(nb.cells) if any(o.get("output_type") == "error" for o in c.get("outputs", []))
        ]
        assert failed and "check_access" in nb.cells[failed[0]].source, "stops at the open step"


@pytest.mark.slow
def test_notebook_reads_an_s3_bucket_with_the_aws_secrets(
    fast_study: tuple[Path, Path],
    fast_store: tuple[Path, Path],
    colab_kernel: tuple[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same notebook with DATA_URL = s3://... against a real SeaweedFS, up to the training (the
    loader's S3 path is the study's own tests'): it installs s3fs within Colab's fsspec, takes the
    AWS secrets, opens the store with fsspec's S3 filesystem and the package's reader, and measures
    the throughput."""
    study, _ = fast_study
    _, data = fast_store
    kernel, jupyter_path = colab_kernel
    from labzarr.testing import s3server as server

    weed = server.weed_binary() or require_tool("weed")
    for name in ("DATA_TOKEN", "DATA_USER", "DATA_PASSWORD", "STUDY_CONFIG", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
    monkeypatch.setenv("STUDY_PIP_SOURCE", str(study))
    monkeypatch.setenv("STUDY_LIBRARY_SOURCE", str(LIBRARY))
    monkeypatch.setenv("STUDY_EPOCHS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    workdir = tmp_path / "content"
    workdir.mkdir()
    with server.SeaweedS3(weed) as s3:
        for name, value in s3.env().items():
            monkeypatch.setenv(name, value)
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir("colab")
        fs.put(str(data) + "/", "colab/study/", recursive=True)
        monkeypatch.setenv("DATA_URL", "s3://colab/study")
        nb = nbformat.read(study / NOTEBOOK, as_version=4)
        training = next(i for i, c in enumerate(nb.cells) if "train.loop import train" in c.source)
        nb.cells = nb.cells[:training]
        execute(nb, kernel, workdir)
        outputs = outputs_text(nb)
        assert s3.secret_key not in outputs, "the key is never printed"
        assert "AWS_SECRET_ACCESS_KEY" in outputs and "MB/s" in outputs
        assert "s3://colab/study/" in outputs and "window {" in outputs
        assert re.search(r"added: [^\"]*\bs3fs ", outputs), "the install added s3fs"


@pytest.mark.slow
def test_an_install_that_would_change_colabs_packages_stops_and_changes_nothing(
    fast_study: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runtime whose numpy is older than the study's floor (as Colab's would be if a zarr or
    numcodecs release raised it): the install cell refuses to upgrade it and says why."""
    study, _ = fast_study
    python = build_colab_like_python(tmp_path / "old-numpy")
    run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--only-binary", ":all:",
         "--no-deps", "numpy==1.24.4"])  # fmt: skip
    kernel = write_kernelspec(tmp_path / "jupyter", python)
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("STUDY_PIP_SOURCE", str(study))
    monkeypatch.setenv("STUDY_LIBRARY_SOURCE", str(LIBRARY))
    nb = nbformat.read(study / NOTEBOOK, as_version=4)
    install = next(
        i
        for i, c in enumerate(nb.cells)
        if "install_keeping_runtime(*filter(None, (LIBRARY_SOURCE, PIP_SOURCE)))" in c.source
    )
    nb.cells = nb.cells[: install + 1]  # configuration and setup only
    with pytest.raises(CellExecutionError) as info:
        execute(nb, kernel, tmp_path)
    message = str(info.value)
    assert "numpy==1.24.4" in message and "nothing was changed" in message, message
    assert "conflict is caused by" in outputs_text(nb), "pip's own explanation is shown"
    probe = "import importlib.util, numpy; print(numpy.__version__, importlib.util.find_spec('zarr') is None)"
    assert run([python, "-c", probe]).stdout.split() == ["1.24.4", "True"], "numpy kept, zarr not installed"
