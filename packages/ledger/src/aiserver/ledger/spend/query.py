"""Spend questions: how much a project's usage cost, per time bucket and group, exact and current.

    query = spend_query(project, since="2026-11-01", until="2026-12-01", bucket="day",
                        group_by=["model", "tag:team"], tags=[("feature", "search")], top=5)
    answer = await read_spend(pool, project, query)

- The window is [from, to). A time without an offset (or a date alone) is wall time in the
  query's time zone (`tz`, by default the project's).
- Buckets are the zone's hours, days, weeks (ISO: from Monday) or months, as its clocks show
  them: a day is 23 or 25 hours on a daylight-saving change. The first and last buckets are
  cut to the window. Without a bucket the answer is one total over the window.
- Groups are the values of up to `MAX_GROUP_BY` dimensions: `model` (the model as the catalog
  priced it, or as reported when unpriced), `provider` (likewise; null when none),
  `status` (the pricing status) and `tag:KEY` (null for events without that tag).
- `top` N keeps the N groups with the largest cost over the whole window (a tie goes to the
  smaller name) and sums the rest into one `other` group, the same groups in every bucket.
- Exact and current: whole UTC hours come from the hourly rollups plus the events not folded
  yet (the outbox tail); the parts of hours that a bucket boundary or the window's edge cuts
  (a zone at +05:30, a `from` at 10:20) come from the raw events of those hours alone. Asking
  for a tag key the project does not roll up reads raw events for the whole window, and the
  answer says so (`source`). All of it is read in one snapshot (`freshness`).
- Repriced events count at their current cost: a reprice updates the events and their rollups
  together, so the answer always includes it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Final, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from aiserver.costs.calculator import CURRENCY
from aiserver.costs.money import money
from aiserver.ledger.errors import InvalidField
from aiserver.ledger.projects import find_project
from aiserver.ledger.spend.store import spend as store
from aiserver.ledger.spend.store.spend import Dimension, SpendRead
from aiserver.ledger.usage.events import TAG_KEY
from aiserver.ledger.usage.reading import event_query, parse_time

if TYPE_CHECKING:
    import asyncpg

    from aiserver.ledger.access import Access
    from aiserver.ledger.store import Project

Bucket = Literal["hour", "day", "week", "month"]
BUCKETS: Final = get_args(Bucket)
#: The most buckets one answer holds (hours: about 416 days).
MAX_BUCKETS: Final = 10_000
#: The longest window, whatever the bucket.
MAX_DAYS: Final = 3660
MAX_GROUP_BY: Final = 4
MAX_TOP: Final = 1000
TAG_PREFIX: Final = "tag:"
HOUR: Final = timedelta(hours=1)

Source = Literal["rollups", "raw_events"]


class SpendQuery(msgspec.Struct, frozen=True, kw_only=True):
    """A checked spend question (see the module's docstring)."""

    since: datetime  # UTC
    until: datetime  # UTC
    bucket: Bucket | None
    tz: str
    group_by: tuple[str, ...]  # "model", "provider", "status", "tag:KEY"
    model: str | None = None
    provider: str | None = None
    status: str | None = None
    tags: dict[str, str] = msgspec.field(default_factory=dict)
    top: int | None = None


# -- the answer ------------------------------------------------------------------------------


class SpendTotals(msgspec.Struct, kw_only=True):
    """Sums of events. Money is an exact decimal string; an unpriced event counts 0 to `cost`
    and 1 to `unpriced_events` (never a silent $0)."""

    cost: str
    events: int
    unpriced_events: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int


class SpendGroup(SpendTotals, kw_only=True):
    """One group's sums; `key` maps each of `group_by` to its value (`{}` without group_by).
    The group of the rest under `top` has `other` true and `key` null."""

    key: dict[str, str | None] | None
    other: bool = False


class SpendBucket(msgspec.Struct, kw_only=True):
    start: datetime  # in the query's time zone
    end: datetime
    total: SpendTotals
    groups: list[SpendGroup]


class SpendFreshness(msgspec.Struct, kw_only=True):
    """What the answer includes: every event committed before `as_of`."""

    as_of: datetime
    through_event_id: int | None  # the project's largest event id then (None: no events)
    #: of the events counted, how many came from the outbox tail (not folded into rollups yet);
    #: None when the answer is summed from raw events, which hold every event anyway
    unfolded_events: int | None
    repriced_events_included: bool = True  # a reprice changes events and rollups together


class SpendAnswer(msgspec.Struct, kw_only=True):
    since: datetime = msgspec.field(name="from")
    until: datetime = msgspec.field(name="to")
    tz: str
    bucket: Bucket | None
    group_by: list[str]
    top: int | None
    currency: str
    source: Source  # rollups (and raw events for cut hours), or raw events throughout
    source_note: str | None
    raw_hours: int  # UTC hours read from raw events because a boundary cuts them
    total: SpendTotals
    groups: list[SpendGroup]  # each group over the whole window, largest first
    buckets: list[SpendBucket]
    freshness: SpendFreshness


# -- the question ----------------------------------------------------------------------------


def spend_query(
    project: Project,
    *,
    since: str | datetime | None,
    until: str | datetime | None,
    bucket: str | None = None,
    tz: str | None = None,
    group_by: Iterable[str] = (),
    model: str | None = None,
    provider: str | None = None,
    status: str | None = None,
    tags: Iterable[tuple[str, str]] = (),
    top: int | None = None,
) -> SpendQuery:
    """The checked question; `InvalidField` naming what is wrong. `group_by` items may hold
    several dimensions separated by commas (`model,tag:team`)."""
    zone_name = project.time_zone if tz is None else tz
    zone = time_zone(zone_name)
    start = _time(since, "from", zone)
    end = _time(until, "to", zone)
    if end <= start:
        raise InvalidField(
            f"to ({end.isoformat()}) must be after from ({start.isoformat()}): the window is "
            "[from, to)",
            ["from", "to"],
        )
    if end - start > timedelta(days=MAX_DAYS):
        raise InvalidField(f"from and to: at most {MAX_DAYS} days apart", ["from", "to"])
    if bucket is not None and bucket not in BUCKETS:
        raise InvalidField(
            f"bucket: {bucket[:40]!r} is not one of {', '.join(BUCKETS)} (or none: one total)",
            ["bucket"],
        )
    dimensions = _group_by(group_by)
    if top is not None and not 1 <= top <= MAX_TOP:
        raise InvalidField(f"top: 1 to {MAX_TOP}; got {top}", ["top"])
    if top is not None and not dimensions:
        raise InvalidField("top needs group_by: it keeps the largest groups", ["top"])
    filters = event_query(model=model, provider=provider, status=status, tags=tags)
    return SpendQuery(
        since=start,
        until=end,
        bucket=bucket,  # type: ignore[arg-type]  # checked against BUCKETS above
        tz=zone_name,
        group_by=dimensions,
        model=filters.model,
        provider=filters.provider,
        status=filters.status,
        tags=filters.tags,
        top=top,
    )


def time_zone(name: str) -> ZoneInfo:
    """The IANA zone `name`; `InvalidField` naming `tz` when this server does not know it."""
    try:
        if name != name.strip() or not name:
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidField(
            f"tz: {name[:80]!r} is not an IANA time zone (e.g. UTC, Europe/Berlin)", ["tz"]
        ) from None


def _time(value: str | datetime | None, field: str, zone: ZoneInfo) -> datetime:
    """A time in UTC: RFC 3339 with an offset, or a wall time (or date) in `zone`."""
    if value is None:
        raise InvalidField(f"{field} is required (RFC 3339, or a date)", [field])
    if isinstance(value, str):
        try:
            wall = datetime.fromisoformat(value.strip().upper())
        except ValueError:
            return parse_time(value, field)  # the message names the field
        if wall.tzinfo is not None:
            return parse_time(value, field)
        value = wall
    return (value.replace(tzinfo=zone) if value.tzinfo is None else value).astimezone(UTC)


def _group_by(items: Iterable[str]) -> tuple[str, ...]:
    names = [name.strip() for item in items for name in item.split(",") if name.strip()]
    for name in names:
        if name in ("model", "provider", "status"):
            continue
        key = name.removeprefix(TAG_PREFIX)
        if not name.startswith(TAG_PREFIX) or not TAG_KEY.fullmatch(key):
            raise InvalidField(
                f"group_by: {name[:80]!r} is not model, provider, status or tag:KEY",
                ["group_by"],
            )
    if len(set(names)) != len(names):
        raise InvalidField("group_by: each dimension once", ["group_by"])
    if len(names) > MAX_GROUP_BY:
        raise InvalidField(f"group_by: at most {MAX_GROUP_BY} dimensions", ["group_by"])
    return tuple(names)


# -- buckets and ranges ----------------------------------------------------------------------


def bucket_bounds(
    since: datetime, until: datetime, bucket: Bucket | None, zone: ZoneInfo
) -> list[datetime]:
    """The buckets' boundaries in UTC: `since`, every start of a bucket of the zone's clock
    inside the window, `until`. `InvalidField` for more than MAX_BUCKETS buckets."""
    bounds = [since]
    if bucket is not None:
        start = _bucket_start(since, bucket, zone)
        while (start := _next_start(start, bucket, zone)) < until:
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


def _bucket_start(at: datetime, bucket: Bucket, zone: ZoneInfo) -> datetime:
    local = at.astimezone(zone)
    if bucket == "hour":
        into = timedelta(minutes=local.minute, seconds=local.second, microseconds=local.microsecond)
        return at - into
    day = local.date()
    if bucket == "week":
        day -= timedelta(days=day.weekday())
    elif bucket == "month":
        day = day.replace(day=1)
    start = _midnight(day, zone)
    return start if start <= at else _midnight(day - timedelta(days=1), zone)


def _next_start(start: datetime, bucket: Bucket, zone: ZoneInfo) -> datetime:
    if bucket == "hour":
        return _bucket_start(start + HOUR, "hour", zone)
    day = start.astimezone(zone).date()
    if bucket == "day":
        return _midnight(day + timedelta(days=1), zone)
    if bucket == "week":
        return _midnight(day + timedelta(days=7), zone)
    return _midnight((day.replace(day=28) + timedelta(days=4)).replace(day=1), zone)


def _hour(at: datetime) -> datetime:
    return at.replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True, slots=True)
