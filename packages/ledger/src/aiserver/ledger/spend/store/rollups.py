"""All SQL on `usage_rollups`: folding outbox rows into them, and rebuilding a project's.

Every function takes a connection and runs in the caller's transaction.

A rollup's key is (project, UTC hour, model, provider, pricing status, tags): the model and
provider as matched, else as reported (`''` for no provider), and the event's values of the
project's rolled-up tag keys only (`{}` when it has none of them). `_KEYED` says it once, for the
fold and the rebuild alike.

Locks, so that concurrent writers never deadlock and never count an event twice:

- a fold claims outbox rows `FOR UPDATE SKIP LOCKED` (two folders never wait for each other's
  rows, nor take the same one), and upserts its rollups in key order (two folders that touch the
  same rollups lock them in one order);
- a rebuild of a project holds the project's rollup lock exclusively (`lock_project`); a fold
  takes it shared for each project it claims rows of, and only if it can at once
  (`pg_try_advisory_xact_lock_shared`), so a fold never waits for a rebuild: it leaves that
  project's rows in the outbox for a later fold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from aiserver.core_db.locks import advisory_lock_key

if TYPE_CHECKING:
    from aiserver.core_db.connections import DbConnection

#: The first half of a project's rollup lock (the two-int form, apart from every one-key lock).
ROLLUP_LOCK_SPACE: Final = advisory_lock_key("ledger:usage-rollups") >> 32
#: The second half: the project id folded into an int4 (two projects 2**32 apart share a lock,
#: which only makes one wait for the other).
_PROJECT_LOCK: Final = "(({project} % 4294967296) - 2147483648)::int4"

#: The key of a rollup, and its sums, of each row of `events` (one usage event each); `{tags}`
#: is the expression of the project's rolled-up keys (a column of `events`, or a parameter).
_KEYED: Final = """
    SELECT e.project_id,
           date_trunc('hour', e.occurred_at, 'UTC') AS hour,
           coalesce(e.matched_model, e.model) AS model,
           coalesce(e.matched_provider, e.provider, '') AS provider,
           e.status,
           coalesce((SELECT jsonb_object_agg(t.key, t.value) FROM jsonb_each(e.tags) t
                     WHERE t.key = ANY({tags})), '{{}}'::jsonb) AS tags,
           1 AS events,
           (e.status = 'unpriced')::int AS unpriced_events,
           e.input_tokens, e.output_tokens, e.cache_read_tokens, e.cache_write_tokens,
           e.reasoning_tokens,
           coalesce(e.usage_other, '{{}}'::jsonb) AS usage_other,
           coalesce(e.total_cost, 0) AS cost
    FROM events e
"""

_KEY: Final = "project_id, hour, model, provider, status, tags"

#: Rows of `keyed` (a key and sums each, keys repeated) summed per key: `merged`. Only counts
#: are summed in `usage_other`; `$3` names the fields that are not (they choose a price).
_MERGED: Final = f"""
    sums AS (
        SELECT {_KEY},
               sum(events)::bigint AS events, sum(unpriced_events)::bigint AS unpriced_events,
               sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
               sum(cache_read_tokens) AS cache_read_tokens,
               sum(cache_write_tokens) AS cache_write_tokens,
               sum(reasoning_tokens) AS reasoning_tokens, sum(cost) AS cost
        FROM keyed GROUP BY {_KEY}
    ), other_counts AS (
        SELECT {_KEY}, jsonb_object_agg(name, total) AS usage_other
        FROM (
            SELECT {_KEY}, o.key AS name, sum(o.value::text::numeric) AS total
            FROM keyed k, jsonb_each(k.usage_other) o
            WHERE jsonb_typeof(o.value) = 'number' AND o.key <> ALL($3::text[])
            GROUP BY {_KEY}, o.key
        ) per_name
        GROUP BY {_KEY}
    ), merged AS (
        SELECT s.project_id, s.hour, s.model, s.provider, s.status, s.tags, s.events,
               s.unpriced_events, s.input_tokens, s.output_tokens, s.cache_read_tokens,
               s.cache_write_tokens, s.reasoning_tokens,
               coalesce(o.usage_other, '{{}}'::jsonb) AS usage_other, s.cost
        FROM sums s LEFT JOIN other_counts o USING ({_KEY})
    )
