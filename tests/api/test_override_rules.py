"""POST /v1/overrides: which model an override is the override of, and the prices it may set."""

from __future__ import annotations

import asyncio
from typing import Any

from .conftest import Client, admin
from .test_endpoints import assert_problem


async def _post(client: Client, provider: str, model: str, prices: dict[str, str]) -> Any:
    return await client.post(
        "/v1/overrides",
        headers=admin(),
        json={"provider": provider, "model": model, "prices": prices},
    )


async def _cost(client: Client, model: str, provider: str | None = None) -> tuple[Any, ...]:
    request: dict[str, Any] = {"model": model, "usage": {"input_tokens": 1000}}
    if provider is not None:
        request["provider"] = provider
    body = (await client.post("/v1/costs/calculate", json=request)).json()
    return body.get("model"), body.get("total"), body.get("override_id")


async def _until(client: Client, model: str, expected: tuple[Any, ...]) -> None:
    for _ in range(100):  # the API's watcher reloads on the change's NOTIFY
        if await _cost(client, model) == expected:
            return
        await asyncio.sleep(0.05)
    assert await _cost(client, model) == expected


async def test_one_model_has_one_current_override_whatever_the_provider_spelling(
    client: Client,
) -> None:
    prices = {"input_cost_per_token": "0.0000005"}
    first = await _post(client, "openai", "gpt-test-003", prices)
    second = await _post(client, "OpenAI", "gpt-test-003", {"input_cost_per_token": "0.0000007"})
    assert (first.status_code, second.status_code) == (201, 201), second.text
    assert (second.json()["provider"], second.json()["model"]) == ("openai", "gpt-test-003")
    listed = (await client.get("/v1/overrides", headers=admin())).json()
    assert [o["id"] for o in listed] == [second.json()["id"]]
    await _until(client, "gpt-test-003", ("gpt-test-003", "0.0007", second.json()["id"]))

    deleted = await client.delete(f"/v1/overrides/{second.json()['id']}", headers=admin())
    assert deleted.status_code == 204
    assert (await client.get("/v1/overrides", headers=admin())).json() == []
    await _until(client, "gpt-test-003", ("gpt-test-003", "0.004", None))  # the source's


async def test_a_new_model_named_like_another_providers_model_leaves_that_model_alone(
    client: Client,
) -> None:
    made = await _post(client, "my-vllm", "gpt-test-003", {"input_cost_per_token": "0.000009"})
    assert made.status_code == 201, made.text
    assert (made.json()["provider"], made.json()["model"]) == ("my-vllm", "my-vllm/gpt-test-003")
    await _until(
        client, "my-vllm/gpt-test-003", ("my-vllm/gpt-test-003", "0.009", made.json()["id"])
    )
    assert await _cost(client, "gpt-test-003") == ("gpt-test-003", "0.004", None)
    assert await _cost(client, "gpt-test-003", "my-vllm") == (
        "my-vllm/gpt-test-003", "0.009", made.json()["id"],
    )  # fmt: skip


async def test_an_override_naming_the_cache_read_price_twice_is_refused(client: Client) -> None:
    """input_cost_per_token_cache_hit is DeepSeek's second name for cache_read_input_token_cost:
    with both, one of the two would change nothing."""
    both = {
        "cache_read_input_token_cost": "0.000000001",
        "input_cost_per_token_cache_hit": "0.000000002",
    }
    body = assert_problem(
        await _post(client, "anthropic", "claude-sonnet-4-5-20250929", both),
        422,
        "input_cost_per_token_cache_hit",
    )
    assert body["fields"] == ["cache_read_input_token_cost", "input_cost_per_token_cache_hit"]
    assert (await client.get("/v1/overrides", headers=admin())).json() == []
