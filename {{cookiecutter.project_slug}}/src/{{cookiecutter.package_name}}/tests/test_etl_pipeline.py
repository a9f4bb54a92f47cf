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

from .. import __version__
from ..cli import main
from ..config import Config, load_config
from ..etl import quantiles
from ..etl.categories import CATEGORIES, MISSING, encoding_attrs, one_hot
from ..etl.errors import StoreExistsError
from ..etl.pipeline import run_etl
from ..etl.store import ChunkAppender, finalize, sha256_file
from ..etl.windows import SPLITS, gather
from ..synthetic import SIZES, write_synthetic
from .conftest import STUDY_ROOT
from .etl_support import (
    checksums,
    codes_to_percentile,
    manifest,
    open_split,
    tiny_datasets,
    write_inputs,
)

STORES = (*SPLITS, "climatology")


@pytest.fixture
def built(tiny_inputs: Config) -> Config:
    """tiny_inputs after one ETL run."""
    run_etl(tiny_inputs)
    return tiny_inputs


def test_store_layout_dtypes_chunks_and_attributes(built: Config) -> None:
    cfg, name = built, built.study.dataset_name
    assert sorted(p.name for p in cfg.store_dir.iterdir()) == sorted(f"{s}.zarr" for s in STORES)
    assert cfg.store_dir.name == f"{name}_lb20"
    for split in SPLITS:
        ds = xr.open_zarr(cfg.store_dir / f"{split}.zarr", consolidated=True)
        data = ds[name]
        assert data.dims == ("samples", "time_lookback", "features") and data.dtype == np.float32
        assert data.shape[1:] == (20, 2) and data.encoding["chunks"] == (500, 20, 2)
        assert ds["category"].dtype == np.int8 and ds["category"].encoding["chunks"] == (500,)
        for coord in ("lat", "lon", "time"):
            assert ds[coord].dims == ("samples",) and ds[coord].encoding["chunks"] == (500,)
        assert list(ds["features"].values) == cfg.data.variables
        codes = ds["category"].values
        assert codes.min() >= 0 and codes.max() < len(CATEGORIES)
        assert {k: ds.attrs[k] for k in encoding_attrs()} == encoding_attrs()
        assert ds.attrs["split"] == split and ds.attrs["transform"] == cfg.etl.transform
        prov = ds.attrs["provenance"]
        assert prov["package_version"] == __version__ and prov["config"]["etl"]["time_lookback"] == 20
        raw = cfg.path(cfg.data.raw_dir)
        assert {i["name"]: i["sha256"] for i in prov["inputs"]} == {
            p.name: sha256_file(p) for p in raw.glob("*.nc")
        }
        assert prov["created_utc"].endswith("Z")
        group = zarr.open_group(cfg.store_dir / f"{split}.zarr", mode="r")
        assert group.metadata.zarr_format == cfg.etl.zarr_format


def test_manifest_lists_every_chunk_with_its_checksum(built: Config) -> None:
    for store in STORES:
        path = built.store_dir / f"{store}.zarr"
        group = zarr.open_group(path, mode="r")
        entries = manifest(path)["arrays"]
        assert set(entries) == {name for name, _ in group.arrays()}
        for name, entry in entries.items():
            array = group[name]
            expected = math.prod(math.ceil(s / c) for s, c in zip(array.shape, array.chunks, strict=True))
            assert entry["shape"] == list(array.shape) and entry["chunks"] == list(array.chunks)
            assert entry["chunk_count"] == expected == len(entry["checksums"]) == len(entry["crc32c"])
            for key, digest in entry["checksums"].items():
                assert sha256_file(path / key) == digest
                assert int(entry["crc32c"][key], 16) == google_crc32c.value((path / key).read_bytes())
    assert google_crc32c.value(b"123456789") == 0xE3069283  # the CRC-32C check value (Castagnoli)


def test_samples_round_trip_exactly_and_trace_back_to_the_inputs(built: Config) -> None:
    """Every stored window equals the climatology re-applied to the raw inputs, cut at its end date."""
    cfg, name = built, built.study.dataset_name
    raw = cfg.path(cfg.data.raw_dir)
    model = xr.open_dataset(raw / "model_output.nc").load()
    reference = xr.open_dataset(raw / "reference.nc").load()
    climatology = quantiles.load_climatology(cfg.store_dir / "climatology.zarr").load()
    series = quantiles.apply(climatology, model)  # (cell, time, features)
    cell_of = {
        (la, lo): i for i, (la, lo) in enumerate(zip(series.lat.values, series.lon.values, strict=True))
    }
    day_of = {t: i for i, t in enumerate(model.time.values)}
    total = 0
    for split in SPLITS:
        ds = open_split(cfg, split)
        cell = np.array([cell_of[k] for k in zip(ds.lat.values, ds.lon.values, strict=True)])
        end = np.array([day_of[t] for t in ds.time.values])
        np.testing.assert_array_equal(ds[name].values, gather(series.values, cell, end, 20))
        labels = reference.drought_category.sel(
            time=xr.DataArray(ds.time.values),
            lat=xr.DataArray(ds.lat.values),
            lon=xr.DataArray(ds.lon.values),
        )
        np.testing.assert_array_equal(ds["category"].values, labels.values)
        assert np.all(np.diff(cell) >= 0)  # cell-major order
        total += ds.sizes["samples"]
    assert not np.isnan(series.values).any()
    assert total > 0


