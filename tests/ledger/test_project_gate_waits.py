"""What a closed project gate must not hold up, and what must pass it (found by a review of
its first version, 8368aec).

- A change that closed the gate, then waited for a lock held by something that never passes
  the gate (a rebuild of the project's rollups holds the project's row FOR SHARE for its whole
  transaction), held every writer of the project behind it, and with a catalog change queued
  behind such a writer, every project's ingest. A change now takes the row (in a mode writers
  do not wait for) before it closes the gate.
- Releasing a reservation and the sweep wrote a budget's windows without passing the gate: one
  meeting the budget's deletion failed its foreign key, or the two deadlocked. They pass it.
- Everything at once on two projects for a few seconds: no error but the refusals expected.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import traceback
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from aiserver.core_db.errors import AiserverError
from aiserver.costs.source import DEFAULT_SOURCE
from aiserver.costs.store.metadata import lock_catalog_version
from aiserver.ledger import api_keys, projects
from aiserver.ledger import store as project_store
from aiserver.ledger.access import Access
from aiserver.ledger.budgets import service
from aiserver.ledger.budgets import store as budget_store
from aiserver.ledger.budgets.reservations import release, release_expired, reserve
from aiserver.ledger.projects import change_project
from aiserver.ledger.repricing import runs
from aiserver.ledger.spend.rebuild import rebuild_rollups
from aiserver.ledger.spend.store import rollups as rollup_store

from ..support.waits import WAIT_S, waiting_for_a_lock
from .test_project_gate import _WAITING
from .test_project_gate import access as access  # the fixture
from .test_reservations import NOW, _project, budget, event, record
from .test_reservations import pool as pool  # the fixture

#: How long an ingest unrelated to the change may take to start before the test calls it held.
QUICK_S = 3.0


async def _rebuild_started(conn: asyncpg.Connection, project_id: int) -> None:
    """What `spend.rebuild.rebuild_rollups` does first, in its transaction, before it sums
    the project's events again (which takes as long as the project has events)."""
    await rollup_store.lock_project(conn, project_id)
    assert await rollup_store.locked_rollup_tags(conn, project_id) is not None


async def _ingest_start(pool: asyncpg.Pool, project_id: int) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await budget_store.ingest_start(conn, project_id)


async def _waits_or_ends(pool: asyncpg.Pool, conn: asyncpg.Connection, task: Any) -> None:
    async with asyncio.timeout(WAIT_S):
        while not task.done() and not await pool.fetchval(_WAITING, conn.get_server_pid()):
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("change", ["create", "limit", "delete", "archive"])
async def test_a_budget_change_waiting_for_a_rollup_rebuild_does_not_stop_the_projects_ingest(
    pool: asyncpg.Pool, access: Access, change: str
) -> None:
    assert access.project_id is not None
    budget_id = await budget(pool, access, "1")
    rebuild = await pool.acquire()
    tx = rebuild.transaction()
    await tx.start()
    try:
        await _rebuild_started(rebuild, access.project_id)
        if change == "create":
            changing = asyncio.create_task(budget(pool, access, "5", name="new"))
        elif change == "limit":
            changing = asyncio.create_task(service.change_budget(
                pool, access, budget_id, {"limit_usd": Decimal("7")}, now=NOW))  # fmt: skip
        elif change == "delete":
            changing = asyncio.create_task(service.delete_budget(pool, access, budget_id))
        else:  # its UPDATE takes the row FOR NO KEY UPDATE, which waits for FOR SHARE
            changing = asyncio.create_task(
                projects.change_project(pool, Access.operator(), "p", archived=True)
            )
        await waiting_for_a_lock(pool)  # the change waits for the rebuild's row lock
        ingest = asyncio.create_task(_ingest_start(pool, access.project_id))
        done, _ = await asyncio.wait({ingest}, timeout=QUICK_S)
        held = not done
    finally:
        await tx.commit()
        await pool.release(rebuild)
    await asyncio.wait_for(changing, WAIT_S)
    await asyncio.wait_for(ingest, WAIT_S)
    assert not held, (
        "the project's ingest waited for the rollup rebuild (behind the budget change that "
        "closed the gate and waits for the rebuild's row lock)"
    )


