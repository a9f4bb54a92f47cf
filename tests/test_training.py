"""Slow tier: the baked study trains over HTTP from its own nginx, from the command line.

The store is written by the study's own pipeline (`synth --size small --years 3`
then `etl`, lookback 30: 22k training windows) into a temporary folder, served by
`<package> serve` (real nginx, token auth, 127.0.0.1, random port), and read by
`<package> train`. Checks: the loss goes down, checkpoint / metrics / plots are
written, the same seed gives the same metrics in a new process, a resumed run
continues where it stopped (and ends where an uninterrupted run ends), and a
wrong token fails with a clear message that does not echo it.
Cost: about 30 s on 2 idle cores (ETL 3 s, four short CPU epochs, process start-ups).
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from servers import study_package, study_server

from .conftest import require_tool, run

pytestmark = pytest.mark.slow

REPRODUCIBLE = ("history", "valid", "test", "baselines", "best_epoch", "epochs_run", "class_weights", "settings")


def study_copy_config(study: Path, where: Path) -> Path:
    """A copy of the study's study.toml whose data folders live under `where` (and a smaller LSTM)."""
    text = (study / "study.toml").read_text()
    for old, new in (
        ('raw_dir = "data/raw"', f'raw_dir = "{where / "raw"}"'),
        ('zarr_dir = "data/zarr"', f'zarr_dir = "{where / "zarr"}"'),
        ("hidden_size = 32", "hidden_size = 16"),  # a smaller model: the test is about the plumbing
    ):
        assert old in text, f"study.toml has no line {old!r}"
        text = text.replace(old, new)
    config = where / "study.toml"
    config.write_text(text)
    return config


def reproducible(summary: dict) -> dict:
    return {key: summary[key] for key in REPRODUCIBLE}


def test_train_over_nginx_is_reproducible_and_resumable(fast_study: tuple[Path, Path], tmp_path: Path) -> None:
    require_tool("nginx")
    study, python = fast_study
    cli = [python, "-m", study_package(study), "--config", study_copy_config(study, tmp_path)]
    run([*cli, "synth", "--size", "small", "--years", "3"], cwd=tmp_path)
    run([*cli, "etl"], cwd=tmp_path, timeout=300)
    token = secrets.token_urlsafe(32)

    def train(out: str, epochs: int, env_token: str = token, check: bool = True):
        cmd = [*cli, "train", "--url", url, "--epochs", str(epochs), "--out", tmp_path / out]
        return run(cmd, cwd=tmp_path, env={"DATA_TOKEN": env_token}, timeout=300, check=check)

    def summary(out: str) -> dict:
        return json.loads((tmp_path / out / "summary.json").read_text())

    with study_server(python, study, tmp_path / "zarr", auth_env={"DATA_TOKEN": token}) as url:
        train("a", 2)
        first = summary("a")
        losses = [h["train_loss"] for h in first["history"]]
        assert len(losses) == 2 and losses[1] < losses[0], losses
        for name in ("summary.json", "history.csv", "classification_report.txt", "checkpoints/last.pt",
                     "checkpoints/best.pt"):  # fmt: skip
            assert (tmp_path / "a" / name).stat().st_size > 0, name
        for name in ("loss.png", "confusion_matrix.png"):
            assert (tmp_path / "a" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        test = first["test"]
        assert test["samples"] > 1000 and len(test["confusion_matrix"]) == 11
        assert {"accuracy", "macro_f1", "per_class"} <= set(test)
        assert set(first["baselines"]) == {"majority", "last_step", "logistic", "gbm"}
        assert first["loader"][0]["network_bytes"] > 0 and first["loader"][1]["requests"] == 0  # cached

        train("c", 1)  # a new process: its first epoch and the resumed second must match run "a"
        assert summary("c")["epochs_run"] == 1
        resumed = train("c", 2)
        assert "resuming from" in resumed.stdout + resumed.stderr
        assert len(summary("c")["loader"]) == 1  # only the second epoch ran
        assert reproducible(summary("c")) == reproducible(first)

        wrong = "wrong-" + secrets.token_urlsafe(16)
        refused = train("d", 1, env_token=wrong, check=False)
        assert refused.returncode == 2, refused.stderr
        assert "DATA_TOKEN" in refused.stderr and "HTTP 401" in refused.stderr
        assert wrong not in refused.stdout + refused.stderr and "Traceback" not in refused.stderr
