"""Typed loading of `study.toml`, the one configuration file of the study.

Every key is declared once, here, with its type, allowed values and meaning;
the loader checks the file against these declarations (missing, unknown and
mistyped keys are errors that name the file, the key and what is allowed), and
`reference_markdown()` documents the same declarations, so docs cannot drift.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labzarr import settings
from labzarr.location import LocationError, StoreLocation, check_s3_url, has_credentials
from labzarr.registry import RegistryError
from labzarr.serve import ServeSettings
from labzarr.settings import ConfigError, key
from labzarr.store_format import store_name

from .train import models
from .train.models import MODELS

if TYPE_CHECKING:
    from labzarr.remote import StoreSource  # imported when used: xarray and zarr take a second

# Keys an older study.toml may still have, and what to do with each.
MOVED = {
    # renamed when time steps other than days arrived
    **{old: f"renamed {new} (it counts time steps, days or months: etl.time_step); rename it in study.toml"
       for old, new in (("etl.split_gap_days", "etl.split_gap"), ("etl.doy_window", "etl.season_window"))},
    # options of the LSTM since the model is a choice (train.model)
    **{f"train.{name}": "now an option of the model: move the line into the [train.model_options] table "
       '(with model = "lstm" in [train])' for name in ("hidden_size", "num_layers", "dropout")},
}  # fmt: skip

CONFIG_NAME = "study.toml"
CONFIG_ENV = "STUDY_CONFIG"
MAX_MONTHLY_SEASON_WINDOW = 5  # months either side: 11 of the 12 calendar months


@dataclass(frozen=True)
class StudySection:
    name: str = key("Human-readable study name.")
    dataset_name: str = key("Dataset name: the store's name and its features variable.")


@dataclass(frozen=True)
class DataSection:
    raw_dir: str = key("Folder of raw inputs (model output and reference).")
    zarr_dir: str = key(
        "Folder the ETL writes the store into (nginx serves it read-only), or an s3://bucket/prefix "
        "on an S3-compatible object store (endpoint and keys from the AWS_* variables, never here)."
    )
    model_files: list[str] = key(
        "Glob patterns (relative to raw_dir, or absolute) of model-output NetCDF/zarr files."
    )
    reference_files: list[str] = key(
        "Glob patterns (relative to raw_dir, or absolute) of reference-label files; [] when reference_kind "
        "= 'derived'."
    )
    variables: list[str] = key("Model-output variables used as features, in feature order.")
    reference_variable: str = key(
        "Variable of the reference files holding the labels (not read when reference_kind = 'derived')."
    )
    reference_kind: str = key(
        "How the labels arrive: category codes 0..10, one-hot, a percentile in [0, 1], or derived from "
        "the model-output variable derive_from (its trailing-mean percentile, fitted on the training "
        "block).",
        choices=("codes", "onehot", "percentile", "derived"),
    )
    derive_from: str = key(
        "Model-output variable the labels are derived from when reference_kind = 'derived' (a feature "
        "or not); otherwise empty."
    )
    derive_window: int = key(
        "Time steps of the trailing mean whose percentile gives derived labels (e.g. 30 days, 3 months).",
        low=1,
        high=3660,
    )
    dim_aliases: dict[str, str] = key(
        "Dimension names to rename on input, e.g. latitude -> lat (targets: time, lat, lon)."
    )
    select: dict[str, float | str | dict[str, float | str]] = key(
        "One value of each extra dimension, e.g. { plev = 85000 } (nearest, within select_tolerance) or "
        '{ member = "r1i1p1f1" } (equal); a table named after a variable applies to it alone.'
    )
    select_tolerance: float = key(
        "Largest allowed distance between a number in select and the coordinate value it picks "
        "(in that coordinate's units).",
        low=0,
    )
    units: dict[str, str] = key(
        'Expected units of variables, e.g. { ta = "K" } (UDUNITS/CF spelling); every file of a '
        "variable must carry the same units, and these where given."
    )
    grid_tolerance: float = key(
        "Largest allowed difference between model and reference coordinates (degrees) on top of "
        "rounding (1/1000 of the spacing or float32 precision, always allowed); must stay below half "
        "the grid spacing.",
        low=0,
    )
    fill_gaps: bool = key(
        "Fill missing time steps (days or months) with NaN instead of refusing the inputs; windows "
        "that touch them are not used."
    )


@dataclass(frozen=True)
class EtlSection:
    time_step: str = key(
        "What one time step of the inputs is; lookback, gaps, stride and windows count these steps.",
        choices=("daily", "monthly"),
    )
    time_lookback: int = key(
        "Time steps per window (time_lookback); the loader cuts windows this long from the stored series.",
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
    season_window: int = key(
        "Half-width, in time steps, of the circular window of the season the percentiles are fitted "
        "on: days of year (daily steps; e.g. 7) or months of year (monthly; at most 5, e.g. 0 or 1).",
        low=0,
        high=60,
    )
    split_fractions: list[float] = key("Train, validation, test fractions of the period.")
    split_gap: int = key("Gap between splits in time steps (at least time_lookback).", low=0)
    zarr_format: int = key("Zarr format of the store.", choices=(2, 3))
    compression_level: int = key("Zstandard compression level of the chunks.", low=1, high=22)
    block_mb: int = key(
        "Working memory (MB) of one block of cells; peak memory stays near it whatever the grid size.", low=1
    )
    dask_scheduler: str = key(
        'Where the blocks of cells run: "" in this process; "local:N" on N dask worker processes '
        'started for the run; "tcp://host:port" on a running dask.distributed scheduler.'
    )


@dataclass(frozen=True)
class ServerSection:
    url: str = key(
        "Public base URL of the data server (DATA_URL overrides it); no credentials in it: readers take "
        "them from DATA_TOKEN, or DATA_USER and DATA_PASSWORD."
    )
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
    model: str = key(
        "The model trained: a name of the registry in train/models/__init__.py (README: Change the model).",
        choices=tuple(MODELS),
    )
    model_options: dict[str, int | float | str | bool] = key(
        "The model's constructor keyword arguments, a [train.model_options] table (e.g. hidden_size, "
        "num_layers, dropout of 'lstm'; channels, kernel_size, levels, dropout of 'tcn'); omitted ones "
        "take the constructor's defaults, unknown names are refused."
    )
    seed: int = key("Random seed (the order of each epoch's windows, initial weights).")
    class_weights: str = key(
        "Loss weights of the imbalanced categories: inverse frequency, its square root, or none.",
        choices=("balanced", "sqrt", "none"),
    )
    patience: int = key("Epochs without validation improvement before early stopping.", low=1)
    sample_stride: int = key(
        "Time steps between consecutive window end dates of a cell: a fixed thinning, the same windows "
        "in every epoch and in the evaluation splits.",
        low=1,
        high=366,
    )
    windows_per_epoch: int = key(
        "Training windows per epoch, drawn afresh each epoch (uniformly, from the seeded order; DDP "
        "ranks share one draw); 0 = all. Neighbouring windows of a cell share all but one step, so a "
        "fraction of them per epoch trains about as well, faster; the evaluation splits use all.",
        low=0,
    )
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
        "Seconds one read may take in all, attempts and waits included (at least one timeout_s; opening "
        "the store gets the same for all its reads): transient errors (connection, timeout, 429, 5xx) "
        "are retried within it, with exponential backoff, jitter and the server's Retry-After, and a "
        "server that trickles data cannot extend it; then the read fails.",
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
        if "://" in self.data.zarr_dir:
            raise ConfigError(
                f"{self.source}: data.zarr_dir = {self.data.zarr_dir!r} is on an object store, not a "
                "folder: there is nothing to serve here; readers use DATA_URL (or --url) with that URL"
            )
        return self.path(self.data.zarr_dir) / self.store_name

    @property
    def store_location(self) -> StoreLocation:
        """Where the ETL writes the store: a local folder or an s3:// prefix."""
        if "://" in self.data.zarr_dir:
            return StoreLocation(f"{self.data.zarr_dir.rstrip('/')}/{self.store_name}")
        return StoreLocation(str(self.store_path))

    def store_source(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        cache: str | None = None,
    ) -> StoreSource:
        """The served store as [train] reads it, resolved once: base URL from `url`, then
        $DATA_URL, then server.url; credentials from the arguments, then DATA_TOKEN or
        DATA_USER/DATA_PASSWORD (server.auth decides which wins when both are set)."""
        from labzarr.remote import StoreSource

        t = self.train
        return StoreSource.resolve(
            url,
            dataset_name=self.study.dataset_name,
            default_url=self.server.url,
            default_origin="server.url in study.toml",
            auth=self.server.auth,
            token=token,
            user=user,
            password=password,
            timeout_s=t.timeout_s,
            retry_budget_s=t.retry_budget_s,
            in_flight=t.prefetch_chunks,
            cache=cache or t.cache,
            cache_dir=str(self.path(t.cache_dir)),
            cache_max_mb=t.cache_max_mb,
        )

    def serve_settings(self) -> ServeSettings:
        """What `serve` needs: the study folder (nginx templates, secrets) and [server]."""
        s = self.server
        return ServeSettings(
            root=self.root, auth=s.auth, port=s.port, limit_rate=s.limit_rate,
            requests_per_second=s.requests_per_second, burst=s.burst, source=self.source,
        )  # fmt: skip

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The config as plain TOML-like data (for provenance and overrides)."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def override(self, changes: Mapping[str, Any]) -> Config:
        """A validated copy with dotted keys replaced, e.g. {"etl.time_lookback": 30}."""
        raw = self.to_dict()
        for dotted, value in changes.items():
            section, _, name = dotted.partition(".")
            name, _, item = name.partition(".")  # train.model_options.hidden_size: one entry of a table
            if (
                section not in raw
                or name not in raw[section]
                or (item and not isinstance(raw[section][name], dict))
            ):
                hint = settings.suggest(dotted, settings.all_keys(SECTIONS))
                raise ConfigError(f"override {dotted!r}: no such key; {hint}")
            raw[section][name] = {**raw[section][name], item: value} if item else value
        return from_dict(raw, root=self.root, source=f"{self.source} (with overrides)")


