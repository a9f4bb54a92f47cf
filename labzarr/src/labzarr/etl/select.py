"""`data.select`: one value of each extra dimension (pressure level, depth, member, height).

Model output often has more dimensions than time, lat and lon: `ta(time, plev, lat, lon)`,
soil moisture by `depth`, an ensemble `member`. A feature is one series per cell, so
each extra dimension is reduced to one value, chosen in study.toml instead of a
preparation script:

    [data]
    select = { plev = 85000 }                 # every variable that has plev
    select_tolerance = 1.0                    # plev within 1 Pa of 85000

    [data.select.mrsol]                       # a table named after a variable: for it alone
    depth = 0.05

A number picks the nearest coordinate value, which must lie within
`data.select_tolerance` (in the coordinate's own units) of it; text picks the
coordinate value equal to it (a member label, say). The chosen coordinate is
dropped, so variables selected at different levels combine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from .errors import EtlInputError

# Relative float noise allowed on top of data.select_tolerance (85000.00000001 is 85000).
RELATIVE_NOISE = 1e-9


def for_variable(select: Mapping[str, Any], variable: str) -> dict[str, Any]:
    """The selections that apply to one variable: the global ones, then its own table over them."""
    own = select.get(variable)
    chosen = {dim: value for dim, value in select.items() if not isinstance(value, Mapping)}
    if isinstance(own, Mapping):
        chosen.update(own)
    return chosen


def hint(ds: xr.Dataset, dim: str) -> str:
    """What to write in study.toml to pick one value of `dim`, with an example and its values."""
    if dim not in ds.coords:
        return f"Pick one {dim} with data.select in study.toml (it has no coordinate values: add them)"
    coord = ds[dim]
    first = coord.values[0].item() if hasattr(coord.values[0], "item") else coord.values[0]
    literal = f'"{first}"' if isinstance(first, str) else f"{first:g}"
    table = "{ " + f"{dim} = {literal}" + " }"
    return (
        f"Pick one {dim} with data.select in study.toml, e.g. select = {table} (its values: {_values(coord)})"
    )


def _values(coord: xr.DataArray) -> str:
    shown = [f"{v:g}" if isinstance(v, float) else str(v) for v in coord.values[:12].tolist()]
    return ", ".join(shown) + (" ..." if coord.size > 12 else "")


def _index(ds: xr.Dataset, dim: str, wanted: Any, tolerance: float, where: str) -> int:
    if dim not in ds.coords:
        raise EtlInputError(
            f"{where}: dimension {dim!r} has no coordinate values, so data.select cannot pick "
            f"{dim} = {wanted!r}; add the coordinate to the file"
        )
    coord = ds[dim]
    if isinstance(wanted, str):
        matches = np.flatnonzero(coord.values.astype(str) == wanted)
        if not matches.size:
            raise EtlInputError(
                f"{where}: data.select asks for {dim} = {wanted!r}, which is not one of its values "
                f"({_values(coord)})"
            )
        return int(matches[0])
    if not np.issubdtype(coord.dtype, np.number):
        raise EtlInputError(
            f"{where}: data.select gives {dim} = {wanted!r}, a number, but its values are labels "
            f'({_values(coord)}); write the label as text, e.g. {dim} = "{coord.values[0]}"'
        )
    distance = np.abs(coord.values.astype(np.float64) - float(wanted))
    best = int(np.argmin(distance))
    allowed = tolerance + RELATIVE_NOISE * abs(float(wanted))
    if not distance[best] <= allowed:
        raise EtlInputError(
            f"{where}: data.select asks for {dim} = {wanted:g}; the nearest value is "
            f"{float(coord.values[best]):g} ({distance[best]:g} away, "
            f"data.select_tolerance = {tolerance:g}); "
            f"its values: {_values(coord)} (units: {coord.attrs.get('units', 'not given')})"
        )
    return best


def apply(
    ds: xr.Dataset, variables: list[str], select: Mapping[str, Any], tolerance: float, where: str
) -> tuple[xr.Dataset, set[str]]:
    """Each variable reduced to the configured value of its extra dimensions; and the dims used."""
    used: set[str] = set()
    chosen = {}
    for v in variables:
        da = ds[v]
        own = select.get(v)
        absent = [dim for dim in own if dim not in da.dims] if isinstance(own, Mapping) else []
        if absent:
            raise EtlInputError(
                f"{where}: variable {v!r}: data.select.{v} names {absent[0]!r}, which it does not have "
                f"(its dims: {', '.join(map(str, da.dims))}); fix the name or remove it"
            )
        picks = {
            dim: _index(ds, dim, wanted, tolerance, f"{where}: variable {v!r}")
            for dim, wanted in for_variable(select, v).items()
            if dim in da.dims
        }
        used |= set(picks)
        chosen[v] = da.isel(picks, drop=True) if picks else da
    return xr.Dataset(chosen, attrs=ds.attrs), used


def table_variables(select: Mapping[str, Any]) -> list[str]:
    """Variables that have their own table in data.select."""
    return [name for name, value in select.items() if isinstance(value, Mapping)]


def global_dims(select: Mapping[str, Any]) -> list[str]:
    """Dimensions selected for every variable."""
    return [name for name, value in select.items() if not isinstance(value, Mapping)]
