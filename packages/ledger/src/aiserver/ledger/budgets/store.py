"""All SQL on `budgets` and `budget_windows`. Every function takes a connection and runs in the
caller's transaction; every statement names the project, so no key reaches another's rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import msgspec

from aiserver.costs.source import DEFAULT_SOURCE
from aiserver.costs.store.metadata import CATALOG_VERSION_LOCK
from aiserver.ledger.budgets.commits import BudgetScope, Crossing, WindowSum
from aiserver.ledger.budgets.periods import window_of
from aiserver.ledger.store import PROJECT_GATE
from aiserver.ledger.webhooks.sealing import Sealed

if TYPE_CHECKING:
    import asyncpg

    from aiserver.core_db.connections import DbConnection


class Budget(msgspec.Struct, frozen=True, kw_only=True):
    project_id: int
    id: int
    name: str
    tags: dict[str, str]
    model: str | None
    period: str
    limit_usd: Decimal
    thresholds: tuple[Decimal, ...]
    hard: bool
    webhook_url: str | None
    has_webhook_secret: bool
    created_at: datetime
    updated_at: datetime
    counts_from: datetime  # the start of the first window it counts (the one it was made in)
    # while the secret a change replaced still signs beside the current one: until when
    previous_secret_until: datetime | None = None


class WindowTotals(msgspec.Struct, frozen=True, kw_only=True):
    """What one window of a budget holds (all its stripes together)."""

    committed: Decimal = Decimal(0)
    reserved: Decimal = Decimal(0)
    events: int = 0
    unpriced_events: int = 0
    partially_priced_events: int = 0


_BUDGET: Final = """
    project_id, id, name, tags::text AS tags, model, period, limit_usd, thresholds, hard,
    webhook_url, webhook_secret IS NOT NULL AS has_webhook_secret, created_at, updated_at,
    counts_from,
    CASE WHEN webhook_previous_until > now() THEN webhook_previous_until END
        AS previous_secret_until
