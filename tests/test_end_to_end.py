"""End to end, as the three roles do it: bake -> synth -> ETL (twice: byte-identical chunks)
-> the study's real nginx with token auth -> the notebook's fsspec mapper read (exact values)
-> `train --url` over HTTP -> test metrics beside the baselines computed in the same run, the
results folder (checkpoints, plots, the map), the loader's cache (the second epoch reads nothing);
then the same run in new processes, interrupted and resumed, ends with the same metrics, and a
wrong token is one clear line that does not echo it.
Cost: about 35 s on 2 idle cores (two ETLs of 3 small years, six short CPU epochs, start-ups)."""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from fsspec.implementations.http import HTTPFileSystem

from servers import study_package, study_server

from .conftest import require_tool, run

pytestmark = pytest.mark.slow
EPOCHS = 3
REPRODUCIBLE = ("history", "valid", "test", "baselines", "best_epoch", "epochs_run", "class_weights", "settings")
METADATA = {".zattrs", ".zmetadata", ".zgroup", ".zarray", "zarr.json"}


def chunk_files(store: Path) -> dict[str, bytes]:
    """Every data file of the store (metadata holds the run's provenance time, so it differs)."""
    return {
        str(p.relative_to(store)): p.read_bytes()
        for p in sorted(store.rglob("*"))
        if p.is_file() and p.name not in METADATA
    }


def pipeline(python: Path, study: Path, work: Path) -> list[str | Path]:
    """A working copy of the study's config under `work`, with synthetic inputs and the ETL run."""
    work.mkdir()
    shutil.copy(study / "study.toml", work / "study.toml")
    cli = [python, "-m", study_package(study), "--config", work / "study.toml"]
    run([*cli, "synth", "--size", "small", "--years", "3"], cwd=work)
    run([*cli, "etl"], cwd=work, timeout=600)
    return cli


def test_bake_to_trained_model_over_http(fast_study: tuple[Path, Path], tmp_path: Path) -> None:
    require_tool("nginx")
    study, python = fast_study
    cli = pipeline(python, study, tmp_path / "a")
    pipeline(python, study, tmp_path / "b")
    (store,) = [p for p in (tmp_path / "a" / "data" / "zarr").iterdir() if p.is_dir()]
    first, second = chunk_files(store), chunk_files(tmp_path / "b" / "data" / "zarr" / store.name)
    assert first.keys() == second.keys() and len(first) > 20
    assert [k for k in first if first[k] != second[k]] == [], "chunk files differ between two ETL runs"

    token = secrets.token_urlsafe(32)
    with study_server(python, study, tmp_path / "a" / "data" / "zarr", auth_env={"DATA_TOKEN": token}) as url:
        # The notebook's mapper code, with the token in a header.
        fs = HTTPFileSystem(headers={"Authorization": f"Bearer {token}"})
        remote = xr.open_zarr(fs.get_mapper(f"{url}/{store.name}"), consolidated=True)
        local = xr.open_zarr(store, consolidated=True)
        name = "columbia_gridcells"
        assert remote[name].dims == ("cell", "time", "feature")
        np.testing.assert_array_equal(remote[name].values, local[name].values)
        np.testing.assert_array_equal(remote["category"].values, local["category"].values)

        def train(out: str, epochs: int, token: str = token, check: bool = True) -> Any:
            cmd = [*cli, "train", "--url", url, "--epochs", str(epochs), "--out", tmp_path / out]
            return run(cmd, cwd=tmp_path / "a", env={"DATA_TOKEN": token}, timeout=900, check=check)

        train("results", EPOCHS)
        train("resumed", EPOCHS - 1)  # new processes: the resumed run ends where "results" did
        resumed = train("resumed", EPOCHS)
        wrong = "wrong-" + secrets.token_urlsafe(16)
        refused = train("refused", 1, token=wrong, check=False)
    out = tmp_path / "results"
    summary = json.loads((out / "summary.json").read_text())
    test = summary["test"]
    assert test["samples"] > 1000 and len(test["confusion_matrix"]) == 11
    assert {"accuracy", "macro_f1", "per_class"} <= set(test)
    assert set(summary["baselines"]) == {"majority", "last_step", "logistic", "gbm"}
    # The same test windows, the same run. Three epochs on three years leave the LSTM short of the
    # feature-based baselines (the demo's ten years are its gate on all four): here it must beat
    # the ones that do not read the window, by far.
    for name in ("majority", "last_step"):
        baseline = summary["baselines"][name]
        assert test["accuracy"] > baseline["accuracy"] + 0.1, (name, test["accuracy"], baseline)
        assert test["macro_f1"] > baseline["macro_f1"] + 0.3, (name, test["macro_f1"], baseline)
    losses = [h["train_loss"] for h in summary["history"]]
    assert len(losses) == EPOCHS and losses[-1] < losses[0], losses
    for name in ("summary.json", "history.csv", "classification_report.txt", "test_by_cell.csv",
                 "checkpoints/last.pt", "checkpoints/best.pt"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    for name in ("loss.png", "confusion_matrix.png", "accuracy_map.png", "test_series.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    loader = summary["loader"]
    assert loader[0]["network_bytes"] > 0 and loader[1]["requests"] == 0, loader  # cached after epoch 1

    again = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert "resuming from" in resumed.stdout + resumed.stderr
    assert len(again["loader"]) == 1  # only the last epoch ran in the resumed call
    assert {k: again[k] for k in REPRODUCIBLE} == {k: summary[k] for k in REPRODUCIBLE}

    assert refused.returncode == 2, refused.stderr
    assert "DATA_TOKEN" in refused.stderr and "HTTP 401" in refused.stderr
    assert wrong not in refused.stdout + refused.stderr and "Traceback" not in refused.stderr
