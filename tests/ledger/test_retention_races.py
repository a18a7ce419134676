"""Race review: retention dropping months of `usage_events` while ingest (a backfill), the folds
and reprices run. Each race is pinned with a lock held by another session, not with sleeps."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg

from aiserver.core_db.locks import advisory_lock_key
from aiserver.ledger.settings import LedgerSettings
from aiserver.ledger.spend.folding import fold_all
from aiserver.ledger.usage.ingest import UsageRecorder
from aiserver.ledger.usage.partitions import maintain_partitions, month_of, partition_name

from ..conftest import Settings
from ..reliability.harness import eventually
from .test_ingest import _WAITING_FOR_ADVISORY as WAITING_FOR_ADVISORY
from .test_ingest import ledger
from .test_retention_agreement import NOW, OLD, RECENT, _partitions, maintained, record, stored

__all__ = ["ledger"]  # the fixture: a database with one project, its pool and project id

_WAITING_FOR_KEY = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock'
  AND wait_event = 'transactionid' AND query ILIKE '%usage_idempotency%'
"""


async def test_a_month_past_a_retention_shortened_meanwhile_gets_no_partition_from_ingest(
    ledger: tuple[asyncpg.Pool, int], settings: Settings
) -> None:
    """An ingest checks a backfill against the retention written down (400 days), then makes
    its month's partition, outside its transaction. A maintenance that shortens the retention
    to 30 days in between neither waits for it (no ingest transaction is open) nor sees the
    month (it does not exist yet): the ingest then makes the partition of a month the
    retention drops, and refuses its event in its transaction. Commit a50cead set out to stop
    exactly this: the refused event's month is left an empty partition, out of retention,
    until the next maintenance drops it again."""
    pool, _ = ledger
    await maintained(pool, 400)
    month = partition_name(month_of(OLD))
    assert month not in await _partitions(pool)
    recorder = UsageRecorder(LedgerSettings(usage_retention_days=400))
    holder = await asyncpg.connect(settings.core.database_url)
    observer = await asyncpg.connect(settings.core.database_url)
    try:
        # the month's own creation lock (`create_partition`): the ingest has checked its event
        # against 400 days and waits here, just before it makes the partition
        await holder.execute("SELECT pg_advisory_lock($1)", advisory_lock_key(f"ledger:{month}"))
        backfill = asyncio.create_task(record(ledger, recorder, ("old", OLD)))
        await eventually(lambda: observer.fetchval(WAITING_FOR_ADVISORY), timeout=30)
        await maintained(pool, 30)  # the task runner now keeps 30 days
        assert not backfill.done()
        await holder.execute("SELECT pg_advisory_unlock_all()")
        (old,) = await asyncio.wait_for(backfill, 30)
    finally:
        await holder.close()
        await observer.close()
    assert old.status == "invalid"
    assert "older than the retention of 30 days" in old.problem["detail"]
    assert await stored(pool) == []
    assert month not in await _partitions(pool), (
        f"{month} was made after the maintenance that keeps 30 days ran: a month that retention "
        "drops, made for an event that ingest then refused"
    )


async def test_a_backfill_in_flight_when_the_retention_is_shortened_is_folded_before_its_drop(
    ledger: tuple[asyncpg.Pool, int], settings: Settings
) -> None:
    """A backfill's transaction read 400 days and is writing when a maintenance shortens the
    retention to 30: the maintenance waits for it (its 2xx is durable), then finds the
    event's outbox row and puts the month's drop off; the folds count it in the rollups, and
    only then does the month go. The answer `recorded` is never for an event that nothing
    keeps: the rollups, which outlive the events, have it."""
    pool, project_id = ledger
    await maintained(pool, 400)
    recorder = UsageRecorder(LedgerSettings(usage_retention_days=400))
    (warm,) = await record(ledger, recorder, ("warm", OLD))  # the old month exists, known
    assert warm.status == "recorded"
    async with pool.acquire() as conn:
        await fold_all(conn)
    holder = await asyncpg.connect(settings.core.database_url)
    observer = await asyncpg.connect(settings.core.database_url)
    tx = holder.transaction()
    try:
        # another writer of key "old" not committed: the ingest's claim waits for it, inside
        # the ingest's transaction (after it read the retention of 400 days)
        await tx.start()
        await holder.execute(
            "INSERT INTO usage_idempotency (project_id, key, payload_hash, event_id, occurred_at)"
            " VALUES ($1, 'old', decode(repeat('00', 16), 'hex'), -1, $2)",
            project_id,
            OLD,
        )
        backfill = asyncio.create_task(record(ledger, recorder, ("old", OLD), ("new", RECENT)))
        await eventually(lambda: observer.fetchval(_WAITING_FOR_KEY), timeout=30)
        async with pool.acquire() as conn:
            shortening = asyncio.create_task(maintain_partitions(conn, retention_days=30, now=NOW))
            await eventually(lambda: observer.fetchval(WAITING_FOR_ADVISORY), timeout=30)
            assert not shortening.done()  # it waits for the ingest in flight
            await tx.rollback()
            results = await asyncio.wait_for(backfill, 30)
            run = await asyncio.wait_for(shortening, 30)
    finally:
        await holder.close()
        await observer.close()
    assert [r.status for r in results] == ["recorded", "recorded"]
    month = partition_name(month_of(OLD))
    assert run.unfolded == (month,)
    assert month not in run.dropped
    assert await stored(pool) == ["new", "old", "warm"]  # the old month is kept for now
    async with pool.acquire() as conn:
        assert (await fold_all(conn)).events == 2
        again = await maintain_partitions(conn, retention_days=30, now=NOW)
        assert again.dropped == (month,)
        counted = await conn.fetchval(
            "SELECT sum(events) FROM usage_rollups WHERE hour < $1", NOW - timedelta(days=31)
        )
    assert counted == 2  # warm and old: gone from the events, counted in the rollups
    assert await stored(pool) == ["new"]
