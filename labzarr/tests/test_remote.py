"""Opening served stores over real HTTP: URL and credentials, retries, and loud failures.

A real aiohttp server on 127.0.0.1 serves small stores and injects faults
(503, 500, 403, 404, dropped connections, stalls); the client must retry what
is transient, fail clearly on the rest, and never return fill values.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from ..config import Config
from ..remote import (
    ChecksumError,
    Credentials,
    ManifestError,
    MissingChunkError,
    RemoteAuthError,
    RemoteError,
    RemoteReadError,
    StoreNotFoundError,
    check_access,
    connect,
    credentials_from,
    open_remote,
    resolve_base_url,
)
from .faultserver import FaultServer
from .stores import learnable_series, write_series_store

N_CELLS, N_TIME, LOOKBACK, CHUNK = 24, 120, 20, 4  # 6 chunks of cells
SECRET = "s3cr3t-token-value"


@pytest.fixture
def cfg(tiny_config: Config) -> Config:
    return tiny_config.override({"train.timeout_s": 1.0, "train.retry_budget_s": 3.0})


def write(cfg: Config, root: Path, zarr_format: int = 2, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    x, y = learnable_series(N_CELLS, N_TIME, seed=seed)
    write_series_store(root, x, y, dataset_name=cfg.study.dataset_name, lookback=LOOKBACK, chunk_cells=CHUNK,
                       zarr_format=zarr_format)  # fmt: skip
    return x, y


@pytest.fixture
def data_root(cfg: Config, tmp_path: Path) -> Path:
    """<root>/<dataset>.zarr (zarr v2) with its manifest."""
    write(cfg, tmp_path / "srv")
    return tmp_path / "srv"


def local(data_root: Path, cfg: Config) -> xr.Dataset:
    return xr.open_zarr(data_root / cfg.store_name, consolidated=True).load()


def store_path(cfg: Config) -> str:
    return cfg.store_name


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_open_remote_reads_exact_data(cfg: Config, tmp_path: Path, zarr_format: int, monkeypatch) -> None:
    x, y = write(cfg, tmp_path / "srv", zarr_format, seed=2)
    with FaultServer(tmp_path / "srv") as server:
        monkeypatch.setenv("DATA_URL", server.url + "/")  # the environment wins over study.toml
        ds = open_remote(cfg=cfg)
        np.testing.assert_array_equal(ds[cfg.study.dataset_name].values, x)
        labels = ds["category"].values  # plain xarray masks the missing code (-1) as NaN
        np.testing.assert_array_equal(np.where(np.isnan(labels), -1, labels), y)
        assert ds.attrs["source_url"] == f"{server.url}/{store_path(cfg)}"


def test_url_resolution_order(cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = cfg.override({"server.url": "https://zarr.mylab.org/zarr"})
    assert resolve_base_url(None, cfg) == cfg.server.url
    monkeypatch.setenv("DATA_URL", "http://env.mylab.org:1/zarr/")
    assert resolve_base_url(None, cfg) == "http://env.mylab.org:1/zarr"
    assert resolve_base_url("https://arg.mylab.org/z", cfg) == "https://arg.mylab.org/z"
    with pytest.raises(RemoteError, match="not an http"):
        resolve_base_url("ftp://x.example/z", cfg)
    with pytest.raises(RemoteError, match="credentials") as info:
        resolve_base_url(f"https://user:{SECRET}@x.example/z", cfg)
    assert SECRET not in str(info.value)


def test_credentials_from_arguments_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert credentials_from() is None
    monkeypatch.setenv("DATA_USER", "ann")
    monkeypatch.setenv("DATA_PASSWORD", SECRET)
    monkeypatch.setenv("DATA_TOKEN", SECRET)
    assert credentials_from().kind == "token"
    assert credentials_from(prefer="basic").headers()["Authorization"].startswith("Basic ")
    assert credentials_from(token="t").headers() == {"Authorization": "Bearer t"}
    creds = Credentials(token=SECRET)
    assert SECRET not in repr(creds) and SECRET not in str(creds)


def test_token_auth_and_secret_never_shown(cfg: Config, data_root: Path, monkeypatch) -> None:
    with FaultServer(data_root, token=SECRET) as server:
        with pytest.raises(RemoteAuthError, match="DATA_TOKEN") as info:
            open_remote(server.url, cfg=cfg)
        assert "401" in str(info.value) and "sent no credentials" in str(info.value)
        with pytest.raises(RemoteAuthError) as info:
            open_remote(server.url, cfg=cfg, token="wrong-" + SECRET)
        assert SECRET not in str(info.value) and info.value.__cause__ is None
        with pytest.raises(RemoteAuthError):
            check_access(f"{server.url}/{store_path(cfg)}")
        monkeypatch.setenv("DATA_TOKEN", SECRET)
        check_access(f"{server.url}/{store_path(cfg)}", token=SECRET)
        remote = connect(server.url, cfg=cfg)
        ds = remote.open_dataset()
        assert ds[cfg.study.dataset_name].shape == (N_CELLS, N_TIME, 2)
        assert SECRET not in repr(remote) + repr(remote.store) + str(remote.store) + repr(ds)
        remote.close()


def test_transient_503_is_retried_and_data_are_exact(cfg: Config, data_root: Path) -> None:
    expected = local(data_root, cfg)
    with FaultServer(data_root) as server:
        server.fail(f"{store_path(cfg)}/{cfg.study.dataset_name}/2.0.0", 503, 503)
        server.fail(f"{store_path(cfg)}/.zmetadata", 503)
        remote = connect(server.url, cfg=cfg, backoff_s=0.01)
        ds = remote.open_dataset()
        np.testing.assert_array_equal(
            ds[cfg.study.dataset_name].values, expected[cfg.study.dataset_name].values
        )
        assert remote.stats.retries == 3
        assert server.count(f"*/{cfg.study.dataset_name}/2.0.0") == 3
        remote.close()


def test_retry_after_is_honoured(cfg: Config, data_root: Path) -> None:
    key = f"{store_path(cfg)}/{cfg.study.dataset_name}/2.0.0"
    expected = local(data_root, cfg)[cfg.study.dataset_name].values[8:12]
    with FaultServer(data_root) as server:
        remote = connect(server.url, cfg=cfg, backoff_s=0.01)
        server.fail(key, (429, {"Retry-After": "1"}))
        started = time.monotonic()
        np.testing.assert_array_equal(remote.open_dataset()[cfg.study.dataset_name][8:12].values, expected)
        assert time.monotonic() - started >= 1.0  # waited as told, not the 0.01 s backoff
        assert server.count(f"*/{cfg.study.dataset_name}/2.0.0") == 2 and remote.stats.retries == 1
        remote.close()


@pytest.mark.parametrize(
    ("action", "error", "message"),
    [
        (500, RemoteReadError, "HTTP 500"),
        (403, RemoteAuthError, "HTTP 403"),
        (404, MissingChunkError, "missing on the server"),
        ("drop", RemoteReadError, r"attempt\(s\) over \d+ s"),
        ("stall", RemoteReadError, r"read timeout.*train\.timeout_s = 1 s.*train\.retry_budget_s = 3 s"),
    ],
)
def test_failed_chunk_raises_clear_error_never_fill_values(
    cfg: Config, data_root: Path, action: int | str, error: type[Exception], message: str
) -> None:
    with FaultServer(data_root) as server:
        remote = connect(server.url, cfg=cfg, backoff_s=0.05)
        ds = remote.open_dataset()
        server.always(f"{store_path(cfg)}/{cfg.study.dataset_name}/3.0.0", action)
        with pytest.raises(error, match=message) as info:
            ds[cfg.study.dataset_name].isel(cell=slice(12, 16)).values  # noqa: B018
        assert f"{cfg.study.dataset_name}/3.0.0" in str(info.value)
        attempts = server.count(f"*/{cfg.study.dataset_name}/3.0.0")
        assert attempts == 1 if action in (403, 404) else attempts >= 2  # transient errors (5xx too) retry
        remote.close()


def test_missing_manifest_and_wrong_url(cfg: Config, data_root: Path) -> None:
    (data_root / store_path(cfg) / "manifest.json").unlink()
    with FaultServer(data_root) as server:
        with pytest.raises(StoreNotFoundError, match=r"manifest\.json not found"):
            open_remote(server.url, cfg=cfg)
        with pytest.raises(StoreNotFoundError):
            open_remote(server.url + "/elsewhere", cfg=cfg)
        with pytest.raises(RemoteError, match="no zarr store"):
            check_access(f"{server.url}/elsewhere/train.zarr")
        ds = open_remote(server.url, cfg=cfg, require_manifest=False)
        assert ds[cfg.study.dataset_name].shape == (N_CELLS, N_TIME, 2)


def test_manifest_mismatch_is_caught_at_open(cfg: Config, data_root: Path) -> None:
    path = data_root / store_path(cfg) / "manifest.json"
    manifest = json.loads(path.read_text())
    entry = manifest["arrays"][cfg.study.dataset_name]
    entry["chunk_count"] -= 1
    key = next(iter(entry["sha256"]))
    del entry["sha256"][key], entry["crc32c"][key]
    path.write_text(json.dumps(manifest))
    with FaultServer(data_root) as server, pytest.raises(ManifestError, match="expected 6"):
        open_remote(server.url, cfg=cfg)


def test_deleted_or_corrupted_chunk_is_an_error(cfg: Config, data_root: Path) -> None:
    store = data_root / store_path(cfg)
    name = cfg.study.dataset_name
    (store / name / "1.0.0").unlink()  # as if the server lost it: zarr alone would return fill values
    shutil.copy(store / name / "4.0.0", store / name / "5.0.0")  # valid bytes, wrong chunk
    with FaultServer(data_root) as server:
        ds = open_remote(server.url, cfg=cfg)
        with pytest.raises(MissingChunkError, match=f"{name}/1.0.0"):
            ds[name].isel(cell=slice(4, 8)).values  # noqa: B018
        with pytest.raises(ChecksumError, match=f"{name}/5.0.0"):
            ds[name].isel(cell=slice(20, 24)).values  # noqa: B018
        assert ds[name].isel(cell=slice(0, 4)).values.shape == (4, N_TIME, 2)


def test_plain_xarray_sees_a_lost_chunk_as_missing_never_as_data(cfg: Config, data_root: Path) -> None:
    """What a client without the manifest checks gets: NaN, a missing label, no date; never a value."""
    store = data_root / store_path(cfg)
    name = cfg.study.dataset_name
    for key in (f"{name}/1.0.0", "category/1.0", "time/0"):
        (store / key).unlink()
    ds = xr.open_zarr(store, consolidated=True)
    assert np.isnan(ds[name].values[4:8]).all() and not np.isnan(ds[name].values[:4]).any()
    assert np.isnan(ds["category"].values[4:8]).all()  # the label fill is the missing code (-1)
    assert np.isnat(ds["time"].values).all()


def test_the_template_placeholder_url_is_refused_at_once(cfg: Config) -> None:
    with pytest.raises(RemoteError, match="DATA_URL") as info:
        resolve_base_url(None, cfg.override({"server.url": "https://data.example.edu/zarr"}))
    assert "placeholder" in str(info.value)
    with pytest.raises(RemoteError, match="placeholder"):
        resolve_base_url("http://data.lab.example:8080/zarr", cfg)


def test_an_unresolvable_host_fails_at_once(cfg: Config) -> None:
    """Raised by the branch that does not retry (a host name that does not resolve cannot start to)."""
    with pytest.raises(RemoteReadError, match=r"'no-such-host\.invalid' does not resolve"):
        open_remote("http://no-such-host.invalid:8080", cfg=cfg.override({"train.retry_budget_s": 60.0}))
