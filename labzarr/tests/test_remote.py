"""Opening served stores over real HTTP: URL and credentials, retries, and loud failures.

A real aiohttp server on 127.0.0.1 serves small stores and injects faults
(503, 500, 403, 404, dropped connections, stalls); the client must retry what
is transient, fail clearly on the rest, and never return fill values.
"""

from __future__ import annotations

import json
import pickle
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

from labzarr.etl.regions import ArrayGroup, write_rows
from labzarr.etl.store import chunk_keys, finalize
from labzarr.location import StoreLocation
from labzarr.remote import (
    ChecksumError,
    Credentials,
    ManifestError,
    MissingChunkError,
    RemoteAuthError,
    RemoteError,
    RemoteReadError,
    StoreNotFoundError,
    StoreSource,
    check_access,
    connect,
    credentials_from,
    open_remote,
    resolve_base_url,
)
from labzarr.store_format import (
    CELL,
    CLIMATOLOGY,
    COMPLETE,
    FEATURE,
    FLAG_FILL,
    LABELS,
    LAT,
    LON,
    MISSING,
    SERIES_FILL_VALUES,
    TIME,
    TIME_FILL,
    series_layout,
    store_name,
)
from labzarr.testing.faultserver import FaultServer
from labzarr.testing.stores import learnable_series, write_series_store

N_CELLS, N_TIME, LOOKBACK, CHUNK = 24, 120, 20, 4  # 6 chunks of cells
SECRET = "s3cr3t-token-value"
# Short enough for failures to show within the test: 1 s per read, retries for 3 s, 4 reads in flight.
SETTINGS = {"timeout_s": 1.0, "retry_budget_s": 3.0, "in_flight": 4}

Source = Callable[..., StoreSource]


@pytest.fixture
def source(source_for: Source) -> Source:
    """`source(url, **overrides)`: the test store under `url`, read with SETTINGS (no chunk cache)."""

    def resolve(url: str | None = None, **overrides: Any) -> StoreSource:
        return source_for(url, **{**SETTINGS, **overrides})

    return resolve


