"""Region writes: every array of the store created at its final length first, then filled by
independent writers, each owning whole chunks.

This is what lets blocks of cells be computed anywhere (in this process or on dask workers) and
written by whoever computed them, in any order: a writer's rows start on a chunk boundary and
end on one (or at the array's end), so no two writers touch the same chunk file, and a chunk's
bytes depend only on its rows. Writes go through `write_rows`, the one function that touches the
store during the block phase.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr
import zarr

from ..location import StoreLocation
from .store import compressor, zarr_encoding

TASKS_PER_WORKER = 4  # blocks per worker thread at least (when the grid allows): even load, small tail


def block_cells(block_mb: float, n_time: int, n_features: int) -> int:
    """Cells per block so that one block's working arrays stay near `block_mb`."""
    bytes_per_cell = n_time * (40 * n_features + 40)  # values, features, float64 temporaries, indices
    return max(1, int(block_mb * 2**20 // bytes_per_cell))


def chunk_spans(cells: np.ndarray, *, block: int, chunk: int, workers: int) -> list[tuple[int, np.ndarray]]:
    """The store's rows cut into spans of whole chunks, `(first row, the cells' grid positions)`:
    at most `block` cells each, and enough spans to keep every worker busy."""
    span = max(1, min(block, -(-len(cells) // (TASKS_PER_WORKER * workers))) // chunk) * chunk
    return [(start, cells[start : start + span]) for start in range(0, len(cells), span)]


def rows_of(block: tuple[slice, slice]) -> str:
    """A grid block in words, for errors of the task that read it."""
    rows, cols = block
    return f"the grid's rows {rows.start}..{rows.stop - 1}, columns {cols.start}..{cols.stop - 1}"


def cells_of(span: tuple[int, np.ndarray]) -> str:
    """A span of the store in words, for errors of the task that wrote it."""
    start, cells = span
    return f"the store's cells {start}..{start + len(cells) - 1}"


def time_units(first: Any) -> str:
    """CF units of a time axis counted in days from its first stamp (a datetime64 or cftime date)."""
    stamp = first.isoformat() if hasattr(first, "isoformat") else np.datetime_as_string(first, unit="s")
    return f"days since {str(stamp).replace('T', ' ')}"


@dataclass(frozen=True)
class ArrayGroup:
    """The arrays of one group of the store (the root when `group` is None) that run along `dim`,
    chunked by `chunk` rows; `static` holds the variables without `dim` (coordinates such as
    `time`), written once by `create`."""

    dim: str
    chunk: int
    layout: Mapping[str, tuple[str, ...]]
    group: str | None = None
    coords: Sequence[str] = ()
    static: xr.Dataset = field(default_factory=xr.Dataset)
    fill_values: Mapping[str, Any] = field(default_factory=dict)
    zarr_format: int = 2
    compression_level: int = 3
    time_units: str = "days since 1970-01-01"
    calendar: str = "proleptic_gregorian"

    def create(self, location: StoreLocation, n_rows: int, like: Mapping[str, np.ndarray]) -> None:
        """Write the metadata of every array at `n_rows` rows (shapes and dtypes of the rows of
        `like`) and the static variables; no row is written. The root group must exist."""
        import dask.array as da

        if set(like) != set(self.layout):
            raise ValueError(f"create() needs rows like {sorted(self.layout)}, got {sorted(like)}")
        lazy = {
            name: da.empty((n_rows, *a.shape[1:]), dtype=a.dtype, chunks=(self.chunk, *a.shape[1:]))
            for name, a in ((k, np.asarray(v)) for k, v in like.items())
        }
        ds = xr.Dataset(
            {k: (self.layout[k], v) for k, v in lazy.items() if k not in self.coords},
            coords={k: (self.layout[k], v) for k, v in lazy.items() if k in self.coords},
        ).merge(self.static)
        encoding = zarr_encoding(
            ds,
            dim=self.dim,
            chunk=self.chunk,
            codec=compressor(self.zarr_format, self.compression_level),
            zarr_format=self.zarr_format,
            time_units=self.time_units,
            calendar=self.calendar,
            fill_values=self.fill_values,
        )
        ds.to_zarr(
            location.zarr_store(),
            mode="a",
            group=self.group,
            zarr_format=self.zarr_format,
            encoding=encoding,
            compute=False,  # metadata and the static variables only; the rows come from write_rows
            consolidated=False,
        )


def write_rows(
    location: StoreLocation, group: str | None, start: int, arrays: Mapping[str, np.ndarray]
) -> None:
    """Write `arrays` (rows along the first axis) at rows `start`.. of the arrays of `group`.

    Opens the existing store (mode r+: a writer whose temporary store is gone fails instead of
    recreating it; the runners also let every task end before the store is removed) and writes
    every chunk, also an all-fill one,
    so the manifest finds each chunk on disk. The caller keeps to whole chunks: rows from a chunk
    boundary to a chunk boundary or the array's end.
    """
    root = zarr.open_group(location.zarr_store(), mode="r+")
    node = root[group] if group else root
    with zarr.config.set({"array.write_empty_chunks": True}):
        for name, values in arrays.items():
            array = node[name]
            values = np.asarray(values)
            array[start : start + len(values)] = values.astype(array.dtype, copy=False)
