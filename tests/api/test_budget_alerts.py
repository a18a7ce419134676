"""/v1/budgets/alerts and /v1/budgets/{id}/alerts: a project's read and admin keys see its
budget alerts, newest first, each with every delivery attempt; another project's budget is
unknown."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from aiserver.ledger.budgets.alerts.delivery import Schedule, deliver_due

from ..conftest import TEST_SECRET_BOX, Settings, replace_settings
from ..support.receiver import Receiver
from .conftest import Client, Tenants, bearer, make_key
from .test_endpoints import assert_problem
from .test_usage import event, post

ALERTS = "/v1/budgets/alerts"
ALLOWED = ("127.0.0.1",)
SECRET = "whsec-0123456789abcdef"


@pytest.fixture
def api_settings(api_settings: Settings) -> Settings:
    """The API's settings, with the local receiver's host allowed."""
    return replace_settings(api_settings, webhook_allowed_hosts=ALLOWED)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(script=[500])  # the first attempt fails, the second succeeds
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def pool(api_settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(api_settings.core.database_url, min_size=1) as opened:
        yield opened


def iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


async def alerted_budget(client: Client, key: str, url: str, name: str) -> dict[str, Any]:
    """A budget of 0.01 USD a day, alerting at 50%, and usage of 0.008 that crosses it."""
    body = {"name": name, "limit_usd": "0.01", "period": "day", "thresholds": ["50"],
            "tags": {"team": name}, "webhook_url": url, "webhook_secret": SECRET}  # fmt: skip
    created = await client.post("/v1/budgets", headers=bearer(key), json=body)
    assert created.status_code == 201, created.text
    events = [event(f"{name}-{i}", tags={"team": name}) for i in range(2)]  # 0.004 each
    assert (await post(client, key, {"events": events})).status_code == 200
    budget: dict[str, Any] = created.json()
    return budget


async def test_alerts_are_listed_with_every_delivery_attempt(
    client: Client, tenants: Tenants, receiver: Receiver, pool: asyncpg.Pool
) -> None:
    key = tenants.admin_a["key"]
    search = await alerted_budget(client, key, receiver.url, "search")
    clock = datetime.now(UTC)
    schedule = Schedule(jitter=0)
    assert (
        await deliver_due(
            pool, ALLOWED, secret_box=TEST_SECRET_BOX, schedule=schedule, clock=lambda: clock
        )
    ).retrying == 1
    later = clock + timedelta(seconds=30)
    assert (
        await deliver_due(
            pool, ALLOWED, secret_box=TEST_SECRET_BOX, schedule=schedule, clock=lambda: later
        )
    ).delivered
    ads = await alerted_budget(client, key, receiver.url, "ads")  # not delivered yet

    response = await client.get(f"/v1/budgets/{search['id']}/alerts", headers=bearer(key))
    assert response.status_code == 200, response.text
    body = response.json()
    row = await pool.fetchrow("SELECT id, crossed_at FROM budget_alerts ORDER BY id LIMIT 1")
    assert row is not None
    ids = [r["id"] for r in await pool.fetch("SELECT id FROM webhook_deliveries ORDER BY id")]
    first, second = body["alerts"][0]["deliveries"]
    assert body == {
        "alerts": [
            {
                "id": row["id"],
                "budget_id": search["id"],
                "window_start": search["window"]["start"],
                "window_end": search["window"]["end"],
                "threshold_percent": "50",
                "limit_usd": "0.01",
                "committed_usd": "0.008",
                "currency": "USD",
                "crossed_at": iso(row["crossed_at"]),
                "state": "delivered",
                "attempts": 2,
                "next_attempt_at": None,
                "delivered_at": iso(later),
                "deliveries": [
                    {
                        "id": ids[0],
                        "attempt": 1,
                        "attempted_at": iso(clock),
                        "url": receiver.url,
                        "status_code": 500,
                        "error": "receiver is sad",
                        "duration_ms": first["duration_ms"],
                    },
                    {
                        "id": ids[1],
                        "attempt": 2,
                        "attempted_at": iso(later),
                        "url": receiver.url,
                        "status_code": 200,
                        "error": None,
                        "duration_ms": second["duration_ms"],
                    },
                ],
            }
        ],
        "next_before": None,
    }
    assert float(first["duration_ms"]) > 0  # a decimal string of milliseconds

    # every budget's alerts, newest first; a page at a time
    everything = (await client.get(ALERTS, headers=bearer(key))).json()
    assert [(a["budget_id"], a["state"], a["attempts"]) for a in everything["alerts"]] == [
        (ads["id"], "pending", 0),
        (search["id"], "delivered", 2),
    ]
    assert everything["alerts"][1] == body["alerts"][0]
    page = (await client.get(ALERTS, headers=bearer(key), params={"limit": 1})).json()
    assert [a["budget_id"] for a in page["alerts"]] == [ads["id"]]
    rest = await client.get(
        ALERTS, headers=bearer(key), params={"limit": 1, "before": page["next_before"]}
    )
    assert [a["budget_id"] for a in rest.json()["alerts"]] == [search["id"]]
    # that page was the last, though full: it says so, no page of nothing after it
    assert rest.json()["next_before"] is None
    whole = (await client.get(ALERTS, headers=bearer(key), params={"limit": 2})).json()
    assert (len(whole["alerts"]), whole["next_before"]) == (2, None)


async def test_who_sees_alerts(client: Client, tenants: Tenants, receiver: Receiver) -> None:
    made = await alerted_budget(client, tenants.admin_a["key"], receiver.url, "search")
    mine = f"/v1/budgets/{made['id']}/alerts"
    reader = (await make_key(client, "acme-a", ["read"]))["key"]
    for path in (mine, ALERTS):
        got = await client.get(path, headers=bearer(reader))
        assert [a["budget_id"] for a in got.json()["alerts"]] == [made["id"]]
        assert_problem(
            await client.get(path, headers=bearer(tenants.ingest_a["key"])),
            403,
            "scope 'read' or 'admin'",
        )
        assert_problem(await client.get(path), 401, "")
    # another project's key: its own (empty) list, and 404 for the budget, as for none at all
    other = bearer(tenants.admin_b["key"])
    assert (await client.get(ALERTS, headers=other)).json() == {"alerts": [], "next_before": None}
    theirs = assert_problem(await client.get(mine, headers=other), 404, "no budget")
    missing = 10**12
    nothing = assert_problem(
        await client.get(f"/v1/budgets/{missing}/alerts", headers=other), 404, "no budget"
    )
    assert theirs["detail"].replace(str(made["id"]), "N") == nothing["detail"].replace(
        str(missing), "N"
    )


async def test_a_bad_query_is_refused(client: Client, tenants: Tenants) -> None:
    key = bearer(tenants.admin_a["key"])
    assert_problem(await client.get(ALERTS, headers=key, params={"state": "failed"}), 422, "state")
    for limit in ("0", "501", "x"):
        response = await client.get(ALERTS, headers=key, params={"limit": limit})
        assert_problem(response, 422, "limit")