def _check_consistency(cfg: Config) -> None:
    """Rules that span several keys."""
    where = cfg.source
    try:
        store_name(cfg.study.dataset_name)
    except ValueError as exc:
        raise ConfigError(f"{where}: study.dataset_name = {exc}") from None
    urls = {"server.url": cfg.server.url, "etl.dask_scheduler": cfg.etl.dask_scheduler}  # zarr_dir: below
    for name, url in urls.items():
        if has_credentials(url):
            raise ConfigError(
                f"{where}: {name} must not carry credentials (user:password@ or a ?query): it is printed and "
                "written into the store's attributes; remove them (readers take DATA_TOKEN, or DATA_USER "
                "and DATA_PASSWORD, from the environment)"
            )
    if "://" in cfg.data.zarr_dir:
        try:
            check_s3_url(cfg.data.zarr_dir, f"{where}: data.zarr_dir")
        except LocationError as exc:
            raise ConfigError(f"{exc} (a folder, or s3://bucket/prefix)") from None
    fractions = cfg.etl.split_fractions
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ConfigError(
            f"{where}: etl.split_fractions = {fractions!r}; allowed: three positive numbers "
            "(train, validation, test) that sum to 1"
        )
    if cfg.etl.split_gap < cfg.etl.time_lookback:
        raise ConfigError(
            f"{where}: etl.split_gap = {cfg.etl.split_gap} is shorter than "
            f"etl.time_lookback = {cfg.etl.time_lookback}; windows would overlap two splits"
        )
    if cfg.etl.time_step == "monthly" and cfg.etl.season_window > MAX_MONTHLY_SEASON_WINDOW:
        raise ConfigError(
            f"{where}: etl.season_window = {cfg.etl.season_window} months with etl.time_step = 'monthly' "
            f"spans the whole year; allowed: 0..{MAX_MONTHLY_SEASON_WINDOW} (e.g. 0: each calendar month "
            "against itself, 1: with its neighbours)"
        )
    data = cfg.data
    if not data.variables:
        raise ConfigError(f"{where}: data.variables is empty; list at least one variable")
    if len(set(data.variables)) != len(data.variables):
        raise ConfigError(f"{where}: data.variables {data.variables!r} repeats a name")
    _check_labels(data, where)
    named = {*data.variables, data.derive_from, data.reference_variable} - {""}
    for table, keys in (("select", [k for k, v in data.select.items() if isinstance(v, dict)]),
                        ("units", list(data.units))):  # fmt: skip
        for name in keys:
            if name not in named:
                raise ConfigError(
                    f"{where}: data.{table}.{name} names no variable of the study (variables, "
                    "derive_from, reference_variable); fix the name or remove the entry"
                )


