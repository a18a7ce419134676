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
  matched it, or as reported when it does not know it), `provider` (likewise; null when none),
  `status` (the pricing status) and `tag:KEY` (null for events without that tag).
- `top` N keeps the N groups with the largest cost over the whole window (a tie goes to the
  smaller name) and sums the rest into one `other` group, the same groups in every bucket.
- An answer holds at most `MAX_ROWS` rows of a bucket and a group: a question with more (a tag
  of 50,000 values by day) is refused, naming `top`, a longer bucket and a shorter window.
- Exact and current: whole UTC hours come from the rollups plus the events not folded yet (the
  outbox tail): the days of the project's clock that lie whole in one bucket from the daily
  rollups, the other hours from the hourly ones; the parts of hours that a bucket boundary or
  the window's edge cuts (a zone at +05:30, a `from` at 10:20) come from the raw events of
  those hours alone. Asking
  for a tag key the project does not roll up reads raw events for the whole window, and the
  answer says so (`source`). All of it is read in one snapshot (`freshness`). A cut hour whose
  raw events retention dropped counts nothing of them: the answer names those hours
  (`source_note`).
- Repriced events count at their current cost: a reprice updates the events and their rollups
  together, so the answer always includes it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final
from zoneinfo import ZoneInfo

import msgspec

from aiserver.ledger.errors import InvalidField
from aiserver.ledger.projects import find_project
from aiserver.ledger.spend import MAX_TOP as MAX_TOP  # where the command line reads it
from aiserver.ledger.spend.answer import SpendAnswer, assemble
from aiserver.ledger.spend.buckets import (
    BUCKETS,
    Bucket,
    bucket_bounds,
    plan_ranges,
    split_days,
)
from aiserver.ledger.spend.store import spend as store
from aiserver.ledger.spend.store.spend import Dimension
from aiserver.ledger.usage.events import TAG_KEY
from aiserver.ledger.usage.reading import (
    TAG_PREFIX,
    event_query,
    in_utc,
    parse_time,
    parse_time_as_given,
)
from aiserver.ledger.zones import refusal, region_of

if TYPE_CHECKING:
    import asyncpg

    from aiserver.ledger.access import Access
    from aiserver.ledger.store import Project