class Ranges:
    """Where each part of the window is read from: whole UTC hours from the rollups (and the
    tail), the rest from raw events. `cut_hours`: the hours a boundary cuts."""

    rolled: list[tuple[datetime, datetime]] = field(default_factory=list)
    raw: list[tuple[datetime, datetime]] = field(default_factory=list)
    cut_hours: int = 0


def plan_ranges(bounds: Sequence[datetime], *, raw_only: bool) -> Ranges:
    """Split the window [bounds[0], bounds[-1]) so that no UTC hour read from the rollups holds
    a boundary: those hours, clipped to the window, are read from raw events."""
    since, until = bounds[0], bounds[-1]
    if raw_only:
        return Ranges(raw=[(since, until)])
    cut = sorted({_hour(b) for b in bounds if b != _hour(b)})
    raw: list[tuple[datetime, datetime]] = []
    for hour in cut:
        piece = (max(hour, since), min(hour + HOUR, until))
        if raw and raw[-1][1] == piece[0]:
            piece = (raw.pop()[0], piece[1])
        raw.append(piece)
    rolled: list[tuple[datetime, datetime]] = []
    cursor = since if since == _hour(since) else _hour(since) + HOUR
    stop = _hour(until)
    for hour in cut:
        if cursor <= hour < stop:
            if cursor < hour:
                rolled.append((cursor, hour))
            cursor = hour + HOUR
    if cursor < stop:
        rolled.append((cursor, stop))
    return Ranges(rolled=rolled, raw=raw, cut_hours=len(cut))


