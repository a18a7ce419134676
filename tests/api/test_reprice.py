"""POST /v1/usage/reprice and its runs: a dry run, then applied, each done by the task runner's
job; and who may ask for or read which run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
from arq import create_pool
from arq.connections import RedisSettings
from arq.constants import default_queue_name
from arq.jobs import Job

from aiserver.ledger.jobs import REPRICE_JOB
from aiserver.ledger.repricing.execution import Outcome

from ..conftest import Settings
from ..support.reprice import execute_as_the_job
from .conftest import Client, Tenants, admin, bearer
from .test_endpoints import assert_problem

CALLS = [
    # unknown when recorded; an override adds it afterwards: 1000 * 1e-05 + 500 * 2e-05
    {"id": "new-1", "model": "brand-new", "usage": {"input_tokens": 1000, "output_tokens": 500}},
    # priced when recorded, and priced the same today: 1000 * 2e-06 + 500 * 4e-06
    {"id": "old-1", "model": "gpt-test-001", "usage": {"input_tokens": 1000, "output_tokens": 500}},
]


async def run_job(settings: Settings, run_id: int) -> None:
    """What the task runner does with the job the API enqueued (tests/ledger/test_repricing.py
    runs the job itself in a worker; the API's pool lives on the app's own event loop)."""
    redis = await create_pool(RedisSettings.from_dsn(settings.core.redis_url))
    try:
        job = await Job(f"reprice:{run_id}", redis, _queue_name=default_queue_name).info()
    finally:
        await redis.aclose()
    assert job is not None
    assert (job.function, job.args) == (REPRICE_JOB, (run_id,))
    assert await execute_as_the_job(settings.core.database_url, run_id) is Outcome.DONE


async def ask(client: Client, headers: dict[str, str], **body: Any) -> Any:
    return await client.post("/v1/usage/reprice", headers=headers, json=body)


async def test_a_dry_run_then_the_same_applied_each_done_by_the_task_runner(
    client: Client, tenants: Tenants, api_settings: Settings, pg: asyncpg.Connection
) -> None:
    key = bearer(tenants.admin_a["key"])
    recorded = await client.post("/v1/usage", headers=key, json={"events": CALLS})
    assert recorded.json()["results"][0]["pricing_status"] == "unpriced"
    prices = {"input_cost_per_token": "0.00001", "output_cost_per_token": "0.00002"}
    override = {"provider": "acme", "model": "brand-new", "reason": "launch", "prices": prices}
    added = await client.post("/v1/overrides", headers=admin(), json=override)
    assert added.status_code == 201, added.text

    asked = await ask(client, key, dry_run=True)

    assert asked.status_code == 202, asked.text
    queued = asked.json()
    assert (queued["state"], queued["project"], queued["dry_run"], queued["filter"]) == (
        "queued", "acme-a", True, {},
    )  # fmt: skip
    assert queued["requested_by"] == f"key {tenants.admin_a['id']}"
    await run_job(api_settings, queued["id"])
    dry = (await client.get(f"/v1/usage/reprice/{queued['id']}", headers=key)).json()
    assert (dry["state"], dry["events_examined"], dry["events_changed"]) == ("done", 2, 1)
    assert (dry["old_total"], dry["new_total"]) == ("0.004", "0.024")
    assert dry["models"] == [
        {"model": "brand-new", "events": 1, "changed": 1, "old_total": "0", "new_total": "0.02",
         "unpriced_before": 1, "unpriced_after": 0},
        {"model": "gpt-test-001", "events": 1, "changed": 0, "old_total": "0.004",
         "new_total": "0.004", "unpriced_before": 0, "unpriced_after": 0},
    ]  # fmt: skip
    assert await pg.fetchval("SELECT count(*) FROM usage_events WHERE status = 'unpriced'") == 1

    applied = (await ask(client, key, dry_run=False, model="brand-new")).json()
    await run_job(api_settings, applied["id"])

    done = (await client.get(f"/v1/usage/reprice/{applied['id']}", headers=key)).json()
    assert (done["state"], done["events_changed"], done["new_total"]) == ("done", 1, "0.02")
    event_id = recorded.json()["results"][0]["event_id"]
    event = (await client.get(f"/v1/usage/events/{event_id}", headers=key)).json()
    assert (event["pricing_status"], event["total"], event["matched_model"]) == (
        "priced", "0.02", "brand-new",
    )  # fmt: skip
    assert await pg.fetchval("SELECT count(*) FROM usage_adjustments") == 1
    listed = (await client.get("/v1/usage/reprice", headers=key)).json()
    assert [r["id"] for r in listed] == [applied["id"], queued["id"]]


async def test_a_key_reaches_only_its_own_projects_runs_and_a_404_looks_the_same(
    client: Client, tenants: Tenants
) -> None:
    a, b = bearer(tenants.admin_a["key"]), bearer(tenants.admin_b["key"])
    mine = (await ask(client, a, dry_run=True)).json()
    everyone = (await ask(client, admin(), all_projects=True)).json()
    assert everyone["project"] is None

    # another project's run, a run over every project, and no run at all: one answer
    for run_id in (mine["id"], everyone["id"], 999_999):
        assert_problem(
            await client.get(f"/v1/usage/reprice/{run_id}", headers=b),
            404,
            f"no reprice run {run_id}",
        )
    assert (await client.get("/v1/usage/reprice", headers=b)).json() == []
    # another project's slug is answered as one that does not exist
    for slug in ("acme-a", "no-such"):
        body = assert_problem(await ask(client, b, project=slug), 404, f"no project {slug!r}")
        assert body["type"].endswith(":unknown-project")
    # repricing is the admin scope's, and every project the operator's
    assert_problem(await ask(client, bearer(tenants.ingest_a["key"])), 403, "'admin'")
    every = "a reprice of every project (`all_projects`) needs an operator's token"
    assert_problem(await ask(client, a, all_projects=True), 403, every)
    assert_problem(await ask(client, admin()), 422, "names the project")
    # the operator sees every run
    listed = (await client.get("/v1/usage/reprice", headers=admin())).json()
    assert [r["id"] for r in listed] == [everyone["id"], mine["id"]]
    one = (await client.get("/v1/usage/reprice?project=acme-a", headers=admin())).json()
    assert [r["id"] for r in one] == [mine["id"]]


async def window(client: Client, key: dict[str, str]) -> tuple[str, int, int, int]:
    """The one budget's window: committed, events, unpriced and partially priced events."""
    (listed,) = (await client.get("/v1/budgets", headers=key)).json()["budgets"]
    w = listed["window"]
    return w["committed"], w["events"], w["unpriced_events"], w["partially_priced_events"]


