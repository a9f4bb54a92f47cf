"""Small split stores with the ETL's served layout, written directly for loader tests.

Layout: `<root>/<store_name>/<split>.zarr`, consolidated, chunked along
`samples`, holding `<dataset_name>(samples, time_lookback, features)` float32
and `category(samples)` int8 codes, plus the ETL's `manifest.json` (shapes,
chunk counts, sha256 of every stored chunk). The features are AR(1) noise and
the label is the drought category of the mean of the last days of feature 0,
so a model can learn it. Benchmarks and template tests reuse this writer.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from ..etl.categories import percentile_to_code
from ..etl.store import write_manifest

LABEL = "category"


def synthetic_samples(
    n_samples: int, lookback: int, n_features: int = 2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Learnable (x, y): x float32 (samples, lookback, features), y int8 codes 0..10."""
    from scipy.signal import lfilter
    from scipy.stats import norm

    rng = np.random.default_rng(seed)
    shocks = rng.standard_normal((n_samples, lookback, n_features)).astype(np.float32)
    phi = 0.9
    x = (lfilter([1.0], [1.0, -phi], shocks, axis=1) * np.sqrt(1 - phi**2)).astype(np.float32)
    window = min(10, lookback)
    recent = x[:, -window:, 0].mean(axis=1)
    z = recent / recent.std()
    y = percentile_to_code(norm.cdf(z)).astype(np.int8)
    return x, y


def indexed_samples(n_samples: int, lookback: int, n_features: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Samples that carry their own index in x[:, :, 0] (exact in float32), labels index % 11:
    lets a test check that an epoch yields every sample exactly once."""
    x = np.zeros((n_samples, lookback, n_features), dtype=np.float32)
    x[:, :, 0] = np.arange(n_samples, dtype=np.float32)[:, None]
    x[:, :, 1:] = 1.0
    return x, (np.arange(n_samples) % 11).astype(np.int8)


def write_split(
    path: Path,
    x: np.ndarray,
    y: np.ndarray,
    *,
    name: str,
    chunk_samples: int,
    zarr_format: int = 2,
) -> Path:
    """One split store at `path` (consolidated, every chunk written) plus its manifest."""
    ds = xr.Dataset(
        {
            name: (("samples", "time_lookback", "features"), x),
            LABEL: (("samples",), y),
        },
        coords={"features": np.arange(x.shape[2])},
    )
    encoding = {
        name: {"chunks": (chunk_samples, x.shape[1], x.shape[2])},
        LABEL: {"chunks": (chunk_samples,)},
    }
    with warnings.catch_warnings():  # zarr 3: consolidated metadata is not in the v3 spec (known)
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        ds.to_zarr(path, mode="w", consolidated=True, zarr_format=zarr_format, encoding=encoding,
                   write_empty_chunks=True)  # fmt: skip
    write_manifest(path)
    return path


def write_study_stores(
    root: Path,
    *,
    store_name: str,
    dataset_name: str,
    lookback: int,
    chunk_samples: int,
    sizes: dict[str, int],
    n_features: int = 2,
    zarr_format: int = 2,
    seed: int = 0,
) -> Path:
    """Write `<root>/<store_name>/<split>.zarr` for each split in `sizes`; returns the folder."""
    folder = root / store_name
    folder.mkdir(parents=True, exist_ok=True)
    for offset, (split, n) in enumerate(sizes.items()):
        x, y = synthetic_samples(n, lookback, n_features, seed=seed + offset)
        write_split(folder / f"{split}.zarr", x, y, name=dataset_name, chunk_samples=chunk_samples,
                    zarr_format=zarr_format)  # fmt: skip
    return folder
