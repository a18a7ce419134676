"""Folding the usage outbox into the hourly rollups: the rollups are the exact sums of the
events, each event is folded once, and a change of the rolled-up tag keys rebuilds them.

Events are recorded through the real ingest path (`UsageRecorder`), so the outbox rows are the
ones ingest writes; the expected rollups are summed in Python from the stored events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest
from structlog.testing import capture_logs

from aiserver.core_db.database import database, require_pool
from aiserver.ledger.access import Access
from aiserver.ledger.jobs import REBUILD_JOB
from aiserver.ledger.projects import change_project
from aiserver.ledger.spend.folding import FoldResult, fold, fold_all
from aiserver.ledger.spend.rebuild import rebuild_rollups
from aiserver.ledger.spend.store.rollups import lock_project

from ..conftest import Settings
from ..support.daily import assert_daily_agrees
from ..support.folding import BACKLOG, FOLD_CLAIM, outbox_backlog, still_folding
from ..support.rollups import (
    Key,
    Sums,
    brute_force,
    outbox_size,
    random_events,
    record,
    stored_events,
    stored_rollups,
)
from ..support.waits import running, waiting_for_a_lock

ROLLUP_TAGS = ("team", "user")


@dataclass
class Ledger:
    pool: asyncpg.Pool
    project_id: int
    slug: str = "p"


@pytest.fixture
async def ledger(settings: Settings) -> AsyncIterator[Ledger]:
    async with database(settings.core):
        pool = require_pool()
        project_id = await pool.fetchval(
            "INSERT INTO projects (slug, name, rollup_tags) VALUES ('p', 'P', $1) RETURNING id",
            list(ROLLUP_TAGS),
        )
        yield Ledger(pool, project_id)


async def another_project(ledger: Ledger, *rollup_tags: str) -> int:
    project_id: int = await ledger.pool.fetchval(
        "INSERT INTO projects (slug, name, rollup_tags) VALUES ('q', 'Q', $1) RETURNING id",
        list(rollup_tags),
    )
    return project_id


async def drop_october(ledger: Ledger) -> None:
    """What retention does to the month of October 2026 (partitions.py): detach, drop."""
    await ledger.pool.execute("ALTER TABLE usage_events DETACH PARTITION usage_events_p202610")
    await ledger.pool.execute("DROP TABLE usage_events_p202610")


async def expected(ledger: Ledger, rollup_tags: tuple[str, ...] = ROLLUP_TAGS) -> dict[Key, Sums]:
    return brute_force(await stored_events(ledger.pool, ledger.project_id), rollup_tags)


async def test_the_rollups_are_the_exact_sums_of_the_events_per_rollup_key(
    ledger: Ledger,
) -> None:
    assert await record(ledger.pool, ledger.project_id, random_events(1, 600)) == 600
    assert await outbox_size(ledger.pool) == 600
    async with ledger.pool.acquire() as conn:
        result = await fold_all(conn)
    rollups = await stored_rollups(ledger.pool, ledger.project_id)
    assert rollups == await expected(ledger)
    assert result == FoldResult(events=600, orphaned=0, rollups=len(rollups), batches=1)
    assert await outbox_size(ledger.pool) == 0
    # the mix covers what the sums must get right
    statuses = {key[4] for key in rollups}
    assert statuses == {"priced", "partially_priced", "unpriced"}
    assert {key[3] for key in rollups} == {"openai", "acme", ""}
    assert {len(key[5]) for key in rollups} == {0, 1, 2}
    assert all(set(dict(key[5])) <= set(ROLLUP_TAGS) for key in rollups)
    assert sum(s.cost for s in rollups.values()) > 0
    assert all(s.cost == 0 for key, s in rollups.items() if key[4] == "unpriced")
    others = {name for s in rollups.values() for name in s.usage_other}
    assert others == {"images", "web_searches", "requests"}  # search_context_size is no count


async def test_a_rollup_of_unpriced_events_counts_them_and_costs_nothing(ledger: Ledger) -> None:
    raws = [
        b'{"id": "a", "model": "mystery", "occurred_at": "2026-11-02T10:15:00Z",'
        b' "usage": {"input_tokens": 10, "output_tokens": 3, "images": 2},'
        b' "tags": {"team": "ads", "env": "prod"}}',
        b'{"id": "b", "model": "mystery", "occurred_at": "2026-11-02T10:59:59Z",'
        b' "usage": {"input_tokens": 5}, "tags": {"team": "ads"}}',
    ]
    await record(ledger.pool, ledger.project_id, raws)
    async with ledger.pool.acquire() as conn:
        await fold_all(conn)
    hour = datetime(2026, 11, 2, 10, tzinfo=UTC)
    assert await stored_rollups(ledger.pool, ledger.project_id) == {
        (ledger.project_id, hour, "mystery", "", "unpriced", (("team", "ads"),)): Sums(
            events=2,
            unpriced_events=2,
            input_tokens=15,
            output_tokens=3,
            usage_other={"images": 2},
            cost=Decimal(0),
        )
    }


async def test_folding_again_does_nothing(ledger: Ledger) -> None:
    await record(ledger.pool, ledger.project_id, random_events(2, 300))
    async with ledger.pool.acquire() as conn:
        await fold_all(conn)
        before = await stored_rollups(conn, ledger.project_id)
        assert await fold_all(conn) == FoldResult(batches=1)
        assert await fold(conn) == FoldResult(batches=1)
    assert await stored_rollups(ledger.pool, ledger.project_id) == before


async def test_batches_and_later_folds_add_to_the_rollups_already_there(ledger: Ledger) -> None:
    events = random_events(3, 900)
    await record(ledger.pool, ledger.project_id, events[:500])
    async with ledger.pool.acquire() as conn:
        first = await fold(conn, limit=120)
        assert (first.events, await outbox_size(conn)) == (120, 380)
        await record(ledger.pool, ledger.project_id, events[500:])
        rest = await fold_all(conn, limit=100)
    assert (rest.events, rest.batches) == (780, 8)  # 7 full batches, then one of 80
    assert await stored_rollups(ledger.pool, ledger.project_id) == await expected(ledger)


async def test_the_rollups_roll_up_only_the_project_s_keys_and_each_project_apart(
    ledger: Ledger,
) -> None:
    other = await another_project(ledger, "feature")
    await record(ledger.pool, ledger.project_id, random_events(4, 200))
    await record(ledger.pool, other, random_events(4, 200))  # the same events, other keys
    async with ledger.pool.acquire() as conn:
        assert (await fold_all(conn)).events == 400
    assert await stored_rollups(ledger.pool, ledger.project_id) == await expected(ledger)
    assert await stored_rollups(ledger.pool, other) == brute_force(
        await stored_events(ledger.pool, other), ("feature",)
    )


async def test_an_outbox_row_whose_month_retention_dropped_is_deleted_and_counted_orphaned(
    ledger: Ledger,
) -> None:
    events = random_events(5, 400)  # from 2026-10-31 20:00 on, into November
    await record(ledger.pool, ledger.project_id, events)
    october = [e for e in await stored_events(ledger.pool, ledger.project_id)
               if e["occurred_at"].month == 10]  # fmt: skip
    assert 0 < len(october) < 400
    await drop_october(ledger)
    async with ledger.pool.acquire() as conn:
        with capture_logs() as logs:
            result = await fold_all(conn)
    assert (result.events, result.orphaned) == (400 - len(october), len(october))
    assert [(e["log_level"], e["orphaned"]) for e in logs] == [("warning", len(october))]
    assert await outbox_size(ledger.pool) == 0
    assert await stored_rollups(ledger.pool, ledger.project_id) == await expected(ledger)


async def test_a_fold_leaves_the_rows_of_a_project_whose_rollups_are_being_rebuilt(
    ledger: Ledger,
) -> None:
    other = await another_project(ledger)
    await record(ledger.pool, ledger.project_id, random_events(6, 100))
    await record(ledger.pool, other, random_events(7, 50))
    async with ledger.pool.acquire() as rebuilding, ledger.pool.acquire() as folding:
        async with rebuilding.transaction():
            await lock_project(rebuilding, ledger.project_id)
            assert (await fold_all(folding)).events == 50  # q's only; p's wait
            assert await outbox_size(folding) == 100
        assert (await fold_all(folding)).events == 100
    assert await stored_rollups(ledger.pool, ledger.project_id) == await expected(ledger)


async def rebuild_after_change(ledger: Ledger, tags: list[str]) -> list[tuple[int, str]]:
    """Change the project's rolled-up keys as the API does, and run the rebuild it enqueued."""
    enqueued: list[tuple[int, str]] = []

    async def enqueue(project_id: int, job_id: str) -> None:
        enqueued.append((project_id, job_id))

    await change_project(
        ledger.pool, Access.operator(), ledger.slug, rollup_tags=tags, enqueue_rebuild=enqueue
    )
    for project_id, _ in enqueued:
        async with ledger.pool.acquire() as conn:
            await rebuild_rollups(conn, project_id)
    return enqueued


