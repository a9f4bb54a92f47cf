"""Writing the store: chunk-aligned appends, every chunk stored, a manifest, an atomic publish.

What the store holds is defined in `store_format.py`; this module only writes it.

Why it is written this way:

* **bounded memory**: `ChunkAppender` copies rows (cells) into a fixed buffer of
  whole chunks and appends it when full (`to_zarr(append_dim=...)`), so no chunk
  is ever written twice and memory does not depend on the number of cells;
* **every chunk exists**: `write_empty_chunks=True` stores even an all-fill
  chunk, and `write_manifest` fails if any chunk file is missing. The manifest
  records every chunk's sha256 and CRC32C, so a reader can tell a missing chunk
  from an empty one and verify each download (the reader checks the CRC32C,
  about 20 times cheaper than sha256; the sha256 names the chunk in caches);
* **fill values that cannot pass for data**: every array has one (`store_format.invalid_fill`,
  or the caller's: MISSING for labels), set as the zarr fill value and as the CF `_FillValue`,
  in both zarr formats; a bool array is stored as int8 so that its fill is neither value;
* **reproducible bytes**: chunk contents depend only on inputs and config
  (fixed time units, deterministic Zstd); the time of the run lives only in the
  attributes;
* **atomic**: everything is written into a hidden folder next to the target
  (`.<name>.tmp-<random>`, a dot name nginx never serves) and renamed into place
  when complete; a failure or interruption removes it, and an existing store is
  replaced only with `overwrite=True`. Replacing takes two renames (the old store aside,
  the new one in); a run killed between them leaves no store at the target, and the next
  run's first look (`store_exists`) puts the old one back (`recover`).
* **on an object store** (`data.zarr_dir = "s3://bucket/prefix"`) there is no rename:
  the store is written under the hidden prefix in the same way, then published by
  `_publish_s3`: the old store's manifest is deleted first (from then on readers refuse
  it), its other objects next, then every object is copied server-side from the hidden
  prefix, the manifest last, and the hidden prefix is deleted. Readers open a store only
  through its manifest and check every chunk against it, so they see the old store, the
  new one, or a refusal; never a mix and never a partial store as if it were whole.
  Some object stores (SeaweedFS) keep an emptied prefix as a folder: only prefixes holding
  objects count as stores or leftovers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import itertools
import json
import logging
import math
import os
import secrets
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import xarray as xr
import zarr
from tqdm.auto import tqdm

from ..atomic import write_text
from ..location import CREDENTIALS_HINT, ENDPOINT_ENV, StoreLocation, s3_refused
from ..store_format import MANIFEST, ArrayManifest, Manifest, invalid_fill, stored_dtype
from .errors import EtlError, StoreExistsError

log = logging.getLogger(__name__)
STAGING = ".tmp-"  # `.<name>.tmp-<random>`: where a run writes its store before publishing it
SET_ASIDE = ".old-"  # `.<name>.old-<random>`: the store a replacement moved away (on a disk)
MANIFEST_BATCH = 64  # chunks read at once to checksum them (concurrent requests on an object store)


def compressor(zarr_format: int, level: int) -> Any:
    """Zstandard codec object for the given zarr format."""
    if zarr_format == 2:
        import numcodecs

        return numcodecs.Zstd(level=level)
    from zarr.codecs import ZstdCodec

    return ZstdCodec(level=level)


def _is_time(values: np.ndarray) -> bool:
    return values.dtype.kind == "M" or (
        values.dtype == object and values.size > 0 and hasattr(values.flat[0], "calendar")
    )


class ChunkAppender:
    """Append arrays along one dimension of a new zarr store (or group), whole chunks at a time.

    `layout` maps each appended variable to its dims (the first is `dim`);
    `coords` names those that are coordinates; `static` holds variables without
    `dim` (e.g. the `time` and `feature` coordinates), written with the first
    chunk; `fill_values` sets each variable's fill value (zarr's and the CF
    `_FillValue`). Datetime variables are encoded as integer days since
    `time_units`.

    Rows are copied into a preallocated buffer of whole chunks (as many as fit
    in `flush_mb`, at least one) that is written when full: memory is that
    buffer, whatever the number of rows, and small chunks are still written in
    few calls.
    """

    def __init__(
        self,
        path: Any,
        *,
        dim: str,
        chunk: int,
        layout: Mapping[str, tuple[str, ...]],
        group: str | None = None,
        coords: Sequence[str] = (),
        static: xr.Dataset | None = None,
        fill_values: Mapping[str, Any] | None = None,
        zarr_format: int = 2,
        compression_level: int = 3,
        time_units: str = "days since 1970-01-01",
        calendar: str = "proleptic_gregorian",
        flush_mb: float = 4,
    ) -> None:
        self.path = path  # a local path or a zarr store (`StoreLocation.zarr_store`)
        self.group = group
        self.dim = dim
        self.chunk = int(chunk)
        self.layout = dict(layout)
        self.coords = set(coords)
        self.static = static if static is not None else xr.Dataset()
        self.fill_values = dict(fill_values or {})
        self.zarr_format = zarr_format
        self.codec = compressor(zarr_format, compression_level)
        self.time_units, self.calendar = time_units, calendar
        self.flush_bytes = flush_mb * 2**20
        self.buffer: dict[str, np.ndarray] = {}
        self.capacity = 0
        self.filled = 0
        self.n_written = 0

    def add(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Queue rows (the first axis of every array is `dim`); write the buffer whenever it fills."""
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        lengths = {len(a) for a in arrays.values()}
        if len(lengths) != 1 or set(arrays) != set(self.layout):
            raise ValueError(
                f"add() needs {sorted(self.layout)} with one length, got {sorted(arrays)} {lengths}"
            )
        n = lengths.pop()
        if not self.buffer and n:
            row_bytes = sum(a[:1].nbytes for a in arrays.values())
            self.capacity = max(1, int(self.flush_bytes // max(row_bytes * self.chunk, 1))) * self.chunk
            self.buffer = {k: np.empty((self.capacity, *a.shape[1:]), a.dtype) for k, a in arrays.items()}
        done = 0
        while done < n:
            take = min(n - done, self.capacity - self.filled)
            for k, a in arrays.items():
                self.buffer[k][self.filled : self.filled + take] = a[done : done + take]
            self.filled += take
            done += take
            if self.filled == self.capacity:
                self._write(self.filled)

    def close(self) -> int:
        """Write the last, partial chunk; returns the number of rows written."""
        if self.filled:
            self._write(self.filled)
        self.buffer = {}
        return self.n_written

    def _write(self, n: int) -> None:
        rows = {k: v[:n] for k, v in self.buffer.items()}
        ds = xr.Dataset(
            {k: (self.layout[k], v) for k, v in rows.items() if k not in self.coords},
            coords={k: (self.layout[k], v) for k, v in rows.items() if k in self.coords},
        )
        options: dict[str, Any] = {"consolidated": False, "write_empty_chunks": True, "group": self.group}
        if self.n_written == 0:  # into the root group the caller created (a fresh, private path)
            ds = ds.merge(self.static)
            ds.to_zarr(
                self.path, mode="a", zarr_format=self.zarr_format, encoding=self._encoding(ds), **options
            )
        else:
            ds.to_zarr(self.path, append_dim=self.dim, **options)
        self.n_written += n
        self.filled = 0

    def _encoding(self, ds: xr.Dataset) -> dict[str, dict[str, Any]]:
        return zarr_encoding(
            ds,
            dim=self.dim,
            chunk=self.chunk,
            codec=self.codec,
            zarr_format=self.zarr_format,
            time_units=self.time_units,
            calendar=self.calendar,
            fill_values=self.fill_values,
        )


def zarr_encoding(
    ds: xr.Dataset,
    *,
    dim: str,
    chunk: int,
    codec: Any,
    zarr_format: int,
    time_units: str,
    calendar: str,
    fill_values: Mapping[str, Any],
) -> dict[str, dict[str, Any]]:
    """xarray encoding of every variable: `chunk` rows along `dim` (whole other axes), the codec,
    integer days for dates, and each variable's fill value (zarr's and the CF `_FillValue`):
    the one in `fill_values`, else `invalid_fill` of its dtype (booleans stored as int8)."""
    encoding: dict[str, dict[str, Any]] = {}
    for name, var in ds.variables.items():
        chunks = tuple(chunk if d == dim else ds.sizes[d] for d in var.dims)
        entry: dict[str, Any] = {"chunks": chunks, "compressors": (codec,)}
        time = var.dtype.kind in "MO" and _is_time(np.asarray(var.values[:1]))  # never loads a lazy array
        if time:
            entry.update(units=time_units, calendar=calendar, dtype="int64")
        elif (stored := stored_dtype(var.dtype)) is not None:
            entry["dtype"] = stored  # a bool has no value to spare for the fill
        fill = fill_values[str(name)] if str(name) in fill_values else invalid_fill(var.dtype, time=time)
        if zarr_format == 2 or time or var.dtype.kind != "O":  # (no CF attribute for zarr 3 strings;
            # cftime dates are objects too, but they are stored as int64)
            entry["_FillValue"] = fill  # the CF attribute: plain xarray readers mask it
        if zarr_format == 3:
            entry["fill_value"] = fill  # zarr 3 keeps the array's own fill value apart
        encoding[str(name)] = entry
    return encoding


def chunk_keys(array: Any, name: str) -> Iterator[str]:
    """Store-relative keys of every chunk of a zarr array (zarr 2 or 3 key encoding)."""
    grid = [range(math.ceil(s / c)) for s, c in zip(array.shape, array.chunks, strict=True)]
    for index in itertools.product(*grid):
        yield f"{name}/{array.metadata.encode_chunk_key(index)}"


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(block):
            digest.update(data)
    return digest.hexdigest()


def write_manifest(where: Path | str | StoreLocation) -> Manifest:
    """Check that every chunk of every array (subgroups included) exists; record shapes and checksums."""
    location = _location(where)
    fs = location.fs()
    group = zarr.open_group(location.zarr_store(fs), mode="r")
    members = sorted(
        (name, node) for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array)
    )
    total = sum(
        math.prod(math.ceil(s / c) for s, c in zip(a.shape, a.chunks, strict=True)) for _, a in members
    )
    arrays: dict[str, ArrayManifest] = {}
    desc = f"manifest {location.name}"
    with tqdm(total=total, unit="chunk", desc=desc, disable=None, leave=False) as progress:
        for name, array in members:
            sha256, crc32c = {}, {}
            keys = list(chunk_keys(array, name))
            for start in range(0, len(keys), MANIFEST_BATCH):
                batch = keys[start : start + MANIFEST_BATCH]
                found = fs.cat([f"{location.path}/{key}" for key in batch], on_error="return")
                for key in batch:
                    data = found.get(f"{location.path}/{key}")
                    if not isinstance(data, bytes):
                        raise EtlError(f"{location}: chunk {key} was not written; the store is incomplete")
                    sha256[key], crc32c[key] = hashlib.sha256(data).hexdigest(), google_crc32c.value(data)
                progress.update(len(batch))
            arrays[name] = ArrayManifest(
                shape=tuple(array.shape),
                chunks=tuple(array.chunks),
                sha256=sha256,
                crc32c=crc32c,
            )
    manifest = Manifest(zarr_format=group.metadata.zarr_format, arrays=arrays)
    if location.remote:
        fs.pipe_file(f"{location.path}/{MANIFEST}", manifest.to_json().encode())
    else:
        write_text(Path(location.path) / MANIFEST, manifest.to_json())
    return manifest


def finalize(
    where: Path | str | StoreLocation, attrs: Mapping[str, Any], group_attrs: Mapping[str, Mapping[str, Any]]
) -> Manifest:
    """Set the attributes of the root and of each subgroup, consolidate each level's metadata,
    write the manifest."""
    store = _location(where).zarr_store()
    root = zarr.open_group(store, mode="r+")
    root.attrs.put(dict(attrs))
    for name, values in group_attrs.items():
        root[name].attrs.put(dict(values))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        for name in group_attrs:  # a subgroup opened by itself (xr.open_zarr(group=...)) needs its own
            zarr.consolidate_metadata(store, path=name)
        zarr.consolidate_metadata(store)
    return write_manifest(where)


def _location(where: Path | str | StoreLocation) -> StoreLocation:
    return where if isinstance(where, StoreLocation) else StoreLocation.of(where)


def stored_bytes(location: StoreLocation) -> int:
    """Bytes of every file (object) of the store."""
    return int(location.fs().du(location.path))


def store_exists(location: StoreLocation) -> bool:
    """Whether anything is at the location: a folder, or any object under the S3 prefix.

    On a disk, a store set aside by a replacement that was interrupted between its two renames
    is put back first (`recover`). On S3 this is the ETL's first request: missing or refused
    keys and a missing bucket stop it here, with a message saying what to set.
    """
    fs = location.fs()
    if not location.remote:
        recover(location)
        return bool(fs.exists(location.path))
    bucket = location.path.split("/", 1)[0]
    fs.invalidate_cache()  # the filesystem is shared: never answer from an earlier listing
    try:
        fs.ls(bucket, refresh=True)  # one listing: refused keys and a missing bucket show here
        return bool(_objects(fs, location.path))
    except FileNotFoundError:
        raise EtlError(
            f"bucket {bucket!r} does not exist on the object store ({ENDPOINT_ENV}); create it first "
            f"(e.g. `aws s3 mb s3://{bucket}`), or check data.zarr_dir"
        ) from None
    except Exception as exc:
        if s3_refused(exc):
            raise EtlError(f"the object store refused access to {location}: {CREDENTIALS_HINT}") from None
        raise


def recover(target: StoreLocation) -> Path | None:
    """Put back the store that a replacement set aside (`.<name>.old-<random>`, see `_publish`)
    when the run was killed before the new one took its place; returns where it was, or None.

    Only when nothing is at `target`: the set-aside store is then whole (a rename is atomic, and
    it is deleted only once the new store is in place).
    """
    path = Path(target.path)
    if target.remote or path.exists():
        return None
    set_aside = sorted(path.parent.glob(f".{target.name}{SET_ASIDE}*"), key=lambda p: p.stat().st_mtime)
    whole = [p for p in set_aside if (p / MANIFEST).is_file()]
    if not whole:
        return None
    with contextlib.suppress(OSError):  # another run was faster (FileNotFoundError, FileExistsError)
        os.rename(whole[-1], path)
        log.warning("put back %s from %s: a run that replaced it was interrupted", path, whole[-1].name)
        return whole[-1]
    return None


def leftovers(target: StoreLocation) -> list[str]:
    """Names of the hidden folders (prefixes) of interrupted runs beside `target`: staging ones
    holding objects, and stores set aside by a replacement that did not finish deleting them."""
    fs = target.fs()
    parent = target.sibling("").path.rstrip("/")
    if target.remote:
        fs.invalidate_cache()  # a listing cached before this run's own writes
    found = []
    for suffix in (STAGING, SET_ASIDE):
        with contextlib.suppress(FileNotFoundError):
            found += fs.glob(f"{parent}/.{target.name}{suffix}*")
    # An object store may keep an emptied prefix as a folder: only one with objects is a leftover.
    return sorted(p.rsplit("/", 1)[-1] for p in found if not target.remote or _objects(fs, p))


def sha256_input(path: Path) -> str:
    """sha256 of a file, or of a folder (zarr input) as its sorted relative paths and contents."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        digest.update(bytes.fromhex(sha256_file(file)))
    return digest.hexdigest()


def provenance(
    config: Mapping[str, Any], files: Sequence[Path], package: str, version: str
) -> dict[str, Any]:
    """What made this store: config, package and library versions, input names and checksums, UTC time."""
    from .. import __version__ as library_version

    return {
        "package": package,
        "package_version": version,
        "labzarr_version": library_version,
        "config": json.loads(json.dumps(config, default=str)),
        "inputs": [
            {"name": p.name, "sha256": sha256_input(p)}
            for p in tqdm(files, desc="input checksums", unit="file", disable=None, leave=False)
        ],
        "created_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


@contextlib.contextmanager
def staging(target: Path | str | StoreLocation, *, overwrite: bool = False) -> Iterator[StoreLocation]:
    """A hidden location beside `target` to write into; published as `target` if the block succeeds.

    On any exception (or KeyboardInterrupt) the hidden location is removed and
    `target` is left as it was. The caller creates the store at the yielded location
    (`StoreLocation.zarr_store()` for zarr). Local folders are renamed into place; on S3
    see `_publish_s3` for what readers can see while it runs.
    """
    target = _location(target)
    if store_exists(target) and not overwrite:
        raise StoreExistsError(f"{target} already exists; pass --overwrite (overwrite=True) to replace it")
    tmp = target.sibling(f".{target.name}{STAGING}{secrets.token_hex(4)}")
    if not target.remote:
        Path(target.path).parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        if target.remote:
            _publish_s3(tmp, target, overwrite=overwrite)
        else:
            _publish(Path(tmp.path), Path(target.path), overwrite=overwrite)
    except Exception as exc:
        if (problem := _write_failure(exc, target)) is None:
            raise
        raise problem from None
    finally:
        if target.remote:
            _remove_prefix(tmp)
        else:
            shutil.rmtree(tmp.path, ignore_errors=True)


def _write_failure(exc: BaseException, target: StoreLocation) -> EtlError | None:
    """What the user can do about a write that failed for want of room or of a right to write,
    in one line (the staging copy is removed all the same); None for any other failure."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return EtlError(
                f"no space left where {target} is written (the disk is full, or a quota is reached); "
                "nothing was written: free some space there, or set data.zarr_dir to a disk with room"
            )
        seen = seen.__cause__ or seen.__context__
    if target.remote and not isinstance(exc, EtlError) and s3_refused(exc):
        return EtlError(
            f"the object store refused to write {target} (the key may read that bucket but not write "
            f"it); nothing was written: {CREDENTIALS_HINT}, with a key that may write"
        )
    return None