def write(name: str, root: Path, zarr_format: int = 2, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    x, y = learnable_series(N_CELLS, N_TIME, seed=seed)
    write_series_store(root, x, y, dataset_name=name, lookback=LOOKBACK, chunk_cells=CHUNK,
                       zarr_format=zarr_format)  # fmt: skip
    return x, y


@pytest.fixture
def data_root(store_dataset: str, tmp_path: Path) -> Path:
    """<root>/<dataset>.zarr (zarr v2) with its manifest."""
    write(store_dataset, tmp_path / "srv")
    return tmp_path / "srv"


def local(data_root: Path, name: str) -> xr.Dataset:
    return xr.open_zarr(data_root / store_name(name), consolidated=True).load()


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_open_remote_reads_exact_data(
    source: Source, store_dataset: str, tmp_path: Path, zarr_format: int, monkeypatch
) -> None:
    x, y = write(store_dataset, tmp_path / "srv", zarr_format, seed=2)
    with FaultServer(tmp_path / "srv") as server:
        monkeypatch.setenv("DATA_URL", server.url + "/")  # the environment wins over the study's default
        ds = open_remote(source(default_url="https://zarr.mylab.org/zarr"))
        np.testing.assert_array_equal(ds[store_dataset].values, x)
        labels = ds["category"].values  # plain xarray masks the missing code (-1) as NaN
        np.testing.assert_array_equal(np.where(np.isnan(labels), -1, labels), y)
        assert ds.attrs["source_url"] == f"{server.url}/{store_name(store_dataset)}"


def test_url_resolution_order(source: Source, store_dataset: str, monkeypatch: pytest.MonkeyPatch) -> None:
    default = "https://zarr.mylab.org/zarr"  # a study's configured URL (server.url)
    with pytest.raises(RemoteError, match=r"no data URL.*DATA_URL.*server\.url"):
        resolve_base_url(None)
    assert resolve_base_url(None, default=default) == default
    assert source(default_url=default).url == f"{default}/{store_name(store_dataset)}"
    monkeypatch.setenv("DATA_URL", "http://env.mylab.org:1/zarr/")
    assert resolve_base_url(None, default=default) == "http://env.mylab.org:1/zarr"
    assert source(default_url=default).url == f"http://env.mylab.org:1/zarr/{store_name(store_dataset)}"
    assert resolve_base_url("https://arg.mylab.org/z", default=default) == "https://arg.mylab.org/z"
    assert source("https://arg.mylab.org/z/", default_url=default).url == (
        f"https://arg.mylab.org/z/{store_name(store_dataset)}"
    )
    with pytest.raises(RemoteError, match="not an http"):
        resolve_base_url("ftp://x.example/z", default=default)
    with pytest.raises(RemoteError, match="credentials") as info:
        resolve_base_url(f"https://user:{SECRET}@x.example/z", default=default)
    assert SECRET not in str(info.value)
    with pytest.raises(RemoteError, match="credentials") as info:
        source(f"https://user:{SECRET}@x.example/z")
    assert SECRET not in str(info.value)
    with pytest.raises(RemoteError, match="credentials") as info:  # a token in the query string
        resolve_base_url(f"https://x.example/z?token={SECRET}", default=default)
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


def test_store_source_resolves_credentials_as_the_study_prefers(
    source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "http://127.0.0.1:9"
    assert source(url).credentials is None
    monkeypatch.setenv("DATA_USER", "ann")
    monkeypatch.setenv("DATA_PASSWORD", SECRET)
    monkeypatch.setenv("DATA_TOKEN", SECRET)
    assert source(url).credentials.kind == "token"  # auth="token" (the default) prefers DATA_TOKEN
    basic = source(url, auth="basic")
    assert basic.credentials.headers()["Authorization"].startswith("Basic ")
    assert source(url, auth="basic", token="t").credentials.headers() == {"Authorization": "Bearer t"}
    assert source(url, user="bob", password="pw").credentials == Credentials(user="bob", password="pw")
    assert SECRET not in repr(basic) and SECRET not in str(basic)
    assert pickle.loads(pickle.dumps(basic)) == basic  # every process (DDP rank) opens it alike


def test_token_auth_and_secret_never_shown(
    source: Source, store_dataset: str, data_root: Path, monkeypatch
) -> None:
    with FaultServer(data_root, token=SECRET) as server:
        with pytest.raises(RemoteAuthError, match="DATA_TOKEN") as info:
            open_remote(source(server.url))
        assert "401" in str(info.value) and "sent no credentials" in str(info.value)
        wrong = source(server.url, token="wrong-" + SECRET)
        with pytest.raises(RemoteAuthError) as info:
            open_remote(wrong)
        assert SECRET not in str(info.value) and info.value.__cause__ is None
        assert SECRET not in repr(wrong) and SECRET not in str(wrong)
        with pytest.raises(RemoteAuthError):
            check_access(source(server.url))
        check_access(source(server.url, token=SECRET))
        monkeypatch.setenv("DATA_TOKEN", SECRET)
        remote = connect(source(server.url))  # the token from the environment
        ds = remote.open_dataset()
        assert ds[store_dataset].shape == (N_CELLS, N_TIME, 2)
        assert SECRET not in repr(remote) + repr(remote.store) + str(remote.store) + repr(ds)
        remote.close()


def test_transient_503_is_retried_and_data_are_exact(
    source: Source, store_dataset: str, data_root: Path
) -> None:
    name = store_dataset
    expected = local(data_root, name)
    with FaultServer(data_root) as server:
        server.fail(f"{store_name(name)}/{name}/2.0.0", 503, 503)
        server.fail(f"{store_name(name)}/.zmetadata", 503)
        remote = connect(source(server.url, backoff_s=0.01))
        ds = remote.open_dataset()
        np.testing.assert_array_equal(ds[name].values, expected[name].values)
        assert remote.stats.retries == 3
        assert server.count(f"*/{name}/2.0.0") == 3
        remote.close()


def test_retry_after_is_honoured(source: Source, store_dataset: str, data_root: Path) -> None:
    name = store_dataset
    key = f"{store_name(name)}/{name}/2.0.0"
    expected = local(data_root, name)[name].values[8:12]
    with FaultServer(data_root) as server:
        remote = source(server.url, backoff_s=0.01).connect()
        server.fail(key, (429, {"Retry-After": "1"}))
        started = time.monotonic()
        np.testing.assert_array_equal(remote.open_dataset()[name][8:12].values, expected)
        assert time.monotonic() - started >= 1.0  # waited as told, not the 0.01 s backoff
        assert server.count(f"*/{name}/2.0.0") == 2 and remote.stats.retries == 1
        remote.close()


@pytest.mark.parametrize(
    ("action", "error", "message"),
    [
        (500, RemoteReadError, "HTTP 500"),
        (403, RemoteAuthError, "HTTP 403"),
        (404, MissingChunkError, "missing on the server"),
        ("drop", RemoteReadError, r"closed before the whole answer arrived.*attempt\(s\) over \d+ s"),
        ("stall", RemoteReadError, r"read timeout.*train\.timeout_s = 1 s.*train\.retry_budget_s = 3 s"),
    ],
)
def test_failed_chunk_raises_clear_error_never_fill_values(
    source: Source,
    store_dataset: str,
    data_root: Path,
    action: int | str,
    error: type[Exception],
    message: str,
) -> None:
    name = store_dataset
    with FaultServer(data_root) as server:
        remote = connect(source(server.url, backoff_s=0.05))
        ds = remote.open_dataset()
        server.always(f"{store_name(name)}/{name}/3.0.0", action)
        with pytest.raises(error, match=message) as info:
            ds[name].isel(cell=slice(12, 16)).values  # noqa: B018
        assert f"{name}/3.0.0" in str(info.value)
        assert "ContentLengthError" not in str(info.value) and ": 400" not in str(info.value)
        attempts = server.count(f"*/{name}/3.0.0")
        assert attempts == 1 if action in (403, 404) else attempts >= 2  # transient errors (5xx too) retry
        remote.close()


def test_a_trickling_server_cannot_outlast_the_retry_budget(
    source: Source, store_dataset: str, data_root: Path
) -> None:
    """A server sending a byte every 0.25 s never trips the 1 s read timeout: the read's deadline
    (train.retry_budget_s, 2 s here) ends it, on opening the store and on reading a chunk, and
    fsspec's own session (the plain xarray path) has the same total deadline."""
    from concurrent.futures import ThreadPoolExecutor

    from labzarr.remote import make_filesystem

    name = store_dataset
    settings = {"retry_budget_s": 2.0, "backoff_s": 0.05}
    # The pool closes after the server: a read the deadline failed to end is cut off, not waited for.
    with ThreadPoolExecutor(1) as pool, FaultServer(data_root) as server:
        remote = connect(source(server.url, **settings))
        ds = remote.open_dataset()
        server.always(f"{store_name(name)}/{name}/3.0.0", "trickle")
        read = pool.submit(lambda: ds[name].isel(cell=slice(12, 16)).values)
        with pytest.raises(RemoteReadError, match=r"no complete answer within 2 s.*retry_budget_s = 2 s"):
            read.result(timeout=15)  # the old reader waited as long as the server kept trickling
        remote.close()
        server.always(f"{store_name(name)}/.zmetadata", "trickle")  # opening: one deadline for all reads
        with pytest.raises(RemoteReadError, match="no complete answer"):
            pool.submit(open_remote, source(server.url, **settings)).result(timeout=15)
        fs = make_filesystem(timeout_s=1.0, retry_budget_s=2.0)
        url = f"{server.url}/{store_name(name)}/{name}/3.0.0"
        with pytest.raises(TimeoutError):
            pool.submit(_cat, fs, url).result(timeout=15)


def _cat(fs: Any, url: str) -> bytes:
    """fsspec alone (no retries of ours): read `url` with the filesystem's own session."""
    import asyncio

    async def read() -> bytes:
        session = await fs.set_session()
        try:
            return await fs._cat_file(url)
        finally:
            await session.close()

    return asyncio.run(read())


def test_missing_manifest_and_wrong_url(source: Source, store_dataset: str, data_root: Path) -> None:
    (data_root / store_name(store_dataset) / "manifest.json").unlink()
    with FaultServer(data_root) as server:
        with pytest.raises(StoreNotFoundError, match=r"manifest\.json not found"):
            open_remote(source(server.url))
        with pytest.raises(StoreNotFoundError):
            open_remote(source(server.url + "/elsewhere"))
        with pytest.raises(RemoteError, match="no zarr store"):
            check_access(StoreSource(url=f"{server.url}/elsewhere/train.zarr", **SETTINGS))
        ds = open_remote(source(server.url), require_manifest=False)
        assert ds[store_dataset].shape == (N_CELLS, N_TIME, 2)


def test_manifest_mismatch_is_caught_at_open(source: Source, store_dataset: str, data_root: Path) -> None:
    path = data_root / store_name(store_dataset) / "manifest.json"
    manifest = json.loads(path.read_text())
    entry = manifest["arrays"][store_dataset]
    entry["chunk_count"] -= 1
    key = next(iter(entry["sha256"]))
    del entry["sha256"][key], entry["crc32c"][key]
    path.write_text(json.dumps(manifest))
    with FaultServer(data_root) as server, pytest.raises(ManifestError, match="expected 6"):
        open_remote(source(server.url))


def test_deleted_or_corrupted_chunk_is_an_error(source: Source, store_dataset: str, data_root: Path) -> None:
    store = data_root / store_name(store_dataset)
    name = store_dataset
    (store / name / "1.0.0").unlink()  # as if the server lost it: zarr alone would return fill values
    shutil.copy(store / name / "4.0.0", store / name / "5.0.0")  # valid bytes, wrong chunk
    with FaultServer(data_root) as server:
        ds = open_remote(source(server.url))
        with pytest.raises(MissingChunkError, match=f"{name}/1.0.0"):
            ds[name].isel(cell=slice(4, 8)).values  # noqa: B018
        with pytest.raises(ChecksumError, match=f"{name}/5.0.0"):
            ds[name].isel(cell=slice(20, 24)).values  # noqa: B018
        assert ds[name].isel(cell=slice(0, 4)).values.shape == (4, N_TIME, 2)


def test_plain_xarray_sees_a_lost_chunk_as_missing_never_as_data(store_dataset: str, data_root: Path) -> None:
    """What a client without the manifest checks gets: NaN, a missing label, no date; never a value."""
    store = data_root / store_name(store_dataset)
    name = store_dataset
    for key in (f"{name}/1.0.0", "category/1.0", "time/0"):
        (store / key).unlink()
    ds = xr.open_zarr(store, consolidated=True)
    assert np.isnan(ds[name].values[4:8]).all() and not np.isnan(ds[name].values[:4]).any()
    assert np.isnan(ds["category"].values[4:8]).all()  # the label fill is the missing code (-1)
    assert np.isnat(ds["time"].values).all()


def test_the_template_placeholder_url_is_refused_at_once(source: Source) -> None:
    placeholder = "https://data.example.edu/zarr"  # the template's bake-time default
    with pytest.raises(RemoteError, match="DATA_URL") as info:
        resolve_base_url(None, default=placeholder, default_origin="server.url in study.toml")
    assert "placeholder" in str(info.value) and "server.url in study.toml" in str(info.value)
    with pytest.raises(RemoteError, match="placeholder"):
        source(default_url=placeholder)
    with pytest.raises(RemoteError, match="placeholder"):
        resolve_base_url("http://data.lab.example:8080/zarr", default="https://zarr.mylab.org/zarr")


def test_an_unresolvable_host_fails_at_once(source: Source) -> None:
    """Raised by the branch that does not retry (a host name that does not resolve cannot start to)."""
    with pytest.raises(RemoteReadError, match=r"'no-such-host\.invalid' does not resolve"):
        open_remote(source("http://no-such-host.invalid:8080", retry_budget_s=60.0))


QUIET_READER = """
import sys
from labzarr.errors import StudyError
from labzarr.remote import StoreSource
from labzarr.train.loader import Series

source = StoreSource(url=sys.argv[1], features=sys.argv[2], timeout_s=1.0, retry_budget_s=2.0, backoff_s=0.05)
try:
    Series(source).resident_features()
except StudyError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
"""
# What a process must not print after the error line (asyncio and aiohttp leftovers included).
NOISE = (
    "Traceback", "Task was destroyed", "Event loop is closed", "Session is closed", "Unclosed", "Warning",
)  # fmt: skip


# A missing chunk (404) fails while zarr's own event loop still holds the selection's other reads
# (slow answers here, so they are surely in flight): the loader settles them
# (`RemoteStore.settle`) before the error goes on, so asyncio has no "Task was destroyed but it
# is pending!" to log at exit.
@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("drop", "attempt(s) over"),
        ("stall", "no data within the read timeout"),
        (404, "is missing on the server"),
    ],
)
def test_a_process_whose_read_failed_ends_with_the_error_alone(
    store_dataset: str, data_root: Path, fault: int | str, message: str
) -> None:
    """The loader in a process of its own: its last words are the error, with no noise from
    requests still in flight or sessions closed at exit (the study's CLI adds only its prefix)."""
    import subprocess
    import sys

    name = store_dataset
    with FaultServer(data_root) as server:
        server.always(f"*/{name}/1.0.0", fault)
        server.always(f"*/{name}/[!1].0.0", "slow")
        url = f"{server.url}/{store_name(name)}"
        done = subprocess.run(
            [sys.executable, "-c", QUIET_READER, url, name], capture_output=True, text=True, timeout=60
        )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and lines[-1].startswith("error: ") and message in lines[-1], done.stderr
    assert not [line for line in lines if any(word in line for word in NOISE)], done.stderr


