"""The window of a budget period that holds an instant.

A period is a key, never a counter that a job resets: the window of `day`, `week` (ISO, from
Monday) or `month` starts at local midnight in the project's time zone and is named by that
start as a UTC instant (`window_start`). A day is 23 or 25 hours long across a daylight-saving
change; the next window is simply another key, so nothing is carried over and nothing needs
resetting. `total` has one window for all time.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Final, Literal
from zoneinfo import ZoneInfo

Period = Literal["day", "week", "month", "total"]
PERIODS: Final = ("day", "week", "month", "total")
#: The key of a `total` budget's only window.
FOREVER: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The first instant of `day` in `zone`, as UTC. Where midnight does not exist (a few zones
    move their clocks at 00:00), the day starts at the first instant that does."""
    naive = datetime.combine(day, time())
    start = naive.replace(tzinfo=zone)
    # A wall time in a gap round-trips to another wall time; step to the gap's end.
    if start.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != naive:
        start = start.astimezone(UTC).astimezone(zone)
    return start.astimezone(UTC)


def window_of(period: Period, time_zone: str, at: datetime) -> tuple[datetime, datetime | None]:
    """(start, end) of the window of `period` that holds `at`; end None for `total`."""
    if period == "total":
        return FOREVER, None
    zone = ZoneInfo(time_zone)
    local = at.astimezone(zone).date()
    if period == "day":
        first, after = local, local + timedelta(days=1)
    elif period == "week":
        first = local - timedelta(days=local.weekday())
        after = first + timedelta(days=7)
    else:
        first = local.replace(day=1)
        after = (first + timedelta(days=32)).replace(day=1)
    return _local_midnight(first, zone), _local_midnight(after, zone)


#: Per time zone, the window starts of every period (in `PERIODS` order) and the span of
#: instants they hold for: the latest start to the earliest end.
_STARTS: dict[str, tuple[tuple[datetime, ...], datetime, datetime]] = {}
_MAX_ZONES: Final = 1_000


def current_starts(time_zone: str, at: datetime) -> tuple[datetime, ...]:
    """The start of the window holding `at` of each period, in `PERIODS` order: what
    `window_of` answers, remembered per zone for as long as all of them hold (a reservation's
    quick way asks on every call; the day changes once a day)."""
    known = _STARTS.get(time_zone)
    if known is not None and known[1] <= at < known[2]:
        return known[0]
    windows = [window_of(period, time_zone, at) for period in PERIODS]
    starts = tuple(start for start, _ in windows)
    holds_until = min(end for _, end in windows if end is not None)
    if len(_STARTS) >= _MAX_ZONES:
        _STARTS.clear()
    _STARTS[time_zone] = (starts, max(starts), holds_until)
    return starts
