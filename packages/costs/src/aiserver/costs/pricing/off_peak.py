"""The off-peak calendar of an entry: ``off_peak_pricing``, compiled once and read per call.

The windows are hours of the UTC day, every day (``hours_utc``) or on some weekdays
(``windows``), and the weekdays are read on the calendar the entry names
(``weekday_timezone``, UTC unless given). Compiling turns them into one flag per minute, so that
deciding whether a call's time ``at`` is off-peak is an index into bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from aiserver.costs.pricing.exact import price_of
from aiserver.costs.pricing.fields import OFF_PEAK_FIELDS

_OFF_PEAK_KEYS: Final = frozenset(("hours_utc", "windows", "weekday_timezone", *OFF_PEAK_FIELDS))

_DAY: Final = 24 * 60  # minutes

Window = tuple[int, int]  # (start, end) minutes of the UTC day, start inclusive, end exclusive


class OffPeak(msgspec.Struct, frozen=True):
    prices: dict[str, Decimal]
    every_day: tuple[Window, ...]
    by_weekday: tuple[tuple[frozenset[int], tuple[Window, ...]], ...]
    weekday_zone: tzinfo | None  # None: the zone is unknown, so the windows cannot be decided
    # The windows as one flag per minute: of the UTC day for every_day, and of the week (by ISO
    # weekday on the entry's calendar, then UTC minute) for every_day and by_weekday together.
    day: bytes
    week: bytes


# Zones with a fixed UTC offset, for hosts without a time zone database.
_FIXED_ZONES: Final[Mapping[str, int]] = {
    "UTC": 0,
    "Etc/UTC": 0,
    "Asia/Shanghai": 8,
    "Asia/Hong_Kong": 8,
    "Asia/Singapore": 8,
    "Asia/Taipei": 8,
    "Asia/Tokyo": 9,
    "Asia/Seoul": 9,
}

_WEEKDAYS: Final[Mapping[str, int]] = {
    "mon": 1, "monday": 1, "tue": 2, "tues": 2, "tuesday": 2, "wed": 3, "wednesday": 3,
    "thu": 4, "thur": 4, "thurs": 4, "thursday": 4, "fri": 5, "friday": 5,
    "sat": 6, "saturday": 6, "sun": 7, "sunday": 7,
}  # fmt: skip


def compile_off_peak(value: object, ignored: list[str], invalid: list[str]) -> OffPeak | None:
    """An entry's ``off_peak_pricing``, or None without one. Keys it does not know go to
    `ignored`; a block it cannot read, in whole or in part, is named in `invalid`."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        invalid.append("off_peak_pricing")
        return None
    ignored.extend(f"off_peak_pricing.{key}" for key in value if key not in _OFF_PEAK_KEYS)
    prices: dict[str, Decimal] = {}
    for name in OFF_PEAK_FIELDS:
        if value.get(name) is None:
            continue
        price = price_of(value[name])
        if price is None:
            invalid.append("off_peak_pricing")
            continue
        prices[name] = price
    every_day = _windows(value.get("hours_utc"), invalid)
    by_weekday: list[tuple[frozenset[int], tuple[Window, ...]]] = []
    rules = value.get("windows")
    if rules is not None:
        if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
            invalid.append("off_peak_pricing")
            rules = ()
        for rule in rules:
            if not isinstance(rule, Mapping):
                invalid.append("off_peak_pricing")
                continue
            days = _weekdays(rule.get("weekdays"), invalid)
            windows = _windows(rule.get("hours_utc"), invalid)
            if days and windows:
                by_weekday.append((days, windows))
    day = _minutes(every_day)
    week = b"".join(
        _union(day, *(_minutes(windows) for days, windows in by_weekday if weekday in days))
        for weekday in range(1, 8)
    )
    return OffPeak(
        prices=prices,
        every_day=every_day,
        by_weekday=tuple(by_weekday),
        weekday_zone=_zone(value.get("weekday_timezone")),
        day=day,
        week=week,
    )


def is_off_peak(off_peak: OffPeak, at: datetime) -> bool:
    """Whether an off-peak window is open at `at` (timezone-aware)."""
    utc = at.astimezone(UTC)
    minute = utc.hour * 60 + utc.minute
    zone = off_peak.weekday_zone
    if not off_peak.by_weekday or zone is None:
        return off_peak.day[minute] == 1
    # The hours are UTC; the weekday is read on the entry's calendar (UTC unless it names one).
    weekday = utc.astimezone(zone).isoweekday()
    return off_peak.week[(weekday - 1) * _DAY + minute] == 1


def _zone(name: object) -> tzinfo | None:
    if name is None:
        return UTC
    if not isinstance(name, str) or not name.strip():
        return None
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        hours = _FIXED_ZONES.get(name.strip())
        return None if hours is None else timezone(timedelta(hours=hours))


def _weekdays(value: object, invalid: list[str]) -> frozenset[int]:
    # As in LiteLLM, a rule without weekdays applies every day.
    if value is None:
        return frozenset(range(1, 8))
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        invalid.append("off_peak_pricing")
        return frozenset()
    days: set[int] = set()
    for day in value:
        if isinstance(day, int) and not isinstance(day, bool) and 1 <= day <= 7:
            days.add(day)
        elif isinstance(day, str) and day.strip().lower() in _WEEKDAYS:
            days.add(_WEEKDAYS[day.strip().lower()])
        else:
            invalid.append("off_peak_pricing")
    return frozenset(days)


def _windows(value: object, invalid: list[str]) -> tuple[Window, ...]:
    if value is None:
        return ()
    texts = (value,) if isinstance(value, str) else value
    if not isinstance(texts, Sequence):
        invalid.append("off_peak_pricing")
        return ()
    windows: list[Window] = []
    for text in texts:
        window = _window(text)
        if window is None:
            invalid.append("off_peak_pricing")
        else:
            windows.append(window)
    return tuple(windows)


def _window(text: object) -> Window | None:
    if not isinstance(text, str) or text.count("-") != 1:
        return None
    start, end = (_minute_of_day(part.strip()) for part in text.split("-"))
    if start is None or end is None:
        return None
    return start, end


def _minute_of_day(text: str) -> int | None:
    hours, _, minutes = text.partition(":")
    if not (hours.isdigit() and minutes.isdigit() and hours.isascii() and minutes.isascii()):
        return None
    hour, minute = int(hours), int(minutes)
    if hour > 24 or minute > 59 or (hour == 24 and minute):
        return None
    return (hour * 60 + minute) % _DAY  # "24:00" is midnight, like "00:00"


def _minutes(windows: tuple[Window, ...]) -> bytes:
    """One flag per minute of the day: 1 within one of the windows."""
    flags = bytearray(_DAY)
    for start, end in windows:
        # Start inclusive, end exclusive; a window that ends before it starts runs past midnight,
        # and one that ends where it starts covers the whole day ("00:00-00:00").
        if start < end:
            flags[start:end] = b"\x01" * (end - start)
        else:
            flags[start:] = b"\x01" * (_DAY - start)
            flags[:end] = b"\x01" * end
    return bytes(flags)


def _union(*flags: bytes) -> bytes:
    return bytes(any(minute) for minute in zip(*flags, strict=True))
