"""The command line: help, synth, config reference, clear errors."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr
from labzarr.testing.faultserver import FaultServer
from labzarr.testing.stores import learnable_series, write_series_store
from labzarr.train.threads import POLICY_MARK

from ..cli import COMMANDS, build_parser, main
from ..config import load_config
from .conftest import STUDY_ROOT, study_toml

PACKAGE = __package__.rsplit(".", 1)[0]


def test_every_command_is_listed_with_its_summary_and_in_the_readme() -> None:
    env = {**os.environ, "COLUMNS": "200"}  # one line per command, however long its summary
    result = subprocess.run(
        [sys.executable, "-m", PACKAGE, "--help"], capture_output=True, text=True, check=True, env=env
    )
    readme = (STUDY_ROOT / "README.md").read_text(encoding="utf-8")
    parsed = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert set(parsed) == set(COMMANDS) >= {"synth", "etl", "serve", "train", "lock", "config"}
    for command, summary in COMMANDS.items():
        assert re.search(rf"^\s+{command}\s+{re.escape(summary)}$", result.stdout, re.MULTILINE), command
        assert f"| `{command}` | {summary} |" in readme, f"README.md lists {command}"


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_help_starts_with_its_summary(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    usage, summary, *_ = capsys.readouterr().out.split("\n\n")
    assert usage.startswith("usage") and summary.strip() and "\n" not in summary.strip()


@pytest.mark.parametrize(
    ("flag", "level"), [("-v", logging.DEBUG), ("-q", logging.WARNING), (None, logging.INFO)]
)
def test_verbose_and_quiet_set_the_log_level(flag: str | None, level: int) -> None:
    root = logging.getLogger()
    before = root.level
    try:
        assert main([*([flag] if flag else []), "--config", str(STUDY_ROOT / "study.toml"), "config"]) == 0
        assert root.level == level
    finally:
        root.setLevel(before)


def test_synth_writes_inputs_and_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    config = ["--config", str(STUDY_ROOT / "study.toml")]
    assert main([*config, "synth", "--size", "tiny", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "model_output.nc").is_file()
    assert main([*config, "synth", "--size", "tiny", "--out", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_synth_monthly_preset_writes_monthly_means_for_a_monthly_study(tmp_path: Path, capsys) -> None:
    daily = ["--config", str(STUDY_ROOT / "study.toml")]
    assert main([*daily, "synth", "--size", "monthly", "--out", str(tmp_path / "no")]) == 2
    assert "--size monthly writes monthly data, but etl.time_step = 'daily'" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()
    monthly = study_toml(
        tmp_path / "study.toml", time_step="monthly", time_lookback=12, split_gap=12, season_window=1
    )
    assert main(["--config", str(monthly), "synth", "--size", "monthly", "--out", str(tmp_path / "raw")]) == 0
    with xr.open_dataset(tmp_path / "raw" / "model_output.nc") as ds:
        assert ds.sizes["time"] == 480 and set(ds.indexes["time"].day) == {1}


def test_config_reference_and_bad_config(tmp_path: Path, capsys) -> None:
    assert main(["--config", str(STUDY_ROOT / "study.toml"), "config", "--reference"]) == 0
    assert "`etl.time_lookback`" in capsys.readouterr().out
    bad = tmp_path / "study.toml"
    bad.write_text("[study]\n")
    assert main(["--config", str(bad), "config"]) == 2
    assert "missing key" in capsys.readouterr().err


UNWANTED = (
    "Traceback",
    "Task was destroyed",
    "Event loop is closed",
    "Session is closed",
    "Unclosed",
    "Warning",
)


@pytest.mark.parametrize(
    ("fault", "message"),
    # a refusal; the other faults, and that a process ends with their error alone, are the
    # library's (its test_remote.py)
    [(403, "refused access (HTTP 403)")],
)
def test_a_failed_read_ends_train_with_one_clear_line(tmp_path: Path, fault: int | str, message: str) -> None:
    """A user sees the error line last: no traceback, no asyncio or aiohttp noise after it."""
    config = study_toml(
        tmp_path / "study.toml", time_lookback=20, split_gap=20, timeout_s=1.0, retry_budget_s=2.0,
        cache="none", out_dir=str(tmp_path / "results"),
    )  # fmt: skip
    name = load_config(config).study.dataset_name
    x, y = learnable_series(8, 200)
    write_series_store(tmp_path / "srv", x, y, dataset_name=name, lookback=20, chunk_cells=4)
    with FaultServer(tmp_path / "srv") as server:
        server.always(f"*/{name}/1.0.0", fault)
        command = [
            sys.executable,
            "-m",
            PACKAGE,
            "--config",
            config,
            "train",
            "--url",
            server.url,
            "--epochs",
            "1",
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and message in lines[-1], done.stderr
    assert not [line for line in lines if any(word in line for word in UNWANTED)], done.stderr


def test_train_into_a_log_prints_one_line_per_epoch_and_no_progress_bars(tmp_path: Path) -> None:
    """Output to a pipe or file (a log, CI): no progress bars, whose every redraw would be a line
    there, but the line of each epoch. The results folder, whatever its name, stays out of git.
    The CLI chose the CPU threads itself, before torch started (summary.json records it)."""
    config = study_toml(
        tmp_path / "study.toml", time_lookback=20, split_gap=20, cache="none", batch_size=64, hidden_size=8,
        out_dir=str(tmp_path / "results"),
    )  # fmt: skip
    name = load_config(config).study.dataset_name
    x, y = learnable_series(8, 200)
    write_series_store(tmp_path / "srv", x, y, dataset_name=name, lookback=20, chunk_cells=4)
    repo = tmp_path / "study"
    repo.mkdir()
    shutil.copy(STUDY_ROOT / ".gitignore", repo / ".gitignore")
    subprocess.run(["git", "init", "-q", repo], check=True)
    out = repo / "results-gru"
    with FaultServer(tmp_path / "srv") as server:
        command = [sys.executable, "-m", PACKAGE, "--config", config, "train", "--url", server.url,
                   "--epochs", "2", "--out", out]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("OMP_") and k != POLICY_MARK}
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    log = done.stdout + done.stderr
    assert "\r" not in log and "it/s" not in log and "batch/s" not in log and "chunk/s" not in log, log
    assert not re.search(r"\d+%\|", log), log
    epochs = [line for line in done.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"], done.stdout

    written = [p.relative_to(repo) for p in out.rglob("*") if p.is_file()]
    assert Path("results-gru/checkpoints/last.pt") in written and Path("results-gru/summary.json") in written
    # The CLI chose the threads before torch started: one for this small LSTM, idle threads sleeping.
    threads = json.loads((out / "summary.json").read_text())["threads"]
    assert threads["threads"] == 1 and threads["threads_source"] == "policy" and threads["recurrent"], threads
    assert (threads["wait_policy"], threads["wait_source"]) == ("passive", "policy"), threads
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *map(str, written)], cwd=repo,
                             capture_output=True, text=True)  # fmt: skip
    assert sorted(ignored.stdout.split()) == sorted(map(str, written)), ignored
    added = subprocess.run(
        ["git", "add", "-A", "--dry-run"], cwd=repo, capture_output=True, text=True, check=True
    )
    assert not [line for line in added.stdout.splitlines() if "results-gru" in line], added.stdout


def test_serve_refuses_a_store_on_an_object_store(tmp_path: Path, capsys) -> None:
    config = study_toml(tmp_path / "study.toml", zarr_dir="s3://lab-bucket/drought")
    assert main(["--config", str(config), "serve"]) == 2
    assert "nothing to serve" in capsys.readouterr().err


def test_train_refuses_a_results_folder_that_is_a_file_before_training(tmp_path: Path, capsys) -> None:
    """Checked first: before the store is opened (nothing listens at the URL) or an epoch runs."""
    config = study_toml(tmp_path / "study.toml", out_dir=str(tmp_path / "taken" / "results"))
    (tmp_path / "taken").write_text("a file")
    (tmp_path / "summary.json").write_text("{}")
    url = "http://127.0.0.1:9"  # the discard port: a read would fail otherwise
    for extra, blocking in ((["--out", str(tmp_path / "summary.json")], "summary.json"), ([], "taken")):
        assert main(["--config", str(config), "train", "--url", url, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.splitlines()) == 1, err
        assert f"{tmp_path / blocking} is a file, not a folder" in err, err
