"""The whole ETL on tiny synthetic inputs: store layout, exact round trip, manifest, no leakage."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
import xarray as xr
import zarr
from labzarr.etl.errors import StoreExistsError
from labzarr.etl.store import ChunkAppender, finalize, sha256_file
from labzarr.store_format import CLIMATOLOGY, blocks_from_attrs, valid_pairs, window_ends

from .. import __version__
from ..cli import main
from ..config import Config, load_config
from ..etl import quantiles
from ..etl.categories import CATEGORIES, MISSING, encoding_attrs, one_hot
from ..etl.pipeline import run_etl
from ..synthetic import SIZES, write_synthetic
from .conftest import study_toml, tiny
from .etl_support import (
    checksums,
    codes_to_percentile,
    manifest,
    open_store,
    tiny_datasets,
    write_inputs,
)

LOOKBACK = 20  # tiny_config's


@pytest.fixture
def built(tiny_inputs: Config) -> Config:
    """tiny_inputs after one ETL run (a test may change it)."""
    run_etl(tiny_inputs)
    return tiny_inputs


@pytest.fixture(scope="module")
def built_once(study_config: Config, tmp_path_factory: pytest.TempPathFactory) -> Config:
    """One ETL run of the tiny inputs that the tests which only read its store share."""
    cfg = tiny(study_config, tmp_path_factory.mktemp("built"))
    write_synthetic(cfg.path(cfg.data.raw_dir), cfg.data.variables, SIZES["tiny"])
    run_etl(cfg)
    return cfg


def test_store_layout_dtypes_chunks_and_attributes(built_once: Config) -> None:
    cfg, name = built_once, built_once.study.dataset_name
    assert [p.name for p in cfg.store_path.parent.iterdir()] == [f"{name}.zarr"]
    ds = xr.open_zarr(cfg.store_path, consolidated=True, mask_and_scale=False)
    assert set(ds.data_vars) == {name, "category", "complete"}
    assert ds[name].dims == ("cell", "time", "feature") and ds[name].dtype == np.float32
    n_cells, n_time = ds.sizes["cell"], ds.sizes["time"]
    n_features = len(cfg.data.variables)
    assert ds[name].encoding["chunks"] == (4, n_time, n_features)  # whole series of chunk_cells cells
    assert ds["category"].dtype == np.int8 and ds["category"].encoding["chunks"] == (4, n_time)
    assert ds["complete"].dtype == np.int8 and ds["complete"].encoding["chunks"] == (4, n_time)
    assert set(np.unique(ds["complete"].values)) <= {0, 1}  # yes / no; the fill (-1) is neither
    assert ds["lat"].dims == ds["lon"].dims == ("cell",) and ds["time"].dims == ("time",)
    assert list(ds["feature"].values) == cfg.data.variables
    codes = ds["category"].values
    assert codes.min() == MISSING and codes.max() < len(CATEGORIES)
    assert {k: ds.attrs[k] for k in encoding_attrs()} == encoding_attrs()
    assert ds.attrs["transform"] == cfg.etl.transform and ds.attrs["time_lookback"] == LOOKBACK
    blocks = blocks_from_attrs(ds.attrs)
    assert list(blocks) == ["train", "valid", "test"] and ds.attrs["split_gap"] == LOOKBACK
    assert (
        blocks["valid"].start - blocks["train"].stop
        == LOOKBACK
        == blocks["test"].start - blocks["valid"].stop
    )
    prov = ds.attrs["provenance"]
    assert prov["package_version"] == __version__ and prov["config"]["etl"]["time_lookback"] == LOOKBACK
    raw = cfg.path(cfg.data.raw_dir)
    assert {i["name"]: i["sha256"] for i in prov["inputs"]} == {
        p.name: sha256_file(p) for p in raw.glob("*.nc")
    }
    assert prov["created_utc"].endswith("Z")
    assert zarr.open_group(cfg.store_path, mode="r").metadata.zarr_format == cfg.etl.zarr_format
    climatology = quantiles.load_climatology(cfg.store_path)
    assert climatology.sizes["cell"] == n_cells and climatology.attrs["transform"] == cfg.etl.transform


def test_manifest_lists_every_chunk_with_its_checksum(built_once: Config) -> None:
    path = built_once.store_path
    group = zarr.open_group(path, mode="r")
    arrays = {name: a for name, a in group.members(max_depth=None) if isinstance(a, zarr.Array)}
    entries = manifest(path)["arrays"]
    assert set(entries) == set(arrays) and any(name.startswith(f"{CLIMATOLOGY}/") for name in entries)
    for name, entry in entries.items():
        array = arrays[name]
        expected = math.prod(math.ceil(s / c) for s, c in zip(array.shape, array.chunks, strict=True))
        assert entry["shape"] == list(array.shape) and entry["chunks"] == list(array.chunks)
        assert entry["chunk_count"] == expected == len(entry["sha256"]) == len(entry["crc32c"])
        for key, digest in entry["sha256"].items():
            assert sha256_file(path / key) == digest
            assert int(entry["crc32c"][key], 16) == google_crc32c.value((path / key).read_bytes())
    assert google_crc32c.value(b"123456789") == 0xE3069283  # the CRC-32C check value (Castagnoli)


def test_series_round_trip_exactly_and_trace_back_to_the_inputs(built_once: Config) -> None:
    """The stored series equal the climatology re-applied to the raw inputs; the labels are the
    reference's on each cell and day; `complete` marks the days with every feature finite."""
    cfg, name = built_once, built_once.study.dataset_name
    raw = cfg.path(cfg.data.raw_dir)
    model = xr.open_dataset(raw / "model_output.nc").load()
    reference = xr.open_dataset(raw / "reference.nc", mask_and_scale=False).load()
    climatology = quantiles.load_climatology(cfg.store_path).load()
    series = quantiles.apply(climatology, model)  # (cell, time, feature)
    ds = open_store(cfg)
    np.testing.assert_array_equal(ds[name].values, series.values)
    np.testing.assert_array_equal(ds.lat.values, series.lat.values)
    labels = reference.drought_category.sel(lat=xr.DataArray(ds.lat.values), lon=xr.DataArray(ds.lon.values))
    np.testing.assert_array_equal(ds["category"].values, labels.transpose("dim_0", "time").values)
    np.testing.assert_array_equal(ds["complete"].values, np.isfinite(series.values).all(axis=2))
    assert list(ds.time.values) == list(model.time.values)