async def test_with_a_catalog_change_another_projects_ingest_waits_for_the_rebuild(
    pool: asyncpg.Pool, access: Access
) -> None:
    """An ingest of the project held at the gate holds the catalog's lock shared; a catalog
    change queues behind it, and every ingest of every project queues behind the catalog
    change: the whole server's ingest waits for one project's rollup rebuild."""
    assert access.project_id is not None
    other = await _project(pool, "q", "UTC")
    assert other.project_id is not None
    await budget(pool, access, "1")
    rebuild = await pool.acquire()
    ingesting = await pool.acquire()
    catalog = await pool.acquire()
    tx = rebuild.transaction()
    await tx.start()
    tasks: list[asyncio.Task[Any]] = []
    try:
        await _rebuild_started(rebuild, access.project_id)
        tasks.append(asyncio.create_task(budget(pool, access, "5", name="new")))
        await waiting_for_a_lock(pool)

        async def ingest_p() -> None:
            async with ingesting.transaction():
                await budget_store.ingest_start(ingesting, access.project_id)

        tasks.append(first := asyncio.create_task(ingest_p()))
        await _waits_or_ends(pool, ingesting, first)

        async def change_catalog() -> None:
            async with catalog.transaction():
                await lock_catalog_version(catalog, DEFAULT_SOURCE)

        tasks.append(changed := asyncio.create_task(change_catalog()))
        await _waits_or_ends(pool, catalog, changed)
        elsewhere = asyncio.create_task(_ingest_start(pool, other.project_id))
        tasks.append(elsewhere)
        done, _ = await asyncio.wait({elsewhere}, timeout=QUICK_S)
        held = not done
    finally:
        await tx.commit()
        await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
        for conn in (rebuild, ingesting, catalog):
            await pool.release(conn)
    assert not held, "another project's ingest waited for this project's rollup rebuild"


async def test_stress_writers_and_changes_of_two_projects_end_without_deadlock(
    pool: asyncpg.Pool, access: Access
) -> None:
    """Ingest (settling reservations), reservations, releases, the sweep,
    budget creation/limit/deletion, zone changes, archiving and restoring, and rollup rebuilds
    of two projects at once for a few seconds: no error but the expected refusals, no hang."""
    other = await _project(pool, "q", "UTC")
    both = [access, other]
    slugs = {access.project_id: "p", other.project_id: "q"}
    for a in both:
        await budget(pool, a, "1000")
    errors: list[str] = []
    counts: dict[str, int] = {}
    stop = asyncio.get_running_loop().time() + 8

    async def loop(name: str, op: Any) -> None:
        n = 0
        while asyncio.get_running_loop().time() < stop:
            a = random.choice(both)
            try:
                await asyncio.wait_for(op(a, n), 20)
            except AiserverError:
                pass  # refusals: archived, reservations held, budget exceeded, unknown budget
            except BaseException as exc:
                errors.append(f"{name}: {''.join(traceback.format_exception(exc))[-2500:]}")
                return
            n += 1
        counts[name] = n

    async def ingest(a: Access, n: int) -> None:
        made = None
        if random.random() < 0.5:
            try:
                made = await reserve(pool, a, amount=Decimal("0.01"), now=NOW)
            except AiserverError:
                made = None
        await record(pool, a, event(str(uuid.uuid4()), NOW, None if made is None else str(made.id)))

    async def reserving(a: Access, n: int) -> None:
        made = await reserve(
            pool, a, amount=Decimal("0.01"), now=NOW, ttl=timedelta(seconds=random.choice([1, 60]))
        )
        if random.random() < 0.5:
            await release(pool, a, str(made.id))

    async def sweep(a: Access, n: int) -> None:
        await release_expired(pool, now=NOW + timedelta(seconds=30))
        await asyncio.sleep(0.05)

    async def budgets(a: Access, n: int) -> None:
        found = await budget_store.read_budgets(pool, a.project_id)
        r = random.random()
        if r < 0.4 or not found:
            await budget(pool, a, "1000", name=f"b{n}")
        elif r < 0.7:
            await service.change_budget(
                pool,
                a,
                random.choice(found).id,
                {"limit_usd": Decimal(random.randint(500, 2000))},
                now=NOW,
            )
        elif len(found) > 1:
            await service.delete_budget(pool, a, random.choice(found[1:]).id)

    async def zone(a: Access, n: int) -> None:
        await change_project(
            pool, a, slugs[a.project_id], time_zone=random.choice(["UTC", "Asia/Tokyo"]), now=NOW
        )

    async def archive(a: Access, n: int) -> None:
        await change_project(pool, Access.operator(), slugs[a.project_id], archived=True)
        await asyncio.sleep(0.02)
        await change_project(pool, Access.operator(), slugs[a.project_id], archived=False)
        await asyncio.sleep(0.2)

    async def rebuild(a: Access, n: int) -> None:
        async with pool.acquire() as conn:
            await rebuild_rollups(conn, a.project_id)

    workers = [("ingest", ingest)] * 3 + [("reserve", reserving)] * 2 + [
        ("sweep", sweep), ("budgets", budgets), ("zone", zone), ("archive", archive),
        ("rebuild", rebuild)]  # fmt: skip
    await asyncio.gather(*(loop(f"{name}{i}", op) for i, (name, op) in enumerate(workers)))
    assert not errors, "\n".join(errors)
    # every worker went round at least once (a worker that hung would have failed its wait_for)
    assert len(counts) == len(workers), counts
    assert all(n > 0 for n in counts.values()), counts


