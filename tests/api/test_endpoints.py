"""Every endpoint's success and failure paths, against a real database and Redis."""

from __future__ import annotations

import asyncio
import socketserver
import struct
import threading
from datetime import datetime, timedelta
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from aiserver.api.app import create_app
from aiserver.costs.refresh import Outcome, refresh_catalog

from ..conftest import Settings, replace_settings
from ..support.catalog import document, models
from ..support.upstream import Upstream
from .conftest import ADMIN_TOKEN, Tenants, admin, bearer, known_catalog

Client = AsyncTestClient  # type: ignore[type-arg]
PROBLEM = "application/problem+json"


def assert_problem(response: Any, status: int, detail_part: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["type"].startswith("urn:aiserver:problem:")
    assert detail_part in body["detail"], body["detail"]
    return body


async def test_health_and_ready(client: Client) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    ready = await client.get("/ready")
    assert ready.status_code == 200
    assert [(c["name"], c["ok"], c["required"]) for c in ready.json()["checks"]] == [
        ("database", True, True),
        ("migrations", True, True),
        ("catalog", True, True),
        ("redis", True, False),
    ]
    assert "x-request-id" in ready.headers


async def test_ready_shows_redis_down_without_failing(api_settings: Settings) -> None:
    """Redis that does not answer fails only the dashboard's sign-in, uploads and refresh
    requests: /ready stays 200 (an outage must not take every replica out) and says so, with
    the error's type and not its text (which names the host)."""
    down = replace_settings(api_settings, redis_url="redis://:S3cret@127.0.0.1:1/0")
    async with AsyncTestClient(app=create_app(down)) as client:
        ready = await client.get("/ready")
    assert ready.status_code == 200
    (redis,) = [c for c in ready.json()["checks"] if c["name"] == "redis"]
    assert (redis["ok"], redis["required"]) == (False, False)
    assert redis["detail"].endswith("(the log says more)")
    assert "127.0.0.1" not in redis["detail"]
    assert "S3cret" not in ready.text


async def test_ready_fails_while_migrations_are_pending(empty_database_url: str) -> None:
    from ..conftest import make_settings

    async with AsyncTestClient(app=create_app(make_settings(empty_database_url))) as client:
        body = assert_problem(await client.get("/ready"), 503, "not ready: migrations: pending")
        checks = {c["name"]: c["ok"] for c in body["checks"]}
        assert checks == {"database": True, "migrations": False, "catalog": False, "redis": True}
        assert (await client.get("/health")).status_code == 200
        # no catalog could be read: a name cannot be priced, which is no "unknown model" (404)
        calc = await client.post("/v1/costs/calculate", json={"model": "gpt-test-000"})
        body = assert_problem(calc, 503, "no catalog loaded yet: UndefinedTableError")
        assert body["type"].endswith(":catalog-not-loaded")
        assert calc.headers["retry-after"] == "5"


async def test_costs_and_models_are_503_until_the_catalog_has_models(
    settings: Settings, upstream: Upstream
) -> None:
    cfg = replace_settings(
        settings,
        model_cost_source_url=upstream.url,
        catalog_poll_interval_seconds=0.2,
        api_admin_tokens=(ADMIN_TOKEN,),
    )
    async with AsyncTestClient(app=create_app(cfg)) as client:  # migrated, no prices yet
        request = {"model": "gpt-test-000", "usage": {"input_tokens": 10}}
        override = {
            "provider": "openai",
            "model": "gpt-test-000",
            "prices": {"input_cost_per_token": "0.000001"},
        }
        for response in (
            await client.post("/v1/costs/calculate", json=request),
            await client.post("/v1/costs/calculate/batch", json={"requests": [request]}),
            await client.get("/v1/models"),
            await client.get("/v1/models/gpt-test-000"),
            # an override could not be matched to its model: it is refused, not kept under the
            # name as given
            await client.post("/v1/overrides", json=override, headers=admin()),
        ):
            body = assert_problem(response, 503, "the catalog in the database has no models yet")
            assert body["type"].endswith(":catalog-not-loaded")
        ready = assert_problem(await client.get("/ready"), 503, "catalog: the catalog in the")
        assert {c["name"]: c["ok"] for c in ready["checks"]}["catalog"] is False

        upstream.serve(known_catalog())
        assert (
            await refresh_catalog(cfg.core, cfg.costs, trigger="test")
        ).outcome is Outcome.APPLIED
        for _ in range(100):  # the watcher reloads on the refresh's NOTIFY
            response = await client.post("/v1/costs/calculate", json=request)
            if response.status_code != 503:
                break
            await asyncio.sleep(0.05)
        assert response.status_code == 200, response.text
        assert response.json()["model"] == "gpt-test-000"
        assert (await client.get("/ready")).status_code == 200


async def test_models_are_paginated_with_a_cursor(client: Client) -> None:
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 5}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/v1/models", params=params)).json()
        seen += [m["model"] for m in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 5  # 22 models, 5 a page
    assert seen == sorted(seen)
    assert len(seen) == len(set(seen)) == 22
    first = (await client.get("/v1/models", params={"limit": 1})).json()["data"][0]
    assert first == {
        "model": "claude-sonnet-4-5-20250929",
        "provider": "anthropic",
        "mode": "chat",
        "max_input_tokens": 128000,
        "max_output_tokens": 4096,
        "input_cost_per_token": "0.000003",
        "output_cost_per_token": "0.000015",
        "price_version": first["price_version"],
        "valid_from": first["valid_from"],
        "override_id": None,
    }
    assert first["valid_from"].endswith("Z")


async def test_models_filter_by_provider_mode_and_text(client: Client) -> None:
    async def names(**params: Any) -> list[str]:
        return [m["model"] for m in (await client.get("/v1/models", params=params)).json()["data"]]

    assert await names(provider="anthropic") == ["claude-sonnet-4-5-20250929"]
    assert await names(mode="embedding") == ["text-embedding-test"]
    assert await names(q="TEST-01", limit=3) == ["gpt-test-010", "gpt-test-011", "gpt-test-012"]
    assert await names(provider="nobody") == []
    assert_problem(await client.get("/v1/models", params={"cursor": "%%%"}), 400, "cursor")
    assert_problem(await client.get("/v1/models", params={"limit": 0}), 422, "limit")


async def test_one_model_by_any_name(client: Client) -> None:
    exact = (await client.get("/v1/models/gpt-test-003")).json()
    assert (exact["matched_by"], exact["prices"]["input_cost_per_token"]) == ("exact", "0.000004")
    assert exact["prices"]["supports_function_calling"] is True
    assert len(exact["versions"]) == 1
    prefixed = (await client.get("/v1/models/openai/gpt-test-003")).json()
    assert (prefixed["model"], prefixed["matched_by"]) == ("gpt-test-003", "provider_prefix")
    alias = (await client.get("/v1/models/claude-sonnet-latest")).json()
    assert (alias["model"], alias["matched_by"]) == ("claude-sonnet-4-5-20250929", "alias")
    body = assert_problem(await client.get("/v1/models/gpt-test-3"), 404, "unknown model")
    assert body["suggestions"][0].startswith("gpt-test-")


async def test_calculate_is_exact(client: Client) -> None:
    response = await client.post(
        "/v1/costs/calculate",
        json={
            "model": "anthropic/claude-sonnet-4-5-20250929",
            "usage": {
                "input_tokens": 10000,
                "output_tokens": 2000,
                "cache_read_tokens": 4000,
                "cache_write_tokens": 1000,
                "reasoning_tokens": 500,
            },
        },
    )
    assert response.status_code == 200, response.text
    result = response.json()
    # input 5000 x 3e-06 = 0.015; cache read 4000 x 3e-07 = 0.0012;
    # cache write 1000 x 3.75e-06 = 0.00375; output 1500 + reasoning 500 at 1.5e-05 = 0.03
    assert result["total"] == "0.04995"
    assert {c["name"]: c["cost"] for c in result["components"]} == {
        "input": "0.015",
        "cache_read": "0.0012",
        "cache_write": "0.00375",
        "output": "0.0225",
        "reasoning": "0.0075",
    }
    assert (result["matched_by"], result["currency"], result["provider"]) == (
        "provider_prefix",
        "USD",
        "anthropic",
    )
    assert result["unpriced"] == []


async def test_calculate_reports_unpriced_dimensions(client: Client) -> None:
    result = (
        await client.post(
            "/v1/costs/calculate",
            json={"model": "gpt-test-000", "usage": {"input_tokens": 10, "images": 2}},
        )
    ).json()
    assert result["unpriced"] == ["images"]
    assert result["total"] == "0.00001"


async def test_calculate_errors_are_clear_problems(client: Client) -> None:
    url = "/v1/costs/calculate"
    unknown = assert_problem(await client.post(url, json={"model": "gpt-tset-001"}), 404, "")
    assert "gpt-test-001" in unknown["suggestions"]
    part = assert_problem(
        await client.post(
            url,
            json={"model": "gpt-test-000", "usage": {"input_tokens": 5, "cache_read_tokens": 6}},
        ),
        422,
        "cache_read_tokens (6) is larger than input_tokens (5)",
    )
    assert part["fields"] == ["cache_read_tokens", "input_tokens"]
    assert_problem(
        await client.post(url, json={"model": "gpt-test-000", "usage": {"input_tokens": -1}}),
        422,
        "input_tokens",
    )
    typed = assert_problem(
        await client.post(url, json={"model": "gpt-test-000", "usage": {"input_tokens": "ten"}}),
        422,
        "usage.input_tokens: Expected `int`, got `str`",
    )
    assert typed["errors"] == [
        {"field": "usage.input_tokens", "source": "body", "message": "Expected `int`, got `str`"}
    ]
    assert_problem(
        await client.post(url, json={"model": "gpt-test-000", "usage": {"input_tokens": 1.5}}),
        422,
        "Expected `int`",
    )
    assert_problem(
        await client.post(url, json={"model": "gpt-test-000", "usage": {"input_tokens": 2**64}}),
        422,
        "input_tokens",
    )
    assert_problem(
        await client.post(url, json={"model": "gpt-test-000", "temperature": 1}),
        422,
        "unknown field `temperature`",
    )
    # an unknown field whose name looks like a decoder's word is still a 422 naming it
    for body, field in (
        ({"model": "gpt-test-000", "usage": {"json_mode": 1}}, "usage.json_mode: "),
        ({"model": "gpt-test-000", "decode": True}, "decode: "),
        ({"model": "gpt-test-000", "malformed": 1}, "malformed: "),
        ({"usage": {"input_tokens": 1}}, "model: "),  # a missing one too
    ):
        problem = assert_problem(await client.post(url, json=body), 422, field)
        assert problem["type"].endswith(":invalid-request")
    assert_problem(
        await client.post(url, json={"model": "gpt-test-000", "service_tier": "turbo"}),
        422,
        "service_tier",
    )
    assert_problem(
        await client.post(url, content=b'{"model": ', headers={"content-type": "application/json"}),
        400,
        "not valid JSON",
    )
    assert_problem(
        await client.post(
            url, content=b"x" * (3 * 1024 * 1024), headers={"content-type": "application/json"}
        ),
        413,
        "too large",
    )


async def test_batch_answers_each_item_and_isolates_errors(client: Client) -> None:
    response = await client.post(
        "/v1/costs/calculate/batch",
        json={
            "requests": [
                {"model": "gpt-test-000", "usage": {"input_tokens": 1000}},
                {"model": "no-such-model"},
                {"model": "gpt-test-001", "usage": {"output_tokens": 1, "reasoning_tokens": 2}},
            ]
        },
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["succeeded"], body["failed"]) == (1, 2)
    first, second, third = body["results"]
    assert first["result"]["total"] == "0.001"
    # an item's problem is the one the single endpoint answers, spelled the same way
    single = (await client.post("/v1/costs/calculate", json={"model": "no-such-model"})).json()
    assert second["error"] == {k: v for k, v in single.items() if k != "instance"}
    assert second["error"]["type"] == "urn:aiserver:problem:unknown-model"
    assert second["error"]["status"] == 404
    assert third["error"]["type"] == "urn:aiserver:problem:invalid-usage"
    assert third["error"]["fields"] == ["reasoning_tokens", "output_tokens"]
    too_many = {"requests": [{"model": "gpt-test-000"}] * 1001}
    assert_problem(await client.post("/v1/costs/calculate/batch", json=too_many), 422, "1000")


async def test_catalog_status(client: Client) -> None:
    status = (await client.get("/v1/catalog")).json()
    assert status["model_count"] == 22
    assert status["alias_count"] == 1
    assert status["catalog_version"] == status["loaded_version"] == 1
    assert status["stale"] is False
    assert status["last_error"] is None
    assert status["last_success_at"].endswith("Z")


async def test_admin_endpoints_refuse_without_the_right_token(client: Client) -> None:
    nearly = ADMIN_TOKEN[:-1] + ("x" if ADMIN_TOKEN[-1] != "x" else "y")
    for method, url in [
        ("POST", "/v1/catalog/refresh"),
        ("GET", "/v1/overrides"),
        ("GET", "/v1/overrides?history=true"),
        ("POST", "/v1/overrides"),
        ("DELETE", "/v1/overrides/1"),
    ]:
        for headers in ({}, admin("wrong"), admin(nearly), {"Authorization": ADMIN_TOKEN}):
            response = await client.request(method, url, headers=headers, json={})
            body = assert_problem(response, 401, "an operator's token (API_ADMIN_TOKENS)")
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert ADMIN_TOKEN not in response.text
            assert nearly not in str(body)


async def test_admin_endpoints_are_closed_without_configured_tokens(
    api_settings: Settings, redis_clean: None
) -> None:
    closed = replace_settings(api_settings, api_admin_tokens=())
    async with AsyncTestClient(app=create_app(closed)) as client:
        assert_problem(
            await client.post("/v1/catalog/refresh", headers=admin(), json={}),
            403,
            "no API_ADMIN_TOKENS are configured",
        )


async def test_refresh_enqueues_the_task_runner_job(client: Client) -> None:
    response = await client.post("/v1/catalog/refresh", headers=admin(), json={"force": True})
    assert response.status_code == 202
    accepted = response.json()
    assert accepted["status_url"] == f"/v1/jobs/{accepted['job_id']}"
    job = (await client.get(accepted["status_url"])).json()
    assert (job["status"], job["function"]) == ("queued", "refresh_costs")
    assert_problem(await client.get("/v1/jobs/nope"), 404, "no job 'nope'")


async def test_a_project_s_job_is_answered_as_a_job_that_does_not_exist(
    client: Client, redis: Redis
) -> None:
    """`/v1/jobs/{id}` asks for no credential: a reprice run's job (`reprice:<run id>`) would
    tell anyone that a project's run exists, and when it ran. It is a 404, as a job id that is
    nowhere (the run is followed at `/v1/usage/reprice/{run_id}`, with a key of its project)."""
    made = await client.post("/v1/projects", headers=admin(), json={"slug": "jobs", "name": "J"})
    assert made.status_code == 201, made.text
    run = await client.post("/v1/usage/reprice", headers=admin(), json={"project": "jobs"})
    assert run.status_code == 202, run.text
    job_id = f"reprice:{run.json()['id']}"
    assert await redis.exists(f"arq:job:{job_id}")  # it is queued
    seen = assert_problem(await client.get(f"/v1/jobs/{job_id}"), 404, f"no job {job_id!r}")
    unseen = assert_problem(await client.get("/v1/jobs/reprice:0"), 404, "no job 'reprice:0'")
    assert seen["detail"].replace(job_id, "?") == unseen["detail"].replace("reprice:0", "?")


async def _wait_for(predicate: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not await predicate():
        assert loop.time() - start < timeout, "timed out"
        await asyncio.sleep(0.05)


async def test_overrides_win_and_survive_a_refresh(
    client: Client, api_settings: Settings, upstream: Upstream
) -> None:
    created = await client.post(
        "/v1/overrides",
        headers=admin(),
        json={
            "provider": "openai",
            "model": "openai/gpt-test-000",
            "prices": {"input_cost_per_token": "0.0000005"},
            "reason": "negotiated rate",
        },
    )
    assert created.status_code == 201, created.text
    override = created.json()
    assert (override["model"], override["prices"]) == (
        "gpt-test-000",
        {"input_cost_per_token": "0.0000005"},
    )

    async def priced_by_override() -> bool:
        body = (
            await client.post(
                "/v1/costs/calculate",
                json={"model": "gpt-test-000", "usage": {"input_tokens": 1000}},
            )
        ).json()
        return bool(body["total"] == "0.0005" and body["override_id"] == override["id"])

    await _wait_for(priced_by_override)
    listed = (await client.get("/v1/overrides", headers=admin())).json()
    assert [o["id"] for o in listed] == [override["id"]]

    # a refresh that changes the source price does not undo the override
    changed = models(20)
    changed["gpt-test-000"]["input_cost_per_token"] = "9e-06"
    upstream.serve(document(changed))
    upstream.serve(
        known_catalog().replace(b'"input_cost_per_token": 1e-06', b'"input_cost_per_token": 9e-06')
    )
    report = await refresh_catalog(
        api_settings.core, api_settings.costs, force=True, trigger="test"
    )
    assert report.outcome is Outcome.APPLIED
    assert report.changed == 1
    refreshed = report.catalog_version
    assert refreshed is not None

    async def reloaded() -> bool:
        # until then the API still prices with the catalog from before the refresh, where the
        # override wins whatever the refresh does to it
        body = (
            await client.post(
                "/v1/costs/calculate",
                json={"model": "gpt-test-000", "usage": {"input_tokens": 1000}},
            )
        ).json()
        return bool(body["catalog_version"] >= refreshed)

    await _wait_for(reloaded)
    assert await priced_by_override()

    assert_problem(
        await client.post(
            "/v1/overrides",
            headers=admin(),
            json={"provider": "openai", "model": "x", "prices": {"made_up_cost": "1"}},
        ),
        422,
        "unknown price fields: made_up_cost",
    )
    assert_problem(
        await client.post(
            "/v1/overrides",
            headers=admin(),
            json={"provider": "openai", "model": "x", "prices": {"input_cost_per_token": "-1"}},
        ),
        422,
        "prices",
    )
    deleted = await client.delete(f"/v1/overrides/{override['id']}", headers=admin())
    assert deleted.status_code == 204

    async def back_to_source() -> bool:
        body = (
            await client.post(
                "/v1/costs/calculate",
                json={"model": "gpt-test-000", "usage": {"input_tokens": 1000}},
            )
        ).json()
        return bool(body["total"] == "0.009" and body["override_id"] is None)

    await _wait_for(back_to_source)
    assert_problem(
        await client.delete(f"/v1/overrides/{override['id']}", headers=admin()),
        404,
        f"override {override['id']} is no longer current",
    )


async def _cost(client: Client, at: str | None = None) -> tuple[str, int | None]:
    """gpt-test-001's total for 1,000 input tokens (2e-06 each in the source), and its override."""
    request: dict[str, Any] = {"model": "gpt-test-001", "usage": {"input_tokens": 1000}}
    if at is not None:
        request["at"] = at
    body = (await client.post("/v1/costs/calculate", json=request)).json()
    return body["total"], body["override_id"]


def _earlier(timestamp: str) -> str:
    """The RFC 3339 time one microsecond before `timestamp`."""
    return (datetime.fromisoformat(timestamp) - timedelta(microseconds=1)).isoformat()


async def test_overrides_keep_their_history_and_past_calls_their_prices(client: Client) -> None:
    async def put(price: str, reason: str) -> dict[str, Any]:
        response = await client.post(
            "/v1/overrides",
            headers=admin(),
            json={"provider": "openai", "model": "gpt-test-001",
                  "prices": {"input_cost_per_token": price}, "reason": reason},
        )  # fmt: skip
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    first = await put("0.0000005", "first deal")
    second = await put("0.0000007", "second deal")
    assert set(second) == {
        "id", "provider", "model", "prices", "reason", "created_at", "valid_from", "valid_to",
    }  # fmt: skip
    assert second["id"] != first["id"]
    assert (second["valid_to"], second["created_at"]) == (None, second["valid_from"])
    assert second["valid_from"].endswith("Z")

    current = (await client.get("/v1/overrides", headers=admin())).json()
    assert current == [second]
    closed_first = {**first, "valid_to": second["valid_from"]}
    everything = await client.get("/v1/overrides", headers=admin(), params={"history": "true"})
    assert everything.json() == [closed_first, second]
    assert (await client.get("/v1/overrides?history=false", headers=admin())).json() == [second]

    async def priced_now_by(expected: tuple[str, int | None]) -> bool:
        return await _cost(client) == expected

    await _wait_for(lambda: priced_now_by(("0.0007", second["id"])))
    assert await _cost(client, _earlier(first["valid_from"])) == ("0.002", None)
    assert await _cost(client, first["valid_from"]) == ("0.0005", first["id"])
    assert await _cost(client, _earlier(second["valid_from"])) == ("0.0005", first["id"])
    assert await _cost(client, second["valid_from"]) == ("0.0007", second["id"])

    # a replaced override is closed: it cannot be deleted, and stays in the history
    body = assert_problem(
        await client.delete(f"/v1/overrides/{first['id']}", headers=admin()),
        404,
        f"override {first['id']} is no longer current: it was closed at ",
    )
    assert body["type"] == "urn:aiserver:problem:unknown-override"
    deleted = await client.delete(f"/v1/overrides/{second['id']}", headers=admin())
    assert deleted.status_code == 204
    assert (await client.get("/v1/overrides", headers=admin())).json() == []
    closed = (await client.get("/v1/overrides?history=true", headers=admin())).json()
    assert [o["id"] for o in closed] == [first["id"], second["id"]]
    assert closed[0] == closed_first
    assert closed[1]["valid_to"] is not None
    assert {**closed[1], "valid_to": None} == second
    again = assert_problem(
        await client.delete(f"/v1/overrides/{second['id']}", headers=admin()),
        404,
        f"override {second['id']} is no longer current",
    )
    assert again["type"] == "urn:aiserver:problem:unknown-override"

    await _wait_for(lambda: priced_now_by(("0.002", None)))
    assert await _cost(client, second["valid_from"]) == ("0.0007", second["id"])
    assert await _cost(client, closed[1]["valid_to"]) == ("0.002", None)

    # the parameter is checked like the others
    assert_problem(
        await client.get("/v1/overrides?histroy=true", headers=admin()),
        422,
        "unknown query parameters: histroy",
    )
    unsigned = await client.get("/v1/overrides?history=true")
    assert_problem(unsigned, 401, "an operator's token (API_ADMIN_TOKENS)")


async def test_an_override_of_a_new_model_prices_only_while_it_is_valid(client: Client) -> None:
    created = await client.post(
        "/v1/overrides",
        headers=admin(),
        json={"provider": "inhouse", "model": "house-model",
              "prices": {"input_cost_per_token": "0.000003"}},
    )  # fmt: skip
    assert created.status_code == 201, created.text
    made = created.json()
    request = {"model": "inhouse/house-model", "usage": {"input_tokens": 1000}}

    async def priced() -> bool:
        body = (await client.post("/v1/costs/calculate", json=request)).json()
        return bool(body.get("total") == "0.003" and body.get("override_id") == made["id"])

    await _wait_for(priced)
    before = _earlier(made["valid_from"])
    body = assert_problem(
        await client.post("/v1/costs/calculate", json={**request, "at": before}),
        404,
        "model 'house-model' was not in the catalog at ",
    )
    assert body["type"] == "urn:aiserver:problem:unknown-model"
    assert "(added by an override from " in body["detail"]

    assert (await client.delete(f"/v1/overrides/{made['id']}", headers=admin())).status_code == 204

    async def gone() -> bool:
        response = await client.post("/v1/costs/calculate", json=request)
        return response.status_code == 404

    await _wait_for(gone)
    at_its_time = await client.post(
        "/v1/costs/calculate", json={**request, "at": made["valid_from"]}
    )
    assert (at_its_time.json()["total"], at_its_time.json()["override_id"]) == ("0.003", made["id"])


async def test_a_refresh_elsewhere_reaches_the_api(
    client: Client, api_settings: Settings, upstream: Upstream
) -> None:
    upstream.serve(
        known_catalog().replace(b'"input_cost_per_token": 2e-06', b'"input_cost_per_token": 7e-06')
    )
    assert (
        await refresh_catalog(api_settings.core, api_settings.costs, force=True, trigger="test")
    ).outcome is Outcome.APPLIED

    async def updated() -> bool:
        body = (await client.get("/v1/models/gpt-test-001")).json()
        return bool(body["prices"]["input_cost_per_token"] == "0.000007")

    await _wait_for(updated)
    assert len((await client.get("/v1/models/gpt-test-001")).json()["versions"]) == 2


def _calculations(metrics: str, status: int) -> float:
    """The count of POST /v1/costs/calculate answered `status`, under the name docs/metrics.md
    gives (the registry is the process's: other tests' requests are counted too)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "aiserver_requests_total"
        and sample.labels.get("path") == "/v1/costs/calculate"
        and sample.labels.get("status_code") == str(status)
    )


async def test_metrics_and_openapi(client: Client) -> None:
    before = (await client.get("/metrics")).text
    answered = await client.post("/v1/costs/calculate", json={"model": "gpt-test-000"})
    metrics = (await client.get("/metrics")).text
    assert "aiserver_catalog_version 1.0" in metrics
    assert "aiserver_catalog_models 22.0" in metrics
    assert 'path="/v1/costs/calculate"' in metrics
    counted = _calculations(metrics, answered.status_code)
    assert counted == _calculations(before, answered.status_code) + 1, metrics
    schema = (await client.get("/schema/openapi.json")).json()
    assert "/v1/costs/calculate" in schema["paths"]
    assert "/v1/models/{model}" in schema["paths"]
    # the request bodies of the cost endpoints are in the document
    for path, name in (("", "CostRequest"), ("/batch", "BatchRequest")):
        body = schema["paths"][f"/v1/costs/calculate{path}"]["post"]["requestBody"]
        assert body["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{name}"
        }
    assert "usage" in schema["components"]["schemas"]["CostRequest"]["properties"]
    assert (await client.get("/schema")).status_code == 200


async def test_redis_down_refresh_is_503_and_costs_still_answer(
    api_settings: Settings,
) -> None:
    no_redis = replace_settings(api_settings, redis_url="redis://127.0.0.1:1/0")
    async with AsyncTestClient(app=create_app(no_redis)) as client:
        refused = await client.post("/v1/catalog/refresh", headers=admin(), json={})
        # the error's type, not the driver's message, which names the host (the log has it)
        body = assert_problem(refused, 503, "a backing service is unavailable (ConnectionError)")
        assert "127.0.0.1" not in refused.text, body
        ok = await client.post("/v1/costs/calculate", json={"model": "gpt-test-000"})
        assert ok.status_code == 200


class _RefusingPostgreSQL(socketserver.ThreadingTCPServer):
    """A server (threads of its own: the app under test runs in another thread and blocks the
    test's loop meanwhile) that answers a PostgreSQL client's start-up as PostgreSQL does while
    it cannot take connections: no TLS, then a FATAL error with `code`."""

    daemon_threads = True

    def __init__(self, code: str, message: str) -> None:
        fields = b"SFATAL\0VFATAL\0C" + code.encode() + b"\0M" + message.encode() + b"\0\0"
        refusal = b"E" + struct.pack("!I", len(fields) + 4) + fields

        class Refuse(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while True:
                    (length,) = struct.unpack("!I", self.rfile.read(4))
                    payload = self.rfile.read(length - 4)
                    if struct.unpack("!I", payload[:4])[0] not in (80877103, 80877104):
                        break  # the StartupMessage, after an SSLRequest or GSSENCRequest
                    self.wfile.write(b"N")
                self.wfile.write(refusal)

        super().__init__(("127.0.0.1", 0), Refuse)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("57P03", "the database system is starting up"),
        ("53300", "sorry, too many clients already"),
        ("57P01", "terminating connection due to administrator command"),
        # ALTER DATABASE ... ALLOW_CONNECTIONS false (its code is no connection class's)
        ("55000", 'database "x" is not currently accepting connections'),
    ],
)
async def test_a_database_refusing_connections_for_a_while_is_a_503_with_retry_after(
    api_settings: Settings, code: str, message: str
) -> None:
    # Before, these (a restart, a failover, max_connections) were 500s, each logged with its
    # traceback as an unhandled error, where an unreachable database is a 503 to retry.
    server = _RefusingPostgreSQL(code, message)
    down = replace_settings(
        api_settings, database_url=f"postgresql://postgres@127.0.0.1:{server.port}/x"
    )
    try:
        async with AsyncTestClient(app=create_app(down)) as client:
            key = bearer("ais_0123456789abcdef_" + "x" * 43)  # only the database can tell
            for answer in (await client.get("/v1/catalog"),
                           await client.get("/v1/projects/acme-a", headers=key)):  # fmt: skip
                body = assert_problem(answer, 503, "a backing service is unavailable")
                assert body["type"].endswith(":service-unavailable")
                assert int(answer.headers["retry-after"]) > 0
                assert str(server.port) not in answer.text  # where the database is: the log's
    finally:
        server.shutdown()
        server.server_close()


async def test_every_answer_says_nosniff_once(client: Client, tenants: Tenants) -> None:
    """A problem quotes the request (`no project '<script>'`): it had no
    `X-Content-Type-Options`, which the dashboard's pages sent; an unknown route's 404 neither."""
    answers = [
        await client.get("/health"),
        await client.get("/no-such-route"),
        await client.get("/v1/projects/%3Cscript%3E", headers=bearer(tenants.admin_a["key"])),
        await client.get("/v1/models?limit=nope"),
        await client.get("/ui/sign-in"),  # the dashboard's own header, not sent twice
    ]
    assert [a.status_code for a in answers] == [200, 404, 404, 422, 200]
    assert "no project '<script>'" in answers[2].text
    for answer in answers:
        assert answer.headers.get_list("x-content-type-options") == ["nosniff"], answer.request