"""  # noqa: S608  (constants only)

_COLUMNS: Final = (
    f"{_KEY}, events, unpriced_events, input_tokens, output_tokens, cache_read_tokens, "
    "cache_write_tokens, reasoning_tokens, usage_other, cost"
)
_SUMMED: Final = (
    "events", "unpriced_events", "input_tokens", "output_tokens", "cache_read_tokens",
    "cache_write_tokens", "reasoning_tokens", "cost",
)  # fmt: skip

#: The daily rollups of the rows of `{source}` (aliased `x`: project_id, hour, model, provider,
#: status, tags and the sums of `_SUMMED`, a row per hourly key): their sums per day of the
#: project's clock, over the hours that lie whole in a day (at +05:30 the hour across midnight
#: is in no day), added to `usage_rollups_daily` in key order. `{after}` is a condition that
#: makes the rows wait for the hourly writes of the same statement (lock order: hourly rows,
#: then daily ones, for every writer). `usage_rollups_daily` holds no `usage_other`.
_DAILY_UPSERT: Final = f"""
    INSERT INTO usage_rollups_daily AS d (project_id, day, model, provider, status, tags,
        {", ".join(_SUMMED)})
    SELECT x.project_id, (x.hour AT TIME ZONE p.time_zone)::date, x.model, x.provider, x.status,
           x.tags, {", ".join(f"sum(x.{c})" for c in _SUMMED)}
    FROM {{source}} x JOIN projects p ON p.id = x.project_id
    WHERE (x.hour AT TIME ZONE p.time_zone)::date
          = ((x.hour + interval '59:59.999999') AT TIME ZONE p.time_zone)::date{{after}}
    GROUP BY 1, 2, 3, 4, 5, 6
    ORDER BY 1, 2, 3, 4, 5, 6
    ON CONFLICT (project_id, day, model, provider, status, tags) DO UPDATE SET
        {", ".join(f"{c} = d.{c} + excluded.{c}" for c in _SUMMED)}
"""  # noqa: S608  (constants only)


def daily_upsert(source: str, after: str = "") -> str:
    """`_DAILY_UPSERT` of the rows of `source` (a relation, aliased `x`)."""
    return _DAILY_UPSERT.format(source=source, after=f" AND {after}" if after else "")


#: A batch, in one statement: claim up to $1 outbox rows of projects that no rebuild holds, find
#: their events (the primary key: project, occurred_at, id; the LATERAL makes it an index probe
#: per row, in that row's partition only), sum them per rollup key, add the sums to the rollups
#: in key order, then their sums per day to the daily rollups (after the hourly rows: the
#: scalar subquery over `upserted` runs first), delete the claimed rows. $2 is
#: ROLLUP_LOCK_SPACE; $3 the non-count fields.
#: The claim goes in (project, id) order, the outbox's primary key, so that a batch reads only
#: the rows it takes, however long the outbox has grown (one project's backlog goes first).
FOLD: Final = f"""
    WITH claimed AS (
        SELECT o.project_id, o.id, o.event_id, o.occurred_at
        FROM usage_outbox o
        WHERE pg_try_advisory_xact_lock_shared($2::int4, {_PROJECT_LOCK.format(project="o.project_id")})
        ORDER BY o.project_id, o.id
        LIMIT $1
        FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM usage_outbox o USING claimed c
        WHERE o.project_id = c.project_id AND o.id = c.id
    ), events AS (
        SELECT e.*, p.rollup_tags
        FROM claimed c
        CROSS JOIN LATERAL (
            SELECT * FROM usage_events e
            WHERE e.project_id = c.project_id AND e.occurred_at = c.occurred_at
              AND e.id = c.event_id
            OFFSET 0  -- kept a probe per row: merged into a join, it can scan the project's events
        ) e
        JOIN projects p ON p.id = c.project_id
    ), keyed AS ({_KEYED.format(tags="e.rollup_tags")}
    ), {_MERGED}, upserted AS (
        INSERT INTO usage_rollups ({_COLUMNS})
        SELECT {_COLUMNS} FROM merged ORDER BY {_KEY}
        ON CONFLICT ({_KEY}) DO UPDATE SET
            {", ".join(f"{c} = usage_rollups.{c} + excluded.{c}" for c in _SUMMED)},
            usage_other = CASE WHEN excluded.usage_other = '{{}}'::jsonb
                               THEN usage_rollups.usage_other
                               ELSE (SELECT coalesce(jsonb_object_agg(key, total), '{{}}'::jsonb)
                                     FROM (SELECT key, sum(value::numeric) AS total
                                           FROM (SELECT * FROM jsonb_each_text(usage_rollups.usage_other)
                                                 UNION ALL
                                                 SELECT * FROM jsonb_each_text(excluded.usage_other))
                                                 AS both_sides
                                           GROUP BY key) AS per_name)
                          END
        RETURNING 1
    ), days AS ({daily_upsert("merged", after="(SELECT count(*) FROM upserted) >= 0")}
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM claimed) AS claimed,
           (SELECT count(*) FROM events) AS folded,
           (SELECT count(*) FROM upserted) AS rollups,
           (SELECT count(*) FROM days) AS days,
           -- the projects folded for, as this statement's snapshot saw them (`fold_batch`)
           (SELECT array_agg(p.id ORDER BY p.id) FROM projects p
            WHERE p.id IN (SELECT project_id FROM claimed)) AS project_ids,
           (SELECT array_agg(p.time_zone ORDER BY p.id) FROM projects p
            WHERE p.id IN (SELECT project_id FROM claimed)) AS zones,
           (SELECT array_agg(p.rollup_tags::text ORDER BY p.id) FROM projects p
            WHERE p.id IN (SELECT project_id FROM claimed)) AS rollup_tags