def test_masked_cells_are_left_out_and_logged(tiny_inputs: Config, caplog) -> None:
    with caplog.at_level(logging.INFO):
        run_etl(tiny_inputs)
    # tiny synthetic grid: a 1x1 all-NaN corner (no labels either) and one land cell without labels.
    assert "masked 2 of 12 cells: 2 without reference labels, 1 with all-NaN inputs" in caplog.text
    assert "usable 20-day windows" in caplog.text
    ds = open_store(tiny_inputs)
    assert ds.sizes["cell"] == 10
    lat, lon = ds.lat.values, ds.lon.values
    assert not np.any((lat == lat.max()) & (lon == lon.min()))  # the NaN corner (north-west)


def test_runs_write_byte_identical_chunks_in_any_blocks_and_overwrite_is_explicit(
    built: Config, monkeypatch
) -> None:
    """A second run writes the same bytes, also block by block (bounded memory), and replacing a
    store takes --overwrite."""
    from ..etl import pipeline

    first = checksums(built.store_path)
    with pytest.raises(StoreExistsError, match="--overwrite"):
        run_etl(built)
    monkeypatch.setattr(pipeline, "block_cells", lambda *args: 3)  # partial rows of the 3x4 grid
    run_etl(built, overwrite=True)
    assert checksums(built.store_path) == first
    assert not [p for p in built.store_path.parent.iterdir() if p.name.startswith(".")]


