"""Typed loading of `study.toml`, the one configuration file of the study.

Every key is declared once, here, with its type, allowed values and meaning;
the loader checks the file against these declarations (missing, unknown and
mistyped keys are errors that name the file, the key and what is allowed), and
`reference_markdown()` documents the same declarations, so docs cannot drift.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import StudyError
from .store_format import store_name

CONFIG_NAME = "study.toml"
CONFIG_ENV = "STUDY_CONFIG"


class ConfigError(StudyError, ValueError):
    """A problem with study.toml, phrased so the user knows what to change."""


def key(help: str, *, choices: tuple[Any, ...] = (), low: float | None = None,
        high: float | None = None) -> Any:  # fmt: skip
    """Declare a config key: its meaning, and optionally allowed values or bounds."""
    return field(metadata={"help": help, "choices": choices, "low": low, "high": high})


@dataclass(frozen=True)
class StudySection:
    name: str = key("Human-readable study name.")
    dataset_name: str = key("Dataset name: the store's name and its features variable.")


@dataclass(frozen=True)
class DataSection:
    raw_dir: str = key("Folder of raw inputs (model output and reference).")
    zarr_dir: str = key("Folder the ETL writes the store into; nginx serves it read-only.")
    model_files: list[str] = key("Glob patterns (in raw_dir) of model-output NetCDF/zarr files.")
    reference_files: list[str] = key("Glob patterns (in raw_dir) of reference-label files.")
    variables: list[str] = key("Model-output variables used as features, in feature order.")
    reference_variable: str = key("Variable of the reference files holding the labels.")
    reference_kind: str = key(
        "How the reference is encoded: category codes 0..10, one-hot, or a percentile in [0, 1].",
        choices=("codes", "onehot", "percentile"),
    )
    dim_aliases: dict[str, str] = key(
        "Dimension names to rename on input, e.g. latitude -> lat (targets: time, lat, lon)."
    )
    grid_tolerance: float = key(
        "Largest allowed difference between model and reference coordinates (degrees).", low=0
    )


@dataclass(frozen=True)
class EtlSection:
    time_lookback: int = key(
        "Days per window (time_lookback); the loader cuts windows this long from the stored series.",
        low=1,
        high=3660,
    )
    chunk_cells: int = key(
        "Cells per zarr chunk: each chunk holds whole series of that many cells (one HTTP request).",
        low=1,
        high=1_000_000,
    )
    transform: str = key(
        "Skew handling of the per-cell percentiles.",
        choices=("normal_score", "percentile", "quantile_normal", "yeo_johnson"),
    )
    plotting_position: str = key(
        "Plotting position for empirical percentiles.",
        choices=("gringorten", "weibull", "hazen", "cunnane", "blom"),
    )
    doy_window: int = key("Half-width (days) of the circular day-of-year window.", low=0, high=60)
    split_fractions: list[float] = key("Train, validation, test fractions of the period.")
    split_gap_days: int = key("Gap between splits in days (at least time_lookback).", low=0)
    zarr_format: int = key("Zarr format of the store.", choices=(2, 3))
    compression_level: int = key("Zstandard compression level of the chunks.", low=1, high=22)
    block_mb: int = key(
        "Working memory (MB) of one block of cells; peak memory stays near it whatever the grid size.", low=1
    )
    dask_scheduler: str = key("dask.distributed scheduler address; empty for local threads.")


@dataclass(frozen=True)
class ServerSection:
    url: str = key("Public base URL of the data server (DATA_URL overrides it).")
    auth: str = key("Authentication of the data server.", choices=("token", "basic", "none"))
    port: int = key(
        "Port `serve` listens on when no --port is given (--port 0: any free port). Docker publishes "
        "DATA_PORT of .env instead: keep the two equal.",
        low=1,
        high=65535,
    )
    limit_rate: str = key("Per-connection bandwidth cap, nginx syntax (e.g. 2m); 0 = off.")
    requests_per_second: int = key(
        "Requests per second nginx serves to one client address; faster ones wait their turn "
        "(paced, not refused). Readers behind one address (a NAT) share it.",
        low=1,
    )
    burst: int = key(
        "Requests one client address may have waiting at once; beyond it nginx answers 429 with "
        "Retry-After: 1 (a runaway client). A reader has about train.prefetch_chunks requests in "
        "flight, an fsspec/aiohttp client at most 100.",
        low=1,
    )


@dataclass(frozen=True)
class TrainSection:
    batch_size: int = key("Samples per minibatch.", low=1)
    epochs: int = key("Maximum number of epochs.", low=1)
    learning_rate: float = key("Adam learning rate.", low=0)
    hidden_size: int = key("LSTM hidden units.", low=1)
    num_layers: int = key("Stacked LSTM layers.", low=1, high=16)
    dropout: float = key("Dropout between LSTM layers and before the head.", low=0, high=1)
    seed: int = key("Random seed (the order of each epoch's windows, initial weights).")
    class_weights: str = key(
        "Loss weights of the imbalanced categories: inverse frequency, its square root, or none.",
        choices=("balanced", "sqrt", "none"),
    )
    patience: int = key("Epochs without validation improvement before early stopping.", low=1)
    sample_stride: int = key("Days between consecutive window end dates of a cell.", low=1, high=366)
    resident_max_mb: int = key(
        "Largest decoded series (features and labels of every cell) kept resident on the training "
        "device, where every batch is a uniform draw; a larger store is streamed in rounds of "
        "cell blocks that fit in this budget.",
        low=1,
    )
    prefetch_chunks: int = key("Chunk requests in flight at once.", low=1)
    cache: str = key(
        "Local cache of downloaded chunks (across runs with 'disk').", choices=("none", "memory", "disk")
    )
    cache_dir: str = key("Folder of the disk chunk cache.")
    cache_max_mb: int = key("Size cap of the chunk cache in MB.", low=1)
    timeout_s: float = key("Seconds a read may wait for data before that attempt fails.", low=0)
    retry_budget_s: float = key(
        "Seconds a read may spend retrying transient errors (connection, timeout, 429, 5xx), with "
        "exponential backoff, jitter and the server's Retry-After; then it fails.",
        low=0,
    )
    out_dir: str = key("Folder for checkpoints, metrics and plots.")


SECTIONS: dict[str, type] = {
    "study": StudySection,
    "data": DataSection,
    "etl": EtlSection,
    "server": ServerSection,
    "train": TrainSection,
}


@dataclass(frozen=True)
class Config:
    """The whole study configuration; `root` is the folder relative paths start from."""

    root: Path
    source: str
    study: StudySection
    data: DataSection
    etl: EtlSection
    server: ServerSection
    train: TrainSection

    def path(self, relative: str | os.PathLike[str]) -> Path:
        """Resolve a path from the config against the study root."""
        return (self.root / relative).resolve()

    @property
    def store_name(self) -> str:
        """File name of the study's store, e.g. columbia_gridcells.zarr."""
        return store_name(self.study.dataset_name)

    @property
    def store_path(self) -> Path:
        """Local path of the study's store (written by the ETL, served by nginx)."""
        return self.path(self.data.zarr_dir) / self.store_name

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The config as plain TOML-like data (for provenance and overrides)."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def override(self, changes: Mapping[str, Any]) -> Config:
        """A validated copy with dotted keys replaced, e.g. {"etl.time_lookback": 30}."""
        raw = self.to_dict()
        for dotted, value in changes.items():
            section, _, name = dotted.partition(".")
            if section not in raw or name not in raw[section]:
                raise ConfigError(f"override {dotted!r}: no such key; {_suggest(dotted, _all_keys())}")
            raw[section][name] = value
        return from_dict(raw, root=self.root, source=f"{self.source} (with overrides)")