"""  # noqa: S608, E501  (constants only)

#: How many of the projects a fold statement folded for no longer have the time zone and
#: rolled-up keys its snapshot saw, read in a snapshot taken now.
_CHANGED_SINCE: Final = """
    SELECT count(*) FROM unnest($1::bigint[], $2::text[], $3::text[]) AS u (id, zone, tags)
    JOIN projects AS p ON p.id = u.id
    WHERE p.time_zone <> u.zone OR p.rollup_tags::text <> u.tags
"""


@dataclass(frozen=True, slots=True)
class Batch:
    """What one fold statement did."""

    claimed: int  # outbox rows taken (and deleted)
    folded: int  # of them, events found and added to the rollups
    rollups: int  # rollup rows inserted or added to
    days: int  # daily rollup rows inserted or added to


class ProjectsChanged(Exception):  # a signal, not an error
    """A project a fold statement folded for changed its time zone or rolled-up keys after the
    statement's snapshot: what it wrote is of the old ones, and must be rolled back."""


async def fold_batch(conn: DbConnection, limit: int, not_counts: Sequence[str]) -> Batch:
    """Fold up to `limit` outbox rows into the rollups (see `FOLD`), in the caller's transaction;
    `ProjectsChanged` (the caller rolls back and folds again) when a project it folded for
    changed in between.

    The statement reads the projects (time zone, rolled-up keys) as of its snapshot, taken when
    it begins, and takes each project's rollup lock (shared, trying) only as its claim reaches
    that project's rows. A change of those, which holds the lock exclusively, can commit in
    between: the statement then wrote daily rows of the old zone, or hourly rows by the old
    keys, after the change made them again. So it is checked after, in a snapshot of now, while
    the locks the statement took keep any further change out until the COMMIT.

    Without JIT: the planner prices the statement by the LATERAL probes' estimates, high enough
    to compile it, and compiling took longer than the whole batch runs (1.7 s of 2.5 s for
    20,000 events), more the larger the batch."""
    await conn.execute("SET LOCAL jit = off")
    row = await conn.fetchrow(FOLD, limit, ROLLUP_LOCK_SPACE, list(not_counts))
    assert row is not None
    if row["project_ids"] and await conn.fetchval(
        _CHANGED_SINCE, row["project_ids"], row["zones"], row["rollup_tags"]
    ):
        raise ProjectsChanged
    return Batch(
        claimed=row["claimed"], folded=row["folded"], rollups=row["rollups"], days=row["days"]
    )


async def lock_project(conn: DbConnection, project_id: int, *, shared: bool = False) -> None:
    """Hold the project's rollup lock until the transaction ends: exclusively to rebuild its
    rollups (folds leave its rows alone meanwhile), shared to change them alongside folds (a
    reprice's corrections), waiting for it either way."""
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    await conn.execute(
        f"SELECT {function}($1::int4, {_PROJECT_LOCK.format(project='$2::bigint')})",
        ROLLUP_LOCK_SPACE,
        project_id,
    )


async def locked_rollup_tags(conn: DbConnection, project_id: int) -> list[str] | None:
    """The project's rolled-up keys, its row share-locked until the transaction ends (after
    waiting for a change in flight); None when there is no such project."""
    tags: list[str] | None = await conn.fetchval(
        "SELECT rollup_tags FROM projects WHERE id = $1 FOR SHARE", project_id
    )
    return tags


