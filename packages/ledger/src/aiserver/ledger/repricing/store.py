"""Every statement of a reprice: its runs (`usage_reprice_runs`), its adjustments
(`usage_adjustments`), and what one batch reads and rewrites of `usage_events`, `usage_outbox`
and `usage_rollups`.

Every function takes a connection and runs in the caller's transaction. A run over every
project has `project_id` 0 (`ALL_PROJECTS`); its batches hold events of any project.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from aiserver.ledger.spend.store.rollups import daily_upsert
from aiserver.ledger.usage.store.reading import EventFilters, filter_clauses

if TYPE_CHECKING:
    import asyncpg

    from aiserver.core_db.connections import DbConnection

#: The `project_id` of a run over every project.
ALL_PROJECTS: Final = 0

_COLUMNS: Final = """
    project_id, id, requested_by, requested_at, dry_run, filter, catalog_version, state,
    started_at, finished_at, after_project, after_occurred, after_event, events_examined,
    events_changed,
    old_total, new_total, result, error
"""
#: A run `r`, with its project's slug (None: every project).
_RUN: Final = """
    r.project_id, p.slug AS project, r.id, r.requested_by, r.requested_at, r.dry_run,
    r.filter::text AS filter, r.catalog_version, r.state, r.started_at, r.finished_at,
    r.after_project, r.after_occurred, r.after_event, r.events_examined, r.events_changed,
    r.old_total, r.new_total, r.result::text AS result, r.error
"""


async def insert_run(
    conn: DbConnection, *, project_id: int, requested_by: str, dry_run: bool, filter_json: str
) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"""
        WITH r AS (
            INSERT INTO usage_reprice_runs (project_id, requested_by, dry_run, filter)
            VALUES ($1, $2, $3, $4::jsonb)
            RETURNING {_COLUMNS}
        )
        SELECT {_RUN} FROM r LEFT JOIN projects AS p ON p.id = r.project_id
        """,  # noqa: S608  (made of the constants above)
        project_id,
        requested_by,
        dry_run,
        filter_json,
    )
    assert row is not None  # INSERT ... RETURNING returns the row
    return row


async def select_run(conn: DbConnection, run_id: int) -> asyncpg.Record | None:
    """The run by its id alone (callers check whose it is), with its project's slug."""
    row: asyncpg.Record | None = await conn.fetchrow(
        f"""
        SELECT {_RUN} FROM usage_reprice_runs AS r LEFT JOIN projects AS p ON p.id = r.project_id
        WHERE r.id = $1
        """,  # noqa: S608
        run_id,
    )
    return row


async def select_runs(
    conn: DbConnection, project_id: int | None, *, limit: int
) -> list[asyncpg.Record]:
    """The newest runs of one project (`ALL_PROJECTS`: the runs over every project), or of all
    (None)."""
    rows = await conn.fetch(
        f"""
        SELECT {_RUN} FROM usage_reprice_runs AS r LEFT JOIN projects AS p ON p.id = r.project_id
        WHERE $1::bigint IS NULL OR r.project_id = $1
        ORDER BY r.id DESC LIMIT $2
        """,  # noqa: S608
        project_id,
        limit,
    )
    return list(rows)


async def unfinished_runs(conn: DbConnection) -> list[int]:
    """Runs that were asked for and have not ended: queued, or cut off mid-run."""
    rows = await conn.fetch(
        "SELECT id FROM usage_reprice_runs WHERE state IN ('queued', 'running') ORDER BY id"
    )
    return [r["id"] for r in rows]


async def last_automatic_version(conn: DbConnection) -> int | None:
    """The newest catalog version an automatic reprice was made for."""
    version: int | None = await conn.fetchval(
        "SELECT max(catalog_version) FROM usage_reprice_runs WHERE requested_by = 'automatic'"
    )
    return version


async def start_run(conn: DbConnection, run: asyncpg.Record, catalog_version: int) -> None:
    """Mark the run running (again, after a crash), with the catalog version it prices with."""
    await conn.execute(
        """
        UPDATE usage_reprice_runs
        SET state = 'running', started_at = COALESCE(started_at, now()),
            catalog_version = COALESCE(catalog_version, $3), error = NULL
        WHERE project_id = $1 AND id = $2
        """,
        run["project_id"],
        run["id"],
        catalog_version,
    )


