"""Drought categories: USDM bins at every boundary, wet/dry symmetry, the three reference kinds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from labzarr.etl.errors import EtlInputError

from ..etl import categories as c


@pytest.mark.parametrize(
    ("p", "name"),
    [
        (0.0, "D4"), (0.02, "D4"), (0.0201, "D3"), (0.05, "D3"), (0.0501, "D2"), (0.10, "D2"),
        (0.1001, "D1"), (0.20, "D1"), (0.2001, "D0"), (0.30, "D0"), (0.3001, "N"), (0.5, "N"),
        (0.6999, "N"), (0.70, "W0"), (0.7999, "W0"), (0.80, "W1"), (0.8999, "W1"), (0.90, "W2"),
        (0.9499, "W2"), (0.95, "W3"), (0.9799, "W3"), (0.98, "W4"), (1.0, "W4"),
    ],
)  # fmt: skip
def test_every_boundary_falls_in_the_documented_class(p: float, name: str) -> None:
    assert c.CATEGORIES[int(c.percentile_to_code(p))] == name


@given(st.integers(0, 10_000))
def test_wet_and_dry_sides_mirror_each_other(k: int) -> None:
    # p and 1 - p on an exact grid (k / 10000), so every bin boundary is hit exactly.
    dry, wet = c.percentile_to_code(k / 10_000), c.percentile_to_code((10_000 - k) / 10_000)
    assert int(dry) + int(wet) == c.N_CLASSES - 1


def test_codes_accept_floats_with_nan_and_reject_anything_else() -> None:
    raw = np.array([0.0, 10.0, np.nan, -1.0, 5.0])
    np.testing.assert_array_equal(c.codes_from_codes(raw), [0, 10, -1, -1, 5])
    assert c.codes_from_codes(raw).dtype == np.int8
    for bad in (11.0, 2.5, -3.0):
        with pytest.raises(EtlInputError, match=r"ref\.nc.*not category codes"):
            c.codes_from_codes(np.array([1.0, bad]), "ref.nc")


def test_onehot_round_trip_reorders_nothing_and_marks_empty_rows_missing() -> None:
    codes = np.array([[0, 5, 10], [-1, 3, 7]], dtype=np.int8)
    hot = c.one_hot(codes)
    assert hot.shape == (2, 3, c.N_CLASSES) and hot.sum(axis=-1).tolist() == [[1, 1, 1], [0, 1, 1]]
    np.testing.assert_array_equal(c.codes_from_onehot(hot), codes)
    np.testing.assert_array_equal(c.codes_from_onehot(np.moveaxis(hot, -1, 0), axis=0), codes)
    with pytest.raises(EtlInputError, match="length 4, expected 11"):
        c.codes_from_onehot(np.zeros((2, 4)))


def test_percentile_reference_uses_the_bins_and_rejects_percent() -> None:
    p = np.array([0.01, 0.5, 0.99, np.nan])
    np.testing.assert_array_equal(c.codes_from_percentile(p), [10, 5, 0, -1])
    with pytest.raises(EtlInputError, match="divide by 100"):
        c.codes_from_percentile(np.array([5.0, 50.0]))


def test_reference_to_codes_dispatches_on_the_kind() -> None:
    codes = np.array([1, 9], dtype=np.int8)
    assert c.reference_to_codes(codes, "codes").tolist() == [1, 9]
    assert c.reference_to_codes(c.one_hot(codes), "onehot").tolist() == [1, 9]
    assert c.reference_to_codes(np.array([0.96, 0.04]), "percentile").tolist() == [1, 9]
    with pytest.raises(EtlInputError, match="unknown reference kind"):
        c.reference_to_codes(codes, "labels")


def test_encoding_attrs_document_names_codes_and_bounds() -> None:
    attrs = c.encoding_attrs()
    assert attrs["category_names"][attrs["category_codes"].index(c.NEUTRAL)] == "N"
    assert attrs["category_missing_code"] == c.MISSING
    assert attrs["category_dry_upper_bounds"] == [0.02, 0.05, 0.10, 0.20, 0.30]
