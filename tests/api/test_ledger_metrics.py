"""/metrics and the ledger: usage events counted by result as they are recorded, and the ledger's
backlog (folding lag, outbox rows waiting, repricing runs by state) read from the database at
each scrape, bounded in time; a database that fails leaves those gauges out, never the scrape."""

from __future__ import annotations

import asyncio
import logging
import time
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aiserver.api.metrics import BACKLOG_TIMEOUT_S
from aiserver.ledger.access import Access
from aiserver.ledger.budgets import reservations
from aiserver.ledger.budgets.reservations import batches

from .conftest import Client, Settings, Tenants, bearer
from .test_usage_events import at, event

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
BACKLOG = (
    "aiserver_usage_folding_lag_seconds",
    "aiserver_usage_outbox_rows",
    "aiserver_usage_reprice_runs",
)


async def scrape(client: Client) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def counted(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def post(client: Client, key: str, body: Any) -> dict[str, Any]:
    response = await client.post("/v1/usage", headers=bearer(key), json=body)
    assert response.status_code in (200, 201, 409, 422), response.text
    result: dict[str, Any] = response.json()
    return result


async def test_recorded_events_are_counted_by_result_and_unpriced_ones_by_status(
    client: Client, tenants: Tenants
) -> None:
    key = tenants.ingest_a["key"]
    before = await scrape(client)
    batch = [
        event("m-1", at(1)),
        event("m-2", at(2)),
        event("m-3", at(3), model="no-such-model-anywhere"),
        event("m-4", at(4), model="gpt-test-000", usage={"input_tokens": 1, "images": 1}),
    ]
    first = await post(client, key, {"events": batch})
    assert (first["recorded"], first["invalid"]) == (4, 0)
    again = await post(
        client,
        key,
        {"events": [*batch[:2], event("m-1", at(1), tags={"changed": "yes"}), {"id": "bad"}]},
    )
    assert (again["duplicate"], again["conflict"], again["invalid"]) == (2, 1, 1)
    single = await post(client, key, event("m-5", at(5), model="another-unknown-model"))
    assert single["status"] == "recorded"
    after = await scrape(client)
    total = "aiserver_usage_events_total"
    assert counted(before, after, total, result="recorded") == 5
    assert counted(before, after, total, result="duplicate") == 2
    assert counted(before, after, total, result="conflict") == 1
    assert counted(before, after, total, result="invalid") == 1
    unpriced = "aiserver_usage_unpriced_events_total"
    assert counted(before, after, unpriced, pricing_status="unpriced") == 2
    assert counted(before, after, unpriced, pricing_status="partially_priced") == 1


async def test_the_backlog_is_read_from_the_database_at_each_scrape(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    empty = await scrape(client)
    assert empty[("aiserver_usage_folding_lag_seconds", ())] == 0
    assert empty[("aiserver_usage_outbox_rows", ())] == 0
    for state in ("queued", "running", "done", "failed"):
        assert empty[("aiserver_usage_reprice_runs", (("state", state),))] == 0

    await post(client, tenants.ingest_a["key"], {"events": [event("a-1", at(1))]})
    await post(client, tenants.admin_b["key"], {"events": [event("b-1", at(2))]})
    await post(client, tenants.ingest_a["key"], {"events": [event("a-2", at(3))]})
    # nothing folds in these tests: every event waits in the outbox. acme-b's was received an
    # hour ago; acme-a's oldest a minute ago
    await pg.execute(
        "UPDATE usage_events SET received_at = clock_timestamp() - interval '1 hour' "
        "WHERE event_key = 'b-1'"
    )
    await pg.execute(
        "UPDATE usage_events SET received_at = clock_timestamp() - interval '1 minute' "
        "WHERE event_key = 'a-1'"
    )
    await pg.execute(
        "INSERT INTO usage_reprice_runs (project_id, requested_by, dry_run, filter, state) "
        "SELECT 0, 'test', false, '{}', s FROM unnest($1::text[]) AS s",
        ["queued", "queued", "running", "done", "done", "done"],
    )
    samples = await scrape(client)
    assert samples[("aiserver_usage_outbox_rows", ())] == 3
    assert 3600 <= samples[("aiserver_usage_folding_lag_seconds", ())] < 3600 + 60
    runs = {
        state: samples[("aiserver_usage_reprice_runs", (("state", state),))]
        for state in ("queued", "running", "done", "failed")
    }
    assert runs == {"queued": 2, "running": 1, "done": 3, "failed": 0}

    # acme-b's event is folded: the lag is acme-a's oldest, a minute
    await pg.execute("DELETE FROM usage_outbox WHERE project_id = (SELECT id FROM projects "
                     "WHERE slug = 'acme-b')")  # fmt: skip
    samples = await scrape(client)
    assert samples[("aiserver_usage_outbox_rows", ())] == 2
    assert 60 <= samples[("aiserver_usage_folding_lag_seconds", ())] < 60 + 60


async def test_a_database_error_leaves_the_backlog_out_of_the_scrape_and_logs_a_warning(
    client: Client, tenants: Tenants, pg: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    await pg.execute("ALTER TABLE usage_reprice_runs RENAME TO usage_reprice_runs_away")
    with caplog.at_level(logging.WARNING):
        samples = await scrape(client)
    assert not [key for key in samples if key[0] in BACKLOG]
    assert ("aiserver_catalog_models", ()) in samples  # the rest of the scrape is whole
    warnings = [r for r in caplog.records if "ledger metrics not read" in str(r.msg)]
    assert warnings
    assert "UndefinedTableError" in str(warnings[0].msg)
    await pg.execute("ALTER TABLE usage_reprice_runs_away RENAME TO usage_reprice_runs")
    assert ("aiserver_usage_outbox_rows", ()) in await scrape(client)


async def test_a_scrape_waits_for_the_backlog_no_longer_than_its_timeout(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    async with pg.transaction():
        await pg.execute("LOCK TABLE usage_outbox IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        samples = await scrape(client)
        waited = time.monotonic() - started
    assert BACKLOG_TIMEOUT_S <= waited < BACKLOG_TIMEOUT_S + 2
    assert not [key for key in samples if key[0] in BACKLOG]
    assert ("aiserver_usage_outbox_rows", ()) in await scrape(client)  # back once unlocked


async def test_reservations_are_counted_with_the_statements_that_carried_them(
    client: Client, tenants: Tenants, api_settings: Settings, pg: asyncpg.Connection
) -> None:
    """The counters are the process's own: reservations made in it (here straight through the
    ledger, since the test client answers one request at a time and cannot make several arrive
    together) show up in its /metrics, with the statements that carried them."""
    body = {"name": "hard", "limit_usd": "100", "period": "day", "hard": True}
    created = await client.post("/v1/budgets", headers=bearer(tenants.admin_a["key"]), json=body)
    assert created.status_code == 201, created.text
    project_id = await pg.fetchval("SELECT id FROM projects WHERE slug = 'acme-a'")
    access = Access(project_id, "acme-a", frozenset({"ingest"}))
    pool = await asyncpg.create_pool(api_settings.core.database_url, min_size=1, max_size=8)
    try:

        async def reserve() -> None:
            await reservations.reserve(pool, access, amount=Decimal("0.01"), models=["gpt-4o"])

        await reserve()  # the first cuts the window (the slow way)
        before, sent = await scrape(client), (batches.SENT.statements, batches.SENT.calls)
        await asyncio.gather(*(reserve() for _ in range(24)))
        after = await scrape(client)
    finally:
        await pool.close()
    statements = counted(before, after, "aiserver_reservation_statements_total")
    assert counted(before, after, "aiserver_reservation_calls_total") == 24
    assert statements == batches.SENT.statements - sent[0]
    assert batches.SENT.calls - sent[1] == 24
    assert 1 <= statements < 24  # reservations that arrived together shared statements
    held = await pg.fetchval(
        "SELECT sum(reserved) FROM budget_windows WHERE budget_id = $1", created.json()["id"]
    )
    assert held == Decimal("0.25")
