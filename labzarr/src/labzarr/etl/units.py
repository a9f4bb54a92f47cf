"""Units: every file of a variable agrees, and agrees with `data.units` where that is set.

Why: a variable split over files (one per year, say) where one file is in K and
another in °C combines without complaint and gives a series that jumps by 273 at
the file boundary; its percentiles and labels are then wrong with no error. So each
variable's `units` attribute is compared across its files, and with the units the
study expects (`data.units = { ta = "K" }`), as units, not strings: "K" and
"kelvin", "m3 m-3" and "1", "mm day-1" and "mm/day" are the same. The parsing is
pint's with cf-xarray's registry, which reads the UDUNITS spellings of CF files. A
string neither understands is compared as written.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import EtlInputError

log = logging.getLogger(__name__)
UNITS_ATTR = "units"


@functools.cache
def _registry() -> Any:
    """pint's registry with the CF/UDUNITS spellings (imported once, when units are compared).

    cf-xarray redefines a few of pint's units on import, which pint logs one line each for;
    those lines say nothing to a user of the ETL, so pint's logger is quiet meanwhile.
    """
    pint_log = logging.getLogger("pint")
    level = pint_log.level
    pint_log.setLevel(logging.ERROR)
    try:
        from cf_xarray.units import units
    finally:
        pint_log.setLevel(level)
    return units


def parse(text: str) -> Any | None:
    """The pint unit of a CF units string, or None when it is not understood."""
    try:
        return _registry().Unit(text)
    except Exception:  # pint raises several kinds (undefined unit, syntax); all mean "not understood"
        return None


def same(a: str, b: str) -> bool:
    """Whether two units strings mean the same unit (1 a is 1 b, and 0 a is 0 b for °C and K)."""
    if a.strip() == b.strip():
        return True
    ua, ub = parse(a), parse(b)
    if ua is None or ub is None or not ua.is_compatible_with(ub):
        return False
    quantity = _registry().Quantity
    one = quantity(1.0, ua).to(ub).magnitude
    zero = quantity(0.0, ua).to(ub).magnitude
    return abs(one - 1.0) < 1e-12 and abs(zero) < 1e-12


def _relation(found: str, wanted: str) -> str:
    """How two different units relate, for the message: convertible, or different quantities."""
    uf, uw = parse(found), parse(wanted)
    if uf is None or uw is None:
        return "one of them is not a unit pint/UDUNITS understands, so they are compared as text"
    if not uf.is_compatible_with(uw):
        return "they measure different quantities"
    quantity = _registry().Quantity
    one, zero = (quantity(x, uf).to(uw).magnitude for x in (1.0, 0.0))
    shown = f"1 {found} = {one:g} {wanted}"
    return shown if abs(zero) < 1e-12 else f"0 {found} = {zero:g} {wanted}, {shown}"


def check(
    found: Mapping[str, Sequence[tuple[Path, str | None]]], expected: Mapping[str, str], what: str
) -> None:
    """Refuse a variable whose files carry different units, or units other than the expected ones.

    `found` maps each variable to (file, its units attribute or None) of every file holding it.
    """
    for variable, files in found.items():
        given = [(path, units) for path, units in files if units is not None]
        bare = [path for path, units in files if units is None]
        if given and bare:
            raise EtlInputError(
                f"{bare[0].name}: variable {variable!r} has no units attribute while {given[0][0].name} "
                f"says {given[0][1]!r}; every file of a variable must state the same units"
            )
        for path, units in given[1:]:
            first_path, first = given[0]
            if not same(first, units):
                raise EtlInputError(
                    f"{first_path.name} and {path.name}: variable {variable!r} is in {first!r} in one and "
                    f"{units!r} in the other ({_relation(first, units)}); convert the files to one unit "
                    "before the ETL, e.g. with xarray (ds[v] = ds[v] - 273.15; ds[v].attrs['units'] = "
                    "'degC') or `cdo`"
                )
        wanted = expected.get(variable)
        if wanted is None:
            continue
        if parse(wanted) is None:
            log.warning("data.units: %s = %r is not a unit pint/UDUNITS understands", variable, wanted)
        if not given:
            log.warning(
                "%s: variable %r states no units; data.units expects %r (not checked)", what, variable, wanted
            )
        elif not same(given[0][1], wanted):
            raise EtlInputError(
                f"{given[0][0].name}: variable {variable!r} is in {given[0][1]!r}, but data.units expects "
                f"{wanted!r} ({_relation(given[0][1], wanted)}); convert the files, or set "
                f"data.units.{variable} = {given[0][1]!r} if the study should use them as they are"
            )
