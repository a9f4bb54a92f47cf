"""study.toml loading: every key declared once, clear errors for bad files."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from ..cli import main
from ..config import SECTIONS, Config, ConfigError, load_config, reference_markdown
from .conftest import STUDY_ROOT


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(text)
    return path


def shipped_text() -> str:
    return (STUDY_ROOT / "study.toml").read_text()


def test_shipped_config_loads_and_resolves_paths(study_config: Config) -> None:
    assert study_config.root == STUDY_ROOT
    assert study_config.path(study_config.data.raw_dir) == STUDY_ROOT / "data" / "raw"
    assert study_config.store_name == f"{study_config.study.dataset_name}.zarr"
    assert study_config.store_path == STUDY_ROOT / "data" / "zarr" / study_config.store_name


def test_every_declared_key_is_in_the_shipped_file_and_the_reference() -> None:
    raw = tomllib.loads(shipped_text())
    reference = reference_markdown()
    for section, cls in SECTIONS.items():
        for name in cls.__dataclass_fields__:
            assert name in raw[section], f"{section}.{name} missing from study.toml"
            assert f"`{section}.{name}`" in reference


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("batch_size = 256", "batch_size = -3", "train.batch_size: -3 is below the minimum 1"),
        ("batch_size = 256", 'batch_size = "big"', "train.batch_size: expected int"),
        ('transform = "normal_score"', 'transform = "log"', "allowed: 'normal_score'"),
        ("batch_size = 256", "batch_size = 256\nbatchsize = 3", "did you mean 'batch_size'"),
        ("seed = 42\n", "", "train.seed: missing key"),
        ("[server]", "[servr]", "unknown section [servr]"),
        ("split_fractions = [0.7, 0.15, 0.15]", "split_fractions = [0.7, 0.2, 0.2]", "sum to 1"),
        ('model = "lstm"', 'model = "gru"', "train.model: 'gru' is not allowed; allowed: 'lstm', 'tcn'"),
        (
            "hidden_size = 32",
            "hiden_size = 32",
            "train.model_options: model 'lstm' (LSTMClassifier in train/models/lstm.py) has no option "
            "'hiden_size'; did you mean 'hidden_size'? its options: hidden_size (default 64), num_layers "
            "(default 1), dropout (default 0.0)",
        ),
        (
            'model = "lstm"',
            'model = "tcn"',
            "model 'tcn' (TCN in train/models/tcn.py) has no option 'hidden_size'",
        ),
        ("hidden_size = 32", "hidden_size = 6.4", "train.model_options.hidden_size: expected int, got 6.4"),
        ("seed = 42\n", "hidden_size = 64\nseed = 42\n", "train.hidden_size: now an option of the model"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    text = shipped_text()
    assert old in text
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        load_config(write(tmp_path, text.replace(old, new, 1)))
    assert str(tmp_path / "study.toml") in str(info.value)


def test_model_options_are_overridden_one_by_one_and_take_the_declared_types(study_config: Config) -> None:
    changed = study_config.override({"train.model_options.dropout": 0, "train.model_options.num_layers": 2})
    assert changed.train.model_options == {"hidden_size": 32, "num_layers": 2, "dropout": 0.0}
    assert isinstance(changed.train.model_options["dropout"], float)
    tcn = study_config.override({"train.model": "tcn", "train.model_options": {"channels": 8}})
    assert tcn.train.model == "tcn" and tcn.train.model_options == {"channels": 8}
    with pytest.raises(ConfigError, match="'time_lookback' is set by the study"):
        study_config.override({"train.model_options.time_lookback": 5})


def test_gap_shorter_than_lookback_is_rejected(study_config: Config) -> None:
    with pytest.raises(ConfigError, match="split_gap"):
        study_config.override({"etl.split_gap": study_config.etl.time_lookback - 1})


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[study\nname ="))
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml")


def test_override_validates_and_rejects_unknown_keys(study_config: Config) -> None:
    changed = study_config.override({"etl.time_lookback": 20, "etl.split_gap": 20})
    assert changed.etl.time_lookback == 20
    with pytest.raises(ConfigError, match=r"did you mean 'etl\.time_lookback'"):
        study_config.override({"etl.time_lookbak": 3})


def test_found_from_a_subfolder_and_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(STUDY_ROOT / "data")
    assert load_config().root == STUDY_ROOT
    copy = write(tmp_path, shipped_text())
    monkeypatch.setenv("STUDY_CONFIG", str(copy))
    assert load_config().root == tmp_path


def test_readme_reference_matches_the_declarations() -> None:
    readme = (STUDY_ROOT / "README.md").read_text()
    block = readme.split("<!-- config-reference:start -->\n")[1].split("<!-- config-reference:end -->")[0]
    assert block == reference_markdown(), "README reference is stale: paste `config --reference` into it"


def test_zarr_dir_may_be_an_s3_url_and_nothing_else_with_a_scheme(study_config: Config) -> None:
    on_s3 = study_config.override({"data.zarr_dir": "s3://lab-bucket/drought/"})
    assert on_s3.store_location.url == f"s3://lab-bucket/drought/{on_s3.store_name}"
    assert on_s3.store_location.path == f"lab-bucket/drought/{on_s3.store_name}"
    with pytest.raises(ConfigError, match="nothing to serve"):
        _ = on_s3.store_path
    assert study_config.store_location.url == str(study_config.store_path)
    for bad, message in (
        ("gs://bucket/x", "not an s3://bucket/prefix URL"),
        ("s3:///no-bucket", "not an s3://bucket/prefix URL"),
        ("s3://key:hunter2@bucket/x", "must not carry credentials"),
    ):
        with pytest.raises(ConfigError, match=message) as caught:
            study_config.override({"data.zarr_dir": bad})
        assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('url = "https://data.example.edu/zarr"', 'url = "https://u:hunter2@data.lab.edu/zarr"'),
        ('url = "https://data.example.edu/zarr"', 'url = "https://data.lab.edu/zarr?token=hunter2"'),
        ('dask_scheduler = ""', 'dask_scheduler = "tcp://u:hunter2@10.0.0.1:8786"'),
        ('zarr_dir = "data/zarr"', 'zarr_dir = "https://u:hunter2@data.lab.edu/zarr"'),
    ],
)
def test_credentials_in_a_configured_url_are_refused_and_never_shown(
    tmp_path: Path, old: str, new: str, capsys
) -> None:
    """study.toml is committed, printed by `config` and copied into the store's attributes (served
    to every reader): a password in one of its URLs would be published."""
    text = shipped_text()
    assert old in text
    path = write(tmp_path, text.replace(old, new, 1))
    with pytest.raises(ConfigError, match="must not carry credentials") as info:
        load_config(path)
    assert "hunter2" not in str(info.value)
    assert main(["--config", str(path), "config"]) == 2
    out, err = capsys.readouterr()
    assert "hunter2" not in out + err and err.startswith("error: ") and len(err.splitlines()) == 1


@pytest.mark.parametrize("name", ["../../x", "a/b", "", ".hidden", "a b", "x.zarr"])
def test_dataset_name_is_one_plain_name(tmp_path: Path, name: str, capsys) -> None:
    """The store is <zarr_dir>/<dataset_name>.zarr: a '/' or '..' would write it (and make folders)
    elsewhere. Refused when study.toml is loaded, before anything is written."""
    text = re.sub(r'(?m)^dataset_name = ".*"$', f"dataset_name = {json.dumps(name)}", shipped_text())
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=r"study\.dataset_name = .* is not a plain name; allowed: letters"):
        load_config(path)
    assert main(["--config", str(path), "etl"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.toml"], "nothing made"