def test_masked_cells_are_left_out_and_logged(tiny_inputs: Config, caplog) -> None:
    with caplog.at_level(logging.INFO):
        run_etl(tiny_inputs)
    # tiny synthetic grid: a 1x1 all-NaN corner (no labels either) and one land cell without labels.
    assert "masked 2 of 12 cells: 2 without reference labels, 1 with all-NaN inputs" in caplog.text
    climatology = xr.open_zarr(tiny_inputs.store_dir / "climatology.zarr")
    assert climatology.sizes["cell"] == 10
    lat, lon = climatology.lat.values, climatology.lon.values
    assert not np.any((lat == lat.max()) & (lon == lon.min()))  # the NaN corner (north-west)


def test_two_runs_write_byte_identical_chunks_and_overwrite_is_explicit(built: Config) -> None:
    first = {s: checksums(built.store_dir / f"{s}.zarr") for s in STORES}
    with pytest.raises(StoreExistsError, match="--overwrite"):
        run_etl(built)
    run_etl(built, overwrite=True)
    assert {s: checksums(built.store_dir / f"{s}.zarr") for s in STORES} == first
    assert not [p for p in built.store_dir.parent.iterdir() if p.name.startswith(".")]


def test_small_blocks_give_the_same_bytes_as_one_block(built: Config, monkeypatch) -> None:
    """Block-by-block processing (bounded memory) changes nothing in the output."""
    from ..etl import pipeline

    one_block = {s: checksums(built.store_dir / f"{s}.zarr") for s in STORES}
    monkeypatch.setattr(pipeline, "block_cells", lambda *args: 3)  # partial rows of the 3x4 grid
    monkeypatch.setattr(pipeline, "FLUSH_MB", 0)  # append chunk by chunk instead of in one write
    run_etl(built, overwrite=True)
    assert {s: checksums(built.store_dir / f"{s}.zarr") for s in STORES} == one_block


def test_no_leakage_from_validation_and_test_into_training(built: Config) -> None:
    cfg = built
    before = {s: checksums(cfg.store_dir / f"{s}.zarr") for s in STORES}
    model, reference = tiny_datasets(cfg)
    train_end = xr.open_zarr(cfg.store_dir / "train.zarr").time.values.max()
    later = model.time > train_end
    for v in cfg.data.variables:
        model[v] = model[v].where(~later, model[v] * 3.0 + 1.0)  # scramble everything after training
    write_inputs(cfg, model, reference)
    run_etl(cfg, overwrite=True)
    after = {s: checksums(cfg.store_dir / f"{s}.zarr") for s in STORES}
    assert after["train"] == before["train"] and after["climatology"] == before["climatology"]
    assert after["valid"] != before["valid"] and after["test"] != before["test"]


@pytest.mark.parametrize(("calendar", "zarr_format", "period"), [("noleap", 3, 365), ("360_day", 2, 360)])
def test_cftime_calendars_zarr_formats_and_aliased_dims(
    tiny_config: Config, calendar: str, zarr_format: int, period: int
) -> None:
    cfg = tiny_config.override({"etl.zarr_format": zarr_format})
    model, reference = tiny_datasets(cfg, calendar=calendar)
    model = model.rename(lat="latitude", lon="longitude")
    write_inputs(cfg, model, reference)
    run_etl(cfg)
    ds = xr.open_zarr(cfg.store_dir / "train.zarr", consolidated=True)
    assert zarr.open_group(cfg.store_dir / "train.zarr", mode="r").metadata.zarr_format == zarr_format
    assert ds.time.values[0].calendar == calendar and ds.attrs["doy_period"] == period
    assert set(ds.time.values) <= set(model.time.values)
    keys = manifest(cfg.store_dir / "train.zarr")["arrays"][cfg.study.dataset_name]["checksums"]
    prefix = f"{cfg.study.dataset_name}/c/" if zarr_format == 3 else f"{cfg.study.dataset_name}/0."
    assert any(k.startswith(prefix) for k in keys)


def test_zarr_inputs_and_a_flipped_reference_grid_give_the_same_store(built: Config) -> None:
    expected = {s: checksums(built.store_dir / f"{s}.zarr") for s in STORES}
    model, reference = tiny_datasets(built)
    raw = built.path(built.data.raw_dir)
    (raw / "model_output.nc").unlink()
    model.to_zarr(raw / "model_output.zarr", zarr_format=2)
    write_inputs(built, None, reference.isel(lat=slice(None, None, -1)))  # south to north
    cfg = built.override({"data.model_files": ["model_output*.zarr"]})
    run_etl(cfg, overwrite=True)
    assert {s: checksums(cfg.store_dir / f"{s}.zarr") for s in STORES} == expected