async def end_run(
    conn: DbConnection, project_id: int, run_id: int, *, error: str | None = None
) -> None:
    await conn.execute(
        """
        UPDATE usage_reprice_runs
        SET state = CASE WHEN $3::text IS NULL THEN 'done' ELSE 'failed' END,
            finished_at = now(), error = $3
        WHERE project_id = $1 AND id = $2
        """,
        project_id,
        run_id,
        error,
    )


class Position(NamedTuple):
    """A run's cursor: the last event it is done with, in (project_id, occurred_at, id)
    order."""

    project_id: int
    occurred_at: datetime
    event_id: int


@dataclass(frozen=True, slots=True)
class Progress:
    """What one batch adds to its run: where it ended, its counts and sums, and the whole
    result so far (a JSON text)."""

    after: Position
    examined: int
    changed: int
    old_total: Decimal
    new_total: Decimal
    result_json: str


async def advance_run(conn: DbConnection, project_id: int, run_id: int, p: Progress) -> None:
    await conn.execute(
        """
        UPDATE usage_reprice_runs
        SET after_project = $3, after_occurred = $4, after_event = $5,
            events_examined = events_examined + $6, events_changed = events_changed + $7,
            old_total = old_total + $8, new_total = new_total + $9, result = $10::jsonb
        WHERE project_id = $1 AND id = $2
        """,
        project_id,
        run_id,
        *p.after,
        p.examined,
        p.changed,
        p.old_total,
        p.new_total,
        p.result_json,
    )


# -- a batch's events --------------------------------------------------------------------------

#: What a reprice reads of an event: the usage and the call to price again, and what it was
#: billed at.
EVENT_COLUMNS: Final = """
    e.project_id, e.occurred_at, e.id, e.model, e.provider, e.matched_model, e.matched_provider,
    e.service_tier, e.input_tokens, e.output_tokens, e.cache_read_tokens, e.cache_write_tokens,
    e.reasoning_tokens, e.usage_other::text AS usage_other, e.tags::text AS tags, e.status,
    e.total_cost, e.price_version, e.override_id
"""


@dataclass(frozen=True, slots=True)
class BatchFilters:
    """Which events a run visits: one project's (None: every project's) that `events` keeps,
    and, for the automatic reprice, only those reported under one of `models`."""

    project_id: int | None
    events: EventFilters
    models: Sequence[str] | None = None