# -- reading ---------------------------------------------------------------------------------


def _dimension(name: str) -> Dimension:
    if name.startswith(TAG_PREFIX):
        return ("tag", name.removeprefix(TAG_PREFIX))
    return (name, None)  # type: ignore[return-value]  # model, provider or status


def _unrolled(project: Project, query: SpendQuery) -> list[str]:
    keys = [n.removeprefix(TAG_PREFIX) for n in query.group_by if n.startswith(TAG_PREFIX)]
    keys += [key for key in query.tags if key not in keys]
    return [key for key in keys if key not in project.rollup_tags]


async def project_of_key(pool: asyncpg.Pool, access: Access) -> Project:
    """The project whose spend a key with the `read` scope may ask for: its own (`MissingScope`
    for the operator, whose token names no project, and for a key without `read`)."""
    access.project_key("read")
    async with pool.acquire() as conn:
        return await find_project(conn, access, access.project_slug or "")


async def read_spend(pool: asyncpg.Pool, project: Project, query: SpendQuery) -> SpendAnswer:
    """The answer to `query` about `project` (whose access the caller checked)."""
    zone = time_zone(query.tz)
    bounds = bucket_bounds(query.since, query.until, query.bucket, zone)
    unrolled = _unrolled(project, query)
    ranges = plan_ranges(bounds, raw_only=bool(unrolled))
    plan = store.SpendPlan(
        project_id=project.id,
        rolled=ranges.rolled,
        raw=ranges.raw,
        bucket_starts=bounds[:-1],
        dimensions=[_dimension(name) for name in query.group_by],
        model=query.model,
        provider=query.provider,
        status=query.status,
        tags_json=msgspec.json.encode(query.tags, order="sorted").decode() if query.tags else None,
    )
    async with pool.acquire() as conn:
        read = await store.select_spend(conn, plan)
    note = None
    if unrolled:
        rolled = ", ".join(project.rollup_tags) or "none"
        note = (
            f"tag key(s) {', '.join(unrolled)} not rolled up (the project's rollup_tags: "
            f"{rolled}): summed from raw events, which is slower and covers only the events "
            "still kept (USAGE_RETENTION_DAYS)"
        )
    return assemble(
        query, bounds, read, zone,
        source="raw_events" if unrolled else "rollups", note=note,
        raw_hours=ranges.cut_hours,
    )  # fmt: skip


