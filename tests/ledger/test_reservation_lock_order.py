"""Reservations and the ingest that settles them take their locks in the one order, and read
what the locks they waited for protect: races that deadlocked, or answered a 500, before.

Each test holds one transaction at a chosen point (a wrapped function waits there), lets the
other one come to wait for a lock, then lets the first go on: every lock is taken by the code
and SQL as they are."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from aiserver.ledger.access import Access
from aiserver.ledger.budgets import reservations, service
from aiserver.ledger.budgets import store as budget_store
from aiserver.ledger.budgets.reservations import Reservation, reserve

from ..support.waits import waiting_for_a_lock
from .test_reservations import NOW, _project, event, record
from .test_reservations import pool as pool  # the fixture

YESTERDAY = NOW - timedelta(days=1)


class Paused:
    """`function` of `owner` wrapped: its first call waits for `go` at `when` ("before" the
    call, or "after" it returned); every deadlock PostgreSQL broke in a call is kept."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: Any, function: str,
                 when: str = "before") -> None:  # fmt: skip
        self.reached, self.go = asyncio.Event(), asyncio.Event()
        self.deadlocks: list[asyncpg.DeadlockDetectedError] = []
        real: Callable[..., Any] = getattr(owner, function)

        async def paused(*args: Any, **kwargs: Any) -> Any:
            first = not self.reached.is_set()
            if first and when == "before":
                self.reached.set()
                await self.go.wait()
            try:
                answer = await real(*args, **kwargs)
            except asyncpg.DeadlockDetectedError as exc:
                self.deadlocks.append(exc)
                raise
            if first and when == "after":
                self.reached.set()
                await self.go.wait()
            return answer

        monkeypatch.setattr(owner, function, paused)


async def _one_stripe(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch, slug: str
) -> tuple[Access, str]:
    """A project with a hard daily budget whose window has one stripe to reserve on (both
    reserves of a test take it), cut by a first reservation of 0.1; and its zone, now known."""
    monkeypatch.setattr(reservations, "STRIPES", 2)
    access = await _project(pool, slug, "UTC")
    await service.create_budget(pool, access, name="h", limit_usd=Decimal(10), period="day",
                                hard=True)  # fmt: skip
    await reserve(pool, access, amount=Decimal("0.1"), now=NOW)
    return access, reservations._ZONES[access.project_id]


