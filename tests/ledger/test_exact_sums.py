"""Money summed in Python is exact, however many digits a cost has.

A cost is exact: a quantity times a price with all of its decimals (the catalog keeps prices as
the source spells them, `1.0000000000000001e-07` among them). A cost of 1.2 trillion tokens at
such a price has 29 significant digits; Python's default decimal context keeps 28, so `+` and
`-` would round sums of them. The spend answer's totals, a reprice's rollup corrections and
totals, and the budgets' window sums are checked here against PostgreSQL's exact `sum`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec

from aiserver.costs.catalog import Catalog
from aiserver.ledger.access import Access
from aiserver.ledger.budgets.commits import (
    BudgetScope,
    Spend,
    crossings,
    window_deltas,
    window_sums,
)
from aiserver.ledger.projects import find_project
from aiserver.ledger.repricing.execution import execute_run
from aiserver.ledger.repricing.runs import RepriceRequest, request_reprice
from aiserver.ledger.spend.folding import fold_all
from aiserver.ledger.spend.query import read_spend, spend_query

from .test_ingest import ledger as ledger  # the fixture: a project on the test database
from .test_ingest import record

T0 = datetime(2026, 11, 1, tzinfo=UTC)
OPERATOR = Access.operator()
TOKENS = 1_234_567_891_234
OLD_PRICE, NEW_PRICE = "1.0000000000000001e-07", "2.0000000000000002e-07"
# TOKENS at each price, multiplied out by hand (123456.7891234 + 0.00000000001234567891234 at
# the old one), and three and six events at the old one: 29 digits each, which the default
# context's 28 would round
OLD_COST = Decimal("123456.78912340001234567891234")
NEW_COST = Decimal("246913.57824680002469135782468")
THREE_OLD = Decimal("370370.36737020003703703673702")
SIX_OLD = Decimal("740740.73474040007407407347404")


def _catalog(row_id: int, price: str, version: int) -> Catalog:
    entry = {
        "litellm_provider": "openai",
        "mode": "chat",
        "input_cost_per_token": Decimal(price),
        "output_cost_per_token": Decimal("2e-06"),
    }
    row = {"id": row_id, "source": "test", "provider": "openai", "model": "gpt-x", "mode": "chat",
           "valid_from": T0, "valid_to": None, "entry": entry}  # fmt: skip
    return Catalog.build([row], aliases={}, version=version)


OLD, NEW = _catalog(1, OLD_PRICE, 7), _catalog(2, NEW_PRICE, 8)


def _raw(key: str, at: str, tokens: int = TOKENS) -> bytes:
    return msgspec.json.encode(
        {"id": key, "model": "gpt-x", "usage": {"input_tokens": tokens}, "occurred_at": at}
    )


async def _spend_total(pool: asyncpg.Pool, **group: Any) -> Any:
    async with pool.acquire() as conn:
        project = await find_project(conn, OPERATOR, "p")
    question = spend_query(
        project, since="2026-11-01T00:00:00Z", until="2026-12-01T00:00:00Z", **group
    )
    return await read_spend(pool, project, question)


async def test_the_spend_answer_sums_costs_of_29_digits_exactly(
    ledger: tuple[asyncpg.Pool, int],
) -> None:
    hours = ("2026-11-25T10:20:00Z", "2026-11-25T11:20:00Z", "2026-11-26T09:00:00Z")
    report = await record(ledger, OLD, *(_raw(f"e{i}", at) for i, at in enumerate(hours)))
    assert report.recorded == 3
    cost = Decimal(report.results[0].total)
    assert cost == OLD_COST
    assert len(cost.as_tuple().digits) == 29  # more than the default context's 28
    pool, _ = ledger
    async with pool.acquire() as conn:
        await fold_all(conn)
    exact = await pool.fetchval("SELECT sum(total_cost) FROM usage_events")
    assert exact == THREE_OLD  # PostgreSQL's sum is exact
    answer = await _spend_total(pool)
    assert Decimal(answer.total.cost) == exact  # three rollup rows, added in Python
    by_day = await _spend_total(pool, bucket="day")
    assert [Decimal(b.total.cost) for b in by_day.buckets if Decimal(b.total.cost)] == [
        NEW_COST,  # two events at the old price
        OLD_COST,
    ]


async def test_a_reprice_corrects_rollups_and_totals_exactly(
    ledger: tuple[asyncpg.Pool, int],
) -> None:
    report = await record(ledger, OLD, _raw("big", "2026-11-25T10:20:00Z"))
    old_cost = Decimal(report.results[0].total)
    pool, _ = ledger
    async with pool.acquire() as conn:
        await fold_all(conn)  # the correction goes to the rollups, not through the outbox
    run = await request_reprice(pool, OPERATOR, RepriceRequest(project="p", dry_run=False))
    await execute_run(pool, run.id, NEW)
    new_cost = await pool.fetchval("SELECT total_cost FROM usage_events")
    assert (old_cost, new_cost) == (OLD_COST, NEW_COST)
    assert await pool.fetchval("SELECT sum(cost) FROM usage_rollups") == new_cost
    assert await pool.fetchval("SELECT sum(cost) FROM usage_rollups_daily") == new_cost
    totals = await pool.fetchrow("SELECT old_total, new_total FROM usage_reprice_runs")
    assert (totals["old_total"], totals["new_total"]) == (old_cost, new_cost)
    assert Decimal((await _spend_total(pool)).total.cost) == new_cost


def test_budget_window_sums_deltas_and_crossings_are_exact() -> None:
    cost = OLD_COST
    assert cost + 0 != cost  # the default context would round it (the reason for this test)
    at = datetime(2026, 11, 25, 10, tzinfo=UTC)
    # its 50% is exactly what three events commit (29 digits: rounded, it would miss)
    budget = BudgetScope(1, {}, None, "month", limit_usd=SIX_OLD,
                         thresholds=(Decimal(50), Decimal(100)))  # fmt: skip
    spends = [Spend(at, {}, "gpt-x", "gpt-x", cost) for _ in range(3)]
    ((key, added),) = window_sums([budget], "UTC", spends).items()
    assert added.committed == THREE_OLD
    # a reprice doubles each event's cost: the window gains 3 * cost, exactly
    changes = [(s, Spend(at, {}, "gpt-x", "gpt-x", NEW_COST)) for s in spends]
    assert window_deltas([budget], "UTC", changes)[key].committed == THREE_OLD
    # the three reach 50% exactly (PostgreSQL returns the exact committed sum): crossed once
    (crossing,) = crossings([budget], {key: added}, {key: added.committed})
    assert (crossing.threshold, crossing.committed) == (Decimal(50), THREE_OLD)
    # two of them stay below it, and the third crosses it after them
    two = window_sums([budget], "UTC", spends[:2])
    assert crossings([budget], two, {key: two[key].committed}) == []
    one = window_sums([budget], "UTC", spends[:1])
    (crossing,) = crossings([budget], one, {key: THREE_OLD})
    assert crossing.threshold == Decimal(50)
