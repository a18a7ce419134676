"""What waits in the ledger, for monitoring: the folding's oldest outbox row, the outbox's size
(counted up to a cap), the repricing runs by state. Every statement is bounded whatever the
tables hold."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from aiserver.core_db.connections import DbConnection

# The oldest outbox row of each project (by its identity, the order rows were written) through
# the outbox's primary key (project_id, id), its event's received_at through the events' primary
# key, and the oldest of those.
_FOLDING_LAG: Final = """
    SELECT coalesce(extract(epoch FROM clock_timestamp() - min(e.received_at)), 0)::float8
    FROM projects p
    CROSS JOIN LATERAL (
        SELECT o.event_id, o.occurred_at FROM usage_outbox o
        WHERE o.project_id = p.id ORDER BY o.id LIMIT 1
    ) oldest
    JOIN usage_events e
      ON e.project_id = p.id AND e.id = oldest.event_id AND e.occurred_at = oldest.occurred_at
"""


async def limit_statements(conn: DbConnection, milliseconds: int) -> None:
    """Bound every statement of the current transaction (a lock wait included)."""
    await conn.execute(f"SET LOCAL statement_timeout = {int(milliseconds)}")


async def folding_lag_seconds(conn: DbConnection) -> float:
    """The age of the oldest outbox row's event (by received_at); 0 when none waits."""
    lag: float = await conn.fetchval(_FOLDING_LAG)
    return lag


async def outbox_rows(conn: DbConnection, cap: int) -> int:
    """The outbox rows waiting to be folded, counted up to `cap`."""
    rows: int = await conn.fetchval(
        "SELECT count(*) FROM (SELECT 1 FROM usage_outbox LIMIT $1) r", cap
    )
    return rows


async def reprice_runs(conn: DbConnection) -> dict[str, int]:
    """The repricing runs by state (the states that have any)."""
    rows = await conn.fetch("SELECT state, count(*) FROM usage_reprice_runs GROUP BY state")
    return {row["state"]: row["count"] for row in rows}