async def test_a_back_dated_override_prices_the_calls_already_recorded_once_repriced(
    client: Client, tenants: Tenants, api_settings: Settings, pg: asyncpg.Connection
) -> None:
    """A call that used what its model had no price for (images) is partially priced. An
    override applied from when it was set only, so no reprice could ever price that call: the
    pages' advice led nowhere (a finance reviewer's walk). Back-dated with `valid_from`, the
    override prices the calls of its time: the calculator at their time, and a reprice."""
    key = bearer(tenants.admin_a["key"])
    budget = {"name": "all", "period": "total", "limit_usd": "10"}
    assert (await client.post("/v1/budgets", headers=key, json=budget)).status_code == 201
    call = {"id": "img-1", "model": "gpt-test-003",
            "usage": {"input_tokens": 1000, "output_tokens": 500, "images": 2}}  # fmt: skip
    recorded = (await client.post("/v1/usage", headers=key, json=call)).json()
    assert (recorded["pricing_status"], recorded["unpriced"]) == ("partially_priced", ["images"])
    # the budget's window commits the priced part, and counts the event as partially priced
    # (it counted unpriced events only: its committed cost read as whole)
    assert await window(client, key) == ("0.008", 1, 0, 1)
    first = await pg.fetchval(
        "SELECT min(valid_from) FROM ai_model_costs WHERE model = 'gpt-test-003'"
    )
    override = {"provider": "openai", "model": "gpt-test-003", "reason": "agreed price",
                "prices": {"output_cost_per_image": "0.04"}}  # fmt: skip

    # refused: in the future, or before the source's first price of the model
    ahead = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert_problem(await client.post("/v1/overrides", headers=admin(),
                                     json={**override, "valid_from": ahead}),
                   422, "valid_from: ")  # fmt: skip
    early = (first - timedelta(seconds=1)).isoformat()
    assert_problem(await client.post("/v1/overrides", headers=admin(),
                                     json={**override, "valid_from": early}),
                   422, "before the catalog's first price")  # fmt: skip
    assert (await client.get("/v1/overrides", headers=admin())).json() == []

    added = await client.post("/v1/overrides", headers=admin(),
                              json={**override, "valid_from": first.isoformat()})  # fmt: skip
    assert added.status_code == 201, added.text
    made = added.json()
    assert datetime.fromisoformat(made["valid_from"]) == first
    assert datetime.fromisoformat(made["created_at"]) > first  # when it was set
    # the calculator prices the call's time with it
    at = recorded["occurred_at"]
    request = {"model": call["model"], "usage": call["usage"], "at": at}
    priced = (await client.post("/v1/costs/calculate", json=request)).json()
    assert (priced["override_id"], priced["unpriced"]) == (made["id"], [])

    asked = (await ask(client, key, dry_run=False, status="partially_priced")).json()
    await run_job(api_settings, asked["id"])
    done = (await client.get(f"/v1/usage/reprice/{asked['id']}", headers=key)).json()
    assert (done["state"], done["events_changed"]) == ("done", 1)
    event = (await client.get(f"/v1/usage/events/{recorded['event_id']}", headers=key)).json()
    # 1000 * 4e-06 + 500 * 8e-06 + 2 * 0.04
    assert (event["pricing_status"], event["total"]) == ("priced", priced["total"])
    assert Decimal(event["total"]) == Decimal("0.088")
    assert await window(client, key) == ("0.088", 1, 0, 0)  # the reprice moved both

    # replaced now, it is closed: no override may begin inside what it priced, nor before
    # the one that replaced it
    assert (await client.post("/v1/overrides", headers=admin(), json=override)).status_code == 201
    assert_problem(await client.post("/v1/overrides", headers=admin(),
                                     json={**override, "valid_from": at}),
                   422, "a back-dated override may begin no earlier")  # fmt: skip
