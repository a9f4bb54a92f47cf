"""The store contract: what the ETL writes, the server serves and the reader and loader read.

One consolidated zarr store per study, `<data.zarr_dir>/<dataset_name>.zarr`:

    <dataset_name>  float32 (cell, time, feature)  the quantile-transformed series
    category        int8    (cell, time)           label codes 0..10 (W4..D4), MISSING = -1
    complete        int8    (cell, time)           1: every feature is finite on that day, 0: not
    lat, lon        float64 (cell,)                the cell's coordinates
    time            (time,)                        dates of the steps (CF-encoded, the inputs' calendar)
    feature         str     (feature,)             the variable names, in feature order
    climatology/    group                          the fitted transform state (etl/quantiles.py)
    manifest.json                                  every chunk's checksums (see Manifest)

Only cells with data are stored (row-major lat, lon order of the input grid).
Every array along `cell` is chunked by `etl.chunk_cells` cells and all of
`time`, so one request fetches whole series; there is no sample axis: a
lookback window is cut when read (`window_ends`, `valid_pairs`), never stored.

The time axis has one entry per time step, a day or a month (`time_step` in the
root attributes); every count here (lookback, gap, block lengths) is in steps,
and windows are cut by step index, so daily and monthly stores read alike.

The split is a set of contiguous blocks of label steps (`SplitBlock`), recorded
in the root attributes with the gap between them; the transform was fitted on
the train block only. A window of `lookback` steps ending on step `end` belongs
to a split when `end` is in its block; the gaps (at least the lookback) keep
every window inside one split's steps and the gap before it.

Fill values cannot be mistaken for data (`invalid_fill`): NaN for floats, MISSING
for the labels, the smallest integer for other integers, `TIME_FILL` (not a date
of any study) for dates, an empty string for names; a yes/no array such as
`complete` is stored as int8 (1 yes, 0 no) so that its fill, `FLAG_FILL`, is
neither. A reader that loses a chunk still sees "missing" (xarray masks every
fill) and the library's own reader raises instead (`remote.MissingChunkError`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

STORE_SUFFIX = ".zarr"
DATASET_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # what a store may be named (as the template asks)
MISSING = -1  # label code of a step without a label (the fill value of `category`)
CELL, TIME, FEATURE = "cell", "time", "feature"
LABELS = "category"
COMPLETE = "complete"
LAT, LON = "lat", "lon"
CLIMATOLOGY = "climatology"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 2
SPLITS = ("train", "valid", "test")
SPLIT_GAP = "split_gap"  # root attribute: steps between the split blocks
TIME_FILL = np.iinfo(np.int64).min  # fill value of the encoded time axis: never a real date
FLAG_FILL = -1  # fill value of a yes/no array, stored as int8 1 (yes) / 0 (no): a lost chunk reads neither
# Keys a zarr reader may probe for and legitimately not find.
METADATA_NAMES = frozenset({".zarray", ".zattrs", ".zgroup", ".zmetadata", "zarr.json"})


def store_name(dataset_name: str) -> str:
    """File name of a study's store, e.g. columbia_gridcells.zarr; ValueError for a name that is
    not one plain name (`DATASET_NAME`): a `/` or `..` would put the store (and the folders made
    for it) elsewhere."""
    if not DATASET_NAME.fullmatch(dataset_name):
        raise ValueError(
            f"{dataset_name!r} is not a plain name; allowed: letters, digits and '_', starting with a "
            f"letter (it names the store, <name>{STORE_SUFFIX}, and its features array)"
        )
    return f"{dataset_name}{STORE_SUFFIX}"


def series_layout(dataset_name: str) -> dict[str, tuple[str, ...]]:
    """The dims of each array of the series group, as the table above says (one definition for
    the study's ETL and the test stores)."""
    return {
        dataset_name: (CELL, TIME, FEATURE),
        LABELS: (CELL, TIME),
        COMPLETE: (CELL, TIME),
        LAT: (CELL,),
        LON: (CELL,),
    }


# The fill values of the series group that `invalid_fill` of their dtype would not give: a
# missing label reads as MISSING, as the ETL writes it (the features' NaN and the dates' TIME_FILL
# are the defaults).
SERIES_FILL_VALUES = MappingProxyType({LABELS: np.int8(MISSING)})


def invalid_fill(dtype: Any, *, time: bool = False) -> Any:
    """The fill value an array of `dtype` gets unless its writer names one: a value no stored
    value takes, so that a chunk that is not there never reads as data.

    NaN for floats, the smallest signed (largest unsigned) integer, `TIME_FILL` for dates (`time`:
    the array holds encoded dates), "" for strings, and `FLAG_FILL` for booleans, which are
    stored as int8 (`stored_dtype`): a bool has no value to spare. An integer array whose
    extreme value is data must name its own fill.
    """
    dtype = np.dtype(dtype)
    if time or dtype.kind in "Mm":
        return TIME_FILL
    if dtype.kind == "b":
        return np.int8(FLAG_FILL)
    if dtype.kind == "f":
        return dtype.type(np.nan)
    if dtype.kind == "i":
        return np.iinfo(dtype).min
    if dtype.kind == "u":
        return np.iinfo(dtype).max
    if dtype.kind in "OUT":
        return ""
    raise ValueError(f"no fill value that cannot pass for data is defined for dtype {dtype}")


def stored_dtype(dtype: Any) -> np.dtype | None:
    """The dtype an array of `dtype` is stored as when it differs (booleans: int8, see
    `invalid_fill`), else None."""
    return np.dtype(np.int8) if np.dtype(dtype).kind == "b" else None


def is_metadata(key: str) -> bool:
    """Whether a store key is metadata (may be absent) rather than a chunk (must exist)."""
    return key == MANIFEST or key.rsplit("/", 1)[-1] in METADATA_NAMES


# -- the split ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitBlock:
    """Label steps [start, stop) of one split (indices along `time`)."""

    name: str
    start: int
    stop: int

    @property
    def steps(self) -> int:
        return self.stop - self.start


def split_blocks(
    n_time: int, *, lookback: int, gap: int, fractions: Sequence[float]
) -> dict[str, SplitBlock]:
    """Contiguous train / valid / test blocks of step indices separated by `gap` steps.

    Block lengths are the fractions of the steps left after the two gaps (train and
    validation rounded down, test takes the rest). Raises ValueError (worded for the
    user by the caller) when the gap is shorter than the lookback or a block would
    hold no window end.
    """
    if gap < lookback:
        raise ValueError(f"the split gap ({gap} steps) is shorter than the lookback ({lookback} steps)")
    usable = n_time - 2 * gap
    n_train = int(np.floor(usable * fractions[0]))
    n_valid = int(np.floor(usable * fractions[1]))
    n_test = usable - n_train - n_valid
    train = SplitBlock("train", 0, n_train)
    valid = SplitBlock("valid", n_train + gap, n_train + gap + n_valid)
    test = SplitBlock("test", valid.stop + gap, valid.stop + gap + n_test)
    blocks = {b.name: b for b in (train, valid, test)}
    for block in blocks.values():
        if first_end(block, lookback) >= block.stop:
            raise ValueError(
                f"the {block.name} block would hold {max(block.steps, 0)} steps, too few for one "
                f"{lookback}-step window ({n_time} steps in all, gaps of {gap} steps)"
            )
    return blocks


def first_end(block: SplitBlock, lookback: int) -> int:
    """The first step of `block` on which a whole window can end (step lookback - 1 at the earliest)."""
    return max(block.start, lookback - 1)


def window_ends(block: SplitBlock, lookback: int, stride: int = 1) -> np.ndarray:
    """Step indices of the window end dates (label dates) of a split block."""
    return np.arange(first_end(block, lookback), block.stop, stride, dtype=np.int64)


def split_attrs(blocks: Mapping[str, SplitBlock], dates: Sequence[Any], gap: int) -> dict[str, Any]:
    """The split definition as store attributes: indices, readable dates, the gap (in steps)."""
    return {
        SPLIT_GAP: gap,
        "splits": {
            name: {
                "start": b.start,
                "stop": b.stop,
                "first_date": str(dates[b.start])[:10],
                "last_date": str(dates[b.stop - 1])[:10],
            }
            for name, b in blocks.items()
        },
    }


def blocks_from_attrs(attrs: Mapping[str, Any]) -> dict[str, SplitBlock]:
    """The split blocks recorded by `split_attrs`."""
    return {name: SplitBlock(name, int(b["start"]), int(b["stop"])) for name, b in attrs["splits"].items()}


# -- windows on read ------------------------------------------------------------------------


def valid_pairs(labels: np.ndarray, complete: np.ndarray, ends: np.ndarray, lookback: int) -> np.ndarray:
    """Flat indices `cell * n_time + end` of the usable windows, in cell-major order.

    labels: (cells, T) codes; complete: (cells, T) 1 (or True) where every feature is
    finite; anything else (0, a fill value, NaN) is not complete. A window is usable
    when its end date has a label and every day of it is complete (counted with a
    cumulative sum, not per window).
    """
    n_cells, n_time = labels.shape
    if not len(ends):
        return np.empty(0, dtype=np.int64)
    gaps = np.zeros((n_cells, n_time + 1), dtype=np.int32)
    np.cumsum(np.asarray(complete) != 1, axis=1, out=gaps[:, 1:])
    bad_in_window = gaps[:, ends + 1] - gaps[:, ends + 1 - lookback]
    usable = (labels[:, ends] != MISSING) & (bad_in_window == 0)
    cell, which = np.nonzero(usable)  # row-major: cell-major, then time order
    return cell.astype(np.int64) * n_time + ends[which]


def window_rows(series: Any, lookback: int) -> Any:
    """A view (cells * T - lookback + 1, lookback * F) of a C-contiguous series (cells, T, F)
    whose row `cell * T + end - lookback + 1` is the window ending on `end` (no copy).

    Works on numpy arrays and torch tensors alike: a window never crosses cells
    because every usable end is at least `lookback - 1`.
    """
    n_cells, n_time, n_features = series.shape
    rows = n_cells * n_time - lookback + 1
    if isinstance(series, np.ndarray):
        flat = np.ascontiguousarray(series).reshape(-1)
        return np.lib.stride_tricks.as_strided(
            flat, (rows, lookback * n_features), (n_features * flat.itemsize, flat.itemsize), writeable=False
        )
    return series.contiguous().reshape(-1).as_strided((rows, lookback * n_features), (n_features, 1))


def gather_windows(series: np.ndarray, pairs: np.ndarray, lookback: int) -> np.ndarray:
    """Windows (samples, lookback, features) ending at the flat `pairs` of series (cells, T, F)."""
    rows = window_rows(series, lookback)[np.asarray(pairs) - (lookback - 1)]
    return rows.reshape(len(pairs), lookback, series.shape[2])


# -- the manifest ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ArrayManifest:
    """What the ETL recorded about one array: shape, chunk shape, every chunk's checksums."""

    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    sha256: dict[str, str]  # chunk key (relative to the store) -> sha256 of its stored bytes
    crc32c: dict[str, int]  # chunk key -> CRC32C of its stored bytes (zarr 3's own checksum)

    @property
    def chunk_count(self) -> int:
        return len(self.sha256)


@dataclass(frozen=True)
class Manifest:
    """`manifest.json`: one entry per array (keys like `category/0.0` or `climatology/lat/c/0`)."""

    zarr_format: int
    arrays: dict[str, ArrayManifest] = field(default_factory=dict)

    @property
    def sha256(self) -> dict[str, str]:
        return {key: digest for entry in self.arrays.values() for key, digest in entry.sha256.items()}

    @property
    def crc32c(self) -> dict[str, int]:
        return {key: crc for entry in self.arrays.values() for key, crc in entry.crc32c.items()}

    def to_json(self) -> str:
        arrays = {
            name: {
                "shape": list(a.shape),
                "chunks": list(a.chunks),
                "chunk_count": a.chunk_count,
                "sha256": a.sha256,
                "crc32c": {k: f"{v:08x}" for k, v in a.crc32c.items()},
            }
            for name, a in sorted(self.arrays.items())
        }
        body = {"format": MANIFEST_FORMAT, "zarr_format": self.zarr_format, "arrays": arrays}
        return json.dumps(body, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, raw: bytes | str) -> Manifest:
        """Parse `manifest.json`; ValueError (with the reason) if it is not one of ours."""
        try:
            data = json.loads(raw)
            if data.get("format") != MANIFEST_FORMAT:
                raise ValueError(
                    f"manifest format {data.get('format')!r}, expected {MANIFEST_FORMAT} (a store written "
                    "by another version of this study)"
                )
            arrays = {}
            for name, entry in data["arrays"].items():
                arrays[name] = ArrayManifest(
                    shape=tuple(int(s) for s in entry["shape"]),
                    chunks=tuple(int(c) for c in entry["chunks"]),
                    sha256={str(k): str(v) for k, v in entry["sha256"].items()},
                    crc32c={str(k): int(v, 16) for k, v in entry["crc32c"].items()},
                )
                if int(entry["chunk_count"]) != len(arrays[name].sha256) or set(arrays[name].sha256) != set(
                    arrays[name].crc32c
                ):
                    raise ValueError(f"array {name!r}: chunk count and checksums disagree")
            return cls(zarr_format=int(data["zarr_format"]), arrays=arrays)
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{type(exc).__name__}: {exc}") from None