#: The longest window, whatever the bucket.
MAX_DAYS: Final = 3660
MAX_GROUP_BY: Final = 4
#: The most (bucket, group) rows one answer holds. Measured (docs/spend.md, "How large an
#: answer"): 90,000 rows took the API 3.3 s and 170 MB, 1,500,000 rows 92 s and 3 GB; this
#: keeps an answer to a few seconds and some 200 MB, and still holds top=1000 by day for 99
#: days, or a group-by of 10 values by hour over a year.
MAX_ROWS: Final = 100_000
#: The cut hours a `source_note` names one by one (then how many more).
_NAMED_HOURS: Final = 5


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
    zone = project_zone(project) if tz is None else time_zone(tz)
    zone_name = zone.key
    start = _time(since, "from", zone)
    end = _time(until, "to", zone)
    if end <= start:  # said on the zone's clock, as they were given (a date: its midnight)
        raise InvalidField(
            f"to ({end.astimezone(zone).isoformat()}) must be after from "
            f"({start.astimezone(zone).isoformat()}): the window is [from, to)",
            ["from", "to"],
        )
    if end - start > timedelta(days=MAX_DAYS):
        raise InvalidField(f"from and to: at most {MAX_DAYS} days apart", ["from", "to"])
    if bucket is not None and bucket not in BUCKETS:
        raise InvalidField(
            f"bucket: {bucket[:40]!r} is not one of {', '.join(BUCKETS)} (or left out: one total)",
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
    """The IANA zone `name`; `InvalidField` naming `tz` when this server does not know it, or
    PostgreSQL would read it otherwise (`zones.refusal`)."""
    why = refusal(name)
    if why is not None:
        raise InvalidField(f"tz: {why}", ["tz"])
    return ZoneInfo(name)


def project_zone(project: Project) -> ZoneInfo:
    """The project's zone, as PostgreSQL must be given it: a zone given is checked
    (`time_zone`), the project's was when it was stored; a name PostgreSQL reads otherwise
    (renamed by an upgrade, so only a row written by hand) is read as its region zone
    (`region_of`)."""
    return ZoneInfo(region_of(project.time_zone))


def _time(value: str | datetime | None, field: str, zone: ZoneInfo) -> datetime:
    """A time in UTC: RFC 3339 with an offset, or a wall time (or date) in `zone`."""
    if value is None:
        raise InvalidField(f"{field} is required (RFC 3339, or a date)", [field])
    if isinstance(value, str):
        wall = parse_time_as_given(value, field)  # RFC 3339, or a date; else names the field
        # with an offset, as parse_time reads it (its message quotes the text); else wall time
        at = parse_time(value, field) if wall.tzinfo is not None else in_utc(wall, field, zone)
    else:
        at = in_utc(value, field, zone)
    try:  # the answer writes it on the zone's clock, which must read a year from 1 to 9999
        at.astimezone(zone)
    except OverflowError:
        raise InvalidField(
            f"{field}: {at.isoformat()} is out of range in {zone.key} (its clock there reads "
            "before year 1 or after year 9999)",
            [field],
        ) from None
    return at


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


# -- reading ---------------------------------------------------------------------------------


def _dimension(name: str) -> Dimension:
    if name.startswith(TAG_PREFIX):
        return ("tag", name.removeprefix(TAG_PREFIX))
    return (name, None)  # type: ignore[return-value]  # model, provider or status


def _tag_keys(query: SpendQuery) -> list[str]:
    """The tag keys the question groups or filters by."""
    keys = [n.removeprefix(TAG_PREFIX) for n in query.group_by if n.startswith(TAG_PREFIX)]
    return keys + [key for key in query.tags if key not in keys]


def _unrolled(project: Project, query: SpendQuery) -> list[str]:
    keys = _tag_keys(query)
    # a key added to rollup_tags is answered from rollups once a rebuild made them for it
    rolled = set(project.rollup_tags) & set(project.rolled_up_tags)
    return [key for key in keys if key not in rolled]


async def project_of_key(pool: asyncpg.Pool, access: Access) -> Project:
    """The project whose spend a key with the `read` scope may ask for: its own (`MissingScope`
    for the operator, whose token names no project, and for a key without `read`)."""
    access.project_key("read")
    async with pool.acquire() as conn:
        return await find_project(conn, access, access.project_slug or "")


def _lost_note(lost: store.LostHours) -> str:
    """What an answer says of its cut hours whose raw events retention dropped."""

    def utc(at: datetime) -> str:
        return at.astimezone(UTC).isoformat().replace("+00:00", "Z")

    named = ", ".join(utc(hour) for hour in lost.hours[:_NAMED_HOURS])
    more = len(lost.hours) - _NAMED_HOURS
    oldest = (
        "the project has no retained event"
        if lost.oldest is None
        else f"before {utc(lost.oldest)}, the hour of the project's oldest retained event"
    )
    return (
        f"undercounted: {len(lost.hours)} hour(s) cut by a boundary (from, to or a bucket's "
        f"start off the UTC hour) are read from raw events, which retention dropped "
        f"(USAGE_RETENTION_DAYS; {oldest}): their parts inside the window count nothing, "
        f"though their rollups hold {lost.events} event(s) of this question over the whole "
        f"hour(s): {named}{f' and {more} more' if more > 0 else ''}. Ask from and to on UTC "
        "hours, by buckets of a zone at a whole hour's offset, to read them from the rollups"
    )


async def read_spend(pool: asyncpg.Pool, project: Project, query: SpendQuery) -> SpendAnswer:
    """The answer to `query` about `project` (whose access the caller checked)."""
    zone = time_zone(query.tz)
    bounds = bucket_bounds(query.since, query.until, query.bucket, zone)
    unrolled = _unrolled(project, query)
    ranges = plan_ranges(bounds, raw_only=bool(unrolled))
    days = split_days(ranges.rolled, bounds[:-1], project_zone(project))
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
        days=days.days,
        day_buckets=days.buckets,
        hourly=days.hourly,
        days_zone=project.time_zone,
        rolled_tags=() if unrolled else tuple(_tag_keys(query)),
        cut_hours=ranges.cut,
        top=query.top,
        max_rows=MAX_ROWS,
    )
    async with pool.acquire() as conn:
        read = await store.select_spend(conn, plan)
    if len(read.rows) > MAX_ROWS:
        raise InvalidField(
            f"group_by: more than {MAX_ROWS:,} rows of a bucket and a group in the answer; "
            "keep the largest groups with top (the rest is one group, other), or ask for a "
            "longer bucket or a shorter window",
            ["group_by", "top", "bucket"],
        )
    note = None
    if read.lost is not None:  # only of a plan from the rollups: its cut hours
        note = _lost_note(read.lost)
    elif read.raw_instead:
        note = (
            "the project's rolled-up tag keys changed while this was asked: summed from raw "
            "events, which covers only the events still kept (USAGE_RETENTION_DAYS)"
        )
    elif unrolled:
        rolled = ", ".join(k for k in project.rollup_tags if k in project.rolled_up_tags)
        pending = [k for k in unrolled if k in project.rollup_tags]
        note = (
            f"tag key(s) {', '.join(unrolled)} not rolled up (rolled up: {rolled or 'none'}"
            + (f"; {', '.join(pending)} once its rollups are rebuilt" if pending else "")
            + "): summed from raw events, which is slower and covers only the events still "
            "kept (USAGE_RETENTION_DAYS)"
        )
    return assemble(
        query, bounds, read, zone,
        source="raw_events" if unrolled or read.raw_instead else "rollups", note=note,
        raw_hours=0 if read.raw_instead else ranges.cut_hours,
    )  # fmt: skip
