"""Ingest never records an event that the partition maintenance drops: it refuses an event older
than the smaller of its own USAGE_RETENTION_DAYS and the retention the maintenance last wrote
down (`usage_retention`). Before, an API set to keep longer than the task runner answered
`recorded` for an event whose month the next maintenance run dropped."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from aiserver.ledger.budgets import store as budget_store
from aiserver.ledger.settings import LedgerSettings
from aiserver.ledger.spend.folding import fold_all
from aiserver.ledger.usage import ingest
from aiserver.ledger.usage.bodies import decode_items
from aiserver.ledger.usage.ingest import UsageRecorder
from aiserver.ledger.usage.partitions import maintain_partitions

from ..conftest import Settings
from ..reliability.harness import eventually
from .test_ingest import _WAITING_FOR_ADVISORY as WAITING_FOR_ADVISORY
from .test_ingest import catalog, ledger, raw

__all__ = ["ledger"]  # the fixture: a database with one project, its pool and project id

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=100)
RECENT = NOW - timedelta(days=10)


async def maintained(pool: asyncpg.Pool, retention_days: int) -> None:
    """One run of the task runner's partition maintenance, kept by `retention_days`."""
    async with pool.acquire() as conn:
        assert (await maintain_partitions(conn, retention_days=retention_days, now=NOW)).ran


async def record(
    ledger: tuple[asyncpg.Pool, int], recorder: UsageRecorder, *keys_and_times: tuple[str, datetime]
) -> list[Any]:
    pool, project_id = ledger
    raws: Sequence[bytes] = [raw(key, occurred_at=at.isoformat()) for key, at in keys_and_times]
    report = await recorder.record(
        pool, project_id, decode_items(raws), catalog=catalog(), raws=raws, now=NOW
    )
    return report.results


async def stored(pool: asyncpg.Pool) -> list[str]:
    rows = await pool.fetch("SELECT event_key FROM usage_events ORDER BY event_key")
    return [r["event_key"] for r in rows]


async def test_an_api_that_keeps_longer_refuses_what_the_task_runner_drops(
    ledger: tuple[asyncpg.Pool, int],
) -> None:
    pool, _ = ledger
    await maintained(pool, 30)
    assert await pool.fetchval("SELECT retention_days FROM usage_retention") == 30
    recorder = UsageRecorder(LedgerSettings(usage_retention_days=400))
    with capture_logs() as logs:
        old, recent = await record(ledger, recorder, ("old", OLD), ("recent", RECENT))
        again = await record(ledger, recorder, ("old-2", OLD))
    assert (old.status, recent.status, again[0].status) == ("invalid", "recorded", "invalid")
    assert "older than the retention of 30 days" in old.problem["detail"]
    assert recorder.retention == timedelta(days=30)
    # said once, when the process learned it, with both values
    warned = [e for e in logs if e["log_level"] == "warning"]
    assert [(e["usage_retention_days"], e["partitions_kept_days"]) for e in warned] == [(400, 30)]
    # nothing recorded is lost to the next run: what it drops was never answered `recorded`
    await maintained(pool, 30)
    assert await stored(pool) == ["recent"]


async def test_without_a_recorded_retention_or_with_a_longer_one_the_api_s_own_holds(
    ledger: tuple[asyncpg.Pool, int],
) -> None:
    pool, _ = ledger
    # no maintenance has run: the API's own retention (400 days) is all there is
    (first,) = await record(ledger, UsageRecorder(LedgerSettings(usage_retention_days=400)),
                            ("before-any-run", OLD))  # fmt: skip
    assert first.status == "recorded"
    # the task runner keeps longer than this API: the API's shorter retention holds
    await maintained(pool, 400)
    short = UsageRecorder(LedgerSettings(usage_retention_days=30))
    old, recent = await record(ledger, short, ("old", OLD), ("recent", RECENT))
    assert (old.status, recent.status) == ("invalid", "recorded")
    assert short.retention == timedelta(days=30)
    assert await stored(pool) == ["before-any-run", "recent"]


async def test_a_retention_shortened_while_the_process_runs_is_taken_at_the_next_request(
    ledger: tuple[asyncpg.Pool, int],
) -> None:
    pool, _ = ledger
    await maintained(pool, 400)
    recorder = UsageRecorder(LedgerSettings(usage_retention_days=400))
    (first,) = await record(ledger, recorder, ("first", OLD))
    assert first.status == "recorded"
    async with pool.acquire() as conn:
        await fold_all(conn)  # as the task runner does every 5 s: a month goes once it is folded
    await maintained(pool, 30)  # the task runner now keeps 30 days, and dropped first's month
    assert await stored(pool) == []
    # the process still holds 400 days: its transaction reads 30 and checks the batch again
    old, recent = await record(ledger, recorder, ("old", OLD), ("recent", RECENT))
    assert (old.status, recent.status) == ("invalid", "recorded")
    assert await stored(pool) == ["recent"]


