"""The time axis of the inputs: one value per time step (a day or a month), in any CF calendar.

`etl.time_step` says what one step is: ``daily`` or ``monthly``. Everything that
counts time (the lookback, the split gaps, the sample stride, the season window,
the window of derived labels) counts these steps, so the loader, which cuts
windows by index, works the same on both.

Why stamps are normalised: daily model output is often stamped at 12:00 (CMIP6
puts the stamp in the middle of the averaging interval) while labels are stamped
at 00:00, and monthly values at the middle of the month (the 15th or 16th) or at
its start. Two stamps of the same day (month) mean the same value, so every stamp
is floored to its day (to the first of its month) before the inputs are aligned;
the log says when this changed anything. Data with more than one value per step
(hourly, 6-hourly) are refused: averaging them is a scientific choice the user makes.

The *season* of a step is its position in the year: the day of year for daily
steps (period 366 in standard calendars, 365 in noleap, 360 in 360_day), the
month of year for monthly steps (period 12). Percentiles are fitted per season.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .errors import EtlInputError

TIME_STEPS = ("daily", "monthly")
STEP_NOUN = {"daily": "day", "monthly": "month"}
CALENDAR_PERIODS = {"360_day": 360, "noleap": 365, "365_day": 365}  # every other calendar: 366
MONTHS_PER_YEAR = 12
# date_range frequency of one step, for filling gaps
FREQUENCY = {"daily": "D", "monthly": "MS"}

TimeIndex = pd.DatetimeIndex | xr.CFTimeIndex


def calendar_of(index: TimeIndex) -> str:
    """CF calendar of a decoded time index (numpy datetimes are proleptic Gregorian)."""
    return index.calendar if isinstance(index, xr.CFTimeIndex) else "proleptic_gregorian"


def declared_calendar(time: xr.DataArray) -> str:
    """The calendar a decoded time variable's file names ("standard", "gregorian", "noleap" ...),
    kept as written; CF's default "standard" when the file names none (numpy dates), else the
    decoded index's. `calendar_of` says which calendar the dates are in; this what to call it."""
    named = time.encoding.get("calendar") or time.attrs.get("calendar")
    if named:
        return str(named)
    index = time.to_index()
    return index.calendar if isinstance(index, xr.CFTimeIndex) else "standard"


def season_period(calendar: str, time_step: str) -> int:
    """Length of the circular season axis: days in the calendar's longest year, or 12 months."""
    if time_step == "monthly":
        return MONTHS_PER_YEAR
    return CALENDAR_PERIODS.get(calendar.lower(), 366)


def season_index(time: Any, time_step: str) -> np.ndarray:
    """1-based season (int16) of each step: day of year (daily) or month of year (monthly)."""
    if not isinstance(time, xr.DataArray):
        time = xr.DataArray(np.asarray(time), dims="time")
    field = time.dt.month if time_step == "monthly" else time.dt.dayofyear
    return np.asarray(field, dtype=np.int16)


def steps(n: int, time_step: str) -> str:
    """'30 days', '1 month': a count of steps in words."""
    noun = STEP_NOUN[time_step]
    return f"{n} {noun}" + ("" if n == 1 else "s")


def stamp(value: object) -> str:
    """A time stamp as the user reads it: the date, and the time of day when it is not midnight."""
    text = str(value).replace("T", " ")
    return text[:10] if text[11:19] in ("", "00:00:00") else text[:16]


def _floor(index: TimeIndex, time_step: str) -> TimeIndex:
    """Each stamp floored to its day, or to the first day of its month."""
    if isinstance(index, pd.DatetimeIndex):
        floored = index.normalize()
        return floored - pd.to_timedelta(floored.day - 1, unit="D") if time_step == "monthly" else floored
    day = {"day": 1} if time_step == "monthly" else {}
    return xr.CFTimeIndex(
        [t.replace(hour=0, minute=0, second=0, microsecond=0, **day) for t in index], name=index.name
    )


def step_of(index: TimeIndex) -> str:
    """What the data's own step looks like (its median spacing): 'daily', '6-hourly', 'monthly' ..."""
    if len(index) < 2:
        return "unknown (a single time stamp)"
    spacing = pd.to_timedelta(np.median(np.asarray(index[1:] - index[:-1], dtype="timedelta64[s]")))
    hours = spacing / pd.Timedelta(hours=1)
    if hours < 24:
        return f"{hours:g}-hourly"
    days = hours / 24
    if days == 1:
        return "daily"
    if 28 <= days <= 31:
        return "monthly"
    if 360 <= days <= 366:
        return "yearly"
    return f"every {days:g} days"


