"""All SQL on `budget_alerts` and `webhook_deliveries`: claiming the alerts that are due,
recording each attempt's outcome, and reading a project's alerts with their deliveries. Every
statement that reads for a key names its project."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

import msgspec

if TYPE_CHECKING:
    from aiserver.core_db.connections import DbConnection


class Claim(msgspec.Struct, frozen=True, kw_only=True):
    """An alert claimed for one delivery attempt, with what the attempt needs."""

    project_id: int
    project_slug: str
    alert_id: int
    budget_id: int
    budget_name: str
    budget_period: str
    window_start: datetime
    window_end: datetime | None
    threshold: Decimal
    limit_usd: Decimal
    committed: Decimal
    crossed_at: datetime
    attempt: int
    delivery_id: int
    url: str
    secret: str  # sealed (`aiserver.ledger.webhooks.sealing`) unless `secret_key_id` is None
    secret_key_id: str | None
    # the secret the current one replaced, while it signs beside it (sealed the same way)
    previous_secret: str | None = None
    previous_secret_key_id: str | None = None


async def claim_due(conn: DbConnection, now: datetime, limit: int, lease: timedelta) -> list[Claim]:
    """Claim up to `limit` alerts due at `now` (oldest due first), in the caller's transaction:
    each gets its next attempt number, a `webhook_deliveries` row for it, and a lease (its
    `next_attempt_at` moves to `now + lease`), so that no other worker claims it while this one
    sends. Rows another transaction is claiming are skipped, not waited for. An alert whose
    budget has no webhook any more is set `no_webhook`, without an attempt."""
    rows = await conn.fetch(
        """
        WITH due AS (
            SELECT project_id, id FROM budget_alerts
            WHERE state = 'pending' AND next_attempt_at <= $1
            ORDER BY next_attempt_at, project_id, id
            LIMIT $2
            FOR UPDATE SKIP LOCKED
        )
        UPDATE budget_alerts AS a
        SET attempts = a.attempts + CASE WHEN b.webhook_url IS NULL THEN 0 ELSE 1 END,
            state = CASE WHEN b.webhook_url IS NULL THEN 'no_webhook' ELSE a.state END,
            next_attempt_at = CASE WHEN b.webhook_url IS NULL THEN NULL ELSE $1 + $3 END
        FROM due, budgets AS b, projects AS p
        WHERE a.project_id = due.project_id AND a.id = due.id
          AND b.project_id = a.project_id AND b.id = a.budget_id AND p.id = a.project_id
        RETURNING a.project_id, p.slug AS project_slug, a.id AS alert_id, a.budget_id,
                  b.name AS budget_name, b.period AS budget_period, a.window_start,
                  a.window_end, a.threshold, a.limit_usd, a.committed, a.crossed_at,
                  a.attempts AS attempt, b.webhook_url AS url, b.webhook_secret AS secret,
                  b.webhook_secret_key_id AS secret_key_id,
                  CASE WHEN b.webhook_previous_until > $1 THEN b.webhook_previous_secret END
                      AS previous_secret,
                  b.webhook_previous_secret_key_id AS previous_secret_key_id
        """,
        now,
        limit,
        lease,
    )
    sending = sorted((r for r in rows if r["url"] is not None), key=lambda r: r["alert_id"])
    if not sending:
        return []
    ids = await conn.fetch(
        """
        INSERT INTO webhook_deliveries (project_id, alert_id, attempt, attempted_at, url)
        SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::timestamptz[],
                             $5::text[])
        RETURNING alert_id, id
        """,
        [r["project_id"] for r in sending],
        [r["alert_id"] for r in sending],
        [r["attempt"] for r in sending],
        [now] * len(sending),
        [r["url"] for r in sending],
    )
    delivery = {r["alert_id"]: r["id"] for r in ids}
    return [Claim(**dict(r), delivery_id=delivery[r["alert_id"]]) for r in sending]


async def record_attempt(
    conn: DbConnection,
    claim: Claim,
    *,
    status_code: int | None,
    error: str | None,
    duration_ms: Decimal,
    state: str,
    next_attempt_at: datetime | None,
    delivered_at: datetime | None,
) -> bool:
    """Write an attempt's outcome on its delivery row and move its alert on (`pending` with
    the next attempt's time, `delivered` or `failed`). The alert moves only while the claim is
    still this attempt's: if the lease ran out and another worker claimed a later attempt,
    that one decides. Returns whether the alert moved."""
    await conn.execute(
        "UPDATE webhook_deliveries SET status_code = $3, error = $4, duration_ms = $5"
        " WHERE project_id = $1 AND id = $2",
        claim.project_id,
        claim.delivery_id,
        status_code,
        error,
        duration_ms,
    )
    moved = await conn.fetchval(
        """
        UPDATE budget_alerts SET state = $4, next_attempt_at = $5, delivered_at = $6
        WHERE project_id = $1 AND id = $2 AND attempts = $3 AND state = 'pending'
        RETURNING true
        """,
        claim.project_id,
        claim.alert_id,
        claim.attempt,
        state,
        next_attempt_at,
        delivered_at,
    )
    return bool(moved)


async def budget_exists(conn: DbConnection, project_id: int, budget_id: int) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT true FROM budgets WHERE project_id = $1 AND id = $2", project_id, budget_id
        )
    )


async def count_budget_alerts(conn: DbConnection, project_id: int, budget_id: int) -> int:
    counted: int = await conn.fetchval(
        "SELECT count(*) FROM budget_alerts WHERE project_id = $1 AND budget_id = $2",
        project_id,
        budget_id,
    )
    return counted


async def read_alerts(
    conn: DbConnection,
    project_id: int,
    budget_id: int | None,
    limit: int,
    before: int | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A project's alerts (of one budget, or all), newest first, with ids below `before`; and
    their deliveries in attempt order."""
    alerts = await conn.fetch(
        """
        SELECT id, budget_id, window_start, window_end, threshold, limit_usd, committed,
               crossed_at, state, attempts, next_attempt_at, delivered_at
        FROM budget_alerts
        WHERE project_id = $1 AND ($2::bigint IS NULL OR budget_id = $2)
          AND ($3::bigint IS NULL OR id < $3)
        ORDER BY id DESC
        LIMIT $4
        """,
        project_id,
        budget_id,
        before,
        limit,
    )
    deliveries = await conn.fetch(
        """
        SELECT id, alert_id, attempt, attempted_at, url, status_code, error, duration_ms
        FROM webhook_deliveries
        WHERE project_id = $1 AND alert_id = ANY($2::bigint[])
        ORDER BY alert_id, attempt, id
        """,
        project_id,
        [a["id"] for a in alerts],
    )
    return [dict(a) for a in alerts], [dict(d) for d in deliveries]