def _all_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


def _suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1)
    return f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(options)}"


def _check_type(value: Any, hint: Any, where: str) -> Any:
    """Check (and lightly coerce) one value against its declared type."""
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of {item.__name__}, got {value!r}")
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return {str(k): _check_type(v, item, f"{where}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (hint is int and isinstance(value, bool)) or not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _build_section(cls: type, table: Any, source: str, section: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{section}] must be a table of keys")
    where = f"{source}: {section}"
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for name in table:
        if name not in fields:
            raise ConfigError(f"{where}.{name}: unknown key; {_suggest(name, list(fields))}")
    values = {}
    for name, spec in fields.items():
        if name not in table:
            raise ConfigError(f"{where}.{name}: missing key ({spec.metadata['help']})")
        value = _check_type(table[name], hints[name], f"{where}.{name}")
        meta = spec.metadata
        if meta["choices"] and value not in meta["choices"]:
            allowed = ", ".join(repr(c) for c in meta["choices"])
            raise ConfigError(f"{where}.{name}: {value!r} is not allowed; allowed: {allowed}")
        if meta["low"] is not None and value < meta["low"]:
            raise ConfigError(f"{where}.{name}: {value!r} is below the minimum {meta['low']}")
        if meta["high"] is not None and value > meta["high"]:
            raise ConfigError(f"{where}.{name}: {value!r} is above the maximum {meta['high']}")
        values[name] = value
    return cls(**values)


def _check_consistency(cfg: Config) -> None:
    """Rules that span several keys."""
    where = cfg.source
    fractions = cfg.etl.split_fractions
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ConfigError(
            f"{where}: etl.split_fractions = {fractions!r}; allowed: three positive numbers "
            "(train, validation, test) that sum to 1"
        )
    if cfg.etl.split_gap_days < cfg.etl.time_lookback:
        raise ConfigError(
            f"{where}: etl.split_gap_days = {cfg.etl.split_gap_days} is shorter than "
            f"etl.time_lookback = {cfg.etl.time_lookback}; windows would overlap two splits"
        )
    if not cfg.data.variables:
        raise ConfigError(f"{where}: data.variables is empty; list at least one variable")
    if len(set(cfg.data.variables)) != len(cfg.data.variables):
        raise ConfigError(f"{where}: data.variables {cfg.data.variables!r} repeats a name")


def from_dict(raw: Mapping[str, Any], *, root: Path, source: str = "<dict>") -> Config:
    """Build and validate a Config from parsed TOML."""
    for name in raw:
        if name not in SECTIONS:
            raise ConfigError(f"{source}: unknown section [{name}]; {_suggest(name, list(SECTIONS))}")
    sections = {}
    for name, cls in SECTIONS.items():
        if name not in raw:
            raise ConfigError(f"{source}: missing section [{name}]")
        sections[name] = _build_section(cls, raw[name], source, name)
    cfg = Config(root=Path(root).resolve(), source=source, **sections)
    _check_consistency(cfg)
    return cfg


def find_config(start: Path | None = None) -> Path:
    """Locate study.toml: $STUDY_CONFIG, then upward from `start` (default: cwd), then the
    copy next to the source tree (editable install), then the copy inside the wheel."""
    if env := os.environ.get(CONFIG_ENV):
        path = Path(env).expanduser()
        if not path.is_file():
            raise ConfigError(f"{CONFIG_ENV}={env!r} does not point to a file")
        return path
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_NAME).is_file():
            return folder / CONFIG_NAME
    source_tree = Path(__file__).resolve().parents[2] / CONFIG_NAME
    if source_tree.is_file():
        return source_tree
    packaged = resources.files(__package__).joinpath(CONFIG_NAME)
    if packaged.is_file():
        return Path(str(packaged))
    raise ConfigError(
        f"no {CONFIG_NAME} found from {here} upward; run inside the study folder or set {CONFIG_ENV}"
    )


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load and validate study.toml (found with `find_config` when no path is given)."""
    path = Path(path) if path is not None else find_config()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return from_dict(raw, root=path.resolve().parent, source=str(path))


def reference_markdown() -> str:
    """Markdown table of every key: the config reference of the README."""
    lines = ["| key | type | meaning | allowed |", "|---|---|---|---|"]
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for spec in dataclasses.fields(cls):
            meta = spec.metadata
            hint = hints[spec.name]
            kind = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
            allowed = ", ".join(f"`{c}`" for c in meta["choices"])
            if not allowed and (meta["low"] is not None or meta["high"] is not None):
                low = "" if meta["low"] is None else f"≥ {meta['low']}"
                high = "" if meta["high"] is None else f"≤ {meta['high']}"
                allowed = " and ".join(x for x in (low, high) if x)
            lines.append(f"| `{section}.{spec.name}` | {kind} | {meta['help']} | {allowed} |")
    return "\n".join(lines) + "\n"
