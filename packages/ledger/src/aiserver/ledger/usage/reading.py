"""Reading usage events back: a project's events, filtered, newest first, a page at a time; one
event by its id.

    query = event_query(since="2026-12-01T00:00:00Z", tags=[("team", "search")])
    page = await read_events(pool, project_id, query, limit=100)
    more = await read_events(pool, project_id, query, limit=100, after=page.last)
    event = await read_event(pool, project_id, event_id)

- The order is newest first: `occurred_at` descending, then the event id descending (two events
  of one instant keep one order). A page starts after the last event of the page before it (its
  `Position`), so walking the pages yields every event that was there when the walk began once,
  with no gap and no repeat, whatever is recorded meanwhile: an event recorded later than the
  walk's position with an older time is met when the walk reaches its time; a newer one is not.
- The filters (`EventQuery`): `since` and `until` are the half-open window [since, until) of
  `occurred_at`; `model` matches the model as it was reported or as the catalog priced it
  (`gpt-4o` finds `openai/gpt-4o` and `GPT-4o` events, which were priced as `gpt-4o`; the
  reported spelling finds only its own events), and `provider` likewise; `status` is the
  pricing status; `tags` are equalities that all hold. Names are matched exactly (case
  included).
- Callers check access first: these functions take the project's id, never a slug, and an
  event of another project is `UnknownEvent` exactly as one that does not exist.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import msgspec

from aiserver.core_db.connections import MAX_BIGINT
from aiserver.costs.calculator import CURRENCY, ComponentOut
from aiserver.costs.money import money
from aiserver.costs.pricing import Usage
from aiserver.ledger.errors import InvalidField, UnknownEvent
from aiserver.ledger.text import has_control
from aiserver.ledger.usage.events import MAX_TAG_VALUE, MAX_TAGS, TAG_KEY
from aiserver.ledger.usage.store import reading as store
from aiserver.ledger.usage.valuation import PRICING_STATUSES, PricingStatus

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    import asyncpg

#: How one tag is named wherever a tag stands beside the other fields: a filter
#: (`tag:team=search`), a dimension (`group_by=tag:team`), a refusal's field, a CSV column.
TAG_PREFIX: Final = "tag:"
MAX_LIMIT: Final = 1000
DEFAULT_LIMIT: Final = 100
MAX_MODEL: Final = 256
MAX_PROVIDER: Final = 128


class EventQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Which events a listing keeps (see the module's docstring)."""

    since: datetime | None = None
    until: datetime | None = None
    model: str | None = None
    provider: str | None = None
    status: PricingStatus | None = None
    tags: dict[str, str] = msgspec.field(default_factory=dict)

    def fingerprint(self, project_id: int) -> bytes:
        """8 bytes that differ between two queries (or projects): what a page cursor is bound
        to, so that it is not taken for a position in another listing."""
        text = _CANONICAL.encode((project_id, self))
        return hashlib.sha256(b"aiserver usage events\0" + text).digest()[:8]


_CANONICAL: Final = msgspec.json.Encoder(order="sorted")


class Position(NamedTuple):
    """Where a page ended: its last event's time and id."""

    occurred_at: datetime
    event_id: int


class UsageEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One recorded event as it is read back. Money is an exact decimal string."""

    event_id: int
    id: str  # the client's key
    occurred_at: datetime
    received_at: datetime
    model: str  # as reported
    provider: str | None  # as reported
    matched_model: str | None  # the catalog's model it was priced as (None: unpriced)
    matched_provider: str | None
    usage: dict[str, Any]  # every count that is not 0 (and a price choice that is set)
    service_tier: str
    usage_format: str | None
    tags: dict[str, str]
    pricing_status: PricingStatus
    total: str | None  # None: unpriced
    currency: str
    components: list[ComponentOut]
    unpriced: list[str]  # the dimensions used that have no price
    note: str | None  # why it is unpriced; which prices were used
    suggestions: list[str]  # close model names, for an unknown model
    price_version: int | None
    catalog_version: int | None
    override_id: int | None


class EventPage(msgspec.Struct, frozen=True, kw_only=True):
    events: list[UsageEvent]
    more: bool  # whether events follow the last one

    @property
    def last(self) -> Position | None:
        """Where the next page starts (None: there is no next page)."""
        if not self.more or not self.events:
            return None
        return Position(self.events[-1].occurred_at, self.events[-1].event_id)


# -- the query -------------------------------------------------------------------------------

#: The times a query, a form or a command line takes: RFC 3339's date-time (section 5.6; its
#: `T` and `Z` in either case, or a space for the `T`, as its note allows), and besides what
#: the docs promise: no offset (read as the caller says: UTC, or the wall time of a zone), no
#: seconds (`2026-12-01T10:00`), or a date alone. Nothing else that `datetime.fromisoformat`
#: reads (`20261201`, `2026-W49-1`, `+0100`, `,5`, other scripts' digits). Groups: the date,
#: hours and minutes, the seconds with their fraction, the offset.
_TIME_FORM: Final = re.compile(
    r"(\d{4}-\d{2}-\d{2})(?:[Tt ](\d{2}:\d{2})(:\d{2}(?:\.\d+)?)?([Zz]|[+-]\d{2}:\d{2})?)?",
    re.ASCII,
)
#: A time whose offset's `+` came through a URL's query as a space: `...T10:00:00 01:00`.
_SPACE_FOR_PLUS: Final = re.compile(
    r"^(\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}:\d{2})$", re.ASCII
)


def _not_a_time(text: str, field: str) -> InvalidField:
    return InvalidField(
        f"{field}: {text[:80]!r} is not an RFC 3339 time (e.g. 2026-12-01T10:00:00Z, "
        "2026-12-01T11:00:00+01:00, or a date, 2026-12-01; in a URL, write an offset's + as "
        "%2B)",
        [field],
    )


def _out_of_range(text: str, field: str) -> InvalidField:
    return InvalidField(
        f"{field}: {text[:80]!r} is out of range (before year 1 or after year 9999 in UTC)",
        [field],
    )


def parse_time_as_given(text: str, field: str) -> datetime:
    """`text` as `_TIME_FORM` takes it: aware when it has an offset, naive when not (the
    caller says whose clock that is), a date alone its midnight. A fraction of a second is
    rounded to the microsecond exactly as ingest rounds `occurred_at` (msgspec reads both), so
    that a window given in an event's own time text splits the events as that text does.
    `InvalidField` naming `field` otherwise."""
    value = _SPACE_FOR_PLUS.sub(r"\1+\2", text.strip())
    form = _TIME_FORM.fullmatch(value)
    if form is None:
        raise _not_a_time(text, field)
    day, minutes, seconds, offset = form.groups()
    if minutes is None:
        try:
            return datetime.combine(date.fromisoformat(day), time())
        except ValueError:  # 2026-02-30
            raise _not_a_time(text, field) from None
    whole = f"{day}T{minutes}{seconds or ':00'}{(offset or '').upper()}"
    try:
        at: datetime = msgspec.convert(whole, datetime)
    except msgspec.ValidationError:
        # 9999-12-31T23:59:59.9999999Z rounds past the last representable microsecond
        cut = whole.partition(".")[0] + (offset or "").upper()
        if seconds is not None and "." in seconds and _valid(cut):
            raise _out_of_range(text, field) from None
        raise _not_a_time(text, field) from None  # 2026-02-30T00:00:00Z, 2026-12-01T24:00Z
    return at


def _valid(whole: str) -> bool:
    try:
        msgspec.convert(whole, datetime)
    except msgspec.ValidationError:
        return False
    return True


def parse_time(text: str, field: str) -> datetime:
    """A time of a query (`parse_time_as_given`) in UTC: one without an offset is UTC, and a
    date alone is its midnight in UTC. `InvalidField` naming `field` otherwise."""
    at = parse_time_as_given(text, field)
    try:
        return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before the first representable day
        raise _out_of_range(text, field) from None


def event_query(
    *,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    model: str | None = None,
    provider: str | None = None,
    status: str | None = None,
    tags: Iterable[tuple[str, str]] = (),
) -> EventQuery:
    """The query of a listing's filters as given (the API's `from`, `to`, `model`, `provider`,
    `status` and `tag:KEY=VALUE`); `InvalidField` naming the one that is wrong."""
    start = parse_time(since, "from") if isinstance(since, str) else _aware(since, "from")
    end = parse_time(until, "to") if isinstance(until, str) else _aware(until, "to")
    if start is not None and end is not None and end <= start:
        raise InvalidField(
            f"to ({end.isoformat()}) must be after from ({start.isoformat()}): the window is "
            "[from, to)",
            ["from", "to"],
        )
    if model is not None:
        _check_name(model, "model", MAX_MODEL)
    if provider is not None:
        _check_name(provider, "provider", MAX_PROVIDER)
    if status is not None and status not in PRICING_STATUSES:
        raise InvalidField(
            f"status: {status[:40]!r} is not one of {', '.join(PRICING_STATUSES)}", ["status"]
        )
    return EventQuery(
        since=start,
        until=end,
        model=model,
        provider=provider,
        status=status,  # type: ignore[arg-type]  # checked against PRICING_STATUSES above
        tags=_tag_filters(tags),
    )


def _aware(at: datetime | None, field: str) -> datetime | None:
    return None if at is None else in_utc(at, field)


def in_utc(at: datetime, field: str, zone: ZoneInfo | None = None) -> datetime:
    """`at` in UTC, a naive `at` read as wall time in `zone` (UTC without one); `InvalidField`
    naming `field` when that instant lies before year 1 or after year 9999 in UTC (9999-12-31
    west of UTC, 0001-01-01 east of it)."""
    try:
        return (at.replace(tzinfo=zone or UTC) if at.tzinfo is None else at).astimezone(UTC)
    except OverflowError:
        where = f" in {zone.key}" if zone is not None and at.tzinfo is None else ""
        raise InvalidField(
            f"{field}: {at.isoformat()}{where} is out of range (before year 1 or after year 9999 "
            "in UTC)",
            [field],
        ) from None


def _check_name(value: str, field: str, longest: int) -> None:
    if not value.strip() or len(value) > longest or has_control(value):
        raise InvalidField(
            f"{field} must be 1 to {longest} characters, not blank, without control characters",
            [field],
        )


def _tag_filters(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for key, value in pairs:
        field = f"{TAG_PREFIX}{key[:80]}"
        if not TAG_KEY.fullmatch(key):
            raise InvalidField(
                f"{field}: not a tag key (1 to 64 ASCII letters, digits and _ . : / -)", [field]
            )
        if key in tags:
            raise InvalidField(f"{field}: given twice; an event has one value per tag", [field])
        if not value or len(value) > MAX_TAG_VALUE or has_control(value):
            raise InvalidField(
                f"{field}: the value must be 1 to {MAX_TAG_VALUE} characters without control "
                "characters",
                [field],
            )
        tags[key] = value
    if len(tags) > MAX_TAGS:
        raise InvalidField(
            f"at most {MAX_TAGS} tag filters (an event has at most {MAX_TAGS} tags); got "
            f"{len(tags)}",
            [f"{TAG_PREFIX}{key}" for key in tags],
        )
    return tags


def event_filters(query: EventQuery) -> store.EventFilters:
    return store.EventFilters(
        since=query.since,
        until=query.until,
        model=query.model,
        provider=query.provider,
        status=query.status,
        tags_json=_CANONICAL.encode(query.tags).decode() if query.tags else None,
    )


# -- reading ---------------------------------------------------------------------------------


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidField(f"limit: 1 to {MAX_LIMIT}; got {limit}", ["limit"])
    return limit


async def read_events(
    pool: asyncpg.Pool,
    project_id: int,
    query: EventQuery,
    *,
    limit: int = DEFAULT_LIMIT,
    after: Position | None = None,
) -> EventPage:
    """Up to `limit` (1 to MAX_LIMIT) of the project's events that `query` keeps, newest first,
    after `after`; `more` says whether any follow."""
    check_limit(limit)
    async with pool.acquire() as conn:
        rows = await store.select_events(
            conn, project_id, event_filters(query), after=after, limit=limit + 1
        )
    return EventPage(events=[event_from_row(r) for r in rows[:limit]], more=len(rows) > limit)


async def count_unpriced(pool: asyncpg.Pool, project_id: int, query: EventQuery) -> int:
    """How many of the project's events that `query` keeps are unpriced: what a FOCUS file of
    them leaves out (an event without a cost has no FOCUS row)."""
    sql, args = store.unpriced_statement(project_id, event_filters(query))
    async with pool.acquire() as conn:
        return int(await conn.fetchval(sql, *args))


async def all_events(
    pool: asyncpg.Pool, project_id: int, query: EventQuery, *, page: int = MAX_LIMIT
) -> AsyncIterator[UsageEvent]:
    """Every event that `query` keeps, newest first, read a page at a time."""
    after: Position | None = None
    while True:
        found = await read_events(pool, project_id, query, limit=page, after=after)
        for event in found.events:
            yield event
        after = found.last
        if after is None:
            return


async def read_event(pool: asyncpg.Pool, project_id: int, event_id: int) -> UsageEvent:
    """The project's event `event_id`; `UnknownEvent` when there is none, or when it is another
    project's (the two answers are the same)."""
    row = None
    if 1 <= event_id <= MAX_BIGINT:
        async with pool.acquire() as conn:
            row = await store.select_event(conn, project_id, event_id)
    if row is None:
        raise UnknownEvent(f"no usage event {event_id}")
    return event_from_row(row)