# -- the answer from the sums ----------------------------------------------------------------

Key = tuple[str | None, ...]
_OTHER: Final[Key | None] = None


class _Sums:
    """Running sums of one group (or total)."""

    __slots__ = ("cost", "counts")

    def __init__(self) -> None:
        self.cost = Decimal(0)
        self.counts = [0] * len(store.SUMS)

    def add(self, counts: Iterable[int], cost: Decimal) -> None:
        self.counts = [a + b for a, b in zip(self.counts, counts, strict=True)]
        self.cost += cost

    def fields(self) -> dict[str, int]:
        return dict(zip(store.SUMS, self.counts, strict=True))

    def totals(self) -> SpendTotals:
        return SpendTotals(cost=money(self.cost), **self.fields())

    def group(self, group_by: Sequence[str], key: Key | None) -> SpendGroup:
        named = None if key is None else dict(zip(group_by, key, strict=True))
        return SpendGroup(key=named, other=key is None, cost=money(self.cost), **self.fields())


def _local(at: datetime, zone: ZoneInfo) -> datetime:
    """`at` with the zone's offset then, as a fixed offset: it reads as the zone's clock, and
    it compares equal to the same instant elsewhere (a zone's time in a repeated hour does not,
    PEP 495)."""
    offset = at.astimezone(zone).utcoffset()
    return at.astimezone(timezone(offset) if offset is not None else UTC)


def _by_name(key: Key) -> tuple[tuple[bool, str], ...]:
    return tuple((value is None, value or "") for value in key)


def assemble(
    query: SpendQuery,
    bounds: Sequence[datetime],
    read: SpendRead,
    zone: ZoneInfo,
    *,
    source: Source,
    note: str | None,
    raw_hours: int,
) -> SpendAnswer:
    """The answer from the sums per bucket and group: `top`, the order (largest cost over the
    window first, a tie by name; `other` last, in every bucket) and the totals."""
    provider_at = query.group_by.index("provider") if "provider" in query.group_by else None
    rows = []
    for row in read.rows:
        key = row.key
        if provider_at is not None and key[provider_at] == "":
            key = (*key[:provider_at], None, *key[provider_at + 1 :])  # no provider
        rows.append((row.bucket, key, row.sums, row.cost))
    window: dict[Key, _Sums] = {}
    for _, key, sums, cost in rows:
        window.setdefault(key, _Sums()).add(sums, cost)
    ranked = sorted(window, key=lambda k: (-window[k].cost, _by_name(k)))
    kept = set(ranked if query.top is None else ranked[: query.top])
    order: dict[Key | None, int] = {key: i for i, key in enumerate(ranked) if key in kept}
    if len(kept) < len(ranked):
        order[_OTHER] = len(order)
    buckets = [dict[Key | None, _Sums]() for _ in bounds[:-1]]
    totals = [_Sums() for _ in bounds[:-1]]
    groups: dict[Key | None, _Sums] = {}
    total = _Sums()
    for bucket, key, sums, cost in rows:
        named = key if key in kept else _OTHER
        for into in (
            buckets[bucket].setdefault(named, _Sums()),
            groups.setdefault(named, _Sums()),
            totals[bucket],
            total,
        ):
            into.add(sums, cost)

    def listed(sums: dict[Key | None, _Sums]) -> list[SpendGroup]:
        return [
            sums[key].group(query.group_by, key) for key in sorted(sums, key=lambda k: order[k])
        ]

    return SpendAnswer(
        since=_local(query.since, zone),
        until=_local(query.until, zone),
        tz=query.tz,
        bucket=query.bucket,
        group_by=list(query.group_by),
        top=query.top,
        currency=CURRENCY,
        source=source,
        source_note=note,
        raw_hours=raw_hours,
        total=total.totals(),
        groups=listed(groups),
        buckets=[
            SpendBucket(
                start=_local(start, zone),
                end=_local(end, zone),
                total=totals[i].totals(),
                groups=listed(buckets[i]),
            )
            for i, (start, end) in enumerate(itertools.pairwise(bounds))
        ],
        freshness=SpendFreshness(
            as_of=read.as_of.astimezone(UTC),
            through_event_id=read.through_event_id,
            unfolded_events=(
                None if source == "raw_events" else sum(row.unfolded for row in read.rows)
            ),
        ),
    )
