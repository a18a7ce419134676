"""Reading events back: a project's events, newest first, and one event by its id.

The order is (occurred_at DESC, id DESC), the order of the primary key's index read backwards,
and a page starts after a position in it (keyset pagination: no OFFSET, so a page costs the
same however deep it is). Every filter on time is on `occurred_at` itself, so that PostgreSQL
prunes the months outside it: the page's position repeats its time as `occurred_at <= $t` for
that reason, beside the row comparison that decides the order. Tag equality is `tags @> $json`,
which the GIN index `usage_events_by_tags` answers.

The statement holds only the clauses of the filters given (a generic plan of `$n IS NULL OR
...` could neither prune partitions nor use an index); every value is a parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import asyncpg

    from aiserver.core_db.connections import DbConnection

_COLUMNS: Final = """
    id, event_key, occurred_at, received_at, model, provider, matched_model, matched_provider,
    usage_format, service_tier, input_tokens, output_tokens, cache_read_tokens,
    cache_write_tokens, reasoning_tokens, usage_other, tags, status, total_cost, components,
    unpriced, pricing_note, suggestions, price_version, catalog_version, override_id
"""


@dataclass(frozen=True, slots=True)
class EventFilters:
    """What a listing keeps; None (or no tags) keeps everything. Times are half-open:
    [since, until)."""

    since: datetime | None = None
    until: datetime | None = None
    model: str | None = None  # as reported, or the catalog's model it was priced as
    provider: str | None = None  # likewise
    status: str | None = None
    tags_json: str | None = None  # a JSON object the event's tags must contain


def filter_clauses(filters: EventFilters, param: Callable[[Any], str]) -> list[str]:
    """The WHERE clauses of the filters given (`param` adds a value and names its parameter),
    on the columns of `usage_events` unqualified: a listing's, an export's, and a reprice's."""
    where = []
    if filters.since is not None:
        where.append(f"occurred_at >= {param(filters.since)}")
    if filters.until is not None:
        where.append(f"occurred_at < {param(filters.until)}")
    if filters.model is not None:
        name = param(filters.model)
        where.append(f"(model = {name} OR matched_model = {name})")
    if filters.provider is not None:
        name = param(filters.provider)
        where.append(f"(provider = {name} OR matched_provider = {name})")
    if filters.status is not None:
        where.append(f"status = {param(filters.status)}")
    if filters.tags_json is not None:
        where.append(f"tags @> {param(filters.tags_json)}::jsonb")
    return where


def _where(project_id: int, filters: EventFilters, args: list[Any]) -> list[str]:
    """The clauses of one project's events and `filters` (every value a parameter appended to
    `args`)."""

    def param(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    return [f"project_id = {param(project_id)}", *filter_clauses(filters, param)]


def events_statement(
    project_id: int,
    filters: EventFilters,
    *,
    after: tuple[datetime, int] | None,
    limit: int,
) -> tuple[str, list[Any]]:
    """The statement of a page of events and its parameters."""
    args: list[Any] = []
    where = _where(project_id, filters, args)
    if after is not None:
        args.extend(after)
        at, event_id = f"${len(args) - 1}", f"${len(args)}"
        where.append(f"occurred_at <= {at}")  # prunes the newer months
        where.append(f"(occurred_at, id) < ({at}, {event_id})")
    args.append(limit)
    sql = (
        f"SELECT {_COLUMNS} FROM usage_events WHERE {' AND '.join(where)}"  # noqa: S608
        f" ORDER BY occurred_at DESC, id DESC LIMIT ${len(args)}"
    )
    return sql, args


def export_statement(project_id: int, filters: EventFilters) -> tuple[str, list[Any]]:
    """Every event of the project that `filters` keep, oldest first (occurred_at, then id: the
    primary key's order, so that PostgreSQL reads the months in turn and sorts nothing), for a
    server-side cursor."""
    args: list[Any] = []
    where = _where(project_id, filters, args)
    sql = (
        f"SELECT {_COLUMNS} FROM usage_events WHERE {' AND '.join(where)}"  # noqa: S608
        " ORDER BY occurred_at, id"
    )
    return sql, args


def unpriced_statement(project_id: int, filters: EventFilters) -> tuple[str, list[Any]]:
    """How many of the events that `filters` keep are unpriced (a partial index,
    `usage_events_unpriced`, holds only those)."""
    args: list[Any] = []
    where = [*_where(project_id, filters, args), "status = 'unpriced'"]
    return f"SELECT count(*) FROM usage_events WHERE {' AND '.join(where)}", args  # noqa: S608


async def select_events(
    conn: DbConnection,
    project_id: int,
    filters: EventFilters,
    *,
    after: tuple[datetime, int] | None,
    limit: int,
) -> list[asyncpg.Record]:
    """Up to `limit` events of the project, newest first, after the position `after`
    (occurred_at, id) when one is given."""
    sql, args = events_statement(project_id, filters, after=after, limit=limit)
    return list(await conn.fetch(sql, *args))


async def select_event(conn: DbConnection, project_id: int, event_id: int) -> asyncpg.Record | None:
    """The project's event `event_id`, or None (another project's is None too)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM usage_events WHERE project_id = $1 AND id = $2",  # noqa: S608
        project_id,
        event_id,
    )
    return row