def batch_statement(
    filters: BatchFilters, *, after: Position | None, limit: int
) -> tuple[str, list[Any]]:
    """The next `limit` events of a run after its cursor, in (project_id, occurred_at, id)
    order: the order of the primary key, so that each batch reads the key's index from where
    the last one ended, one project or all. Only the clauses of the filters given, so that
    PostgreSQL prunes the months and, for the automatic reprice, reads the partial index of
    the unpriced events."""
    args: list[Any] = []

    def param(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    where = filter_clauses(filters.events, param)
    if filters.project_id is not None:
        where.append(f"project_id = {param(filters.project_id)}")
    if after is not None:
        project, at, event_id = (param(v) for v in after)
        if filters.project_id is not None:
            where.append(f"occurred_at >= {at}")  # prunes the older months
        where.append(f"(project_id, occurred_at, id) > ({project}, {at}, {event_id})")
    if filters.models is not None:
        where.append(f"model = ANY({param(list(filters.models))}::text[])")
    sql = (
        f"SELECT {EVENT_COLUMNS} FROM usage_events AS e"  # noqa: S608
        f" WHERE {' AND '.join(where) or 'true'}"
        f" ORDER BY project_id, occurred_at, id LIMIT {param(limit)}"
    )
    return sql, args


async def select_batch(
    conn: DbConnection, filters: BatchFilters, *, after: Position | None, limit: int
) -> list[asyncpg.Record]:
    sql, args = batch_statement(filters, after=after, limit=limit)
    return list(await conn.fetch(sql, *args))


async def lock_outbox(
    conn: DbConnection, projects: Sequence[int], events: Sequence[int]
) -> set[tuple[int, int]]:
    """Lock the outbox rows of these events, in one order: (project, event) of those still
    there, not folded yet. A fold that holds some is waited for; once it committed, their rows
    are gone (folded), and the rollups hold the events' old values."""
    rows = await conn.fetch(LOCK_OUTBOX, projects, events)
    return {(r["project_id"], r["event_id"]) for r in rows}


#: `lock_outbox`'s statement; the index `usage_outbox_event` finds each row (without it, every
#: batch read the whole outbox: a long one while the folds are behind).
LOCK_OUTBOX: Final = """
    SELECT o.project_id, o.event_id FROM usage_outbox AS o
    JOIN unnest($1::bigint[], $2::bigint[]) AS b (project_id, event_id)
      ON o.project_id = b.project_id AND o.event_id = b.event_id
    ORDER BY o.project_id, o.event_id
    FOR UPDATE OF o
"""


async def requeue_outbox(
    conn: DbConnection, projects: Sequence[int], events: Sequence[int]
) -> None:
    """Give these events' outbox rows (locked by `lock_outbox`) new ids: each row deleted and
    inserted again, the same event and time. A fold whose statement began before this
    transaction commits still sees the old row; claiming it, it finds it deleted and skips it,
    where a row only locked would be claimed and its event read as that fold's snapshot saw it,
    at its old price. The new row is folded by a later fold, with the event as repriced."""
    await conn.execute(
        """
        WITH gone AS (
            DELETE FROM usage_outbox AS o
            USING unnest($1::bigint[], $2::bigint[]) AS b (project_id, event_id)
            WHERE o.project_id = b.project_id AND o.event_id = b.event_id
            RETURNING o.project_id, o.event_id, o.occurred_at
        )
        INSERT INTO usage_outbox (project_id, event_id, occurred_at)
        SELECT project_id, event_id, occurred_at FROM gone ORDER BY project_id, event_id
        """,
        projects,
        events,
    )


async def lock_events(
    conn: DbConnection, projects: Sequence[int], occurred: Sequence[datetime], ids: Sequence[int]
) -> list[asyncpg.Record]:
    """The batch's events again, locked, as they are now (another run may have repriced them
    since they were read)."""
    rows = await conn.fetch(
        f"""
        SELECT {EVENT_COLUMNS} FROM usage_events AS e
        JOIN unnest($1::bigint[], $2::timestamptz[], $3::bigint[]) AS b (project_id, at, id)
          ON e.project_id = b.project_id AND e.occurred_at = b.at AND e.id = b.id
        ORDER BY e.project_id, e.occurred_at, e.id
        FOR UPDATE OF e
        """,  # noqa: S608
        projects,
        occurred,
        ids,
    )
    return list(rows)


async def rollup_keys(
    conn: DbConnection, projects: Sequence[int]
) -> tuple[dict[int, tuple[str, ...]], list[int]]:
    """The projects' rolled-up keys, and those of the projects whose rollups wait for a rebuild
    (keyed partly by other keys: `projects.rollup_rebuild_pending`)."""
    rows = await conn.fetch(
        "SELECT id, rollup_tags, rollup_rebuild_pending FROM projects"
        " WHERE id = ANY($1::bigint[]) ORDER BY id",
        list(projects),
    )
    tags = {r["id"]: tuple(r["rollup_tags"]) for r in rows}
    return tags, [r["id"] for r in rows if r["rollup_rebuild_pending"]]


@dataclass(frozen=True, slots=True)
class Repriced:
    """An event's new pricing, in the columns of `usage_events`."""

    project_id: int
    occurred_at: datetime
    event_id: int
    matched_model: str | None
    matched_provider: str | None
    status: str
    total_cost: Decimal | None
    components_json: str | None
    unpriced_json: str | None  # a JSON array, or None
    note: str | None
    suggestions_json: str | None  # a JSON array, or None
    price_version: int | None
    catalog_version: int | None
    override_id: int | None


async def update_events(conn: DbConnection, changes: Sequence[Repriced]) -> int:
    """Write the events' new pricing; how many rows were updated (fewer than `changes` when
    some were no longer found: their month being detached by retention since they were
    locked)."""
    columns = list(zip(*((
        c.project_id, c.occurred_at, c.event_id, c.matched_model, c.matched_provider, c.status,
        c.total_cost, c.components_json, c.unpriced_json, c.note, c.suggestions_json,
        c.price_version, c.catalog_version, c.override_id,
    ) for c in changes), strict=True))  # fmt: skip
    status = await conn.execute(
        """
        UPDATE usage_events AS e
        SET matched_model = u.matched_model, matched_provider = u.matched_provider,
            status = u.status, total_cost = u.total_cost, components = u.components,
            unpriced = CASE WHEN u.unpriced IS NULL THEN NULL
                            ELSE ARRAY(SELECT jsonb_array_elements_text(u.unpriced)) END,
            pricing_note = u.note,
            suggestions = CASE WHEN u.suggestions IS NULL THEN NULL
                               ELSE ARRAY(SELECT jsonb_array_elements_text(u.suggestions)) END,
            price_version = u.price_version, catalog_version = u.catalog_version,
            override_id = u.override_id
        FROM unnest($1::bigint[], $2::timestamptz[], $3::bigint[], $4::text[], $5::text[],
                    $6::text[], $7::numeric[], $8::jsonb[], $9::jsonb[], $10::text[],
                    $11::jsonb[], $12::bigint[], $13::bigint[], $14::bigint[])
             AS u (project_id, occurred_at, id, matched_model, matched_provider, status,
                   total_cost, components, unpriced, note, suggestions, price_version,
                   catalog_version, override_id)
        WHERE e.project_id = u.project_id AND e.occurred_at = u.occurred_at AND e.id = u.id
        """,
        *columns,
    )
    return int(status.rsplit(" ", 1)[1])


@dataclass(frozen=True, slots=True)
class PriceChange:
    """What a reprice changed of one event: its status, cost and price version."""

    old_status: str
    new_status: str
    old_cost: Decimal | None
    new_cost: Decimal | None
    old_price_version: int | None
    new_price_version: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Adjustment(PriceChange):
    project_id: int
    event_id: int
    occurred_at: datetime


async def insert_adjustments(
    conn: DbConnection, run_id: int, adjustments: Sequence[Adjustment]
) -> None:
    """One row per changed event and run: a rerun of a batch adds none twice."""
    columns = list(zip(*((
        a.project_id, a.event_id, a.occurred_at, a.old_status, a.new_status, a.old_cost,
        a.new_cost, a.old_price_version, a.new_price_version,
    ) for a in adjustments), strict=True))  # fmt: skip
    await conn.execute(
        """
        INSERT INTO usage_adjustments (project_id, run_id, event_id, occurred_at, old_status,
                                       new_status, old_cost, new_cost, old_price_version,
                                       new_price_version)
        SELECT a.project_id, $1, a.event_id, a.occurred_at, a.old_status, a.new_status,
               a.old_cost, a.new_cost, a.old_price_version, a.new_price_version
        FROM unnest($2::bigint[], $3::bigint[], $4::timestamptz[], $5::text[], $6::text[],
                    $7::numeric[], $8::numeric[], $9::bigint[], $10::bigint[])
             AS a (project_id, event_id, occurred_at, old_status, new_status, old_cost,
                   new_cost, old_price_version, new_price_version)
        ORDER BY a.project_id, a.event_id
        ON CONFLICT (project_id, run_id, event_id) DO NOTHING
        """,
        run_id,
        *columns,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordedAdjustment(PriceChange):
    """An adjustment as it was recorded: which run made it, when, and what it changed."""

    run_id: int
    adjusted_at: datetime


async def select_adjustments(
    conn: DbConnection, project_id: int, event_id: int
) -> list[RecordedAdjustment]:
    """The adjustments of one event of the project, oldest first."""
    rows = await conn.fetch(
        """
        SELECT run_id, adjusted_at, old_status, new_status, old_cost, new_cost,
               old_price_version, new_price_version
        FROM usage_adjustments
        WHERE project_id = $1 AND event_id = $2
        ORDER BY adjusted_at, id
        """,
        project_id,
        event_id,
    )
    return [RecordedAdjustment(**dict(row)) for row in rows]


# -- rollups -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RollupDelta:
    """What a batch adds to (or, negative, takes from) one rollup row."""

    project_id: int
    hour: datetime
    model: str
    provider: str
    status: str
    tags_json: str
    events: int
    unpriced_events: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    usage_other_json: str
    cost: Decimal


#: The deltas' columns, as a relation `x` of `daily_upsert`'s shape (no usage_other).
_DELTAS: Final = """
    unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::jsonb[],
           $7::bigint[], $8::bigint[], $9::numeric[], $10::numeric[], $11::numeric[],
           $12::numeric[], $13::numeric[], $14::numeric[])
    AS x (project_id, hour, model, provider, status, tags, events, unpriced_events,
          input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens,
          cost)
"""


async def apply_rollup_deltas(conn: DbConnection, deltas: Sequence[RollupDelta]) -> None:
    """Add the deltas to their rollup rows in key order (as the fold does: no deadlock between
    the two), then drop the rows they emptied: a row an event left is as if it was never folded
    there. `usage_other` is added key by key; a count that falls to 0 is dropped."""
    columns = list(zip(*((
        d.project_id, d.hour, d.model, d.provider, d.status, d.tags_json, d.events,
        d.unpriced_events, d.input_tokens, d.output_tokens, d.cache_read_tokens,
        d.cache_write_tokens, d.reasoning_tokens, d.usage_other_json, d.cost,
    ) for d in deltas), strict=True))  # fmt: skip
    await conn.execute(
        """
        INSERT INTO usage_rollups AS r (project_id, hour, model, provider, status, tags, events,
                                        unpriced_events, input_tokens, output_tokens,
                                        cache_read_tokens, cache_write_tokens, reasoning_tokens,
                                        usage_other, cost)
        SELECT * FROM unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $5::text[],
                             $6::jsonb[], $7::bigint[], $8::bigint[], $9::numeric[],
                             $10::numeric[], $11::numeric[], $12::numeric[], $13::numeric[],
                             $14::jsonb[], $15::numeric[])
        ORDER BY 1, 2, 3, 4, 5, 6
        ON CONFLICT (project_id, hour, model, provider, status, tags) DO UPDATE SET
            events = r.events + EXCLUDED.events,
            unpriced_events = r.unpriced_events + EXCLUDED.unpriced_events,
            input_tokens = r.input_tokens + EXCLUDED.input_tokens,
            output_tokens = r.output_tokens + EXCLUDED.output_tokens,
            cache_read_tokens = r.cache_read_tokens + EXCLUDED.cache_read_tokens,
            cache_write_tokens = r.cache_write_tokens + EXCLUDED.cache_write_tokens,
            reasoning_tokens = r.reasoning_tokens + EXCLUDED.reasoning_tokens,
            usage_other = (
                SELECT COALESCE(jsonb_object_agg(k, s ORDER BY k), '{}'::jsonb)
                FROM (SELECT k, sum(v) AS s
                      FROM (SELECT key AS k, value::numeric AS v FROM jsonb_each(r.usage_other)
                            UNION ALL
                            SELECT key, value::numeric FROM jsonb_each(EXCLUDED.usage_other))
                           AS parts
                      GROUP BY k) AS sums
                WHERE s <> 0),
            cost = r.cost + EXCLUDED.cost
        """,
        *columns,
    )
    await conn.execute(
        """
        DELETE FROM usage_rollups AS r
        USING unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $5::text[],
                     $6::jsonb[]) AS d (project_id, hour, model, provider, status, tags)
        WHERE r.events = 0 AND r.project_id = d.project_id AND r.hour = d.hour
          AND r.model = d.model AND r.provider = d.provider AND r.status = d.status
          AND r.tags = d.tags
        """,
        *columns[:6],
    )
    # the same deltas per day of the project's clock, after the hourly rows (the fold's lock
    # order), and the daily rows they emptied dropped
    await conn.execute(
        daily_upsert(f"(SELECT * FROM {_DELTAS})"),  # noqa: S608  (constants only)
        *columns[:13], columns[14],
    )  # fmt: skip
    await conn.execute(
        f"""
        DELETE FROM usage_rollups_daily AS r
        USING (SELECT DISTINCT x.project_id, (x.hour AT TIME ZONE p.time_zone)::date AS day,
                      x.model, x.provider, x.status, x.tags
               FROM {_DELTAS} JOIN projects p ON p.id = x.project_id) AS d
        WHERE r.events = 0 AND r.project_id = d.project_id AND r.day = d.day
          AND r.model = d.model AND r.provider = d.provider AND r.status = d.status
          AND r.tags = d.tags
        """,  # noqa: S608  (constants only)
        *columns[:13], columns[14],
    )  # fmt: skip
