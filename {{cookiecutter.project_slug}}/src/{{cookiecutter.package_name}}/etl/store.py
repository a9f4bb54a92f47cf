"""Writing the stores: chunk-aligned appends, every chunk on disk, a manifest, an atomic rename.

Layout (`Config.store_dir` = `data/zarr/<dataset_name>_lb<time_lookback>/`):

    train.zarr, valid.zarr, test.zarr   one consolidated zarr store per split
    climatology.zarr                    the fitted transform state (see quantiles.py)

Each split store holds the data variable `<dataset_name>` float32
(samples, time_lookback, features), `category` int8 (samples,), per-sample
coordinates `lat`, `lon`, `time` (the window's end date) and `features` (the
variable names); everything with a `samples` dimension is chunked by
`etl.chunk_samples`. Attributes: the category encoding, split, transform and
provenance (config, package version, input files with sha256, UTC time).

Why it is written this way:

* **bounded memory**: `ChunkAppender` copies rows into a fixed buffer of whole
  chunks and appends it when full (`to_zarr(append_dim=...)`), so no chunk is
  ever written twice and memory does not depend on the number of samples;
* **every chunk exists**: `write_empty_chunks=True` stores even an all-fill
  chunk, and `write_manifest` fails if any chunk file is missing. The manifest
  (`manifest.json` inside each store) lists per array the shape, chunk shape,
  dtype, chunk count and the sha256 and CRC32C of every stored (compressed)
  chunk, keyed by its path relative to the store (`<array>/0.0.0` in zarr 2,
  `<array>/c/0/0/0` in zarr 3), so a reader can tell a missing chunk from an
  empty one and verify each download (the loader checks the CRC32C, about 20
  times cheaper than sha256; the sha256 names the chunk in caches);
* **reproducible bytes**: chunk contents depend only on inputs and config
  (fixed time units, deterministic Zstd); the time of the run lives only in the
  attributes;
* **atomic**: everything is written into a hidden folder next to the target
  (`.<name>.tmp-<random>`, a dot name nginx never serves) and renamed into place
  when complete; a failure or interruption removes it, and an existing store is
  replaced only with `overwrite=True`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import itertools
import json
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

from .errors import EtlError, StoreExistsError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


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
    """Append arrays along one dimension of a new zarr store, whole chunks at a time.

    `layout` maps each appended variable to its dims (the first is `dim`);
    `coords` names those that are coordinates; `static` holds variables without
    `dim` (e.g. the `features` coordinate), written with the first chunk.
    Datetime variables are encoded as integer days since `time_units`.

    Rows are copied into a preallocated buffer of whole chunks (as many as fit
    in `flush_mb`, at least one) that is written when full: memory is that
    buffer, whatever the number of rows, and small chunks are still written in
    few calls.
    """

    def __init__(
        self,
        path: Path,
        *,
        dim: str,
        chunk: int,
        layout: Mapping[str, tuple[str, ...]],
        coords: Sequence[str] = (),
        static: xr.Dataset | None = None,
        zarr_format: int = 2,
        compression_level: int = 3,
        time_units: str = "days since 1970-01-01",
        calendar: str = "proleptic_gregorian",
        flush_mb: float = 4,
    ) -> None:
        self.path = Path(path)
        self.dim = dim
        self.chunk = int(chunk)
        self.layout = dict(layout)
        self.coords = set(coords)
        self.static = static if static is not None else xr.Dataset()
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
        options: dict[str, Any] = {"consolidated": False, "write_empty_chunks": True}
        if self.n_written == 0:
            ds = ds.merge(self.static)
            ds.to_zarr(
                self.path, mode="w-", zarr_format=self.zarr_format, encoding=self._encoding(ds), **options
            )
        else:
            ds.to_zarr(self.path, append_dim=self.dim, **options)
        self.n_written += n
        self.filled = 0

    def _encoding(self, ds: xr.Dataset) -> dict[str, dict[str, Any]]:
        encoding: dict[str, dict[str, Any]] = {}
        for name, var in ds.variables.items():
            chunks = tuple(self.chunk if d == self.dim else ds.sizes[d] for d in var.dims)
            encoding[str(name)] = {"chunks": chunks, "compressors": (self.codec,)}
            if _is_time(np.asarray(var.values[:1])):
                encoding[str(name)].update(units=self.time_units, calendar=self.calendar, dtype="int64")
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


def chunk_checksums(path: Path) -> tuple[str, str]:
    """sha256 (hex) and CRC32C (8 hex digits; zarr 3's checksum) of one stored chunk, read once."""
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), f"{google_crc32c.value(data):08x}"


def write_manifest(path: Path) -> dict[str, Any]:
    """Check that every chunk of every array exists and record shapes, counts and checksums."""
    group = zarr.open_group(path, mode="r")
    arrays: dict[str, Any] = {}
    members = sorted(group.arrays())
    total = sum(
        math.prod(math.ceil(s / c) for s, c in zip(a.shape, a.chunks, strict=True)) for _, a in members
    )
    progress = tqdm(total=total, unit="chunk", desc=f"manifest {path.name}", disable=None, leave=False)
    for name, array in members:
        checksums, crc32c = {}, {}
        for key in chunk_keys(array, name):
            file = path / key
            if not file.is_file():
                raise EtlError(f"{path}: chunk {key} was not written; the store is incomplete")
            checksums[key], crc32c[key] = chunk_checksums(file)
            progress.update()
        arrays[name] = {
            "shape": list(array.shape),
            "chunks": list(array.chunks),
            "chunk_shape": list(array.chunks),
            "dtype": str(array.dtype),
            "chunk_count": len(checksums),
            "checksums": checksums,
            "crc32c": crc32c,
        }
    progress.close()
    manifest = {"format": MANIFEST_FORMAT, "zarr_format": group.metadata.zarr_format, "arrays": arrays}
    tmp = path / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path / MANIFEST)
    return manifest


def finalize(path: Path, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Set the group attributes, consolidate the metadata, write the manifest."""
    group = zarr.open_group(path, mode="r+")
    group.attrs.put(dict(attrs))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        zarr.consolidate_metadata(path)
    return write_manifest(path)


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
    """What made this store: config, package version, input names and checksums, UTC time."""
    return {
        "package": package,
        "package_version": version,
        "config": json.loads(json.dumps(config, default=str)),
        "inputs": [
            {"name": p.name, "sha256": sha256_input(p)}
            for p in tqdm(files, desc="input checksums", unit="file", disable=None, leave=False)
        ],
        "created_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


@contextlib.contextmanager
def staging(target: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """A hidden folder beside `target` to write into; renamed to `target` if the block succeeds.

    On any exception (or KeyboardInterrupt) the folder is removed and `target`
    is left as it was.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise StoreExistsError(f"{target} already exists; pass --overwrite (overwrite=True) to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{secrets.token_hex(4)}"
    os.mkdir(tmp)
    try:
        yield tmp
        _publish(tmp, target, overwrite=overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, target: Path, *, overwrite: bool) -> None:
    if not target.exists():
        os.rename(tmp, target)  # fails (ENOTEMPTY) rather than merging if another run got there first
        return
    if not overwrite:
        raise StoreExistsError(f"{target} appeared while the ETL ran; pass --overwrite to replace it")
    old = target.parent / f".{target.name}.old-{secrets.token_hex(4)}"
    os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
