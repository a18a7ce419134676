"""A query parameter that takes one value, given twice, is a 422 naming it on every route: one of
the two would otherwise be used and the other silently ignored (`?from=...&from=...` is no
window). A parameter that takes a list (`group_by`) may repeat."""

from __future__ import annotations

import pytest

from .conftest import Client, Tenants, admin, bearer
from .test_endpoints import assert_problem

WINDOW = "from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z"


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [
        ("/v1/usage/export", f"{WINDOW}&format=csv&format=jsonl", "format"),
        ("/v1/usage/export", f"{WINDOW}&model=a&model=b", "model"),
        ("/v1/spend", f"{WINDOW}&from=2026-11-15T00:00:00Z", "from"),
        ("/v1/spend", f"{WINDOW}&bucket=day&bucket=month", "bucket"),
        ("/v1/usage/events", "status=priced&status=unpriced", "status"),
        ("/v1/budgets/alerts", "limit=1&limit=100", "limit"),
    ],
)
async def test_a_single_value_parameter_given_twice_is_a_422_naming_it(
    client: Client, tenants: Tenants, path: str, query: str, field: str
) -> None:
    response = await client.get(f"{path}?{query}", headers=bearer(tenants.admin_a["key"]))
    body = assert_problem(response, 422, f"given more than once: {field}")
    assert body["fields"] == [field]


async def test_an_operator_route_refuses_a_repeat_too(client: Client) -> None:
    response = await client.get("/v1/models?provider=openai&provider=anthropic", headers=admin())
    assert assert_problem(response, 422, "given more than once: provider")["fields"] == ["provider"]


async def test_group_by_may_repeat(client: Client, tenants: Tenants) -> None:
    response = await client.get(
        f"/v1/spend?{WINDOW}&group_by=model&group_by=provider",
        headers=bearer(tenants.admin_a["key"]),
    )
    assert response.status_code == 200, response.text
    assert response.json()["group_by"] == ["model", "provider"]
