"""A project's gate (`project_store.PROJECT_GATE`): what writes the project's usage or
reservations passes it shared; archiving the project, changing its time zone, creating or
deleting a budget and changing a budget's levels close it. The point is the order: a change
waits for the writers already through, and a writer that comes after the change waits for it.

Before the gate, the changes waited with a row lock (FOR UPDATE) on the project's row, which
ingest takes FOR KEY SHARE; row locks do not queue, so each new ingest went ahead of the waiting
change, and on a project whose usage never paused the change waited until its timeout (measured
by hand: 2 to 5 s and more with eight overlapping writers, 50 ms with the gate). These tests pin
a writer inside its transaction, start the change, then a second writer, and require that the
second writer waits for the change and sees what it committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from aiserver.ledger import projects
from aiserver.ledger.access import Access
from aiserver.ledger.budgets import service
from aiserver.ledger.budgets import store as budget_store
from aiserver.ledger.budgets.reservations import release, reserve
from aiserver.ledger.budgets.reservations import store as reservation_store
from aiserver.ledger.errors import ProjectArchived

from ..support.waits import WAIT_S, waiting_for_a_lock
from .test_reservations import NOW, _project, budget
from .test_reservations import pool as pool  # the fixture

_WAITING = (
    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
    " AND datname = current_database() AND pid = $1"
)


@pytest.fixture
async def access(pool: asyncpg.Pool) -> Access:
    return await _project(pool, "p", "UTC")


async def _waits(pool: asyncpg.Pool, conn: asyncpg.Connection, task: asyncio.Task[Any]) -> None:
    """Until `conn`'s session waits for a lock; fails if `task`, the statement it runs,
    finishes first (it went ahead of what it should have waited for)."""
    async with asyncio.timeout(WAIT_S):
        while not await pool.fetchval(_WAITING, conn.get_server_pid()):
            if task.done():
                raise AssertionError(
                    f"the writer that came after the change did not wait for it: {task.result()}"
                )
            await asyncio.sleep(0.01)


async def _start(conn: asyncpg.Connection, project_id: int) -> budget_store.IngestStart:
    return await budget_store.ingest_start(conn, project_id)


Change = Callable[[asyncpg.Pool, Access, int], Awaitable[Any]]


async def _archive(pool: asyncpg.Pool, access: Access, _: int) -> None:
    await projects.change_project(pool, Access.operator(), "p", archived=True)


async def _zone(pool: asyncpg.Pool, access: Access, _: int) -> None:
    await projects.change_project(pool, access, "p", time_zone="Asia/Tokyo",
                                  now=NOW)  # fmt: skip


async def _create(pool: asyncpg.Pool, access: Access, _: int) -> None:
    await budget(pool, access, "5", name="new")


async def _delete(pool: asyncpg.Pool, access: Access, budget_id: int) -> None:
    await service.delete_budget(pool, access, budget_id)


async def _limit(pool: asyncpg.Pool, access: Access, budget_id: int) -> None:
    await service.change_budget(pool, access, budget_id, {"limit_usd": Decimal("7")}, now=NOW)


def _archived(start: budget_store.IngestStart, budget_id: int) -> bool:
    return start.archived


def _zoned(start: budget_store.IngestStart, budget_id: int) -> bool:
    return start.zone == "Asia/Tokyo"


def _created(start: budget_store.IngestStart, budget_id: int) -> bool:
    return len(start.budgets) == 2


def _deleted(start: budget_store.IngestStart, budget_id: int) -> bool:
    return start.budgets == []


def _limited(start: budget_store.IngestStart, budget_id: int) -> bool:
    return [b.limit_usd for b in start.budgets] == [Decimal(7)]


@pytest.mark.parametrize(
    ("change", "seen"),
    [(_archive, _archived), (_zone, _zoned), (_create, _created), (_delete, _deleted),
     (_limit, _limited)],
    ids=["archive", "time-zone", "create-budget", "delete-budget", "change-limit"],
)  # fmt: skip
async def test_a_change_waits_for_the_ingest_through_and_the_next_ingest_waits_for_it(
    pool: asyncpg.Pool,
    access: Access,
    change: Change,
    seen: Callable[[budget_store.IngestStart, int], bool],
) -> None:
    assert access.project_id is not None
    budget_id = await budget(pool, access, "1")
    first = await pool.acquire()
    second = await pool.acquire()
    try:
        through = first.transaction()
        await through.start()
        before = await _start(first, access.project_id)  # an ingest through the gate, writing
        assert not seen(before, budget_id)
        changing = asyncio.create_task(change(pool, access, budget_id))
        await waiting_for_a_lock(pool)  # the change waits for the ingest through
        async with second.transaction():
            after = asyncio.create_task(_start(second, access.project_id))
            await _waits(pool, second, after)  # the next ingest waits for the change
            assert not changing.done()
            await through.commit()
            await asyncio.wait_for(changing, WAIT_S)
            # what the change committed is what the ingest after it writes with
            assert seen(await asyncio.wait_for(after, WAIT_S), budget_id)
    finally:
        await pool.release(first)
        await pool.release(second)


async def test_a_reservation_that_waited_for_an_archiving_reserves_nothing(
    pool: asyncpg.Pool, access: Access
) -> None:
    """A reservation whose key was admitted before the archiving: the quick way (one
    statement, `ledger_reserve_many_v2`) waits at the gate, then finds the project archived
    and refuses, holding nothing on its budgets."""
    assert access.project_id is not None
    budget_id = await budget(pool, access, "1")
    # one reservation made and released first: the project's zone is known, the quick way next
    made = await reserve(pool, access, amount=Decimal("0.1"), now=NOW)
    await release(pool, access, str(made.id))
    async with pool.acquire() as through:
        async with through.transaction():
            await _start(through, access.project_id)
            archiving = asyncio.create_task(_archive(pool, access, 0))
            await waiting_for_a_lock(pool)
            reserving = asyncio.create_task(reserve(pool, access, amount=Decimal("0.5"), now=NOW))
            await waiting_for_a_lock(pool, "SELECT * FROM ledger_reserve_many_v2")
            assert not archiving.done()
        await asyncio.wait_for(archiving, WAIT_S)
        with pytest.raises(ProjectArchived, match="nothing was reserved"):
            await asyncio.wait_for(reserving, WAIT_S)
    reserved = await pool.fetchval(
        "SELECT coalesce(sum(reserved), 0) FROM budget_windows WHERE budget_id = $1", budget_id
    )
    assert reserved == 0
    assert await pool.fetchval("SELECT count(*) FROM budget_reservations") == 1  # the first


async def test_the_reservations_slow_way_refuses_an_archived_project(
    pool: asyncpg.Pool, access: Access
) -> None:
    """`hard_budgets`, where a reservation that must cut a window anew starts, reads whether
    the project is archived behind the gate, as the quick way does."""
    assert access.project_id is not None
    await budget(pool, access, "1")
    async with pool.acquire() as conn, conn.transaction():
        zone, budgets = await reservation_store.hard_budgets(conn, access.project_id)
    assert (zone, len(budgets)) == ("UTC", 1)
    await _archive(pool, access, 0)
    async with pool.acquire() as conn, conn.transaction():
        with pytest.raises(ProjectArchived, match="nothing was reserved"):
            await reservation_store.hard_budgets(conn, access.project_id)
