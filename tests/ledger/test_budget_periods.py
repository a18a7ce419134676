"""A budget period is a key: the window that holds an instant starts at local midnight in the
project's time zone, whatever daylight saving does to the length of the day."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aiserver.ledger.budgets.periods import FOREVER, PERIODS, current_starts, window_of


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


@pytest.mark.parametrize(
    ("period", "zone", "at", "start", "end"),
    [
        # Berlin springs forward on 2026-03-29: that day has 23 hours
        ("day", "Europe/Berlin", "2026-03-29T12:00:00+02:00",
         "2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00"),
        # and falls back on 2026-10-25: 25 hours
        ("day", "Europe/Berlin", "2026-10-25T23:30:00+01:00",
         "2026-10-25T00:00:00+02:00", "2026-10-26T00:00:00+01:00"),
        # 23:30 UTC on the 24th is already the 25th in Berlin
        ("day", "Europe/Berlin", "2026-10-24T22:30:00+00:00",
         "2026-10-25T00:00:00+02:00", "2026-10-26T00:00:00+01:00"),
        # an ISO week starts on Monday; Thursday 2026-12-03 is in the week of Monday the 30th
        ("week", "America/New_York", "2026-12-03T10:00:00-05:00",
         "2026-11-30T00:00:00-05:00", "2026-12-07T00:00:00-05:00"),
        # a week across the change of 2026-11-01 in New York is 169 hours long
        ("week", "America/New_York", "2026-11-01T12:00:00-05:00",
         "2026-10-26T00:00:00-04:00", "2026-11-02T00:00:00-05:00"),
        ("month", "Asia/Kathmandu", "2026-12-31T20:00:00+00:00",  # the 1st of January there
         "2027-01-01T00:00:00+05:45", "2027-02-01T00:00:00+05:45"),
        ("month", "UTC", "2028-02-29T23:59:59+00:00",
         "2028-02-01T00:00:00+00:00", "2028-03-01T00:00:00+00:00"),
        # Santiago skips midnight when it springs forward (2026-09-06 00:00 -> 01:00)
        ("day", "America/Santiago", "2026-09-06T12:00:00-03:00",
         "2026-09-06T01:00:00-03:00", "2026-09-07T00:00:00-03:00"),
    ],
)  # fmt: skip
def test_the_window_of_an_instant_starts_at_local_midnight(
    period: str, zone: str, at: str, start: str, end: str
) -> None:
    assert window_of(period, zone, utc(at)) == (utc(start), utc(end))  # type: ignore[arg-type]


def test_consecutive_windows_meet_without_a_gap_or_an_overlap() -> None:
    moment = utc("2026-01-01T00:00:00+00:00")
    for period, zone in (("day", "Europe/Berlin"), ("week", "Australia/Lord_Howe"),
                         ("month", "America/Santiago")):  # fmt: skip
        start, end = window_of(period, zone, moment)  # type: ignore[arg-type]
        for _ in range(60):
            assert end is not None
            assert start <= moment < end
            following = window_of(period, zone, end)  # type: ignore[arg-type]
            assert following[0] == end
            start, end = following
            moment = start + timedelta(minutes=1)


def test_a_total_budget_has_one_window_for_all_time() -> None:
    assert window_of("total", "Europe/Berlin", utc("2026-12-03T00:00:00+00:00")) == (FOREVER, None)


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Europe/Berlin", "Asia/Kolkata",
                                  "America/Santiago", "Pacific/Chatham"])  # fmt: skip
def test_the_remembered_window_starts_are_window_ofs_at_every_instant(zone: str) -> None:
    """Instants every 97 minutes over 15 months, forwards then backwards (so the remembered
    starts are reused, then left at each boundary in both directions), across the zone's
    daylight-saving changes: each answer equals `window_of`'s."""
    first = utc("2025-12-20T00:00:00Z")
    instants = [first + timedelta(minutes=97 * i) for i in range(15 * 31 * 24 * 60 // 97)]
    for at in [*instants, *reversed(instants)]:
        assert current_starts(zone, at) == tuple(window_of(p, zone, at)[0] for p in PERIODS), at