def test_no_leakage_from_validation_and_test_into_training(built: Config) -> None:
    """Scrambling every day after the training block changes nothing of the fitted state nor of
    the training block's series; the later days do change."""
    cfg, name = built, built.study.dataset_name
    before = open_store(cfg)
    climatology = checksums(cfg.store_path, prefix=f"{CLIMATOLOGY}/")
    train = blocks_from_attrs(before.attrs)["train"]
    model, reference = tiny_datasets(cfg)
    later = model.time > before.time.values[train.stop - 1]
    for v in cfg.data.variables:
        model[v] = model[v].where(~later, model[v] * 3.0 + 1.0)
    write_inputs(cfg, model, reference)
    run_etl(cfg, overwrite=True)
    after = open_store(cfg)
    assert checksums(cfg.store_path, prefix=f"{CLIMATOLOGY}/") == climatology
    np.testing.assert_array_equal(after[name].values[:, : train.stop], before[name].values[:, : train.stop])
    assert not np.array_equal(after[name].values[:, train.stop :], before[name].values[:, train.stop :])


@pytest.mark.parametrize(("calendar", "zarr_format", "period"), [("noleap", 3, 365), ("360_day", 2, 360)])
def test_cftime_calendars_zarr_formats_and_aliased_dims(
    tiny_config: Config, calendar: str, zarr_format: int, period: int
) -> None:
    cfg = tiny_config.override({"etl.zarr_format": zarr_format})
    model, reference = tiny_datasets(cfg, calendar=calendar)
    model = model.rename(lat="latitude", lon="longitude")
    write_inputs(cfg, model, reference)
    run_etl(cfg)
    ds = xr.open_zarr(cfg.store_path, consolidated=True)
    assert zarr.open_group(cfg.store_path, mode="r").metadata.zarr_format == zarr_format
    assert ds.time.values[0].calendar == calendar and ds.attrs["season_period"] == period
    assert list(ds.time.values) == list(model.time.values)
    keys = manifest(cfg.store_path)["arrays"][cfg.study.dataset_name]["sha256"]
    prefix = f"{cfg.study.dataset_name}/c/" if zarr_format == 3 else f"{cfg.study.dataset_name}/0."
    assert any(k.startswith(prefix) for k in keys)


def test_zarr_inputs_and_a_flipped_reference_grid_give_the_same_store(built: Config) -> None:
    expected = checksums(built.store_path)
    model, reference = tiny_datasets(built)
    raw = built.path(built.data.raw_dir)
    (raw / "model_output.nc").unlink()
    model.to_zarr(raw / "model_output.zarr", zarr_format=2)
    write_inputs(built, None, reference.isel(lat=slice(None, None, -1)))  # south to north
    cfg = built.override({"data.model_files": ["model_output*.zarr"]})
    run_etl(cfg, overwrite=True)
    assert checksums(cfg.store_path) == expected


@pytest.mark.parametrize("kind", ["onehot", "percentile"])
def test_onehot_and_percentile_references_give_the_same_labels_as_codes(built: Config, kind: str) -> None:
    expected = open_store(built)
    cfg = built.override({"data.reference_kind": kind, "data.zarr_dir": str(built.store_path.parent / kind)})
    _, reference = tiny_datasets(cfg)
    codes = reference.drought_category.values
    if kind == "onehot":
        values = xr.DataArray(one_hot(codes), dims=("time", "lat", "lon", "category"))
    else:
        values = xr.DataArray(codes_to_percentile(codes), dims=("time", "lat", "lon"))
    write_inputs(cfg, None, reference.assign(drought_category=values))
    run_etl(cfg)
    got = open_store(cfg)
    np.testing.assert_array_equal(got["category"].values, expected["category"].values)
    np.testing.assert_array_equal(got[cfg.study.dataset_name].values, expected[cfg.study.dataset_name].values)


def test_inputs_split_over_files_give_the_same_store(built: Config) -> None:
    expected = checksums(built.store_path)
    model, _ = tiny_datasets(built)
    raw = built.path(built.data.raw_dir)
    (raw / "model_output.nc").unlink()
    for year, part in model.groupby("time.year"):  # one file per year, as many products ship
        for v in built.data.variables:
            part[[v]].to_netcdf(raw / f"model_output_{v}_{year}.nc")
    run_etl(built, overwrite=True)
    assert checksums(built.store_path) == expected


