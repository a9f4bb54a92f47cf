"""The 11 drought categories W4..W0, N, D0..D4 and their US Drought Monitor bins.

Codes run from the wettest class (W4 = 0) through neutral (N = 5) to the
driest (D4 = 10). A percentile p in [0, 1] falls in a dry class when it is at
or below the class's upper bound (D4 <= 2 %, D3 <= 5 %, D2 <= 10 %, D1 <= 20 %,
D0 <= 30 %) and in the mirrored wet class when it is at or above 1 - bound
(W0 >= 70 %, ..., W4 >= 98 %). Missing values get MISSING (-1).

The reference labels may arrive in three forms (`data.reference_kind`):

* ``codes``: integers 0..10 in the order of CATEGORIES (NaN or -1 = missing);
* ``onehot``: an extra dimension of length 11 in the same order (a coordinate
  holding the category names, if present, is used to reorder it); a cell-day
  whose row is all zero or NaN is missing, soft probabilities are read by argmax;
* ``percentile``: a percentile in [0, 1], binned with `percentile_to_code`.

`reference_to_codes` turns any of them into int8 codes; a value that fits none
raises `EtlInputError` naming where it came from.
"""

from __future__ import annotations

import numpy as np
from labzarr.etl.errors import EtlInputError
from labzarr.store_format import MISSING

CATEGORIES: tuple[str, ...] = ("W4", "W3", "W2", "W1", "W0", "N", "D0", "D1", "D2", "D3", "D4")
N_CLASSES = len(CATEGORIES)
NEUTRAL = CATEGORIES.index("N")
# Upper percentile bounds of D4, D3, D2, D1, D0 (inclusive).
DRY_BOUNDS = np.array([0.02, 0.05, 0.10, 0.20, 0.30])
# Lower percentile bounds of W0, W1, W2, W3, W4 (inclusive), the mirror of DRY_BOUNDS.
WET_BOUNDS = np.array([0.70, 0.80, 0.90, 0.95, 0.98])
REFERENCE_KINDS = ("codes", "onehot", "percentile")


def percentile_to_code(p: np.ndarray | float) -> np.ndarray:
    """Category code (int8) of each percentile; NaN gives MISSING."""
    p = np.asarray(p, dtype=np.float64)
    # searchsorted(side="left") counts bounds strictly below p: 0 means p <= 2 % (D4).
    dry_level = np.searchsorted(DRY_BOUNDS, p, side="left")
    # searchsorted(side="right") counts bounds at or below p: 5 means p >= 98 % (W4).
    wet_level = np.searchsorted(WET_BOUNDS, p, side="right")
    code = np.full(p.shape, NEUTRAL, dtype=np.int8)
    code = np.where(dry_level < len(DRY_BOUNDS), N_CLASSES - 1 - dry_level, code)
    code = np.where(wet_level > 0, NEUTRAL - wet_level, code)
    return np.where(np.isnan(p), MISSING, code).astype(np.int8)


def encoding_attrs() -> dict[str, object]:
    """Attributes that document the encoding inside a stored dataset."""
    return {
        "category_names": list(CATEGORIES),
        "category_codes": list(range(N_CLASSES)),
        "category_missing_code": MISSING,
        "category_dry_upper_bounds": DRY_BOUNDS.tolist(),
        "category_wet_lower_bounds": WET_BOUNDS.tolist(),
        "category_scheme": "US Drought Monitor percentile bins, wet side mirrored",
    }


def one_hot(codes: np.ndarray) -> np.ndarray:
    """One-hot rows (float32, last axis of length 11) of codes; MISSING gives a zero row."""
    codes = np.asarray(codes)
    out = np.zeros((*codes.shape, N_CLASSES), dtype=np.float32)
    valid = codes != MISSING
    np.put_along_axis(out, np.where(valid, codes, 0)[..., None].astype(np.intp), 1.0, axis=-1)
    out[~valid] = 0.0
    return out


def codes_from_codes(values: np.ndarray, where: str = "reference") -> np.ndarray:
    """int8 codes from integer or float codes (NaN or -1 = missing); other values are errors."""
    values = np.asarray(values)
    as_float = values.astype(np.float64)
    missing = np.isnan(as_float) | (as_float == MISSING)
    bad = ~missing & ((as_float != np.round(as_float)) | (as_float < 0) | (as_float > N_CLASSES - 1))
    if bad.any():
        example = as_float[bad].flat[0]
        raise EtlInputError(
            f"{where}: {int(bad.sum())} values are not category codes 0..{N_CLASSES - 1} "
            f"(e.g. {example:g}); set data.reference_kind to 'onehot' or 'percentile' if they are not codes"
        )
    return np.where(missing, MISSING, np.nan_to_num(as_float)).astype(np.int8)


def codes_from_onehot(values: np.ndarray, axis: int = -1, where: str = "reference") -> np.ndarray:
    """int8 codes from one-hot (or class-probability) rows along `axis`; empty rows are missing."""
    values = np.moveaxis(np.asarray(values, dtype=np.float64), axis, -1)
    if values.shape[-1] != N_CLASSES:
        raise EtlInputError(
            f"{where}: the one-hot dimension has length {values.shape[-1]}, expected {N_CLASSES} "
            f"({', '.join(CATEGORIES)})"
        )
    filled = np.nan_to_num(values, nan=0.0)
    if (filled < 0).any():
        raise EtlInputError(f"{where}: one-hot values must not be negative")
    empty = filled.max(axis=-1) <= 0
    return np.where(empty, MISSING, filled.argmax(axis=-1)).astype(np.int8)


def codes_from_percentile(values: np.ndarray, where: str = "reference") -> np.ndarray:
    """int8 codes from percentiles in [0, 1]; NaN is missing."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[~np.isnan(values)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        hint = " (divide by 100 if they are in percent)" if finite.max() <= 100 else ""
        raise EtlInputError(
            f"{where}: percentiles must lie in [0, 1], found {finite.min():g}..{finite.max():g}{hint}"
        )
    return percentile_to_code(values)


def reference_to_codes(values: np.ndarray, kind: str, where: str = "reference", axis: int = -1) -> np.ndarray:
    """int8 codes from a reference block given as codes, one-hot (along `axis`) or percentiles."""
    if kind == "codes":
        return codes_from_codes(values, where)
    if kind == "onehot":
        return codes_from_onehot(values, axis, where)
    if kind == "percentile":
        return codes_from_percentile(values, where)
    raise EtlInputError(f"{where}: unknown reference kind {kind!r}; allowed: {', '.join(REFERENCE_KINDS)}")
