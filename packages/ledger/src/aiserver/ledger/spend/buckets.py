"""The buckets of a spend answer, and which parts of its window are read from where.

- `bucket_bounds`: the boundaries of the hours, days, weeks (ISO: from Monday) or months of a
  zone's clock inside a window, in UTC. A day is 23 or 25 hours on a daylight-saving change;
  the hour that repeats in autumn is two hour buckets. An hour bucket is an hour of the clock:
  where the clock moves by half an hour (Australia/Lord_Howe) a bucket of half an hour is left
  next to the change (01:30 to 02:00+10:30 when it goes back from 02:00+11:00).
- `plan_ranges`: the window split into whole UTC hours that no boundary cuts (read from the
  hourly rollups and the outbox tail) and the parts of the hours that one cuts (a zone at
  +05:30, a window's edge at 10:20: read from raw events), so that every bucket is exact.
- `split_days`: of those whole hours, the days of the project's clock that lie whole inside
  them and inside one bucket (read from the daily rollups), and the hours left over.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Final, Literal, get_args
from zoneinfo import ZoneInfo

from aiserver.ledger.errors import InvalidField

Bucket = Literal["hour", "day", "week", "month"]
BUCKETS: Final = get_args(Bucket)
#: The most buckets one answer holds (hours: about 416 days).
MAX_BUCKETS: Final = 10_000
HOUR: Final = timedelta(hours=1)
_TICK: Final = timedelta(microseconds=1)


def bucket_bounds(
    since: datetime, until: datetime, bucket: Bucket | None, zone: ZoneInfo
) -> list[datetime]:
    """The buckets' boundaries in UTC: `since`, every start of a bucket of the zone's clock
    inside the window, `until`. `InvalidField` for more than MAX_BUCKETS buckets."""
    bounds = [since]
    if bucket is not None:
        start = _bucket_start(since, bucket, zone)
        # no next start past year 9999, where no window reaches
        while (after := _next_start(start, bucket, zone)) is not None and after < until:
            start = after
            if len(bounds) == MAX_BUCKETS:
                raise InvalidField(
                    f"bucket: more than {MAX_BUCKETS} {bucket}s from from to to; use a longer "
                    "bucket or a shorter window",
                    ["bucket"],
                )
            if start > bounds[-1]:
                bounds.append(start)
    bounds.append(until)
    return bounds


def _midnight(day: date, zone: ZoneInfo) -> datetime:
    # a midnight that a clock change skips is the change's instant (when the day begins)
    return datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)


def _offset_change(after: datetime, until: datetime, zone: ZoneInfo) -> datetime | None:
    """The first instant in (after, until] at which the zone's UTC offset is no longer the one
    it has at `after` (None if it is the same at `until`; the window is at most an hour, which
    holds at most one change)."""
    before = after.astimezone(zone).utcoffset()
    if until.astimezone(zone).utcoffset() == before:
        return None
    low, high = after, until  # the offset at `low` is `before`, at `high` it is not
    while high - low > _TICK:
        middle = low + (high - low) // 2
        if middle.astimezone(zone).utcoffset() == before:
            low = middle
        else:
            high = middle
    return high


def _bucket_start(at: datetime, bucket: Bucket, zone: ZoneInfo) -> datetime:
    """The start of the bucket that holds `at`; `at` itself when that start lies before year 1
    in UTC (the first day of the calendar east of UTC): the next start follows from `at` alike,
    as that day is a Monday and the first of a month."""
    local = at.astimezone(zone)
    try:
        if bucket == "hour":
            # the last start of an hour of the clock, or its last change (Lord Howe moves by
            # half an hour: 02:30+11:00 begins a bucket)
            into = timedelta(
                minutes=local.minute, seconds=local.second, microseconds=local.microsecond
            )
            return _offset_change(at - into, at, zone) or at - into
        day = local.date()
        if bucket == "week":
            day -= timedelta(days=day.weekday())
        elif bucket == "month":
            day = day.replace(day=1)
        start = _midnight(day, zone)
        return start if start <= at else _midnight(day - timedelta(days=1), zone)
    except OverflowError:
        return at


def _next_start(start: datetime, bucket: Bucket, zone: ZoneInfo) -> datetime | None:
    """The start of the bucket after the one that begins at `start`; None when it would lie
    after year 9999 (no window reaches it)."""
    try:
        if bucket == "hour":
            # the next time the clock is on the hour, unless its offset changes before: a
            # change by half an hour (Lord Howe) leaves a bucket of half an hour next to it
            local = start.astimezone(zone)
            into = timedelta(
                minutes=local.minute, seconds=local.second, microseconds=local.microsecond
            )
            on_the_hour = start + (HOUR - into)
            return _offset_change(start, on_the_hour, zone) or on_the_hour
        day = start.astimezone(zone).date()
        if bucket == "day":
            return _midnight(day + timedelta(days=1), zone)
        if bucket == "week":
            return _midnight(day + timedelta(days=7), zone)
        return _midnight((day.replace(day=28) + timedelta(days=4)).replace(day=1), zone)
    except OverflowError:
        return None


def _hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def clock_hour_start(at: datetime, zone: ZoneInfo) -> datetime:
    """The start of the hour of the zone's clock that holds `at`, as the `hour` buckets cut
    it: the clock's last full hour or offset change (Lord Howe's repeated half hour is a bucket
    of its own)."""
    return _bucket_start(at, "hour", zone)


def clock_hour(at: datetime, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """The hour of the zone's clock that holds `at` (start, end), as `clock_hour_start` and
    the next bucket's start."""
    start = clock_hour_start(at, zone)
    end = _next_start(start, "hour", zone)
    if end is None:  # pragma: no cover - only the last hour of year 9999
        raise OverflowError("the hour after the last of year 9999")
    return start, end