@pytest.mark.parametrize("way", ["release", "sweep"])
async def test_a_release_meeting_a_budgets_deletion_releases(
    pool: asyncpg.Pool, access: Access, way: str
) -> None:
    """Releasing a reservation (or the sweep expiring it) while its budget is being deleted:
    `change_stripes` says a stripe whose budget was deleted is neither made nor changed. The
    release does not pass the gate the deletion closes; its INSERT .. ON CONFLICT saw the row
    (EXISTS), waits for the deleting transaction, then inserts the row anew and fails the
    foreign key to the deleted budget. It now passes the gate, and waits for the deletion."""
    assert access.project_id is not None
    budget_id = await budget(pool, access, "1")
    made = await reserve(pool, access, amount=Decimal("0.1"), now=NOW,
                         ttl=timedelta(seconds=60))  # fmt: skip
    async with pool.acquire() as deleting:
        tx = deleting.transaction()
        await tx.start()
        await project_store.lock_project(deleting, access.project_id)
        assert await budget_store.delete_budget(deleting, access.project_id, budget_id)
        if way == "release":
            releasing = asyncio.create_task(release(pool, access, str(made.id)))
        else:
            releasing = asyncio.create_task(release_expired(pool, now=NOW + timedelta(hours=1)))
        await waiting_for_a_lock(pool)
        await tx.commit()
    answer = await asyncio.wait_for(releasing, WAIT_S)
    assert answer in ((made.id, "released"), 1)
    assert await pool.fetchval("SELECT count(*) FROM budget_windows") == 0


async def test_a_budgets_deletion_and_the_sweep_do_not_deadlock(
    pool: asyncpg.Pool, access: Access
) -> None:
    """The sweep locks a window's stripes in key order (`change_stripes`); deleting a budget
    deletes them by the foreign key's ON DELETE CASCADE, in whatever order the plan reads them,
    and the sweep did not pass the gate the deletion closes (it now does)."""
    assert access.project_id is not None
    deadlocks = 0
    for round_ in range(30):
        budget_id = await budget(pool, access, "1000", name=f"b{round_}")
        await asyncio.gather(*(
            reserve(pool, access, amount=Decimal("0.01"), now=NOW, ttl=timedelta(seconds=1))
            for _ in range(40)))  # fmt: skip
        # a few rows updated again, so that the table's order is not the key's
        await pool.execute("UPDATE budget_windows SET reserved = reserved WHERE stripe % 3 = 0")
        results = await asyncio.gather(
            service.delete_budget(pool, access, budget_id),
            release_expired(pool, now=NOW + timedelta(hours=1)),
            return_exceptions=True,
        )
        for r in results:
            if isinstance(r, asyncpg.DeadlockDetectedError):
                deadlocks += 1
            elif isinstance(r, BaseException) and not isinstance(
                r, asyncpg.ForeignKeyViolationError
            ):
                raise r
        await release_expired(pool, now=NOW + timedelta(hours=1))
    assert deadlocks == 0, f"{deadlocks} deadlocks in 30 rounds"


@pytest.mark.parametrize("change", ["rename", "operator-rename", "revoke", "reprice"])
async def test_what_only_checks_the_archiving_does_not_wait_for_a_rollup_rebuild(
    pool: asyncpg.Pool, access: Access, change: str
) -> None:
    """A key's change of a budget that leaves its levels, its revocation of a key and its
    request of a reprice read whether the project is archived with its row held; so did the
    operator's change of a budget (which reads nothing). They took the row FOR NO KEY UPDATE,
    which waits for a rebuild of the project's rollups (FOR SHARE, its whole transaction):
    each waited for the rebuild, which none of them concerns, where before they waited for
    nothing. An archiving's UPDATE is fenced off by FOR SHARE as well."""
    assert access.project_id is not None
    budget_id = await budget(pool, access, "1")
    admin = await api_keys.create_key(pool, Access.operator(), "p", name="a", scopes=["admin"])
    other = await api_keys.create_key(pool, Access.operator(), "p", name="o", scopes=["read"])
    key = dataclasses.replace(access, key_id=admin.key.id)
    rebuild = await pool.acquire()
    tx = rebuild.transaction()
    await tx.start()
    try:
        await _rebuild_started(rebuild, access.project_id)
        if change == "rename":
            work = service.change_budget(pool, key, budget_id, {"name": "renamed"}, now=NOW)
        elif change == "operator-rename":
            work = service.change_budget(pool, access, budget_id, {"name": "renamed"}, now=NOW)
        elif change == "revoke":
            work = api_keys.revoke_key(pool, key, other.key.id)
        else:
            work = runs.request_reprice(pool, key, runs.RepriceRequest(dry_run=True))
        done, _ = await asyncio.wait({changing := asyncio.create_task(work)}, timeout=QUICK_S)
        held = not done
    finally:
        await tx.commit()
        await pool.release(rebuild)
    await asyncio.wait_for(changing, WAIT_S)
    assert not held, f"{change} waited for the project's rollup rebuild"