@pytest.mark.parametrize("transform", ["percentile", "quantile_normal", "yeo_johnson"])
def test_other_transforms_store_their_state_and_apply_reproduces_it(
    tiny_inputs: Config, transform: str
) -> None:
    cfg = tiny_inputs.override({"etl.transform": transform})
    run_etl(cfg)
    model = xr.open_dataset(cfg.path(cfg.data.raw_dir) / "model_output.nc").load()
    climatology = quantiles.load_climatology(cfg.store_path).load()
    assert climatology.attrs["transform"] == transform
    series = quantiles.apply(climatology, model)
    np.testing.assert_array_equal(open_store(cfg)[cfg.study.dataset_name].values, series.values)


def test_chunk_appender_writes_every_chunk_even_all_fill_ones_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    zarr.open_group(path, mode="w", zarr_format=2)  # the root the appender writes into
    times = xr.date_range("2001-01-01", periods=25, calendar="360_day", use_cftime=True).values
    data = np.zeros((25, 3, 2), np.float32)
    data[10:20] = np.nan  # one chunk entirely NaN (the fill value), one entirely zero
    data[20:] = np.random.default_rng(0).standard_normal((5, 3, 2))
    writer = ChunkAppender(
        path,
        dim="samples",
        chunk=10,
        layout={"x": ("samples", "lb", "f"), "time": ("samples",)},
        coords=("time",),
        time_units="days since 2001-01-01",
        calendar="360_day",
        flush_mb=0,  # write as soon as a chunk is full: exercises the append path
    )
    for start in range(0, 25, 7):  # pieces that do not line up with chunks
        writer.add({"x": data[start : start + 7], "time": times[start : start + 7]})
    assert writer.close() == 25
    finalize(path, {"note": "test"}, {})
    assert manifest(path)["arrays"]["x"]["chunk_count"] == 3
    assert all((path / key).is_file() for key in checksums(path))
    back = xr.open_zarr(path, consolidated=True).load()
    np.testing.assert_array_equal(back.x.values, data)
    assert list(back.time.values) == list(times) and back.attrs["note"] == "test"


def test_cli_runs_the_etl_and_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    study_toml(tmp_path / "study.toml", time_lookback=20, split_gap=20)
    variables = load_config(tmp_path / "study.toml").data.variables
    write_synthetic(tmp_path / "data" / "raw", variables, SIZES["tiny"])
    config = ["--config", str(tmp_path / "study.toml")]
    assert main([*config, "etl"]) == 0
    assert (tmp_path / "data" / "zarr" / load_config(tmp_path / "study.toml").store_name).is_dir()
    assert main([*config, "etl"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*config, "etl", "--overwrite"]) == 0


def test_missing_labels_and_inputs_inside_the_period_drop_only_their_windows(tiny_config: Config) -> None:
    model, reference = tiny_datasets(tiny_config)
    reference["drought_category"][400, :, :] = MISSING  # one day without labels anywhere
    model[tiny_config.data.variables[0]][500, 1, 1] = np.nan  # one missing input value in one cell
    write_inputs(tiny_config, model, reference)
    run_etl(tiny_config)
    ds = open_store(tiny_config)
    labels, complete = ds["category"].values, ds["complete"].values
    cell = int(
        np.flatnonzero((ds.lat.values == model.lat.values[1]) & (ds.lon.values == model.lon.values[1]))[0]
    )
    assert (labels[:, 400] == MISSING).all() and not complete[cell, 500] and complete[cell, 499]
    pairs = valid_pairs(
        labels, complete, window_ends(blocks_from_attrs(ds.attrs)["train"], LOOKBACK), LOOKBACK
    )
    cells, ends = pairs // ds.sizes["time"], pairs % ds.sizes["time"]
    assert 400 not in ends
    mine = set(ends[cells == cell])
    assert not mine & set(range(500, 520))  # windows containing the NaN day are not usable
    assert {499, 520} <= mine