async def release_claims(
    conn: DbConnection, claims: Sequence[Claim], errors: Sequence[str], now: datetime
) -> int:
    """Record the attempts of `claims` that a stopping runner did not finish (`errors`, one per
    claim, on delivery rows that hold no outcome yet), and make their alerts due at `now`
    instead of at the end of their lease: only alerts still claimed by that attempt move.
    Returns how many moved."""
    await conn.execute(
        """
        UPDATE webhook_deliveries AS d SET error = u.error
        FROM unnest($1::bigint[], $2::bigint[], $3::text[]) AS u(project_id, id, error)
        WHERE d.project_id = u.project_id AND d.id = u.id
          AND d.status_code IS NULL AND d.error IS NULL
        """,
        [c.project_id for c in claims],
        [c.delivery_id for c in claims],
        list(errors),
    )
    moved: int = await conn.fetchval(
        """
        WITH moved AS (
            UPDATE budget_alerts AS a SET next_attempt_at = $4
            FROM unnest($1::bigint[], $2::bigint[], $3::int[]) AS u(project_id, id, attempt)
            WHERE a.project_id = u.project_id AND a.id = u.id AND a.attempts = u.attempt
              AND a.state = 'pending'
            RETURNING 1
        )
        SELECT count(*) FROM moved
        """,
        [c.project_id for c in claims],
        [c.alert_id for c in claims],
        [c.attempt for c in claims],
        now,
    )
    return moved


#: The states `count_alerts` counts: those an operator acts on (a backlog of deliveries; the
#: alerts given up). `delivered` and `no_webhook` only grow, and are not counted.
WATCHED_STATES: Final = ("pending", "failed")


async def count_alerts(conn: DbConnection) -> dict[str, int]:
    """How many alerts of every project are in each of `WATCHED_STATES` (0 for none). Alerts
    are few (one per threshold a budget's window crosses), as repricing runs are."""
    rows = await conn.fetch(
        "SELECT state, count(*) FROM budget_alerts WHERE state = ANY($1::text[]) GROUP BY state",
        list(WATCHED_STATES),
    )
    return dict.fromkeys(WATCHED_STATES, 0) | {row["state"]: row["count"] for row in rows}
