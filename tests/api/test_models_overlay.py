"""`GET /v1/models` and `GET /v1/models/{model}` show the prices a call made now is charged: the
current override laid over the source's prices, also for a model the source dropped that an
override keeps, and for a model only an override defines. A real API on a real database."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiserver.costs.refresh import Outcome, refresh_catalog

from ..conftest import Settings
from ..support.upstream import Upstream
from .conftest import Client, admin, known_catalog


async def _override(client: Client, provider: str, model: str, price: str) -> dict[str, Any]:
    made = await client.post(
        "/v1/overrides", headers=admin(),
        json={"provider": provider, "model": model, "prices": {"input_cost_per_token": price}},
    )  # fmt: skip
    assert made.status_code == 201, made.text
    body: dict[str, Any] = made.json()
    return body


async def _detail(client: Client, model: str, version: int) -> dict[str, Any]:
    """The API's detail of `model` once its catalog is `version` or later (it reloads on a
    notification; a bounded wait, 10 s)."""
    for _ in range(200):
        body: dict[str, Any] = (await client.get(f"/v1/models/{model}")).json()
        if body.get("catalog_version", version) >= version:  # a problem names no version
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"the API's catalog did not reach version {version} within 10 s")


async def _listed(client: Client, model: str) -> list[dict[str, Any]]:
    page = (await client.get("/v1/models", params={"q": model, "limit": 500})).json()
    return [m for m in page["data"] if m["model"] == model]


async def _charged(client: Client, model: str) -> dict[str, Any]:
    answer = await client.post(
        "/v1/costs/calculate", json={"model": model, "usage": {"input_tokens": 1000}}
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def test_a_model_the_source_dropped_shows_the_override_that_keeps_it(
    client: Client, api_settings: Settings, upstream: Upstream
) -> None:
    """gpt-test-005 (input 6e-06, output 1.2e-05 in the source) with an override of its input
    price, then dropped by the source: pricing keeps it with the override laid over its last
    source prices, and so do the lookups."""
    made = await _override(client, "openai", "gpt-test-005", "0.000001")
    entries = json.loads(known_catalog())
    del entries["gpt-test-005"]
    upstream.serve(json.dumps(entries).encode())
    report = await refresh_catalog(
        api_settings.core, api_settings.costs, force=True, trigger="test"
    )
    assert (report.outcome, report.removed) == (Outcome.APPLIED, 1), report.error
    assert report.catalog_version is not None

    detail = await _detail(client, "gpt-test-005", report.catalog_version)
    charged = await _charged(client, "gpt-test-005")
    assert (charged["total"], charged["override_id"]) == ("0.001", made["id"])
    assert detail["override_id"] == made["id"], detail
    assert detail["prices"]["input_cost_per_token"] == "0.000001"  # the override's
    assert detail["prices"]["output_cost_per_token"] == "0.000012"  # the source's last
    assert detail["price_version"] == charged["price_version"]
    assert detail["versions"][-1]["valid_to"] is not None  # the source closed its version

    listed = await _listed(client, "gpt-test-005")
    assert len(listed) == 1, "a model pricing answers for is listed"
    assert (listed[0]["override_id"], listed[0]["input_cost_per_token"]) == (
        made["id"],
        "0.000001",
    )
    assert listed[0]["output_cost_per_token"] == "0.000012"

    # once the override is deleted, pricing refuses the model, and the list leaves it out
    deleted = await client.delete(f"/v1/overrides/{made['id']}", headers=admin())
    assert deleted.status_code == 204, deleted.text
    gone = await _detail(client, "gpt-test-005", report.catalog_version + 1)
    assert gone["override_id"] is None
    assert await _listed(client, "gpt-test-005") == []


async def test_a_source_model_and_a_model_only_an_override_defines_show_their_override(
    client: Client,
) -> None:
    source = await _override(client, "openai", "gpt-test-001", "0.0000005")
    added = await _override(client, "inhouse", "house-model", "0.000003")
    version = (await client.get("/v1/catalog")).json()["catalog_version"]

    detail = await _detail(client, "gpt-test-001", version)
    assert detail["override_id"] == source["id"]
    assert detail["prices"]["input_cost_per_token"] == "0.0000005"  # the override's
    assert detail["prices"]["output_cost_per_token"] == "0.000004"  # the source's
    assert (await _charged(client, "gpt-test-001"))["override_id"] == source["id"]
    [summary] = await _listed(client, "gpt-test-001")
    assert (summary["override_id"], summary["input_cost_per_token"]) == (
        source["id"],
        "0.0000005",
    )

    detail = await _detail(client, "house-model", version)
    assert (detail["override_id"], detail["provider"]) == (added["id"], "inhouse")
    assert detail["prices"]["input_cost_per_token"] == "0.000003"
    charged = await _charged(client, "house-model")
    assert charged["override_id"] == added["id"]
    [summary] = await _listed(client, "house-model")
    assert summary["override_id"] == added["id"]
    # no price version of the source prices it: null everywhere (an event's too), never 0
    assert (detail["price_version"], charged["price_version"], summary["price_version"]) == (
        None,
        None,
        None,
    )
    assert [v["price_version"] for v in detail["versions"]] == [None]  # its history's too
