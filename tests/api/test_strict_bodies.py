"""Every JSON body is read strictly, as the published schema types it: a string for a boolean, a
number for a string, a Unix time for a datetime is a 422 naming the field, and nothing is kept.
Litestar converts a `JSONBody[...]` leniently (`"true"` and `1` for a boolean, `"120"` for a
number, `1893456000` for a datetime): a helper's fuzzing found each of these accepted, among
them `{"dry_run": 0}`, which applied a reprice."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from .conftest import Client, Tenants, admin, bearer
from .test_endpoints import assert_problem

BUDGET = {"name": "b", "limit_usd": "1", "period": "day"}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/budgets", {**BUDGET, "hard": "true"}, "hard"),
        ("/v1/budgets", {**BUDGET, "hard": 1}, "hard"),
        (
            "/v1/budgets/reserve",
            {"model": "gpt-test-001", "estimate": "0.001", "expires_in_seconds": "120"},
            "expires_in_seconds",
        ),
        ("/v1/usage/reprice", {"dry_run": 0}, "dry_run"),
        ("/v1/usage/reprice", {"dry_run": "false"}, "dry_run"),
        (
            "/v1/projects/acme-a/keys",
            {"name": "k", "scopes": ["read"], "expires_at": 1893456000},
            "expires_at",
        ),
        (
            "/v1/projects/acme-a/keys",
            {"name": "k", "scopes": ["read"], "expires_at": "1893456000"},
            "expires_at",
        ),
    ],
)
async def test_a_value_of_another_json_type_is_a_422_naming_its_field(
    client: Client, tenants: Tenants, pg: asyncpg.Connection, path: str, body: dict[str, Any],
    field: str,
) -> None:  # fmt: skip
    before = await _counts(pg)
    response = await client.post(path, headers=bearer(tenants.admin_a["key"]), json=body)
    problem = assert_problem(response, 422, "")
    assert [e["field"] for e in problem["errors"]] == [field], problem
    assert await _counts(pg) == before


async def test_the_operator_s_bodies_are_read_strictly_too(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    assert tenants.admin_a["key"]  # acme-a exists
    before = await _counts(pg)
    archived = await client.patch(
        "/v1/projects/acme-a", headers=admin(), json={"archived": "false"}
    )
    assert [e["field"] for e in assert_problem(archived, 422, "")["errors"]] == ["archived"]
    made = await client.post("/v1/projects", headers=admin(), json={"slug": 7, "name": "x"})
    assert [e["field"] for e in assert_problem(made, 422, "")["errors"]] == ["slug"]
    assert await _counts(pg) == before
    # a well-typed body is taken as before
    ok = await client.patch("/v1/projects/acme-a", headers=admin(), json={"archived": False})
    assert ok.status_code == 200, ok.text


async def _counts(pg: asyncpg.Connection) -> tuple[int, ...]:
    counts = []
    for table in ("budgets", "budget_reservations", "usage_reprice_runs", "api_keys", "projects"):
        counts.append(await pg.fetchval(f"SELECT count(*) FROM {table}"))  # noqa: S608
    return tuple(counts)
