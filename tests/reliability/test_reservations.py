"""Hard limits across API replicas: 16 clients on two real `aiserver-api` processes reserve
against one budget until they are refused. What is committed and reserved never passes the
limit by any amount, a refusal comes only when the window cannot hold the estimate, and once
every reservation is settled (some events sent twice) the window holds exactly what the settled
events cost.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import asyncpg
import pytest

from aiserver.core_db.database import database, require_pool
from aiserver.ledger.budgets.reservations import release_expired

from ..conftest import drop_database, make_settings
from .harness import (
    ADMIN_TOKEN,
    ApiProcess,
    api_env,
    api_process,
    catalogued_database,
    errors_logged,
)

pytestmark = pytest.mark.slow

#: Priced by version 1 of `versioned_document`: 1e-06 per input token, 2e-06 per output token.
MODEL: Final = "gpt-test-001"
LIMIT: Final = Decimal("0.75")
CLIENTS_PER_API: Final = 8


@dataclass
class Replicas:
    url: str
    apis: tuple[ApiProcess, ApiProcess]
    logs: Path


@pytest.fixture(scope="module")
async def replicas(
    migrated_template_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Replicas]:
    url = await catalogued_database(migrated_template_url)
    try:
        env = api_env(url, upstream_url="http://127.0.0.1:9/none")
        logs = tmp_path_factory.mktemp("reservations")
        async with (
            api_process(env, logs / "api-a.log") as a,
            api_process(env, logs / "api-b.log") as b,
        ):
            yield Replicas(url, (a, b), logs)
    finally:
        await drop_database(url)


async def project_with_budget(replicas: Replicas, slug: str) -> tuple[str, int]:
    """A new project in New York time with an ingest-and-admin key and one hard daily budget."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with replicas.apis[0].client() as client:
        project = {"slug": slug, "name": slug, "time_zone": "America/New_York"}
        made = await client.post("/v1/projects", headers=admin, json=project)
        assert made.status_code == 201, made.text
        scopes = {"name": "k", "scopes": ["ingest", "admin", "read"]}
        key = await client.post(f"/v1/projects/{slug}/keys", headers=admin, json=scopes)
        secret = key.json()["key"]
        budget = await client.post(
            "/v1/budgets", headers={"Authorization": f"Bearer {secret}"},
            json={"name": "hard", "limit_usd": str(LIMIT), "period": "day", "hard": True},
        )  # fmt: skip
        assert budget.status_code == 201, budget.text
    return secret, budget.json()["id"]


@dataclass
class Tally:
    admitted: dict[str, Decimal] = field(default_factory=dict)  # reservation id -> estimate
    refusals: list[tuple[Decimal, Decimal]] = field(default_factory=list)  # estimate, remaining
    settled_costs: dict[str, Decimal] = field(default_factory=dict)  # event key -> cost
    events: list[dict[str, Any]] = field(default_factory=list)  # to send again


