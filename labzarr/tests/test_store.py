"""Publishing a store on a disk (`labzarr.etl.store.staging`): what an interrupted run leaves,
and what the next run does with it. Real processes, real renames, a real kill."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from labzarr.etl.errors import EtlError
from labzarr.etl.store import leftovers, staging, store_exists
from labzarr.location import StoreLocation
from labzarr.store_format import MANIFEST, store_name
from labzarr.testing.fixtures import unavailable
from labzarr.testing.stores import indexed_series, write_series_store

DATASET = "probe_cells"


def write(root: Path, shift: float) -> Path:
    x, y = indexed_series(8, 40)
    return write_series_store(root, x + shift, y, dataset_name=DATASET, lookback=5, chunk_cells=4)


def killed_between_the_renames(target: Path) -> subprocess.CompletedProcess[str]:
    """An ETL process replacing `target` (overwrite) that is SIGKILLed right after the first of
    `_publish`'s two renames (the old store moved aside), before the new one takes its place."""
    code = textwrap.dedent(f"""
        import os, shutil, signal
        from pathlib import Path
        from labzarr.etl import store
        rename = os.rename
        def rename_then_die(src, dst):
            rename(src, dst)
            if ".old-" in str(dst):
                os.kill(os.getpid(), signal.SIGKILL)
        store.os.rename = rename_then_die
        with store.staging(Path({str(target)!r}), overwrite=True) as tmp:
            shutil.copytree({str(target)!r}, tmp.path)  # a whole new store
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})  # fmt: skip


def test_a_kill_between_the_publish_renames_loses_no_store(tmp_path: Path, caplog) -> None:
    """Killed after the old store was moved aside and before the new one was renamed into place:
    no store at the target. The next run puts the old one back (and says so) before anything
    else, so the store is never lost and nothing is left to find by hand."""
    path = write(tmp_path, shift=0.0)
    before = (path / MANIFEST).read_text()
    done = killed_between_the_renames(path)
    assert done.returncode == -9, done.stderr
    assert not path.exists()
    aside = [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{path.name}.old-")]
    assert len(aside) == 1 and len(leftovers(StoreLocation.of(path))) == 2  # set aside, and the new one
    with caplog.at_level(logging.WARNING, logger="labzarr.etl.store"):
        assert store_exists(StoreLocation.of(path))  # what every run asks first
    assert (path / MANIFEST).read_text() == before
    assert f"put back {path} from {aside[0]}" in caplog.text
    assert [name for name in leftovers(StoreLocation.of(path)) if ".old-" in name] == []
    ds = xr.open_zarr(path, consolidated=True)
    np.testing.assert_array_equal(ds[DATASET].values, indexed_series(8, 40)[0])


def test_a_store_set_aside_but_not_deleted_is_named_as_a_leftover(tmp_path: Path) -> None:
    """Killed while the old store was being deleted, once the new one was in place: the new store
    stays, and the rest of the old one is named with the leftovers the ETL warns about."""
    path = write(tmp_path, shift=0.0)
    aside = tmp_path / f".{path.name}.old-0123abcd"
    write(tmp_path / "old", shift=1.0).rename(aside)
    (aside / MANIFEST).unlink()  # half deleted
    assert store_exists(StoreLocation.of(path)) and aside.exists()
    assert leftovers(StoreLocation.of(path)) == [aside.name]


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 64 kB file system (tmpfs), which a store of the test's size overflows. Mounting
    one needs root; elsewhere the test is skipped, or fails in CI (it is not simulated)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        unavailable("mounting a small tmpfs needs root and mount")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", disk], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", disk], check=True)


def test_a_full_disk_is_one_clear_error_and_leaves_nothing(small_disk: Path) -> None:
    target = StoreLocation.of(small_disk / "zarr" / store_name(DATASET))
    with (
        pytest.raises(EtlError, match=r"no space left where .* is written .* free some space") as full,
        staging(target) as tmp,
    ):
        write(Path(tmp.path), shift=0.0)  # a store larger than the disk, inside the staging folder
    assert "\n" not in str(full.value)
    assert [p.name for p in small_disk.rglob("*")] == ["zarr"], "only the folder the store goes in"


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_cftime_axis_gets_the_cf_fill_in_both_formats(zarr_format: int) -> None:
    """A noleap time axis (CMIP6's usual) is an object array, as strings are; it is stored as int64
    dates, so plain xarray readers must be told its fill in zarr 3 too."""
    import cftime
    import numcodecs
    import xarray as xr

    from labzarr.etl.store import zarr_encoding
    from labzarr.store_format import TIME_FILL

    time = [cftime.DatetimeNoLeap(2000, 1, d) for d in (1, 2, 3)]
    ds = xr.Dataset({"v": ("time", np.zeros(3, np.float32))}, coords={"time": time})
    encoding = zarr_encoding(
        ds, dim="time", chunk=3, codec=numcodecs.Zstd() if zarr_format == 2 else None,
        zarr_format=zarr_format, time_units="days since 2000-01-01", calendar="noleap", fill_values={},
    )  # fmt: skip
    assert encoding["time"]["_FillValue"] == TIME_FILL and encoding["time"]["dtype"] == "int64"
