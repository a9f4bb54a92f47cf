"""The command line: help, synth, config reference, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ..cli import main
from .conftest import STUDY_ROOT

PACKAGE = __package__.rsplit(".", 1)[0]


def test_help_lists_every_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", PACKAGE, "--help"], capture_output=True, text=True, check=True
    )
    for command in ("synth", "etl", "serve", "train", "config"):
        assert command in result.stdout


def test_synth_writes_inputs_and_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    config = ["--config", str(STUDY_ROOT / "study.toml")]
    assert main([*config, "synth", "--size", "tiny", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "model_output.nc").is_file()
    assert main([*config, "synth", "--size", "tiny", "--out", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_config_reference_and_bad_config(tmp_path: Path, capsys) -> None:
    assert main(["--config", str(STUDY_ROOT / "study.toml"), "config", "--reference"]) == 0
    assert "`etl.time_lookback`" in capsys.readouterr().out
    bad = tmp_path / "study.toml"
    bad.write_text("[study]\n")
    assert main(["--config", str(bad), "config"]) == 2
    assert "missing key" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["synth", "etl", "serve", "train"])
def test_every_command_has_help(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage" in capsys.readouterr().out