async def test_changing_the_rolled_up_keys_rebuilds_the_rollups_with_the_new_keys(
    ledger: Ledger,
) -> None:
    events = random_events(8, 600)
    await record(ledger.pool, ledger.project_id, events[:500])
    async with ledger.pool.acquire() as conn:
        await fold_all(conn)
    await record(ledger.pool, ledger.project_id, events[500:])  # not folded yet
    (job,) = await rebuild_after_change(ledger, ["feature", "team"])
    assert job[0] == ledger.project_id
    assert job[1].startswith(f"{REBUILD_JOB}:{ledger.project_id}:")
    assert await outbox_size(ledger.pool) == 100  # the rebuild left them to the fold
    async with ledger.pool.acquire() as conn:
        assert (await fold_all(conn)).events == 100
    assert await stored_rollups(ledger.pool, ledger.project_id) == await expected(
        ledger, ("feature", "team")
    )


async def test_a_change_that_keeps_the_same_keys_rebuilds_nothing(ledger: Ledger) -> None:
    assert await rebuild_after_change(ledger, ["user", "team"]) == []


async def test_hours_older_than_every_retained_event_keep_their_rollups_re_keyed(
    ledger: Ledger,
) -> None:
    await record(ledger.pool, ledger.project_id, random_events(9, 600))
    async with ledger.pool.acquire() as conn:
        await fold_all(conn)
    events = await stored_events(ledger.pool, ledger.project_id)
    october = [e for e in events if e["occurred_at"].month == 10]
    november = [e for e in events if e["occurred_at"].month == 11]
    await drop_october(ledger)
    # user is dropped; feature is added, and unknown for the dropped October events
    await rebuild_after_change(ledger, ["team", "feature"])
    assert await stored_rollups(ledger.pool, ledger.project_id) == {
        **brute_force(october, ["team"]),
        **brute_force(november, ["team", "feature"]),
    }


