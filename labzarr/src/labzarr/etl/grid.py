"""Horizontal grids: regular lat/lon only, longitude conventions, matching the reference to the model.

Why matching is by nearest coordinate and circular in longitude: products disagree
on conventions (-180..180 or 0..360), on order (north to south or south to north)
and, for a grid crossing the antimeridian, on where the longitudes wrap. Each model
coordinate is paired with the reference coordinate nearest to it (for longitude
on the circle, so 359.5 and -0.5 are the same place); the pairing must be exact
to `data.grid_tolerance`, and that tolerance must stay below half the model's grid
spacing, because a larger one lets a reference value pair with the neighbouring
cell's and every label would land one cell off, silently.

What is refused, each with a pointer to regridding or to the fix: curvilinear grids
(2-D latitude/longitude variables whatever their names: `lat`, `nav_lat` of NEMO/ORCA,
`latitude`), where cells have no (lat, lon) row and column; rotated-pole and projected
grids (a `grid_mapping` other than latitude_longitude, or coordinates whose standard_name
says rotated or projected), whose 1-D coordinates are not latitudes and longitudes even
when `data.dim_aliases` names them so; latitudes outside [-90, 90] and longitudes outside
[-180, 360]; and duplicate or unsorted coordinates, which would pair a reference row with
the wrong model row.

Why the pairing allows representation error by default: a grid written once in float64
and once in float32 differs by a few 1e-5 degrees, which is no difference of place. On
top of `data.grid_tolerance`, coordinates may differ by REPRESENTATION_FRACTION of the
grid spacing or a few float32 units in the last place, whichever is larger (a quarter of
the spacing at most); a shift of a sizeable part of a cell is still refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import xarray as xr

from .errors import EtlInputError

log = logging.getLogger(__name__)
FULL_CIRCLE = 360.0
REGRID_HINT = (
    "regrid to a regular lat/lon grid first, e.g. with xESMF "
    "(xesmf.Regridder(ds, target_grid, 'bilinear')) or `cdo remapbil`"
)


LAT_LON_NAMES = {"lat", "lon", "latitude", "longitude", "nav_lat", "nav_lon"}
LAT_LON_STANDARD_NAMES = {"latitude", "longitude"}
LAT_LON_UNITS = {"degrees_north", "degree_north", "degrees_n", "degree_n", "degrees_east", "degree_east",
                 "degrees_e", "degree_e"}  # fmt: skip
# CF standard names of coordinates that are not latitude and longitude (rotated pole, projections)
PROJECTED_STANDARD_NAMES = {
    "grid_latitude", "grid_longitude", "projection_x_coordinate", "projection_y_coordinate",
    "projection_x_angular_coordinate", "projection_y_angular_coordinate",
}  # fmt: skip
LATITUDE_LONGITUDE = "latitude_longitude"  # the CF grid_mapping_name of a plain lat/lon grid
RANGES = {"lat": (-90.0, 90.0), "lon": (-180.0, FULL_CIRCLE)}
REPRESENTATION_FRACTION = 1e-3  # of the grid spacing: coordinates rounded or written in float32
FLOAT32_ULPS = 4  # float32 units in the last place, for grids finer than that fraction shows


def _lat_lon_like(var: xr.DataArray, name: str) -> bool:
    attrs = var.attrs
    return (
        name.lower() in LAT_LON_NAMES
        or str(attrs.get("standard_name", "")).lower() in LAT_LON_STANDARD_NAMES
        or str(attrs.get("units", "")).lower() in LAT_LON_UNITS
    )


def refuse_curvilinear(ds: xr.Dataset, variables: Sequence[str], where: str) -> None:
    """A clear refusal when a latitude or longitude is 2-D (a curvilinear grid), whatever its name
    (lat, nav_lat, latitude ...), before dims are renamed or checked. `variables`: the data
    variables wanted; a 2-D latitude/longitude on their horizontal dims (not bounds) counts."""
    data_dims = {d for v in variables if v in ds.data_vars for d in ds[v].dims}
    for name, var in ds.variables.items():
        if var.ndim < 2 or name in variables:
            continue
        on_grid = str(name) in ("lat", "lon") or set(var.dims) <= data_dims
        if on_grid and _lat_lon_like(ds[name], str(name)):
            raise EtlInputError(
                f"{where}: {name} is 2-D {var.dims}: a curvilinear grid, which the ETL does not "
                f"support (it needs 1-D lat and lon coordinates); {REGRID_HINT}"
            )


def _mapping_names(attribute: str) -> list[str]:
    """Grid-mapping variable names of a CF grid_mapping attribute ("crs" or "crs: lat lon ...")."""
    words = attribute.split()
    named = [w[:-1] for w in words if w.endswith(":")]
    return named or words


def refuse_projected(ds: xr.Dataset, variables: Sequence[str], where: str) -> None:
    """Refuse rotated-pole and projected grids: a grid_mapping other than latitude_longitude, or
    lat/lon coordinates whose standard_name says they are rotated or projected."""
    for v in variables:
        attribute = ds[v].attrs.get("grid_mapping") or ds[v].encoding.get("grid_mapping")
        for name in _mapping_names(str(attribute)) if attribute else []:
            mapping = ds[name].attrs.get("grid_mapping_name") if name in ds.variables else None
            if mapping and mapping != LATITUDE_LONGITUDE:
                raise EtlInputError(
                    f"{where}: variable {v!r} is on a {mapping} grid (grid_mapping = {name!r}): its "
                    "coordinates are not latitudes and longitudes, even where data.dim_aliases names "
                    f"them lat and lon; the ETL needs a regular lat/lon grid: {REGRID_HINT}"
                )
    for dim in ("lat", "lon"):
        standard_name = str(ds[dim].attrs.get("standard_name", "")) if dim in ds.variables else ""
        if standard_name.lower() in PROJECTED_STANDARD_NAMES:
            raise EtlInputError(
                f"{where}: the {dim} coordinate has standard_name {standard_name!r}: rotated or projected "
                f"coordinates, not {'latitudes' if dim == 'lat' else 'longitudes'}; the ETL needs a "
                f"regular lat/lon grid: {REGRID_HINT}"
            )


def _monotonic(steps: np.ndarray) -> bool:
    return bool((steps > 0).all() or (steps < 0).all())


def _shown(values: np.ndarray) -> str:
    return ", ".join(f"{v:g}" for v in values)


def check_axes(ds: xr.Dataset, where: str) -> None:
    """lat and lon are degrees in range, without duplicates (longitudes compared on the circle),
    and increasing or decreasing (longitudes also when they wrap once across the antimeridian,
    170 .. 180, -175, or numerically sorted across it, -178 .. 179)."""
    for dim in ("lat", "lon"):
        values = np.asarray(ds[dim].values, dtype=np.float64)
        low, high = RANGES[dim]
        outside = values[~((values >= low) & (values <= high))]
        if outside.size:
            raise EtlInputError(
                f"{where}: {dim} has values outside [{low:g}, {high:g}] (e.g. {outside[0]:g}), so they "
                f"are not {'latitudes' if dim == 'lat' else 'longitudes'} in degrees; if they are "
                f"rotated-pole or projected coordinates (renamed by data.dim_aliases?), {REGRID_HINT}"
            )
        circular = dim == "lon"
        keys = values % FULL_CIRCLE if circular else values
        unique, counts = np.unique(keys, return_counts=True)
        if (counts > 1).any():
            positions = np.flatnonzero(keys == unique[np.argmax(counts > 1)])
            shown = _shown(np.unique(values[positions]))  # 0 and 360: one place on the circle
            at = ", ".join(map(str, positions))
            cyclic = (
                " (a repeated cyclic column? drop it, e.g. ds.isel(lon=slice(0, -1)))" if "," in shown else ""
            )
            raise EtlInputError(
                f"{where}: {dim} has duplicate values ({shown} at positions {at}); "
                f"every grid row and column needs its own {dim}: fix the file's coordinates{cyclic}"
            )
        steps = np.diff(values)
        if circular and not _monotonic(steps):  # sorted on the circle (one wrap) is sorted too
            steps = np.diff(np.unwrap(values, period=FULL_CIRCLE))
        if not _monotonic(steps):
            turn = int(np.argmax(np.sign(steps) != np.sign(steps[0])))  # >= 1: no step is 0 here
            raise EtlInputError(
                f"{where}: {dim} is neither increasing nor decreasing ({_shown(values[turn - 1 : turn + 2])} "
                f"at positions {turn - 1}..{turn + 1}); sort the file by {dim}, e.g. ds.sortby({dim!r})"
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


def representation(values: np.ndarray, step: float) -> float:
    """Differences of coordinates that are rounding, not place: REPRESENTATION_FRACTION of the
    spacing `step` or FLOAT32_ULPS float32 units at the largest |value|, at most a quarter step."""
    values = np.abs(np.asarray(values, dtype=np.float64))
    largest = float(values.max()) if values.size else 0.0
    ulps = FLOAT32_ULPS * float(np.spacing(np.float32(largest)))
    fraction = REPRESENTATION_FRACTION * step if np.isfinite(step) else 0.0  # one row: no spacing
    return min(max(fraction, ulps), step / 4)


def check_tolerance(model: xr.Dataset, tolerance: float, where: str) -> None:
    """Refuse a grid_tolerance that could pair a reference value with a neighbouring model cell."""
    for dim in ("lat", "lon"):
        step = spacing(model[dim].values, circular=dim == "lon")
        if tolerance + representation(model[dim].values, step) >= step / 2:
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
        rounding = representation(m, spacing(m, circular=dim == "lon"))
        if not worst <= tolerance + rounding:
            raise EtlInputError(
                f"{where}: the {dim} coordinates of model output and reference differ by up to {worst:g} "
                f"(data.grid_tolerance = {tolerance:g}, plus {rounding:.3g} for rounding); put both on the "
                f"same grid ({REGRID_HINT}), or raise the tolerance if this is rounding noise"
            )
        reference = reference.isel({dim: index})
    return reference.assign_coords(lat=model["lat"], lon=model["lon"])