def test_the_default_url_is_named_as_the_caller_says() -> None:
    """A study names where its default URL comes from (e.g. its settings file) in messages."""
    placeholder = "https://data.example.edu/zarr"
    with pytest.raises(RemoteError, match=r"^server\.url in study\.toml = '.*' is a placeholder"):
        StoreSource.resolve(
            dataset_name="x", default_url=placeholder, default_origin="server.url in study.toml"
        )
    with pytest.raises(RemoteError, match=r"or set server\.url in study\.toml$"):
        StoreSource.resolve(dataset_name="x", default_origin="server.url in study.toml")


def write_full_layout(root: Path, name: str, zarr_format: int) -> Path:
    """A store with an array of every kind a study's ETL writes, through the same machinery
    (`ArrayGroup`, `write_rows`, `finalize`) and with the fill values a study names (none for
    `complete`, the climatology, `lat`, `lon`, `feature`): `<root>/<name>.zarr`."""
    n_cells, n_time, n_train = 8, 20, 10
    location = StoreLocation.of(root / store_name(name))
    dates = pd.date_range("2000-01-01", periods=n_time)
    zarr.open_group(location.zarr_store(), mode="w-", zarr_format=zarr_format)
    features = xr.Dataset(coords={FEATURE: np.array(["a", "b"], dtype=object)})
    common: dict[str, Any] = {"zarr_format": zarr_format, "dim": CELL, "chunk": 4, "coords": (LAT, LON),
                              "time_units": "days since 2000-01-01"}  # fmt: skip
    series = ArrayGroup(
        layout=series_layout(name),
        static=features.assign_coords({TIME: dates}),
        fill_values=SERIES_FILL_VALUES,
        **common,
    )
    climatology = ArrayGroup(
        group=CLIMATOLOGY,
        layout={"reference_a": (CELL, "train_day"), LAT: (CELL,), LON: (CELL,)},
        static=features.assign_coords(
            train_time=("train_day", dates[:n_train].values),
            train_season=("train_day", np.arange(n_train, dtype=np.int16)),
        ),
        **common,
    )
    where = {LAT: np.linspace(40, 41, n_cells), LON: np.linspace(-120, -119, n_cells)}
    rows = {name: np.ones((n_cells, n_time, 2), np.float32), LABELS: np.zeros((n_cells, n_time), np.int8),
            COMPLETE: np.ones((n_cells, n_time), bool), **where}  # fmt: skip
    state = {"reference_a": np.ones((n_cells, n_train), np.float32), **where}
    for group, values in ((series, rows), (climatology, state)):
        group.create(location, n_cells, {k: v[:1] for k, v in values.items()})
        write_rows(location, group.group, 0, values)
    finalize(location, {}, {CLIMATOLOGY: {}})
    return Path(location.path)


