"""The budget guard against a real API: it reserves before the call, the call's event settles
the reservation, and leaving without one (or with an exception) releases it."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from aiserver.client import AsyncClient, BudgetExceeded, Client

from .conftest import Ledger, Tenant, api_events, budget_window, create_budget

USAGE = {"input_tokens": 1000, "output_tokens": 500}
COST = Decimal("0.0075")  # gpt-4o: 1000 x $2.50 + 500 x $10 per million
TEAM = {"team": "search"}


async def hard_budget(ledger: Ledger, tenant: Tenant, limit: str = "1.00") -> int:
    made = await create_budget(ledger.api, tenant, name="search", limit_usd=limit, period="day",
                               hard=True, tags=TEAM)  # fmt: skip
    budget_id: int = made["id"]
    return budget_id


async def test_a_recorded_event_settles_the_reservation(ledger: Ledger, tenant: Tenant) -> None:
    budget_id = await hard_budget(ledger, tenant)
    key = f"g-{uuid.uuid4().hex}"
    with (
        Client(ledger.api.base_url, tenant.key) as client,
        client.budget(model="gpt-4o", tags=TEAM, estimate="0.50") as guard,
    ):
        assert guard.reservation.budgets[0].amount == Decimal("0.5")
        held = await budget_window(ledger.api, tenant, budget_id)
        result = guard.record(id=key, usage=USAGE)  # the guard's model and tags
    assert (result.status, result.reservation, result.total) == ("recorded", "settled", COST)
    window = await budget_window(ledger.api, tenant, budget_id)
    assert (held["reserved"], window["reserved"], window["committed"]) == ("0.5", "0", "0.0075")
    event = (await api_events(ledger.api, tenant))[key]
    assert (event["model"], event["tags"]) == ("gpt-4o", TEAM)


async def test_leaving_without_an_event_or_with_an_error_releases(
    ledger: Ledger, tenant: Tenant
) -> None:
    budget_id = await hard_budget(ledger, tenant)
    with Client(ledger.api.base_url, tenant.key) as client:
        with client.budget(model="gpt-4o", tags=TEAM, estimate="0.30") as unused:
            pass
        with (
            pytest.raises(RuntimeError, match="the provider failed"),
            client.budget(model="gpt-4o", tags=TEAM, estimate="0.30") as failed,
        ):
            raise RuntimeError("the provider failed")
        released = [client.release(g.reservation.reservation_id) for g in (unused, failed)]
    assert [r.state for r in released] == ["released", "released"]  # released before, by the guard
    window = await budget_window(ledger.api, tenant, budget_id)
    assert (window["reserved"], window["committed"]) == ("0", "0")


async def test_a_refused_reservation_raises_before_the_call(ledger: Ledger, tenant: Tenant) -> None:
    budget_id = await hard_budget(ledger, tenant, limit="0.01")
    called = False
    with (
        Client(ledger.api.base_url, tenant.key) as client,
        pytest.raises(BudgetExceeded) as refused,
        client.budget(model="gpt-4o", tags=TEAM, usage={"input_tokens": 10_000}),
    ):
        called = True
    assert not called
    assert (refused.value.budget_id, refused.value.limit) == (budget_id, Decimal("0.01"))
    assert refused.value.remaining == Decimal("0.01")


async def test_the_async_guard_settles_through_the_background_recorder(
    ledger: Ledger, tenant: Tenant
) -> None:
    budget_id = await hard_budget(ledger, tenant)
    key = f"g-{uuid.uuid4().hex}"
    async with AsyncClient(ledger.api.base_url, tenant.key) as client:
        async with client.budget(model="gpt-4o", tags=TEAM, estimate="0.50") as guard:
            assert guard.record_later({"id": key, "usage": USAGE}) == key
        assert await client.flush(timeout=30)
        async with client.budget(model="gpt-4o", tags=TEAM, estimate="0.25") as waited:
            result = await waited.record(usage=USAGE, id=f"{key}-2")
        async with client.budget(model="gpt-4o", tags=TEAM, estimate="0.25") as unused:
            pass
        assert (await client.release(unused.reservation.reservation_id)).state == "released"
        assert client.stats().recorded == 1
    assert result.reservation == "settled"
    window = await budget_window(ledger.api, tenant, budget_id)
    assert (window["reserved"], Decimal(window["committed"])) == ("0", 2 * COST)