def normalise(index: TimeIndex, time_step: str, where: str) -> tuple[TimeIndex, str]:
    """Stamps floored to their step; and a note for the log when that changed anything ('' if not).

    Refuses duplicates, decreasing stamps, and more than one stamp per step (sub-daily
    data, or daily data under `time_step = "monthly"`), each with what to do.
    """
    if not index.is_unique:
        duplicate = index[index.duplicated()][0]
        raise EtlInputError(f"{where}: time has duplicate values (e.g. {stamp(duplicate)}); remove them")
    if not index.is_monotonic_increasing:
        position = int(np.argmax(np.asarray(index[1:] < index[:-1])))
        raise EtlInputError(
            f"{where}: time is not increasing ({stamp(index[position + 1])} follows "
            f"{stamp(index[position])}); sort the file by time"
        )
    floored = _floor(index, time_step)
    if not floored.is_unique:
        position = int(np.argmax(np.asarray(floored.duplicated())))
        noun = STEP_NOUN[time_step]
        data_step = step_of(index)
        resample = f"ds.resample(time='{FREQUENCY[time_step]}').mean()"
        if time_step == "monthly" and data_step == "daily":
            fix = f"set etl.time_step = 'daily', or aggregate to monthly means first: {resample}"
        else:
            fix = f"aggregate to {time_step} values first, e.g. {resample}"
        raise EtlInputError(
            f"{where}: more than one time stamp per {noun} ({stamp(index[position - 1])} and "
            f"{stamp(index[position])}): the data are {data_step}, and etl.time_step = {time_step!r} needs "
            f"one value per {noun}; {fix}"
        )
    changed = index != floored
    if not changed.any():
        return floored, ""
    if time_step == "monthly":
        return floored, "monthly time stamps (e.g. " + stamp(index[0]) + ") set to the first of their month"
    times = sorted({stamp(t)[11:] for t in index[changed][:1000]})
    return floored, f"daily time stamps at {', '.join(times)} normalised to dates"


def _ordinal(index: TimeIndex, time_step: str) -> np.ndarray:
    """Consecutive steps have consecutive ordinals (months count across years)."""
    if time_step == "monthly":
        return np.asarray(index.year, dtype=np.int64) * MONTHS_PER_YEAR + np.asarray(index.month)
    if isinstance(index, pd.DatetimeIndex):
        return np.asarray(index.values.astype("datetime64[D]").astype(np.int64))
    return np.asarray((index - index[0]) // pd.Timedelta(days=1), dtype=np.int64)


def missing_steps(index: TimeIndex, time_step: str) -> int:
    """How many steps are absent between the first and the last stamp of a normalised index."""
    if len(index) < 2:
        return 0
    ordinal = _ordinal(index, time_step)
    return int(ordinal[-1] - ordinal[0] + 1 - len(index))


def check_steps(index: TimeIndex, time_step: str, where: str, *, fill_gaps: bool) -> None:
    """A normalised index advances one step at a time (gaps allowed when they will be filled)."""
    if len(index) < 2:
        return
    jumps = np.diff(_ordinal(index, time_step))
    if (jumps == 1).all():
        return
    position = int(np.argmax(jumps != 1))
    noun = STEP_NOUN[time_step]
    data_step = step_of(index)
    if data_step != time_step:
        raise EtlInputError(
            f"{where}: the data are {data_step} ({stamp(index[position])} is followed by "
            f"{stamp(index[position + 1])}), but etl.time_step = {time_step!r}; set etl.time_step to match "
            f"the data ({', '.join(map(repr, TIME_STEPS))})"
        )
    if fill_gaps:
        return
    raise EtlInputError(
        f"{where}: time steps must be one {noun}; {stamp(index[position])} is followed by "
        f"{stamp(index[position + 1])} ({int(jumps[position]) - 1} missing); set data.fill_gaps = true "
        f"to fill missing {noun}s with NaN (their windows are then not used), or add them to the files"
    )


def full_axis(index: TimeIndex, time_step: str) -> TimeIndex:
    """Every step from the first to the last stamp of a normalised index, in its calendar."""
    return xr.date_range(
        index[0],
        index[-1],
        freq=FREQUENCY[time_step],
        calendar=calendar_of(index),
        use_cftime=isinstance(index, xr.CFTimeIndex),
    )