async def test_rebuilding_twice_gives_the_same_rollups(ledger: Ledger) -> None:
    await record(ledger.pool, ledger.project_id, random_events(10, 300))
    async with ledger.pool.acquire() as conn:
        await fold_all(conn)
        await ledger.pool.execute("UPDATE projects SET rollup_tags = '{env}'")
        first = await rebuild_rollups(conn, ledger.project_id)
        once = await stored_rollups(conn, ledger.project_id)
        second = await rebuild_rollups(conn, ledger.project_id)
    assert first == second
    assert first is not None
    assert (first.events, first.kept, first.rollup_tags) == (300, 0, ("env",))
    assert once == await stored_rollups(ledger.pool, ledger.project_id)
    assert once == await expected(ledger, ("env",))


async def test_a_rebuild_that_deadlocks_with_a_time_zone_change_is_made_again(
    ledger: Ledger, settings: Settings
) -> None:
    """A zone change takes the project's row FOR UPDATE and then its rollup lock; a rebuild
    takes them the other way round. Here the rebuild waits first, so PostgreSQL breaks the
    deadlock by failing the rebuild: it runs again once the change is through."""
    await record(ledger.pool, ledger.project_id, random_events(11, 50))
    async with ledger.pool.acquire() as conn:
        await fold_all(conn)
    changing = await asyncpg.connect(settings.core.database_url)
    try:
        await changing.execute("SET deadlock_timeout = '20s'")  # the rebuild looks first
        async with ledger.pool.acquire() as conn:
            with capture_logs() as logs:
                async with changing.transaction():  # a zone change's first steps, one by one
                    await changing.execute(
                        "SELECT 1 FROM projects WHERE id = $1 FOR UPDATE", ledger.project_id
                    )
                    rebuilding = asyncio.create_task(rebuild_rollups(conn, ledger.project_id))
                    await waiting_for_a_lock(ledger.pool, "SELECT rollup_tags FROM projects")
                    # the deadlock: PostgreSQL fails the rebuild, whose lock this then gets
                    await lock_project(changing, ledger.project_id)
                    assert not rebuilding.done()  # tried again: waits for the change's COMMIT
                result = await asyncio.wait_for(rebuilding, 30)
    finally:
        await changing.close()
    assert result is not None
    assert result.events == 50
    assert [e["event"] for e in logs] == [
        "rollup rebuild deadlocked; trying again",
        "rollups rebuilt",
    ]
    assert await stored_rollups(ledger.pool, ledger.project_id) == await expected(
        ledger, ROLLUP_TAGS
    )


async def test_a_fold_whose_project_changed_zone_mid_statement_folds_again_with_the_new_one(
    ledger: Ledger, settings: Settings
) -> None:
    """A fold statement reads the projects as of its snapshot, and takes a project's rollup lock
    only when its claim reaches that project's rows. A time zone change that commits in between
    (it holds the lock only while it sums the daily rollups again) would leave daily rows of the
    old zone behind it: the fold sees that the project changed, rolls back and folds again."""
    backlog = BACKLOG  # written before p's events: ahead of them on disk too
    await outbox_backlog(ledger.pool, backlog)
    recorded = await record(ledger.pool, ledger.project_id, random_events(12, 40))
    folder = await asyncpg.connect(settings.core.database_url)
    try:
        await fold(folder, limit=0)  # prepared (and its types looked up) before the clock
        with capture_logs() as logs:
            folding = asyncio.create_task(fold(folder, limit=backlog + recorded))
            await running(ledger.pool, folder, FOLD_CLAIM)
            await change_project(ledger.pool, Access.operator(), "p", time_zone="Asia/Kolkata")
            await still_folding(ledger.pool, folder)
            result = await asyncio.wait_for(folding, 60)
    finally:
        await folder.close()
    assert (result.events, result.orphaned) == (recorded, backlog)
    assert "a project changed while its usage was folded; folding again" in [
        e["event"] for e in logs
    ]
    assert await assert_daily_agrees(ledger.pool) > 0  # every day one of Kolkata's
    assert await stored_rollups(ledger.pool, ledger.project_id) == await expected(
        ledger, ROLLUP_TAGS
    )


async def test_a_rebuild_of_a_project_that_is_gone_does_nothing(ledger: Ledger) -> None:
    async with ledger.pool.acquire() as conn:
        assert await rebuild_rollups(conn, 987654) is None