async def test_two_requests_checked_against_a_longer_retention_are_each_checked_again(
    ledger: tuple[asyncpg.Pool, int],
) -> None:
    """A new process has read no retention yet: two requests at once are both checked against
    its own 400 days before either transaction reads 30. The first to read it learns it for
    the process; the second must still check its own events against it."""
    pool, _ = ledger
    await maintained(pool, 30)
    recorder = UsageRecorder(LedgerSettings(usage_retention_days=400))
    first, second = await asyncio.gather(
        record(ledger, recorder, ("old-a", OLD), ("recent-a", RECENT)),
        record(ledger, recorder, ("old-b", OLD), ("recent-b", RECENT)),
    )
    assert [r.status for r in (*first, *second)] == ["invalid", "recorded"] * 2
    assert await stored(pool) == ["recent-a", "recent-b"]


async def test_a_maintenance_that_shortens_the_retention_waits_for_the_ingests_in_flight(
    ledger: tuple[asyncpg.Pool, int], settings: Settings
) -> None:
    """An ingest transaction that read the longer retention may still write into a month the
    shorter one drops: the maintenance writes the shorter one down, then waits for it to end
    before it drops anything (and later ingests read the shorter one)."""
    pool, project_id = ledger
    await maintained(pool, 400)
    observer = await asyncpg.connect(settings.core.database_url)
    try:
        async with pool.acquire() as ingest, ingest.transaction():
            start = await budget_store.ingest_start(ingest, project_id)
            assert start.retention_days == 400
            shortening = asyncio.create_task(maintained(pool, 30))
            await eventually(lambda: observer.fetchval(WAITING_FOR_ADVISORY), timeout=30)
            assert not shortening.done()
            assert await observer.fetchval("SELECT retention_days FROM usage_retention") == 30
        await asyncio.wait_for(shortening, 30)
    finally:
        await observer.close()
    async with pool.acquire() as ingest, ingest.transaction():
        assert (await budget_store.ingest_start(ingest, project_id)).retention_days == 30


async def test_a_changed_retention_holds_at_once_and_a_task_runner_says_it_changed(
    ledger: tuple[asyncpg.Pool, int],
) -> None:
    """An operator who raises the retention has ingest accept the older events at the next
    run; task runners that disagree each say so (the last one's holds, as it is the last to
    have dropped)."""
    pool, _ = ledger
    await maintained(pool, 30)
    with capture_logs() as logs:
        await maintained(pool, 400)  # raised, or another task runner set to keep longer
        await maintained(pool, 400)  # said once: the value is the same now
    assert await pool.fetchval("SELECT retention_days FROM usage_retention") == 400
    warned = [e for e in logs if e["log_level"] == "warning"]
    assert [(e["retention_days"], e["previous_retention_days"]) for e in warned] == [(400, 30)]
    (old,) = await record(ledger, UsageRecorder(LedgerSettings(usage_retention_days=400)),
                          ("old", OLD))  # fmt: skip
    assert old.status == "recorded"


async def test_a_retention_grown_back_is_read_again_though_no_write_would_read_it(
    ledger: tuple[asyncpg.Pool, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request whose events the process's last-read retention all refuses reaches no write
    (which would read it): past KEPT_FRESH_S, the process reads it again first."""
    pool, _ = ledger
    await maintained(pool, 30)
    recorder = UsageRecorder(LedgerSettings(usage_retention_days=400))
    (recent,) = await record(ledger, recorder, ("recent", RECENT))
    assert recorder.retention == timedelta(days=30)
    await pool.execute("UPDATE usage_retention SET retention_days = 400")
    (refused,) = await record(ledger, recorder, ("old", OLD))  # within KEPT_FRESH_S
    assert refused.status == "invalid"
    monkeypatch.setattr(ingest, "KEPT_FRESH_S", 0.0)
    (again,) = await record(ledger, recorder, ("old", OLD))
    assert (recent.status, again.status) == ("recorded", "recorded")
    assert recorder.retention == timedelta(days=400)


async def test_an_event_refused_for_the_retention_leaves_no_partition_behind(
    ledger: tuple[asyncpg.Pool, int],
) -> None:
    """A process that keeps longer than the maintenance (a shell's USAGE_RETENTION_DAYS, say)
    learns the shorter retention before it makes a month's partition: the month of an event it
    then refuses gets none (it was made, empty, and dropped by the next maintenance)."""
    pool, _ = ledger
    await maintained(pool, 30)
    before = await _partitions(pool)
    recorder = UsageRecorder(LedgerSettings(usage_retention_days=400))
    (old,) = await record(ledger, recorder, ("old", OLD))
    assert old.status == "invalid"
    assert "older than the retention of 30 days" in old.problem["detail"]
    assert await _partitions(pool) == before
    assert f"usage_events_p{OLD:%Y%m}" not in before


async def _partitions(pool: asyncpg.Pool) -> list[str]:
    rows = await pool.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'usage_events'::regclass ORDER BY 1"
    )
    return [r["relname"] for r in rows]