@pytest.mark.parametrize("kind", ["onehot", "percentile"])
def test_onehot_and_percentile_references_give_the_same_labels_as_codes(built: Config, kind: str) -> None:
    expected = open_split(built, "train")
    cfg = built.override({"data.reference_kind": kind, "data.zarr_dir": str(built.store_dir.parent / kind)})
    _, reference = tiny_datasets(cfg)
    codes = reference.drought_category.values
    if kind == "onehot":
        values = xr.DataArray(one_hot(codes), dims=("time", "lat", "lon", "category"))
    else:
        values = xr.DataArray(codes_to_percentile(codes), dims=("time", "lat", "lon"))
    write_inputs(cfg, None, reference.assign(drought_category=values))
    run_etl(cfg)
    got = open_split(cfg, "train")
    np.testing.assert_array_equal(got["category"].values, expected["category"].values)
    np.testing.assert_array_equal(got[cfg.study.dataset_name].values, expected[cfg.study.dataset_name].values)


def test_inputs_split_over_files_give_the_same_store(built: Config) -> None:
    expected = {s: checksums(built.store_dir / f"{s}.zarr") for s in SPLITS}
    model, _ = tiny_datasets(built)
    raw = built.path(built.data.raw_dir)
    (raw / "model_output.nc").unlink()
    for year, part in model.groupby("time.year"):  # one file per year, as many products ship
        for v in built.data.variables:
            part[[v]].to_netcdf(raw / f"model_output_{v}_{year}.nc")
    run_etl(built, overwrite=True)
    assert {s: checksums(built.store_dir / f"{s}.zarr") for s in SPLITS} == expected


@pytest.mark.parametrize("transform", ["percentile", "quantile_normal", "yeo_johnson"])
def test_other_transforms_store_their_state_and_apply_reproduces_it(
    tiny_inputs: Config, transform: str
) -> None:
    cfg = tiny_inputs.override({"etl.transform": transform})
    run_etl(cfg)
    model = xr.open_dataset(cfg.path(cfg.data.raw_dir) / "model_output.nc").load()
    climatology = quantiles.load_climatology(cfg.store_dir / "climatology.zarr").load()
    assert climatology.attrs["transform"] == transform
    series = quantiles.apply(climatology, model)
    ds = open_split(cfg, "valid")
    first = ds.isel(samples=0)
    cell = int(
        np.flatnonzero((series.lat.values == first.lat.values) & (series.lon.values == first.lon.values))[0]
    )
    end = int(np.flatnonzero(model.time.values == first.time.values)[0])
    np.testing.assert_array_equal(
        first[cfg.study.dataset_name].values, series.values[cell, end - 19 : end + 1]
    )


def test_chunk_appender_writes_every_chunk_even_all_fill_ones_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
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
    finalize(path, {"note": "test"})
    assert manifest(path)["arrays"]["x"]["chunk_count"] == 3
    assert all((path / key).is_file() for key in checksums(path))
    back = xr.open_zarr(path, consolidated=True).load()
    np.testing.assert_array_equal(back.x.values, data)
    assert list(back.time.values) == list(times) and back.attrs["note"] == "test"


def test_cli_runs_the_etl_and_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    text = (STUDY_ROOT / "study.toml").read_text()
    for key in ("time_lookback", "split_gap_days"):
        text = "\n".join(f"{key} = 20" if line.startswith(f"{key} =") else line for line in text.splitlines())
    (tmp_path / "study.toml").write_text(text + "\n")
    variables = load_config(tmp_path / "study.toml").data.variables
    write_synthetic(tmp_path / "data" / "raw", variables, SIZES["tiny"])
    config = ["--config", str(tmp_path / "study.toml")]
    assert main([*config, "etl"]) == 0
    assert list((tmp_path / "data" / "zarr").glob("*_lb20/train.zarr"))
    assert main([*config, "etl"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*config, "etl", "--overwrite"]) == 0


def test_missing_labels_inside_the_period_drop_only_their_windows(tiny_config: Config) -> None:
    model, reference = tiny_datasets(tiny_config)
    reference["drought_category"][400, :, :] = MISSING  # one day without labels anywhere
    model["soil_moisture"][500, 1, 1] = np.nan  # one missing input value in one cell
    write_inputs(tiny_config, model, reference)
    run_etl(tiny_config)
    ds = open_split(tiny_config, "train")
    assert model.time.values[400] not in set(ds.time.values)
    in_cell = (ds.lat.values == model.lat.values[1]) & (ds.lon.values == model.lon.values[1])
    ends = set(ds.time.values[in_cell])
    assert not ends & set(model.time.values[500:520])  # windows containing the NaN day are gone
    assert model.time.values[499] in ends and model.time.values[520] in ends