# -- rows ------------------------------------------------------------------------------------

_COUNT_COLUMNS: Final = frozenset(
    ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
)
_USAGE_DEFAULTS: Final = msgspec.structs.asdict(Usage())
_COMPONENTS: Final = msgspec.json.Decoder(list[tuple[str, int, Decimal, Decimal]])
_OBJECT: Final = msgspec.json.Decoder(dict[str, Any])
_TAGS: Final = msgspec.json.Decoder(dict[str, str])


def _usage(row: asyncpg.Record) -> dict[str, Any]:
    """The counts of the columns and of `usage_other` together, in `Usage`'s order, each only
    when it is not its default (0)."""
    other = _OBJECT.decode(row["usage_other"]) if row["usage_other"] else {}
    usage: dict[str, Any] = {}
    for name, default in _USAGE_DEFAULTS.items():
        value = row[name] if name in _COUNT_COLUMNS else other.pop(name, default)
        if value != default:
            usage[name] = value
    usage.update(other)  # anything a later version of Usage dropped is still shown
    return usage


def event_from_row(row: asyncpg.Record) -> UsageEvent:
    components = _COMPONENTS.decode(row["components"]) if row["components"] else []
    total: Decimal | None = row["total_cost"]
    return UsageEvent(
        event_id=row["id"],
        id=row["event_key"],
        occurred_at=row["occurred_at"],
        received_at=row["received_at"],
        model=row["model"],
        provider=row["provider"],
        matched_model=row["matched_model"],
        matched_provider=row["matched_provider"],
        usage=_usage(row),
        service_tier=row["service_tier"],
        usage_format=row["usage_format"],
        tags=_TAGS.decode(row["tags"]),
        pricing_status=row["status"],
        total=money(total) if total is not None else None,
        currency=CURRENCY,
        components=[
            ComponentOut(name=name, quantity=quantity, unit_price=money(price), cost=money(cost))
            for name, quantity, price, cost in components
        ],
        unpriced=list(row["unpriced"] or ()),
        note=row["pricing_note"],
        suggestions=list(row["suggestions"] or ()),
        price_version=row["price_version"],
        catalog_version=row["catalog_version"],
        override_id=row["override_id"],
    )