@dataclass(frozen=True, slots=True)
class Ranges:
    """Where each part of the window is read from: whole UTC hours from the rollups (and the
    tail), the rest from raw events. `cut`: the UTC hours a boundary cuts (their starts)."""

    rolled: list[tuple[datetime, datetime]] = field(default_factory=list)
    raw: list[tuple[datetime, datetime]] = field(default_factory=list)
    cut: list[datetime] = field(default_factory=list)

    @property
    def cut_hours(self) -> int:
        return len(self.cut)


def plan_ranges(bounds: Sequence[datetime], *, raw_only: bool) -> Ranges:
    """Split the window [bounds[0], bounds[-1]) so that no UTC hour read from the rollups holds
    a boundary: those hours, clipped to the window, are read from raw events."""
    since, until = bounds[0], bounds[-1]
    if raw_only:
        return Ranges(raw=[(since, until)])
    cut = sorted({_hour(b) for b in bounds if b != _hour(b)})
    raw: list[tuple[datetime, datetime]] = []
    for hour in cut:
        # hour + HOUR can lie past year 9999 when until is in the calendar's last hour
        piece = (max(hour, since), hour + min(HOUR, until - hour))
        if raw and raw[-1][1] == piece[0]:
            piece = (raw.pop()[0], piece[1])
        raw.append(piece)
    rolled: list[tuple[datetime, datetime]] = []
    stop = _hour(until)
    # the first whole hour; none when since and until share an hour, which may be the last of
    # year 9999 (the hour after it does not exist)
    cursor = since
    if since != _hour(since):
        cursor = _hour(since) + HOUR if _hour(since) < stop else stop
    for hour in cut:
        if cursor <= hour < stop:
            if cursor < hour:
                rolled.append((cursor, hour))
            cursor = hour + HOUR
    if cursor < stop:
        rolled.append((cursor, stop))
    return Ranges(rolled=rolled, raw=raw, cut=cut)


@dataclass(frozen=True, slots=True)
class Days:
    """The whole hours to read split further: `days` of the project's clock read from the
    daily rollups, each in bucket `buckets[i]` (1-based, as SQL's `width_bucket` counts), and
    the `hourly` ranges left, read from the hourly rollups."""

    days: list[date] = field(default_factory=list)
    buckets: list[int] = field(default_factory=list)
    hourly: list[tuple[datetime, datetime]] = field(default_factory=list)


def _local_date(at: datetime, zone: ZoneInfo) -> date:
    return at.astimezone(zone).date()


def day_hours(day: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """The whole UTC hours that the daily rollup of `day` sums: those that lie whole in that
    day of the zone's clock (a daily rollup holds no hour that straddles a midnight). In a zone
    at a whole hour's offset that is the day itself; at +05:30, 00:30 to 23:30 of its clock."""
    first = _midnight(day, zone)
    if first != _hour(first):
        first = _hour(first) + HOUR
    return first, _hour(_midnight(day + timedelta(days=1), zone))


def split_days(
    rolled: Sequence[tuple[datetime, datetime]], bucket_starts: Sequence[datetime], zone: ZoneInfo
) -> Days:
    """Which of the `rolled` hours (whole UTC hours, sorted) to read as days of `zone`, the
    zone the daily rollups are summed in: a day whose hours (`day_hours`) all lie in one range
    and in one bucket (no bucket begins after its first hour and before its end)."""
    split = Days()
    for start, stop in rolled:
        cursor = start
        try:
            day = _local_date(start, zone)
        except OverflowError:  # the first hours of year 1 west of UTC: before year 1 there
            split.hourly.append((start, stop))  # (the range is read hourly, as above)
            continue
        while True:
            try:
                first, end = day_hours(day, zone)
            except OverflowError:  # year 1 or 9999: the rest of the range is read hourly
                break
            if end > stop:
                break
            after = bisect_right(bucket_starts, first)  # buckets begun by `first`: 1-based
            whole = first >= start and first < end
            if whole and (after == len(bucket_starts) or bucket_starts[after] >= end):
                split.days.append(day)
                split.buckets.append(after)
                if cursor < first:
                    split.hourly.append((cursor, first))
                cursor = end
            day += timedelta(days=1)
        if cursor < stop:
            split.hourly.append((cursor, stop))
    return split
