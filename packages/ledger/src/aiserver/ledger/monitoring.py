"""What the ledger has left to do, read for monitoring: how far the rollups' folding is behind,
how many outbox rows wait, how many repricing runs are in each state, how many budget alerts
wait to be delivered and how many were given up (`failed`).

    backlog = await read_backlog(pool, timeout=2.0)

Every query is bounded, whatever the tables hold: the oldest outbox row is found per project
through the outbox's primary key (project_id, id), and its event through the events' primary
key; the rows waiting are counted up to `OUTBOX_COUNT_CAP`; repricing runs are few (one per
catalog change and request), and so are budget alerts (one per threshold a window crosses).
The whole read has a timeout, on the server (statement_timeout) and on the client.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

import msgspec

from aiserver.ledger.budgets.alerts import store as alert_store
from aiserver.ledger.usage.store import backlog as store

if TYPE_CHECKING:
    import asyncpg

#: The outbox is counted up to this many rows: a backlog this large is already an alarm, and a
#: count of all of it would make each scrape as slow as the backlog is long.
OUTBOX_COUNT_CAP: Final = 100_000
REPRICE_STATES: Final = ("queued", "running", "done", "failed")


class LedgerBacklog(msgspec.Struct, frozen=True, kw_only=True):
    folding_lag_seconds: float  # 0 when nothing waits to be folded
    outbox_rows: int  # at most OUTBOX_COUNT_CAP
    reprice_runs: dict[str, int]  # every state of REPRICE_STATES
    budget_alerts: dict[str, int]  # pending and failed (given up), every one present


async def read_backlog(pool: asyncpg.Pool, *, timeout: float) -> LedgerBacklog:
    """The ledger's backlog now; `TimeoutError` past `timeout` seconds, or the database's
    error."""
    async with asyncio.timeout(timeout), pool.acquire() as conn, conn.transaction(readonly=True):
        await store.limit_statements(conn, int(timeout * 1000))
        lag = await store.folding_lag_seconds(conn)
        rows = await store.outbox_rows(conn, OUTBOX_COUNT_CAP)
        runs = dict.fromkeys(REPRICE_STATES, 0) | await store.reprice_runs(conn)
        alerts = await alert_store.count_alerts(conn)
    return LedgerBacklog(
        folding_lag_seconds=lag, outbox_rows=rows, reprice_runs=runs, budget_alerts=alerts
    )
