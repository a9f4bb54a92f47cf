"""The study's ETL and training on a real S3-compatible object store: SeaweedFS on 127.0.0.1
(`labzarr.testing.s3server`).

The ETL writes to `s3://bucket/prefix` the same chunks it writes to a folder (dask workers
included), refuses to replace a store without --overwrite and replaces it with it; training
reads the bucket given as DATA_URL; a refused key ends `train` with one clear line and stops the
ETL. No mocks: every request goes to the real server over loopback. Publishing, reading and the
failures of a store on S3 are labzarr's and tested there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from labzarr.etl.errors import EtlError, StoreExistsError
from labzarr.location import KEY_ENV, SECRET_ENV, s3_filesystem
from labzarr.store_format import MANIFEST, Manifest
from labzarr.testing.fixtures import s3_bucket
from labzarr.testing.s3server import SeaweedS3

from ..config import Config
from ..etl.pipeline import run_etl
from ..synthetic import SIZES, write_synthetic
from ..train.loop import train
from .conftest import study_toml
from .test_cli import UNWANTED

pytestmark = pytest.mark.scaleout

BUCKET = "study-data"
PACKAGE = __package__.rsplit(".", 1)[0]


@pytest.fixture(scope="module")
def s3() -> Iterator[SeaweedS3]:
    """One SeaweedFS for the module, its bucket created; the AWS variables point at it."""
    with s3_bucket(BUCKET) as server:
        yield server


@pytest.fixture(scope="module")
def etl_config(study_config: Config, tmp_path_factory: pytest.TempPathFactory, s3: SeaweedS3) -> Config:
    """The study config on tiny synthetic inputs, writing to the bucket, with a tiny model."""
    root = tmp_path_factory.mktemp("s3study")
    cfg = study_config.override(
        {
            "data.raw_dir": str(root / "raw"),
            "data.zarr_dir": f"s3://{BUCKET}/study",
            "etl.time_lookback": 20,
            "etl.split_gap": 20,
            "etl.chunk_cells": 4,
            "train.out_dir": str(root / "results"),
            "train.cache": "none",
            "train.batch_size": 256,
            "train.sample_stride": 7,
            "train.model_options.hidden_size": 8,
            "train.timeout_s": 5.0,
            "train.retry_budget_s": 2.0,
        }
    )
    write_synthetic(cfg.path(cfg.data.raw_dir), cfg.data.variables, SIZES["tiny"])
    return cfg


@pytest.fixture(scope="module")
def store_url(etl_config: Config) -> str:
    """The study's store, written once by the ETL into the bucket."""
    written = run_etl(etl_config)
    assert written == f"s3://{BUCKET}/study/{etl_config.store_name}"
    return str(written)


def objects(prefix: str) -> list[str]:
    return sorted(p.split("/", 1)[1] for p in s3_filesystem().find(f"{BUCKET}/{prefix}"))


def manifest_of(url: str) -> Manifest:
    return Manifest.from_json(s3_filesystem().cat_file(f"{url.removeprefix('s3://')}/{MANIFEST}"))


def test_the_etl_writes_the_same_chunks_to_the_bucket_as_to_a_folder(
    etl_config: Config, store_url: str, tmp_path: Path
) -> None:
    name = etl_config.store_name
    keys = objects("study")
    consolidated = ".zmetadata" if etl_config.etl.zarr_format == 2 else "zarr.json"  # v3: in the root's
    assert f"study/{name}/{MANIFEST}" in keys and f"study/{name}/{consolidated}" in keys
    assert not [k for k in keys if ".tmp-" in k], "the staging prefix was left behind"
    local = run_etl(etl_config.override({"data.zarr_dir": str(tmp_path / "zarr")}))
    on_s3 = manifest_of(store_url)
    assert on_s3.sha256 == Manifest.from_json((Path(local) / MANIFEST).read_bytes()).sha256
    # dask workers (separate processes, the AWS variables inherited) write their chunks to the bucket
    workers = etl_config.override({"data.zarr_dir": f"s3://{BUCKET}/dask", "etl.dask_scheduler": "local:2"})
    assert manifest_of(str(run_etl(workers))).sha256 == on_s3.sha256
    assert not [k for k in objects("dask") if ".tmp-" in k], "the staging prefix was left behind"
    with pytest.raises(StoreExistsError, match="--overwrite"):
        run_etl(etl_config)
    # --overwrite replaces the store in the bucket by the new run's (other compression: other bytes)
    replaced = run_etl(workers.override({"etl.compression_level": 9}), overwrite=True)
    assert manifest_of(str(replaced)).sha256 != on_s3.sha256
    assert not [k for k in objects("dask") if ".tmp-" in k]


def test_training_reads_the_bucket_given_as_data_url(
    etl_config: Config, store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATA_URL", f"s3://{BUCKET}/study")
    summary = train(etl_config, epochs=1, out_dir=tmp_path / "out", progress=False)
    assert summary["epochs_run"] == 1 and np.isfinite(summary["history"][0]["train_loss"])
    assert summary["loader"][0]["network_bytes"] > 0
    assert 0 <= summary["test"]["accuracy"] <= 1


def test_a_refused_key_ends_train_with_one_clear_line_and_stops_the_etl(
    etl_config: Config, store_url: str, tmp_path: Path, s3: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = study_toml(
        tmp_path / "study.toml", zarr_dir=f"s3://{BUCKET}/study", time_lookback=20, split_gap=20,
        retry_budget_s=2.0,
    )  # fmt: skip
    env = {**os.environ, **s3.env(), SECRET_ENV: "not-the-secret"}
    done = subprocess.run(
        [sys.executable, "-m", PACKAGE, "--config", str(study), "train", "--url", f"s3://{BUCKET}/study"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "refused access" in lines[0] and KEY_ENV in lines[0] and SECRET_ENV in lines[0], lines[0]
    assert "not-the-secret" not in done.stderr and s3.secret_key not in done.stderr
    assert not [line for line in lines if any(word in line for word in UNWANTED)], done.stderr

    monkeypatch.setenv(KEY_ENV, "someone-else")
    with pytest.raises(EtlError, match="refused access"):
        run_etl(etl_config, overwrite=True)
