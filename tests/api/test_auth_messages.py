"""What a refusal tells a newcomer to send: a 401 on a project's usage or budgets asks for a
project's key (an operator's token, which the old text offered, is refused there with 403);
a 403 names every scope that would do, not the strongest."""

from __future__ import annotations

from litestar.testing import AsyncTestClient

from aiserver.api.app import create_app

from ..conftest import Settings, replace_settings
from .conftest import Client, Tenants, admin, bearer
from .test_usage_events import assert_problem


async def test_a_401_asks_for_the_credential_the_route_takes(client: Client) -> None:
    for method, path in (("POST", "/v1/usage"), ("GET", "/v1/spend"), ("GET", "/v1/budgets"),
                         ("GET", "/v1/usage/events"), ("POST", "/v1/budgets/reserve")):  # fmt: skip
        answer = await client.request(method, path)
        problem = assert_problem(answer, 401, "this endpoint needs a project's key (ais_<public")
        assert "operator" not in problem["detail"], path
    # routes an operator may use still offer both
    answer = await client.get("/v1/projects/acme-a")
    assert_problem(answer, 401, "this endpoint needs a project key or an operator's token")
    # and those only the operator may use ask for its token alone (they offered a project key)
    for method in ("GET", "POST"):
        answer = await client.request(method, "/v1/projects")
        problem = assert_problem(answer, 401, "this endpoint needs an operator's token (API_ADMIN")
        assert "project" not in problem["detail"]


async def test_a_server_without_operator_tokens_says_so_on_the_operator_s_routes(
    api_settings: Settings,
) -> None:
    """Creating and listing projects answered 401 "the token is not valid" to any token on a
    server with no API_ADMIN_TOKENS, where the catalog's routes said that they are disabled."""
    without = replace_settings(api_settings, api_admin_tokens=())
    async with AsyncTestClient(app=create_app(without)) as client:
        for method, path in (("POST", "/v1/projects"), ("GET", "/v1/projects"),
                             ("POST", "/v1/catalog/refresh")):  # fmt: skip
            for headers in ({}, admin()):
                answer = await client.request(method, path, headers=headers, json={})
                problem = assert_problem(answer, 403, "admin endpoints are disabled: no API_ADMIN")
                assert problem["type"].endswith(":admin-disabled")


async def test_the_operator_s_token_on_a_project_s_usage_is_a_403_that_says_why(
    client: Client, tenants: Tenants
) -> None:
    answer = await client.post("/v1/usage", headers=admin(), json={"zz": 1})
    assert_problem(answer, 403, "this needs a project's key with the scope 'ingest'")
    answer = await client.get("/v1/budgets", headers=admin())
    assert_problem(answer, 403, "this needs a project's key with the scope 'read' or 'admin'")


async def test_a_403_names_every_scope_that_would_do(client: Client, tenants: Tenants) -> None:
    """An ingest key listing budgets was told it needed 'admin'; 'read' does."""
    answer = await client.get("/v1/budgets", headers=bearer(tenants.ingest_a["key"]))
    assert_problem(
        answer, 403, "this needs a key with the scope 'read' or 'admin'; this key has ingest"
    )
    answer = await client.get("/v1/budgets/alerts", headers=bearer(tenants.ingest_a["key"]))
    assert_problem(answer, 403, "this needs a key with the scope 'read' or 'admin'")


async def test_the_credential_is_checked_before_the_query_on_a_job_too(client: Client) -> None:
    """`GET /v1/jobs/{id}` read its query first: a key that is not valid, with a parameter the
    route does not take, got 422 "unknown query parameters" instead of 401."""
    answer = await client.get(
        "/v1/jobs/doc-x", params={"zz": "1"}, headers=bearer("ais_0123456789abcdef_" + "x" * 43)
    )
    assert_problem(answer, 401, "the key is not valid")
