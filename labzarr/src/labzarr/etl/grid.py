"""Horizontal grids: regular lat/lon only, longitude conventions, matching the reference to the model.

Why matching is by nearest coordinate and circular in longitude: products disagree
on conventions (-180..180 or 0..360), on order (north to south or south to north)
and, for a grid crossing the antimeridian, on where the longitudes wrap. Each model
coordinate is paired with the reference coordinate nearest to it (for longitude
on the circle, so 359.5 and -0.5 are the same place); the pairing must be exact
to `data.grid_tolerance`, and that tolerance must stay below half the model's grid
spacing, because a larger one lets a reference value pair with the neighbouring
cell's and every label would land one cell off, silently.

Curvilinear grids (2-D lat and lon, e.g. rotated-pole regional models) are
refused: cells there have no (lat, lon) row and column, so the user regrids first.
"""

from __future__ import annotations

import logging

import numpy as np
import xarray as xr

from .errors import EtlInputError

log = logging.getLogger(__name__)
FULL_CIRCLE = 360.0
REGRID_HINT = (
    "regrid to a regular lat/lon grid first, e.g. with xESMF "
    "(xesmf.Regridder(ds, target_grid, 'bilinear')) or `cdo remapbil`"
)


def refuse_curvilinear(ds: xr.Dataset, where: str) -> None:
    """A clear refusal when lat or lon is 2-D (a curvilinear grid), before any dims check."""
    for name in ("lat", "lon"):
        if name in ds.variables and ds[name].ndim > 1:
            raise EtlInputError(
                f"{where}: {name} is 2-D {ds[name].dims}: a curvilinear grid, which the ETL does not "
                f"support (it needs 1-D lat and lon coordinates); {REGRID_HINT}"
            )


def lon_convention(lon: np.ndarray) -> str:
    """'-180..180', '0..360', or 'either' when every longitude lies in 0..180."""
    lon = np.asarray(lon, dtype=np.float64)
    if lon.size and lon.min() < 0:
        return "-180..180"
    if lon.size and lon.max() > 180:
        return "0..360"
    return "either"


def _distance(a: np.ndarray, b: np.ndarray, circular: bool) -> np.ndarray:
    d = np.abs(a - b)
    return np.minimum(d % FULL_CIRCLE, FULL_CIRCLE - d % FULL_CIRCLE) if circular else d


def spacing(values: np.ndarray, circular: bool) -> float:
    """Smallest distance between two coordinates of a grid axis (inf for a single value)."""
    values = np.unique(np.asarray(values, dtype=np.float64) % FULL_CIRCLE if circular else values)
    if values.size < 2:
        return float("inf")
    gaps = np.diff(values)
    if circular:
        gaps = np.append(gaps, values[0] + FULL_CIRCLE - values[-1])
    return float(gaps.min())


def nearest(targets: np.ndarray, values: np.ndarray, circular: bool) -> tuple[np.ndarray, np.ndarray]:
    """Index into `values` of the value nearest each target, and that distance (sorted search)."""
    targets = np.asarray(targets, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    keys = values % FULL_CIRCLE if circular else values
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    wanted = targets % FULL_CIRCLE if circular else targets
    above = np.searchsorted(ordered, wanted)
    n = len(ordered)
    if circular:  # neighbours wrap around the circle
        candidates = np.stack([(above - 1) % n, above % n])
    else:
        candidates = np.stack([np.clip(above - 1, 0, n - 1), np.clip(above, 0, n - 1)])
    distances = _distance(ordered[candidates], wanted[None], circular)
    best = distances.argmin(axis=0)
    columns = np.arange(len(targets))
    return order[candidates[best, columns]], distances[best, columns]


def check_tolerance(model: xr.Dataset, tolerance: float, where: str) -> None:
    """Refuse a grid_tolerance that could pair a reference value with a neighbouring model cell."""
    for dim in ("lat", "lon"):
        step = spacing(model[dim].values, circular=dim == "lon")
        if tolerance >= step / 2:
            raise EtlInputError(
                f"{where}: data.grid_tolerance = {tolerance:g} is not below half the model's {dim} "
                f"spacing ({step:g} / 2 = {step / 2:g}): with it, a reference value could pair with the "
                "neighbouring cell's and labels would land on the wrong cells. Put both inputs on the same "
                f"grid and keep the tolerance for rounding noise (e.g. 1e-4); to change grids, {REGRID_HINT}"
            )


def match_grid(model: xr.Dataset, reference: xr.DataArray, tolerance: float, where: str) -> xr.DataArray:
    """The reference reordered onto the model's cells and given the model's coordinates."""
    check_tolerance(model, tolerance, where)
    conventions = lon_convention(model["lon"].values), lon_convention(reference["lon"].values)
    if "either" not in conventions and conventions[0] != conventions[1]:
        log.info(
            "longitudes: the model output uses %s, the reference %s; the reference is matched on the "
            "circle and takes the model's longitudes",
            *conventions,
        )
    for dim in ("lat", "lon"):
        m, r = model[dim].values, reference[dim].values
        if m.size != r.size:
            raise EtlInputError(
                f"{where}: {dim} has {m.size} values in the model output, {r.size} in the reference"
            )
        index, distance = nearest(m, r, circular=dim == "lon")
        worst = float(distance.max()) if distance.size else 0.0
        if not worst <= tolerance:
            raise EtlInputError(
                f"{where}: the {dim} coordinates of model output and reference differ by up to {worst:g} "
                f"(data.grid_tolerance = {tolerance:g}); put both on the same grid ({REGRID_HINT}), or "
                "raise the tolerance if this is rounding noise"
            )
        reference = reference.isel({dim: index})
    return reference.assign_coords(lat=model["lat"], lon=model["lon"])