def _publish(tmp: Path, target: Path, *, overwrite: bool) -> None:
    if not target.exists():
        os.rename(tmp, target)  # fails (ENOTEMPTY) rather than merging if another run got there first
        return
    if not overwrite:
        raise StoreExistsError(f"{target} appeared while the ETL ran; pass --overwrite to replace it")
    old = target.parent / f".{target.name}{SET_ASIDE}{secrets.token_hex(4)}"  # `recover` puts it back
    os.rename(target, old)
    os.rename(tmp, target)
    (old / MANIFEST).unlink(missing_ok=True)  # first: a half-deleted old store is never put back whole
    shutil.rmtree(old, ignore_errors=True)


def _publish_s3(tmp: StoreLocation, target: StoreLocation, *, overwrite: bool) -> None:
    """Copy the finished store from its hidden prefix to `target`, the manifest last.

    S3 has no rename of a prefix. Readers open a store through its manifest and check every
    chunk they read against it, so the order is what matters: delete the old manifest
    (readers opening from now on are refused: "manifest not found"), delete the old objects,
    copy the new ones server-side, and write the manifest last. A reader that opened the
    old store before gets `MissingChunkError` or `ChecksumError` for chunks that changed
    under it, never the new bytes as if they were the old ones. Two ETL runs publishing to
    one target at the same time are not guarded against.
    """
    fs = target.fs()
    if store_exists(target):
        if not overwrite:
            raise StoreExistsError(f"{target} appeared while the ETL ran; pass --overwrite to replace it")
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(f"{target.path}/{MANIFEST}")
        _remove_prefix(target)
    sources = sorted(_objects(fs, tmp.path))
    manifest = f"{tmp.path}/{MANIFEST}"
    if manifest not in sources:
        raise EtlError(f"{tmp}: no {MANIFEST} was written; nothing published")
    data = [p for p in sources if p != manifest]
    fs.copy(data, [target.path + p[len(tmp.path) :] for p in data])
    fs.copy(manifest, f"{target.path}/{MANIFEST}")


def _remove_prefix(location: StoreLocation) -> None:
    """Delete every object under the location's prefix (nothing if there is none)."""
    fs = location.fs()
    keys = _objects(fs, location.path)
    if keys:
        fs.rm(keys)
    fs.invalidate_cache(location.path)


def _objects(fs: Any, path: str) -> list[str]:
    """The keys of the objects under an S3 prefix. s3fs's `find` alone would also answer with the
    prefix itself where the object store keeps an emptied prefix as a folder (SeaweedFS does)."""
    return [name for name, info in fs.find(path, detail=True).items() if info["type"] == "file"]