"""
_TAGS: Final = msgspec.json.Decoder(dict[str, str])


def _budget(row: asyncpg.Record) -> Budget:
    return Budget(
        **{
            **dict(row),
            "tags": _TAGS.decode(row["tags"]),
            "thresholds": tuple(row["thresholds"]),
        }
    )


async def count_budgets(conn: DbConnection, project_id: int) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM budgets WHERE project_id = $1", project_id
    )
    return count


async def insert_budget(
    conn: DbConnection,
    project_id: int,
    *,
    name: str,
    tags: Mapping[str, str],
    model: str | None,
    period: str,
    limit_usd: Decimal,
    thresholds: Sequence[Decimal],
    hard: bool,
    webhook_url: str | None,
    webhook_secret: Sealed | None,
    counts_from: datetime,
) -> Budget:
    row = await conn.fetchrow(
        f"""
        INSERT INTO budgets (project_id, name, tags, model, period, limit_usd, thresholds, hard,
                             webhook_url, webhook_secret, webhook_secret_key_id, counts_from)
        VALUES ($1, $2, $3::text::jsonb, $4, $5, $6, $7, $8, $9, $10, $11, $12)
        RETURNING {_BUDGET}
        """,  # noqa: S608
        project_id,
        name,
        msgspec.json.encode(dict(tags)).decode(),
        model,
        period,
        limit_usd,
        list(thresholds),
        hard,
        webhook_url,
        None if webhook_secret is None else webhook_secret.value,
        None if webhook_secret is None else webhook_secret.key_id,
        counts_from,
    )
    assert row is not None  # INSERT ... RETURNING always returns the row
    return _budget(row)


async def read_budgets(conn: DbConnection, project_id: int) -> list[Budget]:
    rows = await conn.fetch(
        f"SELECT {_BUDGET} FROM budgets WHERE project_id = $1 ORDER BY id",  # noqa: S608
        project_id,
    )
    return [_budget(r) for r in rows]


async def read_budget(conn: DbConnection, project_id: int, budget_id: int) -> Budget | None:
    row = await conn.fetchrow(
        f"SELECT {_BUDGET} FROM budgets WHERE project_id = $1 AND id = $2",  # noqa: S608
        project_id,
        budget_id,
    )
    return None if row is None else _budget(row)


#: How long a replaced webhook secret signs beside the one that replaced it: a receiver has
#: that long to take the new one, and none is refused meanwhile.
PREVIOUS_SECRET_SIGNS: Final = timedelta(hours=24)


class Webhook(NamedTuple):
    """A budget's webhook as stored: its address and its secret, sealed (or in the clear when
    `key_id` is None: stored before secrets were sealed)."""

    url: str
    secret: str
    key_id: str | None


async def lock_webhook(conn: DbConnection, project_id: int, budget_id: int) -> Webhook | None:
    """The budget's webhook (None: no webhook, or no such budget), its row locked FOR NO KEY
    UPDATE until the caller's transaction ends, so that the change decided from it is the one
    written."""
    row = await conn.fetchrow(
        "SELECT webhook_url, webhook_secret, webhook_secret_key_id FROM budgets"
        " WHERE project_id = $1 AND id = $2 FOR NO KEY UPDATE",
        project_id,
        budget_id,
    )
    if row is None or row["webhook_url"] is None:
        return None
    return Webhook(row["webhook_url"], row["webhook_secret"], row["webhook_secret_key_id"])


async def forget_replaced_secrets(conn: DbConnection, *, lock_timeout_s: float) -> int:
    """Erase every replaced webhook secret whose time to sign has passed (nothing reads it any
    more: no stored secret outlives its use). Returns how many. A budget held longer than
    `lock_timeout_s` by another transaction raises `asyncpg.LockNotAvailableError` (nothing is
    erased)."""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_s * 1000)}")
        done: str = await conn.execute(
            "UPDATE budgets SET webhook_previous_secret = NULL,"
            " webhook_previous_secret_key_id = NULL, webhook_previous_until = NULL"
            " WHERE webhook_previous_until <= now()"
        )
    return int(done.rsplit(" ", 1)[1])


async def update_budget(
    conn: DbConnection, project_id: int, budget_id: int, changes: Mapping[str, Any]
) -> Budget | None:
    """Set the columns in `changes` (names of `budgets` columns, checked by the caller). No
    changes write nothing: the budget as it is (its `updated_at` kept)."""
    if not changes:
        return await read_budget(conn, project_id, budget_id)
    assignments = ", ".join(f"{column} = ${n}" for n, column in enumerate(changes, start=3))
    row = await conn.fetchrow(
        f"""
        UPDATE budgets SET {assignments}, updated_at = now()
        WHERE project_id = $1 AND id = $2
        RETURNING {_BUDGET}
        """,  # noqa: S608  (column names from UPDATABLE only)
        project_id,
        budget_id,
        *changes.values(),
    )
    return None if row is None else _budget(row)


async def secrets_to_seal(
    conn: DbConnection,
    current_key_id: str,
    after: tuple[int, int],
    limit: int,
    *,
    lock_timeout_s: float,
) -> list[asyncpg.Record]:
    """Budgets after `after` (project id, budget id) whose webhook secret, or the one it
    replaced (`webhook_previous_secret`), is in the clear or sealed with another key than the
    current one, locked in key order FOR NO KEY UPDATE (what
    an UPDATE of the secret takes).

    A row another transaction is changing is waited for, never skipped: a skipped row would
    keep the old key's seal (a change of its name writes no new secret), and the operator who
    then removes the old key would lose its secret. The foreign keys of ingest's windows and
    alerts take the row FOR KEY SHARE, which this lock does not wait for. After a wait the row
    is checked again, and left out when it no longer needs sealing (another runner sealed it,
    a change wrote a new secret); the next row takes its place in the batch. A row held longer
    than `lock_timeout_s` (for the rest of the caller's transaction) raises
    `asyncpg.LockNotAvailableError`."""
    await conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_s * 1000)}")
    return await conn.fetch(
        """
        SELECT project_id, id, webhook_secret, webhook_secret_key_id,
               webhook_previous_secret, webhook_previous_secret_key_id FROM budgets
        WHERE (webhook_secret IS NOT NULL AND webhook_secret_key_id IS DISTINCT FROM $1
               OR webhook_previous_secret IS NOT NULL
                  AND webhook_previous_secret_key_id IS DISTINCT FROM $1)
          AND (project_id, id) > ($2, $3)
        ORDER BY project_id, id
        LIMIT $4
        FOR NO KEY UPDATE
        """,
        current_key_id,
        *after,
        limit,
    )


async def has_clear_secrets(conn: DbConnection) -> bool:
    found: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT FROM budgets"
        " WHERE webhook_secret IS NOT NULL AND webhook_secret_key_id IS NULL"
        " OR webhook_previous_secret IS NOT NULL AND webhook_previous_secret_key_id IS NULL)"
    )
    return found


class Resealed(NamedTuple):
    """A budget's webhook secrets sealed again: the current one, and the one it replaced while
    that still signs (None: left as it was)."""

    project_id: int
    budget_id: int
    current: Sealed | None
    previous: Sealed | None


async def store_sealed(conn: DbConnection, sealed: Sequence[Resealed]) -> None:
    """Set each budget's webhook secrets to the sealed ones (rows the caller locked)."""
    await conn.execute(
        """
        UPDATE budgets AS b
        SET webhook_secret = coalesce(s.value, b.webhook_secret),
            webhook_secret_key_id = CASE WHEN s.value IS NULL THEN b.webhook_secret_key_id
                                         ELSE s.key_id END,
            webhook_previous_secret = coalesce(s.previous, b.webhook_previous_secret),
            webhook_previous_secret_key_id =
                CASE WHEN s.previous IS NULL THEN b.webhook_previous_secret_key_id
                     ELSE s.previous_key_id END
        FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[])
             AS s (project_id, id, value, key_id, previous, previous_key_id)
        WHERE b.project_id = s.project_id AND b.id = s.id
        """,
        [r.project_id for r in sealed],
        [r.budget_id for r in sealed],
        [r.current and r.current.value for r in sealed],
        [r.current and r.current.key_id for r in sealed],
        [r.previous and r.previous.value for r in sealed],
        [r.previous and r.previous.key_id for r in sealed],
    )


#: The columns a change may set.
UPDATABLE: Final = frozenset(
    {"name", "limit_usd", "thresholds", "hard", "webhook_url", "webhook_secret"}
)


async def delete_budget(conn: DbConnection, project_id: int, budget_id: int) -> bool:
    """Delete a budget with its windows; False when there was none."""
    deleted = await conn.fetchval(
        "DELETE FROM budgets WHERE project_id = $1 AND id = $2 RETURNING id", project_id, budget_id
    )
    return deleted is not None


async def window_totals(
    conn: DbConnection, project_id: int, windows: Sequence[tuple[int, datetime]]
) -> dict[tuple[int, datetime], WindowTotals]:
    """What each (budget id, window start) holds; a window never written holds nothing."""
    if not windows:
        return {}
    rows = await conn.fetch(
        """
        SELECT w.budget_id, w.window_start, sum(w.committed) AS committed,
               sum(w.reserved) AS reserved, sum(w.events)::bigint AS events,
               sum(w.unpriced_events)::bigint AS unpriced_events,
               sum(w.partially_priced_events)::bigint AS partially_priced_events
        FROM budget_windows w
        JOIN unnest($2::bigint[], $3::timestamptz[]) AS k(budget_id, window_start)
          ON w.budget_id = k.budget_id AND w.window_start = k.window_start
        WHERE w.project_id = $1
        GROUP BY w.budget_id, w.window_start
        """,
        project_id,
        [b for b, _ in windows],
        [s for _, s in windows],
    )
    return {
        (r["budget_id"], r["window_start"]): WindowTotals(
            committed=r["committed"],
            reserved=r["reserved"],
            events=r["events"],
            unpriced_events=r["unpriced_events"],
            partially_priced_events=r["partially_priced_events"],
        )
        for r in rows
    }


async def project_time_zone(conn: DbConnection, project_id: int) -> str:
    zone: str = await conn.fetchval("SELECT time_zone FROM projects WHERE id = $1", project_id)
    return zone


async def budgets_for_ingest(conn: DbConnection, project_id: int) -> tuple[str, list[BudgetScope]]:
    """The project's time zone and its budgets' (id, tags, model, period), read after taking
    the project's row FOR KEY SHARE (see `ledger_ingest_budgets_v2`): in a transaction, no budget
    of the project is created or deleted until it ends."""
    rows = await conn.fetch("SELECT * FROM ledger_ingest_budgets_v2($1)", project_id)
    return _scopes(project_id, rows)


class IngestStart(NamedTuple):
    catalog_version: int
    zone: str
    budgets: list[BudgetScope]
    #: the retention the usage partitions are kept by, as the task runner's partition
    #: maintenance last wrote it down (`usage_retention`); None before any maintenance ran
    retention_days: int | None
    #: whether the project is archived, read in a statement of its own once its gate is passed
    #: and its row held FOR KEY SHARE (an archiving that committed before then is seen, and
    #: one waiting for the gate is waited for)
    archived: bool = False


async def ingest_start(conn: DbConnection, project_id: int) -> IngestStart:
    """What `budgets_for_ingest` answers, and before it the committed catalog version, read
    under the catalog's advisory lock taken shared (see `ledger_ingest_start_v2`): until the
    transaction ends no new catalog version commits, so the version read is the one committed
    at its COMMIT. With them, the retention the partitions are kept by
    (`ledger_ingest_start_v3`), and whether the project is archived (`ledger_ingest_start_v4`),
    all after passing the project's gate (`PROJECT_GATE`, `ledger_ingest_start_v5`)."""
    rows = await conn.fetch(
        "SELECT * FROM ledger_ingest_start_v5($1, $2, $3, $4)",
        project_id,
        CATALOG_VERSION_LOCK,
        DEFAULT_SOURCE,
        PROJECT_GATE,
    )
    zone, scopes = _scopes(project_id, rows)
    first = rows[0]
    return IngestStart(
        int(first["catalog_version"]), zone, scopes, first["retention_days"], first["archived"]
    )


def _scopes(project_id: int, rows: Sequence[Any]) -> tuple[str, list[BudgetScope]]:
    if not rows:
        raise LookupError(f"no project {project_id}")
    zone: str = rows[0]["time_zone"]
    return zone, [
        BudgetScope(
            r["budget_id"],
            _TAGS.decode(r["tags"]),
            r["model"],
            r["period"],
            r["limit_usd"],
            tuple(r["thresholds"]),
            r["has_webhook"],
            r["counts_from"],
        )
        for r in rows
        if r["budget_id"] is not None
    ]


async def add_to_windows(
    conn: DbConnection, project_id: int, sums: Mapping[tuple[int, datetime], WindowSum]
) -> dict[tuple[int, datetime], Decimal]:
    """Add each window's sums (`WindowSum`s by (budget id, window start)) to its stripe 0, in
    key order, so that two transactions adding to the same windows never deadlock. Returns
    each window's committed cost after the addition (all stripes)."""
    if not sums:
        return {}
    keys = sorted(sums)
    rows = await conn.fetch(
        """
        INSERT INTO budget_windows AS w (project_id, budget_id, window_start, stripe, window_end,
                                         committed, events, unpriced_events,
                                         partially_priced_events)
        SELECT $1, k.budget_id, k.window_start, 0, k.window_end, k.committed, k.events,
               k.unpriced_events, k.partially_priced_events
        FROM unnest($2::bigint[], $3::timestamptz[], $4::timestamptz[], $5::numeric[],
                    $6::bigint[], $7::bigint[], $8::bigint[])
             AS k(budget_id, window_start, window_end, committed, events, unpriced_events,
                  partially_priced_events)
        ORDER BY k.budget_id, k.window_start
        ON CONFLICT (project_id, budget_id, window_start, stripe) DO UPDATE SET
            committed = w.committed + EXCLUDED.committed,
            events = w.events + EXCLUDED.events,
            unpriced_events = w.unpriced_events + EXCLUDED.unpriced_events,
            -- never below 0: an event that an API of the release before recorded while the
            -- upgrade rolled out was not counted, and a reprice that moves it takes it out
            partially_priced_events = GREATEST(0, w.partially_priced_events
                                                  + EXCLUDED.partially_priced_events)
        RETURNING w.budget_id, w.window_start, w.committed
        """,
        project_id,
        [k[0] for k in keys],
        [k[1] for k in keys],
        [sums[k].window_end for k in keys],
        [sums[k].committed for k in keys],
        [sums[k].events for k in keys],
        [sums[k].unpriced_events for k in keys],
        [sums[k].partially_priced_events for k in keys],
    )
    return {(r["budget_id"], r["window_start"]): r["committed"] for r in rows}


async def insert_alerts(conn: DbConnection, project_id: int, crossed: Sequence[Crossing]) -> int:
    """Write one alert per crossing (none twice: unique per budget, window and threshold), due
    at once when its budget has a webhook. Returns how many were new. A threshold that alerted
    in another window of the budget overlapping this one (the window of the zone before a time
    zone change, which has another start) is not alerted again."""
    if not crossed:
        return 0
    ordered = sorted(crossed, key=lambda c: (c.budget_id, c.window_start, c.threshold))
    inserted = await conn.fetch(
        """
        INSERT INTO budget_alerts (project_id, budget_id, window_start, window_end, threshold,
                                   limit_usd, committed, state, next_attempt_at)
        SELECT $1, a.budget_id, a.window_start, a.window_end, a.threshold, a.limit_usd,
               a.committed, CASE WHEN a.has_webhook THEN 'pending' ELSE 'no_webhook' END,
               CASE WHEN a.has_webhook THEN now() END
        FROM unnest($2::bigint[], $3::timestamptz[], $4::timestamptz[], $5::numeric[],
                    $6::numeric[], $7::numeric[], $8::boolean[])
             AS a(budget_id, window_start, window_end, threshold, limit_usd, committed,
                  has_webhook)
        WHERE NOT EXISTS (
            SELECT FROM budget_alerts AS x
            WHERE x.project_id = $1 AND x.budget_id = a.budget_id AND x.threshold = a.threshold
              AND x.window_start <> a.window_start
              AND x.window_start < COALESCE(a.window_end, 'infinity')
              AND COALESCE(x.window_end, 'infinity') > a.window_start)
        ON CONFLICT (project_id, budget_id, window_start, threshold) DO NOTHING
        RETURNING id
        """,
        project_id,
        [c.budget_id for c in ordered],
        [c.window_start for c in ordered],
        [c.window_end for c in ordered],
        [c.threshold for c in ordered],
        [c.limit_usd for c in ordered],
        [c.committed for c in ordered],
        [c.has_webhook for c in ordered],
    )
    return len(inserted)


async def count_from(conn: DbConnection, budget: Budget, start: datetime) -> None:
    """The budget counts from the window that starts at `start` on (after a time zone change:
    a new budget is inserted with it)."""
    await conn.execute(
        "UPDATE budgets SET counts_from = $3 WHERE project_id = $1 AND id = $2",
        budget.project_id,
        budget.id,
        start,
    )


#: The project's ($1) events that a budget of tags $2 and model $3 counts: `commits.matches`.
_MATCHING: Final = """
    e.project_id = $1 AND e.tags @> $2::text::jsonb
    AND ($3::text IS NULL OR e.model = $3 OR e.matched_model = $3)
"""


async def fill_window(
    conn: DbConnection, budget: Budget, start: datetime, end: datetime | None
) -> list[tuple[datetime, datetime | None, Decimal]]:
    """Write the budget's window [start, end), the first it counts (a new budget's, or the
    current one after a time zone change), with what the project's recorded events in it that
    the budget matches cost (the rules of `commits.matches`, in SQL); and so each later window
    that holds such an event (one stamped up to minutes ahead of the clock, past midnight,
    which ingest would have counted there). Returns the windows written, with what each
    committed."""
    filled: list[tuple[datetime, datetime | None, Decimal]] = []
    scope = (budget.project_id, msgspec.json.encode(budget.tags).decode(), budget.model)
    zone = None
    while True:
        row = await conn.fetchrow(
            f"""
            INSERT INTO budget_windows (project_id, budget_id, window_start, stripe, window_end,
                                        committed, events, unpriced_events,
                                        partially_priced_events)
            SELECT $1, $4, $5, 0, $6, coalesce(sum(e.total_cost), 0), count(*),
                   count(*) FILTER (WHERE e.status = 'unpriced'),
                   count(*) FILTER (WHERE e.status = 'partially_priced')
            FROM usage_events AS e
            WHERE {_MATCHING} AND e.occurred_at >= $5
              AND ($6::timestamptz IS NULL OR e.occurred_at < $6)
            HAVING count(*) > 0
            RETURNING committed
            """,  # noqa: S608  (a constant)
            *scope,
            budget.id,
            start,
            end,
        )
        if row is not None:
            filled.append((start, end, row["committed"]))
        if end is None:
            return filled
        later = await conn.fetchval(
            f"SELECT min(e.occurred_at) FROM usage_events AS e WHERE {_MATCHING}"  # noqa: S608
            " AND e.occurred_at >= $4",
            *scope,
            end,
        )
        if later is None:
            return filled
        zone = zone or await project_time_zone(conn, budget.project_id)
        start, end = window_of(budget.period, zone, later)  # type: ignore[arg-type]


async def held_reservations(
    conn: DbConnection, project_id: int, budget_ids: Sequence[int]
) -> tuple[int, datetime | None]:
    """How many of the project's reservations are held (expired or not, until the sweep ends
    them) on a window of any of `budget_ids`, and when the last of them expires. The SQL of
    reservations is `reservations.store`'s; this one asks about windows, for a change of them."""
    row = await conn.fetchrow(
        """
        SELECT count(*) AS held, max(expires_at) AS last_expiry FROM budget_reservations
        WHERE project_id = $1 AND state = 'held' AND budget_ids && $2::bigint[]
        """,
        project_id,
        list(budget_ids),
    )
    assert row is not None  # an aggregate always returns a row
    return int(row["held"]), row["last_expiry"]


async def delete_windows(conn: DbConnection, project_id: int, budget_ids: Sequence[int]) -> int:
    """Delete every window (all stripes) of the project's `budget_ids`; how many rows went.
    In key order, the one order in which `budget_windows` rows are locked."""
    deleted: int = await conn.fetchval(
        """
        WITH doomed AS (
            SELECT budget_id, window_start, stripe FROM budget_windows
            WHERE project_id = $1 AND budget_id = ANY($2::bigint[])
            ORDER BY budget_id, window_start, stripe
            FOR UPDATE
        ), gone AS (
            DELETE FROM budget_windows AS w USING doomed AS d
            WHERE w.project_id = $1 AND w.budget_id = d.budget_id
              AND w.window_start = d.window_start AND w.stripe = d.stripe
            RETURNING 1
        )
        SELECT count(*) FROM gone
        """,
        project_id,
        list(budget_ids),
    )
    return deleted