def _check_model(train: TrainSection, source: str) -> TrainSection:
    """train.model_options against the model's constructor (read from its source, no torch):
    names, and the types of int, float, str and bool parameters (ints become floats where a
    float is declared)."""
    where = f"{source}: train.model_options"
    try:
        models.REGISTRY.check_options(train.model, train.model_options)
        hints = models.REGISTRY.option_types(train.model)
    except RegistryError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    options = {
        name: settings.check_type(value, hints[name], f"{where}.{name}")
        if hints.get(name) in (int, float, str, bool)
        else value
        for name, value in train.model_options.items()
    }
    return dataclasses.replace(train, model_options=options)


def _check_labels(data: DataSection, where: str) -> None:
    """Derived labels need derive_from and no reference files; the other kinds, the reverse."""
    if data.reference_kind == "derived":
        if not data.derive_from:
            raise ConfigError(
                f"{where}: data.reference_kind = 'derived' needs data.derive_from, the model-output "
                'variable the labels are derived from (e.g. derive_from = "soil_moisture")'
            )
        if data.reference_files:
            raise ConfigError(
                f"{where}: data.reference_files = {data.reference_files!r} would not be read: with "
                "data.reference_kind = 'derived' the labels come from data.derive_from; set "
                "reference_files = []"
            )
    elif data.derive_from:
        raise ConfigError(
            f"{where}: data.derive_from = {data.derive_from!r} is only read when data.reference_kind = "
            f'\'derived\' (it is {data.reference_kind!r}); set derive_from = "" or reference_kind = "derived"'
        )


def from_dict(raw: Mapping[str, Any], *, root: Path, source: str = "<dict>") -> Config:
    """Build and validate a Config from parsed TOML."""
    sections = settings.build_sections(raw, SECTIONS, source, MOVED)
    sections["train"] = _check_model(sections["train"], source)
    cfg = Config(root=Path(root).resolve(), source=source, **sections)
    _check_consistency(cfg)
    return cfg


def find_config(start: Path | None = None) -> Path:
    """Locate study.toml: $STUDY_CONFIG, then upward from `start` (default: cwd), then the
    copy next to the source tree (editable install), then the copy inside the wheel."""
    return settings.find_file(
        CONFIG_NAME, env=CONFIG_ENV, start=start,
        fallbacks=(Path(__file__).resolve().parents[2] / CONFIG_NAME,
                   resources.files(__package__).joinpath(CONFIG_NAME)),
    )  # fmt: skip


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load and validate study.toml (found with `find_config` when no path is given)."""
    path = Path(path) if path is not None else find_config()
    return from_dict(settings.read_toml(path), root=path.resolve().parent, source=str(path))


def reference_markdown() -> str:
    """Markdown table of every key: the config reference of the README."""
    return settings.reference_markdown(SECTIONS)
