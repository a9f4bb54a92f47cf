"""The 11 drought categories W4..W0, N, D0..D4 and their US Drought Monitor bins.

Codes run from the wettest class (W4 = 0) through neutral (N = 5) to the
driest (D4 = 10). A percentile p in [0, 1] falls in a dry class when it is at
or below the class's upper bound (D4 <= 2 %, D3 <= 5 %, D2 <= 10 %, D1 <= 20 %,
D0 <= 30 %) and in the mirrored wet class when it is at or above 1 - bound
(W0 >= 70 %, ..., W4 >= 98 %). Missing values get MISSING (-1).
"""

from __future__ import annotations

import numpy as np

CATEGORIES: tuple[str, ...] = ("W4", "W3", "W2", "W1", "W0", "N", "D0", "D1", "D2", "D3", "D4")
N_CLASSES = len(CATEGORIES)
NEUTRAL = CATEGORIES.index("N")
MISSING = -1
# Upper percentile bounds of D4, D3, D2, D1, D0 (inclusive).
DRY_BOUNDS = np.array([0.02, 0.05, 0.10, 0.20, 0.30])
# Lower percentile bounds of W0, W1, W2, W3, W4 (inclusive), the mirror of DRY_BOUNDS.
WET_BOUNDS = np.array([0.70, 0.80, 0.90, 0.95, 0.98])


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
