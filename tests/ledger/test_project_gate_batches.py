"""The project's gate against what works in batches across projects (found by a second review
of the gate): the sweep of expired reservations, and a reprice of every project."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from aiserver.ledger import store as project_store
from aiserver.ledger.access import Access
from aiserver.ledger.budgets import reservations as reservations_module
from aiserver.ledger.budgets import service
from aiserver.ledger.budgets import store as budget_store
from aiserver.ledger.budgets.reservations import release_expired, reserve
from aiserver.ledger.budgets.reservations import store as reservation_store
from aiserver.ledger.repricing.execution import Outcome as RunOutcome
from aiserver.ledger.repricing.execution import execute_run
from aiserver.ledger.repricing.runs import RepriceRequest, request_reprice
from aiserver.ledger.spend.store import rollups as rollup_store

from ..support.waits import WAIT_S
from .test_reprice_review2_races import _waiters
from .test_repricing import CALLS, OPERATOR, RECORDED_WITH, TODAY, Ledger, ledger, raw, record
from .test_reservations import NOW, _project, budget
from .test_reservations import pool as pool  # the fixture

__all__ = ["ledger"]


@pytest.fixture
async def access(pool: asyncpg.Pool) -> Access:
    return await _project(pool, "p", "UTC")


QUICK_S = 3.0


async def test_the_sweep_releases_every_due_reservation_while_one_is_being_released(
    pool: asyncpg.Pool, access: Access, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of the sweep is `due_projects` (the projects of the first SWEEP_BATCH due
    reservations, nothing locked), then `lock_due` limited to those projects, SKIP LOCKED.
    When one of those reservations is being released (or settled) at that moment, the batch
    ends fewer than SWEEP_BATCH and the sweep returns, leaving the due reservations of the
    projects after them held until the next sweep (before the gate, `expire_due` went on past
    the skipped row to the next project's). The sweep now goes on until the due reservations
    it reads are fewer than a batch, or none of them can be ended."""
    monkeypatch.setattr(reservations_module, "SWEEP_BATCH", 2)
    other = await _project(pool, "q", "UTC")
    assert access.project_id is not None
    assert other.project_id is not None
    assert access.project_id < other.project_id
    await budget(pool, access, "100")
    await budget(pool, other, "100")
    short = timedelta(seconds=1)
    a1 = await reserve(pool, access, amount=Decimal("0.1"), now=NOW, ttl=short)
    await reserve(pool, access, amount=Decimal("0.1"), now=NOW, ttl=short)
    q1 = await reserve(pool, other, amount=Decimal("0.1"), now=NOW, ttl=short)
    async with pool.acquire() as releasing:
        tx = releasing.transaction()
        await tx.start()
        # what `reservations.release` does before its COMMIT
        await project_store.pass_gate(releasing, access.project_id)
        ended = await reservation_store.end_reservations(
            releasing, access.project_id, [a1.id], "released"
        )
        assert ended
        swept = await asyncio.wait_for(release_expired(pool, now=NOW + timedelta(hours=1)), WAIT_S)
        await tx.rollback()
    state = await pool.fetchval("SELECT state FROM budget_reservations WHERE id = $1", q1.id)
    assert (swept, state) == (2, "expired"), (
        f"the sweep released {swept} and left the other project's due reservation {state!r}"
    )


async def _ingest_start(pool: asyncpg.Pool, project_id: int) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await budget_store.ingest_start(conn, project_id)


async def test_a_reprice_waiting_for_another_projects_rebuild_does_not_hold_this_projects_ingest(
    ledger: Ledger,
) -> None:
    """An all-projects reprice batch took, project by project in id order, the rollup lock
    shared, then the gate and row: holding p's gate, it waited for q's rollup lock, which a
    rebuild of q holds for its whole transaction; a budget creation on p closed p's gate
    behind the batch, and p's ingest queued behind the creation: p's usage waited for q's
    rebuild. The batch now takes every rollup lock first: waiting for q's, it holds no gate,
    and the creation and p's ingest go on."""
    pool = ledger.pool
    assert ledger.p < ledger.q
    p_access = Access(ledger.p, "p", frozenset({"admin", "ingest"}))
    await record(pool, ledger.p, RECORDED_WITH, *(raw(c) for c in CALLS[:3]))
    await record(pool, ledger.q, RECORDED_WITH, raw(CALLS[1]))
    run = await request_reprice(pool, OPERATOR, RepriceRequest(all_projects=True, dry_run=False))
    rebuild = await pool.acquire()
    tx = rebuild.transaction()
    await tx.start()
    tasks: list[asyncio.Task[Any]] = []
    try:
        # what `rebuild_rollups` of q holds from its start (then it sums q's events again)
        await rollup_store.lock_project(rebuild, ledger.q)
        await rollup_store.locked_rollup_tags(rebuild, ledger.q)
        tasks.append(asyncio.create_task(execute_run(pool, run.id, TODAY, batch_size=10)))
        await _waiters(pool, 1)  # the batch, holding p's gate, waits for q's rollup lock
        creating = asyncio.create_task(service.create_budget(
            pool, p_access, name="b", limit_usd=Decimal(1), period="day"))  # fmt: skip
        tasks.append(creating)
        await asyncio.wait({creating}, timeout=QUICK_S)  # at p's gate, if the batch held it
        ingest = asyncio.create_task(_ingest_start(pool, ledger.p))
        tasks.append(ingest)
        done, _ = await asyncio.wait({ingest}, timeout=QUICK_S)
        held = not done
    finally:
        await tx.commit()
        await pool.release(rebuild)
        results = await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
    assert results[0] is RunOutcome.DONE
    assert not held, "p's ingest waited for the rebuild of q's rollups"