async def _client(api: ApiProcess, secret: str, seed: int, tally: Tally) -> None:
    rng = random.Random(seed)
    auth = {"Authorization": f"Bearer {secret}"}
    async with api.client(headers=auth) as client:
        n = 0
        while True:
            usage = {"input_tokens": rng.randint(500, 3000), "output_tokens": rng.randint(0, 800)}
            reserved = await client.post(
                "/v1/budgets/reserve", json={"model": MODEL, "usage": usage}
            )
            estimate = (
                Decimal(usage["input_tokens"]) / 10**6 + Decimal(usage["output_tokens"]) * 2 / 10**6
            )
            if reserved.status_code == 402:
                tally.refusals.append((estimate, Decimal(reserved.json()["remaining"])))
                return
            assert reserved.status_code == 201, reserved.text
            assert Decimal(reserved.json()["estimate"]) == estimate
            reservation_id = reserved.json()["reservation_id"]
            tally.admitted[reservation_id] = estimate
            n += 1
            if rng.random() < 0.2:  # unused: given back
                released = await client.post(f"/v1/budgets/reservations/{reservation_id}/release")
                assert released.json()["state"] == "released", released.text
                continue
            # the call used what was estimated, or less
            used = {**usage, "output_tokens": usage["output_tokens"] // rng.choice((1, 2))}
            event = {"id": f"c{seed}-{n}", "model": MODEL, "usage": used,
                     "reservation_id": reservation_id}  # fmt: skip
            recorded = await client.post("/v1/usage", json=event)
            assert recorded.status_code == 201, recorded.text
            assert recorded.json()["reservation"] == "settled"
            tally.settled_costs[event["id"]] = Decimal(recorded.json()["total"])
            tally.events.append(event)


async def _held(conn: asyncpg.Connection, budget_id: int) -> tuple[Decimal, Decimal]:
    row = await conn.fetchrow(
        "SELECT coalesce(sum(committed), 0) AS c, coalesce(sum(reserved), 0) AS r"
        " FROM budget_windows WHERE budget_id = $1",
        budget_id,
    )
    assert row is not None
    return row["c"], row["r"]


async def test_sixteen_clients_on_two_replicas_never_pass_a_hard_limit_and_settle_exactly(
    replicas: Replicas,
) -> None:
    secret, budget_id = await project_with_budget(replicas, "race")
    tally = Tally()
    samples: list[tuple[Decimal, Decimal]] = []
    done = asyncio.Event()
    conn = await asyncpg.connect(replicas.url)
    try:

        async def watch() -> None:
            while not done.is_set():
                samples.append(await _held(conn, budget_id))
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        clients = [
            _client(api, secret, seed=i * CLIENTS_PER_API + j, tally=tally)
            for i, api in enumerate(replicas.apis)
            for j in range(CLIENTS_PER_API)
        ]
        try:
            await asyncio.gather(*clients)
        finally:
            done.set()
            await watcher
        # every moment that was looked at: committed + reserved within the limit
        assert samples
        assert all(c + r <= LIMIT for c, r in samples), max(c + r for c, r in samples)
        assert len(tally.refusals) == 2 * CLIENTS_PER_API
        # a refusal only when the window could not hold the estimate
        assert all(remaining < estimate for estimate, remaining in tally.refusals)
        committed, reserved = await _held(conn, budget_id)
        assert reserved == 0
        assert committed == sum(tally.settled_costs.values())
        assert committed <= LIMIT
        # events sent again (a client's retries) are duplicates and settle nothing again
        async with replicas.apis[1].client(headers={"Authorization": f"Bearer {secret}"}) as c:
            for event in tally.events[:50]:
                again = await c.post("/v1/usage", json=event)
                assert (again.status_code, again.json()["status"]) == (200, "duplicate")
        assert await _held(conn, budget_id) == (committed, Decimal(0))
        states = dict(
            await conn.fetch("SELECT state, count(*) FROM budget_reservations GROUP BY state")
        )
        assert states.get("held", 0) == 0
        assert states["settled"] == len(tally.settled_costs)
        assert states["settled"] + states.get("released", 0) == len(tally.admitted)
    finally:
        await conn.close()
    for api in replicas.apis:
        assert errors_logged(api.log) == []


async def test_a_reservation_left_unsettled_is_released_when_it_expires(
    replicas: Replicas,
) -> None:
    secret, _ = await project_with_budget(replicas, "expiry")
    auth = {"Authorization": f"Bearer {secret}"}
    async with replicas.apis[0].client(headers=auth) as client:
        made = await client.post(
            "/v1/budgets/reserve",
            json={"model": MODEL, "estimate": str(LIMIT), "expires_in_seconds": 1},
        )
        assert made.status_code == 201, made.text
        refused = await client.post(
            "/v1/budgets/reserve", json={"model": MODEL, "estimate": "0.01"}
        )
        assert refused.status_code == 402
        await asyncio.sleep(1.1)
        # the task runner's sweep, as its cron calls it
        async with database(make_settings(replicas.url).core):
            assert await release_expired(require_pool()) == 1
        admitted = await client.post(
            "/v1/budgets/reserve", json={"model": MODEL, "estimate": "0.01"}
        )
        assert admitted.status_code == 201, admitted.text
        gone = await client.post(
            f"/v1/budgets/reservations/{made.json()['reservation_id']}/release"
        )
        assert gone.json()["state"] == "expired"