async def test_a_settle_and_the_day_s_first_plain_event_take_a_new_window_in_one_order(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settling ingest holds the stripes of the hard total budget (a higher id) when it
    comes to commit to the daily budget's window, which has no row yet today; a plain ingest
    has just made that row and waits for the total's stripe 0. Before, the settle made the
    daily row after the total's: a deadlock, one ingest written again after a second."""
    # the time of the test, not of the module's import: the daily budget counts from the day
    # it is made in (the database's clock), and a run that crossed midnight UTC between the
    # two counted the events of the day before in none of its windows
    now = datetime.now(UTC).replace(microsecond=0)
    access = await _project(pool, "u", "UTC")
    await service.create_budget(pool, access, name="daily soft", limit_usd=Decimal(100),
                                period="day")  # fmt: skip
    await service.create_budget(pool, access, name="total hard", limit_usd=Decimal(100),
                                period="total", hard=True)  # fmt: skip
    held = await reserve(pool, access, amount=Decimal("0.5"), now=now)
    commits = Paused(monkeypatch, budget_store, "add_to_windows")
    settling = asyncio.create_task(record(pool, access, event("a", now, str(held.id))))
    await commits.reached.wait()  # it holds the total budget's stripes
    plain = asyncio.create_task(record(pool, access, event("b", now, None)))
    await waiting_for_a_lock(pool)
    commits.go.set()
    (a,), (b,) = await asyncio.wait_for(asyncio.gather(settling, plain), 30)
    assert (a.status, a.reservation, b.status) == ("recorded", "settled", "recorded")
    assert commits.deadlocks == []
    rows = await pool.fetch(
        "SELECT b.name, sum(w.events) AS events, sum(w.reserved) AS reserved"
        " FROM budget_windows AS w JOIN budgets AS b ON b.id = w.budget_id GROUP BY b.name"
    )
    assert {r["name"]: (r["events"], r["reserved"]) for r in rows} == {
        "daily soft": (2, 0), "total hard": (2, 0)
    }  # fmt: skip


async def test_a_settle_and_a_reserve_cutting_the_day_s_first_window_take_it_in_one_order(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The slow way of a reserve cuts today's window of the daily hard budget (all its stripes)
    while a settling ingest holds the total budget's stripes and is about to commit to that
    window. Before, the reserve always lost the deadlock and answered a 500."""
    access = await _project(pool, "v", "UTC")
    await service.create_budget(pool, access, name="daily hard", limit_usd=Decimal(100),
                                period="day", hard=True)  # fmt: skip
    await service.create_budget(pool, access, name="total hard", limit_usd=Decimal(7),
                                period="total", hard=True)  # fmt: skip
    held = await reserve(pool, access, amount=Decimal("0.5"), now=YESTERDAY)
    commits = Paused(monkeypatch, budget_store, "add_to_windows")
    settling = asyncio.create_task(record(pool, access, event("a", NOW, str(held.id))))
    await commits.reached.wait()
    reservations._ZONES.clear()  # a process that does not know the zone yet: the slow way
    # more than one stripe's share of the total budget holds: its window is cut anew too
    reserving = asyncio.create_task(reserve(pool, access, amount=Decimal(2), now=NOW))
    await waiting_for_a_lock(pool)
    commits.go.set()
    (a,), made = await asyncio.wait_for(asyncio.gather(settling, reserving), 30)
    assert (a.status, a.reservation) == ("recorded", "settled")
    assert isinstance(made, Reservation)
    assert len(made.holds) == 2
    assert commits.deadlocks == []


async def test_two_repeats_of_one_id_the_slow_way_and_the_quick_way_make_one_reservation(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reserve the slow way (a process that does not know the project's zone) and its repeat
    the quick way (another replica), with the same chosen id, both holding the one stripe.
    Before, the slow way inserted the reservation before it took the stripe, the quick way the
    other way round: a deadlock, the repeat answered a 500."""
    access, zone = await _one_stripe(pool, monkeypatch, "w")
    inserted = Paused(monkeypatch, reservations.store, "insert_reservation", when="after")
    chosen = "7d0c6f7e-5b0a-4a3b-9c1e-2f4d6b8a0c3e"
    reservations._ZONES.clear()
    slow = asyncio.create_task(
        reserve(pool, access, amount=Decimal("0.25"), reservation_id=chosen, now=NOW)
    )
    await inserted.reached.wait()
    reservations._ZONES[access.project_id] = zone
    quick = asyncio.create_task(
        reserve(pool, access, amount=Decimal("0.25"), reservation_id=chosen, now=NOW)
    )
    await waiting_for_a_lock(pool)
    inserted.go.set()
    first, repeat = await asyncio.wait_for(asyncio.gather(slow, quick), 30)
    assert (str(first.id), first.repeated) == (chosen, False)
    assert (str(repeat.id), repeat.repeated, repeat.holds) == (chosen, True, first.holds)
    reserved = await pool.fetchval("SELECT sum(reserved) FROM budget_windows")
    assert reserved == Decimal("0.35")  # the first reservation and this one, once


async def test_the_slow_way_reads_the_budgets_as_a_deletion_it_waited_for_left_them(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch, migrated_database_url: str
) -> None:
    """The slow way takes the project's row, which a budget's deletion holds. Before, it read
    the budgets in the same statement, so as they were before its wait: it cut a window of the
    deleted budget and failed on its foreign key (a 500)."""
    access = await _project(pool, "x", "UTC")
    daily, _ = await service.create_budget(pool, access, name="h", limit_usd=Decimal(10),
                                           period="day", hard=True)  # fmt: skip
    total, _ = await service.create_budget(pool, access, name="t", limit_usd=Decimal(10),
                                           period="total", hard=True)  # fmt: skip
    await reserve(pool, access, amount=Decimal("0.1"), now=YESTERDAY)  # no stripes today
    deleting = await asyncpg.connect(migrated_database_url)
    quick = reservations._reserve_at_once
    locked = asyncio.Event()

    async def then_lock(*args: Any, **kwargs: Any) -> Any:
        answer = await quick(*args, **kwargs)  # today's daily window is to be cut: slow way
        await deleting.execute("BEGIN")
        await deleting.execute(
            "SELECT 1 FROM projects WHERE id = $1 FOR UPDATE", access.project_id
        )  # as the budget's deletion takes it
        locked.set()
        return answer

    monkeypatch.setattr(reservations, "_reserve_at_once", then_lock)
    try:
        reserving = asyncio.create_task(reserve(pool, access, amount=Decimal("0.2"), now=NOW))
        await locked.wait()
        await waiting_for_a_lock(pool)
        await deleting.execute("DELETE FROM budgets WHERE id = $1", daily.budget.id)
        await deleting.execute("COMMIT")
        made = await asyncio.wait_for(reserving, 30)
    finally:
        await deleting.close()
    assert [h.budget_id for h in made.holds] == [total.budget.id]


async def test_a_release_of_a_repeat_made_meanwhile_and_the_first_reserve_never_deadlock(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client's reserve goes the slow way and is slow: it has looked for its id (none yet)
    and holds its stripe, and has not written its row. Its repeat, sent on a timeout, makes the
    reservation the quick way; the client releases it (or its event settles it, or it expires).
    The release updated the reservation's row, then waited for the stripe, which the first
    reserve holds; the first reserve's insert of the same id waited for the release's update
    to commit or roll back: a deadlock, which PostgreSQL broke by failing the release (a 500).
    The release now locks the row, takes the stripes, and only then changes the row: the
    insert does not wait for a row that is only locked, finds the id taken, and gives its hold
    back."""
    access, zone = await _one_stripe(pool, monkeypatch, "v")
    looked = Paused(monkeypatch, reservations.store, "read_reservation", when="after")
    inserting = Paused(monkeypatch, reservations.store, "insert_reservation")
    chosen = "3f1a9c2e-8b7d-4e6f-a5c4-1d2e3f4a5b6c"
    reservations._ZONES.clear()  # the first reserve goes the slow way
    first = asyncio.create_task(
        reserve(pool, access, amount=Decimal("0.25"), reservation_id=chosen, now=NOW)
    )
    await looked.reached.wait()  # it found no reservation of the id
    reservations._ZONES[access.project_id] = zone
    repeat = await reserve(pool, access, amount=Decimal("0.25"), reservation_id=chosen, now=NOW)
    assert (str(repeat.id), repeat.repeated) == (chosen, False)  # made by the repeat
    looked.go.set()
    await inserting.reached.wait()  # the first reserve holds the stripe, about to insert
    releasing = asyncio.create_task(reservations.release(pool, access, chosen))
    await waiting_for_a_lock(pool)  # the release waits for the stripe
    inserting.go.set()
    made, released = await asyncio.wait_for(
        asyncio.gather(first, releasing, return_exceptions=True), 30
    )
    assert released == (repeat.id, "released"), released
    assert isinstance(made, Reservation), made
    assert (made.id, made.repeated) == (repeat.id, True)
    assert inserting.deadlocks == []
    reserved = await pool.fetchval("SELECT sum(reserved) FROM budget_windows")
    assert reserved == Decimal("0.1")  # the first reservation only
