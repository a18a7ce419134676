"""Cost requests and overrides at the edges: times without a UTC date, upstream prices too fine
to price exactly, and overrides of fields that hold several prices. A real API on a real
database, its catalog refreshed from the local upstream."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from aiserver.api.app import create_app
from aiserver.costs.refresh import Outcome, refresh_catalog

from ..conftest import Settings
from ..support.catalog import model_entry, models
from ..support.upstream import Upstream
from .conftest import admin
from .test_endpoints import assert_problem

Client = AsyncTestClient  # type: ignore[type-arg]


def _document(entries: dict[str, Any]) -> bytes:
    """A LiteLLM-format body in which every string that spells a number, however deep, is a
    bare JSON number (`"1e-07"` is written `1e-07`)."""
    text = json.dumps(entries, indent=1)
    return re.sub(r'"(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"', r"\1", text).encode()


def _catalog(**changed: Any) -> bytes:
    """Twenty plain models, one with off-peak prices, one with web search prices."""
    entries: dict[str, Any] = models(20)
    entries["deepseek-test"] = model_entry(
        0,
        provider="deepseek",
        off_peak_pricing={"hours_utc": ["16:30-00:30"], "input_cost_per_token": "1e-07"},
    )
    entries["search-test"] = model_entry(
        1,
        search_context_cost_per_query={
            "search_context_size_low": "0.01",
            "search_context_size_medium": "0.02",
            "search_context_size_high": "0.03",
        },
    )
    for key, fields in changed.items():
        entries[key] = {**entries[key], **fields}
    return _document(entries)


@pytest.fixture
async def edge_client(
    api_settings: Settings, upstream: Upstream, redis_clean: None
) -> AsyncIterator[Client]:
    upstream.serve(_catalog())
    report = await refresh_catalog(
        api_settings.core, api_settings.costs, force=True, trigger="test"
    )
    assert report.outcome is Outcome.APPLIED, report.error
    async with AsyncTestClient(app=create_app(api_settings)) as test_client:
        yield test_client


@pytest.mark.parametrize("at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:00-01:00"])
async def test_a_time_without_a_utc_date_is_refused_not_an_error(
    edge_client: Client, at: str
) -> None:
    # Its offset carries the time past year 1 or 9999: deciding the off-peak window converted
    # it to UTC and overflowed, a 500 (and a whole batch failed with it).
    request = {"model": "deepseek-test", "usage": {"input_tokens": 5}, "at": at}
    body = assert_problem(
        await edge_client.post("/v1/costs/calculate", json=request), 422, "is out of range"
    )
    assert body["type"] == "urn:aiserver:problem:invalid-request"
    for model in ("deepseek-test", "gpt-test-001"):  # with off-peak prices or without
        answer = await edge_client.post(
            "/v1/costs/calculate/batch",
            json={"requests": [{**request, "model": model}, {**request, "at": None}]},
        )
        assert answer.status_code == 200, answer.text
        items = answer.json()["results"]
        assert items[0]["error"]["status"] == 422
        assert items[0]["error"]["type"] == "urn:aiserver:problem:invalid-request"
        assert items[1]["result"]["total"] in ("0.0000005", "0.000005")  # off-peak or not
    # the edges themselves, in UTC, are priced
    for edge in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "0001-01-01T01:00:00+01:00"):
        priced = await edge_client.post("/v1/costs/calculate", json={**request, "at": edge})
        assert priced.status_code == 200, priced.text


@pytest.mark.parametrize(
    ("price", "reason"),
    [
        ("1e-16383", "16383 decimal places, more than 400"),  # NUMERIC holds it
        ("0.000003" + "0" * 1200 + "1", "1207 decimal places, more than 400"),
        ("2.5e1000", "2.500E+1000 is not below 1E+100"),
    ],
    ids=["tiny", "long", "huge"],
)
async def test_an_upstream_price_too_fine_to_price_exactly_keeps_the_previous_version(
    edge_client: Client, api_settings: Settings, upstream: Upstream, price: str, reason: str
) -> None:
    # Stored as it was, such a price made every call of the model that used it fail: its cost
    # beside the others needs more digits than a calculation has, and exact arithmetic refuses
    # to round (a 500). Now the entry is skipped, like one with a negative price.
    upstream.serve(_catalog(**{"gpt-test-003": {"cache_read_input_token_cost": price}}))
    report = await refresh_catalog(
        api_settings.core, api_settings.costs, force=True, trigger="test"
    )
    assert report.outcome is Outcome.UNCHANGED, report.error  # nothing else changed
    assert report.skipped == {
        "gpt-test-003": f"price at cache_read_input_token_cost cannot be priced exactly: {reason}"
    }
    answer = await edge_client.post(
        "/v1/costs/calculate",
        json={"model": "gpt-test-003", "usage": {"input_tokens": 10, "cache_read_tokens": 4}},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["total"] == "0.00004"  # the previous version: 10 input tokens at 4e-06


@pytest.mark.parametrize(
    "field", ["search_context_cost_per_query", "tiered_pricing", "off_peak_pricing"]
)
async def test_an_override_of_a_field_holding_several_prices_is_refused(
    edge_client: Client, field: str
) -> None:
    # The value of an override is one price. In place of a field that holds prices by size,
    # range or window it priced nothing, and dropped the source's prices of that field: web
    # searches of the model became unpriced, after a 201.
    for model in ("search-test", "a-new-model"):
        body = assert_problem(
            await edge_client.post(
                "/v1/overrides",
                headers=admin(),
                json={"provider": "openai", "model": model, "prices": {field: "0.05"}},
            ),
            422,
            f"fields that hold several prices, which an override cannot set: {field}",
        )
        assert body["fields"] == [field]
    assert (await edge_client.get("/v1/overrides", headers=admin())).json() == []
    answer = await edge_client.post(
        "/v1/costs/calculate", json={"model": "search-test", "usage": {"web_searches": 2}}
    )
    assert answer.status_code == 200, answer.text
    assert (answer.json()["total"], answer.json()["unpriced"]) == ("0.04", [])


async def test_a_model_the_source_drops_keeps_its_override(
    edge_client: Client, api_settings: Settings, upstream: Upstream
) -> None:
    """A refresh never undoes an override: the source drops a model whose prices the operator
    overrode, and calls are still priced, with its last source prices and the override laid
    over them (and a note saying so). Once the override is deleted, the model is gone."""
    made = await edge_client.post(
        "/v1/overrides", headers=admin(),
        json={"provider": "openai", "model": "gpt-test-005",
              "prices": {"input_cost_per_token": "0.000001"}},
    )  # fmt: skip
    assert made.status_code == 201, made.text
    dropped = _catalog()
    entries = json.loads(dropped)
    del entries["gpt-test-005"]
    upstream.serve(json.dumps(entries).encode())
    report = await refresh_catalog(
        api_settings.core, api_settings.costs, force=True, trigger="test"
    )
    assert report.outcome is Outcome.APPLIED, report.error
    call = {"model": "gpt-test-005", "usage": {"input_tokens": 10, "output_tokens": 10}}
    priced = await answer_of(edge_client, call, report.catalog_version)
    # 10 input tokens at the override's 1e-06, 10 output tokens at the source's last 1.2e-05
    assert (priced["total"], priced["override_id"]) == ("0.00013", made.json()["id"])
    assert "left the source at" in " ".join(priced["notes"]), priced["notes"]
    deleted = await edge_client.delete(f"/v1/overrides/{made.json()['id']}", headers=admin())
    assert deleted.status_code == 204, deleted.text
    gone = await answer_of(edge_client, call, report.catalog_version + 1)
    assert gone["status"] == 404, gone
    assert "was not in the catalog" in gone["detail"], gone


async def answer_of(client: Client, call: dict[str, Any], version: int) -> dict[str, Any]:
    """The API's answer to `call` once its catalog is `version` (it reloads on a notification;
    a bounded wait, 10 s)."""
    for _ in range(200):
        answer = await client.post("/v1/costs/calculate", json=call)
        body: dict[str, Any] = answer.json()
        if body.get("catalog_version", version) >= version:  # a problem names no version
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"the API's catalog did not reach version {version} within 10 s")


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"role-name: prod-admin-credentials-AKIA1234", "is other text"),
        (b"<html><body>token=AKIA1234</body></html>", "looks like HTML or XML"),
    ],
)
async def test_a_body_that_is_not_json_is_described_not_quoted(
    edge_client: Client, api_settings: Settings, upstream: Upstream, body: bytes, kind: str
) -> None:
    """The refresh's reason is shown to anyone (GET /v1/catalog), and the upstream, or a
    redirect it sent the fetch to, may have answered with something secret: the reason says
    what the body is, never what it says."""
    upstream.serve(body)
    report = await refresh_catalog(
        api_settings.core, api_settings.costs, force=True, trigger="test"
    )
    assert report.outcome is Outcome.REJECTED, report
    shown = (await edge_client.get("/v1/catalog")).json()
    assert kind in shown["last_error"], shown
    assert f"({len(body):,} bytes)" in shown["last_error"]
    assert "AKIA1234" not in json.dumps(shown)