# What a reader without the manifest reads where a chunk is missing: none of these is ever data.
NOT_DATA = {"f": "nan", "i": {MISSING, FLAG_FILL, TIME_FILL, np.iinfo(np.int16).min}, "T": {""}, "O": {""}}


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_every_array_reads_a_lost_chunk_as_not_data_and_the_reader_refuses(
    source: Source, store_dataset: str, tmp_path: Path, zarr_format: int
) -> None:
    """zarr (either format) turns a chunk that is not there into the array's fill value: every array,
    `complete` and the climatology included, must have one that no stored value takes (a null fill
    is uninitialised memory in zarr-python 2, a 0 is 2000-01-01 in a date axis)."""
    store = write_full_layout(tmp_path / "srv", store_dataset, zarr_format)
    group = zarr.open_group(store, mode="r")
    arrays = {path: a for path, a in group.members(max_depth=None) if isinstance(a, zarr.Array)}
    assert len(arrays) == 13
    for path, array in arrays.items():
        (store / next(chunk_keys(array, path))).unlink()  # the first chunk of every array
    for path, array in zarr.open_group(store, mode="r").members(max_depth=None):
        if not isinstance(array, zarr.Array):
            continue
        lost = np.asarray(array[tuple(slice(0, c) for c in array.chunks)]).ravel()
        fills = NOT_DATA[array.dtype.kind]
        assert array.fill_value is not None, path
        assert all(np.isnan(v) if fills == "nan" else v in fills for v in lost), (path, lost[:3])
    for name in (None, CLIMATOLOGY):  # plain xarray masks every fill (names of zarr 3 have no CF fill)
        ds = xr.open_zarr(store, group=name, consolidated=True)
        for var in ds.variables.values():
            if var.dtype.kind in "fM":
                assert pd.isnull(var.values.reshape(-1)[:1]).all(), var.name
    with FaultServer(tmp_path / "srv") as server:
        remote = connect(source(server.url))
        for _, array in remote.open_group().members(max_depth=None):
            if isinstance(array, zarr.Array):
                with pytest.raises(MissingChunkError, match="missing on the server"):
                    array[:]
        remote.close()
