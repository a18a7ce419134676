"""A query parameter a route does not declare is a 422 naming it, before the route does anything:
a misspelt one is never ignored (`aiserver.api.query`), on the routes that take no query too."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Client, Tenants, admin, bearer
from .test_endpoints import assert_problem

RESERVATION = "0b9cd3a6-5e0f-4f5e-9a57-7f4c1d2e3b4a"
BUDGET = {"name": "b", "limit_usd": "5", "period": "month"}


async def _budget(client: Client, tenants: Tenants) -> int:
    made = await client.post("/v1/budgets", headers=bearer(tenants.admin_a["key"]), json=BUDGET)
    assert made.status_code == 201, made.text
    budget_id: int = made.json()["id"]
    return budget_id


# (method, path, who: "admin" (project a's admin key), "ingest" or "operator", JSON body)
ROUTES: list[tuple[str, str, str, Any]] = [
    ("GET", "/v1/budgets", "admin", None),
    ("POST", "/v1/budgets", "admin", BUDGET),
    ("GET", "/v1/budgets/{budget}", "admin", None),
    ("PATCH", "/v1/budgets/{budget}", "admin", {"name": "renamed"}),
    ("DELETE", "/v1/budgets/{budget}", "admin", None),
    ("POST", "/v1/budgets/reserve", "ingest", {"model": "gpt-test-003", "estimate": "0.1"}),
    ("POST", f"/v1/budgets/reservations/{RESERVATION}/release", "ingest", None),
    ("POST", "/v1/projects", "operator", {"slug": "new-one", "name": "New"}),
    ("GET", "/v1/projects/acme-a", "admin", None),
    ("PATCH", "/v1/projects/acme-a", "admin", {"name": "Renamed"}),
    ("GET", "/v1/projects/acme-a/keys", "admin", None),
    ("POST", "/v1/projects/acme-a/keys", "admin", {"name": "k", "scopes": ["read"]}),
    ("DELETE", "/v1/keys/{key}", "admin", None),
    ("GET", "/v1/catalog", "operator", None),
    ("POST", "/v1/catalog/refresh", "operator", {"force": False}),
    ("GET", "/v1/jobs/no-such-job", "operator", None),
    ("POST", "/v1/overrides", "operator",
     {"provider": "openai", "model": "gpt-test-003", "prices": {"input_cost_per_token": "1"}}),
    ("DELETE", "/v1/overrides/1", "operator", None),
    ("POST", "/v1/usage/reprice", "admin", {}),
    ("GET", "/v1/usage/reprice/1", "admin", None),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "who", "body"), ROUTES)
async def test_an_undeclared_query_parameter_is_a_422_naming_it(
    client: Client, tenants: Tenants, method: str, path: str, who: str, body: Any
) -> None:
    keys = {"admin": bearer(tenants.admin_a["key"]), "ingest": bearer(tenants.ingest_a["key"]),
            "operator": admin()}  # fmt: skip
    budget = await _budget(client, tenants)
    path = path.format(budget=budget, key=tenants.ingest_a["id"])
    before = {
        "budgets": (await client.get("/v1/budgets", headers=keys["admin"])).json(),
        "project": (await client.get("/v1/projects/acme-a", headers=keys["admin"])).json(),
        "keys": (await client.get("/v1/projects/acme-a/keys", headers=keys["admin"])).json(),
        "projects": (await client.get("/v1/projects", headers=admin())).json(),
    }
    response = await client.request(method, f"{path}?archvied=true", headers=keys[who], json=body)
    problem = assert_problem(response, 422, "unknown query parameters: archvied")
    assert problem["fields"] == ["archvied"]
    after = {
        "budgets": (await client.get("/v1/budgets", headers=keys["admin"])).json(),
        "project": (await client.get("/v1/projects/acme-a", headers=keys["admin"])).json(),
        "keys": (await client.get("/v1/projects/acme-a/keys", headers=keys["admin"])).json(),
        "projects": (await client.get("/v1/projects", headers=admin())).json(),
    }
    assert after == before  # nothing was done


async def test_the_query_is_checked_after_the_credential(client: Client, tenants: Tenants) -> None:
    response = await client.get("/v1/budgets?archvied=true")
    assert_problem(response, 401, "Authorization: Bearer")