#: A project's rollups made again for its rolled-up keys as they are now ($2), into the
#: temporary table `rebuilt` (`_REBUILT`; the caller then replaces the project's rows with it).
#: Hours from that of its oldest retained event on are summed from its events that are folded
#: (not in the outbox: those are folded later, with these keys); older hours, whose events
#: retention has dropped, from the rollups there, re-keyed (a dropped key summed away; an added
#: key unknown, so absent). The boundary is read in the same statement (one snapshot) as the
#: events, so a partition that retention drops meanwhile is either wholly in it or wholly out.
REBUILD: Final = f"""
    INSERT INTO rebuilt ({_COLUMNS}, before_retention)
    WITH boundary AS (
        SELECT coalesce(date_trunc('hour', min(occurred_at), 'UTC'), 'infinity') AS hour
        FROM usage_events WHERE project_id = $1
    ), events AS (
        SELECT e.* FROM usage_events e
        WHERE e.project_id = $1 AND e.occurred_at >= (SELECT hour FROM boundary)
          AND NOT EXISTS (SELECT FROM usage_outbox o
                          WHERE o.project_id = e.project_id AND o.event_id = e.id)
    ), keyed AS (
        {_KEYED.format(tags="$2::text[]")}
        UNION ALL
        SELECT r.project_id, r.hour, r.model, r.provider, r.status,
               coalesce((SELECT jsonb_object_agg(t.key, t.value) FROM jsonb_each(r.tags) t
                         WHERE t.key = ANY($2::text[])), '{{}}'::jsonb),
               r.events, r.unpriced_events, r.input_tokens, r.output_tokens,
               r.cache_read_tokens, r.cache_write_tokens, r.reasoning_tokens, r.usage_other,
               r.cost
        FROM usage_rollups r
        WHERE r.project_id = $1 AND r.hour < (SELECT hour FROM boundary)
    ), {_MERGED}
    SELECT {_COLUMNS}, (hour < (SELECT hour FROM boundary)) FROM merged
"""  # noqa: S608  (constants only)
_REBUILT: Final = """
    CREATE TEMPORARY TABLE rebuilt (LIKE usage_rollups, before_retention boolean NOT NULL)
    ON COMMIT DROP
"""


@dataclass(frozen=True, slots=True)
class Rebuilt:
    """What a rebuild wrote."""

    events: int  # retained, folded events summed again
    rollups: int  # rollup rows written (those before the oldest retained event included)
    kept: int  # of them, hours before the oldest retained event, re-keyed from the old rollups


async def rebuild(
    conn: DbConnection, project_id: int, rollup_tags: Sequence[str], not_counts: Sequence[str]
) -> Rebuilt:
    """Replace the project's rollups with ones made for `rollup_tags` (see `REBUILD`). The
    caller holds the project's rollup lock exclusively."""
    await conn.execute(_REBUILT)
    await conn.execute(REBUILD, project_id, list(rollup_tags), list(not_counts))
    await conn.execute("DELETE FROM usage_rollups WHERE project_id = $1", project_id)
    row = await conn.fetchrow(
        f"""
        WITH written AS (
            INSERT INTO usage_rollups ({_COLUMNS})
            SELECT {_COLUMNS} FROM rebuilt ORDER BY {_KEY}
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM written) AS rollups,
               (SELECT count(*) FROM rebuilt WHERE before_retention) AS kept,
               (SELECT coalesce(sum(events), 0) FROM rebuilt WHERE NOT before_retention)
                   AS events
        """  # noqa: S608  (constants only)
    )
    await conn.execute("DROP TABLE rebuilt")
    assert row is not None
    return Rebuilt(events=int(row["events"]), rollups=row["rollups"], kept=row["kept"])


async def pending_rebuilds(conn: DbConnection) -> list[int]:
    """The projects whose rollups wait for a rebuild (`rollup_rebuild_pending`), by id."""
    rows = await conn.fetch("SELECT id FROM projects WHERE rollup_rebuild_pending ORDER BY id")
    return [r["id"] for r in rows]


async def mark_rolled_up(conn: DbConnection, project_id: int, tags: Sequence[str]) -> None:
    """Record that the project's rollups hold `tags` in every row, and no other key (a rebuild
    made them so, holding the project's row: no change of its keys came meanwhile)."""
    await conn.execute(
        "UPDATE projects SET rolled_up_tags = $2, rollup_rebuild_pending = false WHERE id = $1",
        project_id,
        list(tags),
    )


async def resum_daily(conn: DbConnection, project_id: int) -> int:
    """Sum the project's daily rollups again from its hourly ones, by the days of its time zone
    as it is now (after a rebuild, or a change of the zone); the number of daily rows. The
    caller holds the project's rollup lock exclusively, so no fold or reprice changes its
    rollups meanwhile."""
    await conn.execute("DELETE FROM usage_rollups_daily WHERE project_id = $1", project_id)
    written: int = await conn.fetchval(
        f"""
        WITH written AS ({daily_upsert("usage_rollups", after="x.project_id = $1")}
            RETURNING 1
        )
        SELECT count(*) FROM written
        """,  # noqa: S608  (constants only)
        project_id,
    )
    return written
