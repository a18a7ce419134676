"""GET /v1/usage/export: a project's events of a window, oldest first, as CSV, JSON lines or FOCUS
CSV, exactly (money as exact decimal strings), filtered as the listing is, never another
project's; FOCUS rows that keep FOCUS 1.2's column rules; a client that hangs up ends its export
and its database connection."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import logging
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Final
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest
import uvicorn
from structlog.testing import capture_logs

from aiserver.api.app import create_app
from aiserver.api.controllers import usage_export
from aiserver.ledger.usage.export import APPLICATION_NAME, CSV_COLUMNS
from aiserver.ledger.usage.focus import COLUMNS as FOCUS_COLUMNS

from ..conftest import Settings, replace_settings
from ..reliability.harness import free_port
from ..support.logs import KeptRecords
from .conftest import Client, Tenants, admin, bearer
from .test_endpoints import assert_problem
from .test_usage_events import at, event, iso, record

BERLIN: Final = ZoneInfo("Europe/Berlin")  # acme-a's time zone

EXPORT = "/v1/usage/export"
#: Every event of these tests is in [WINDOW_FROM, WINDOW_TO).
WINDOW_FROM = at(48)
WINDOW_TO = at(0)


def window(**params: Any) -> dict[str, Any]:
    return {"from": iso(WINDOW_FROM), "to": iso(WINDOW_TO), **params}


async def export(client: Client, key: str, **params: Any) -> httpx.Response:
    response = await client.get(EXPORT, headers=bearer(key), params=window(**params))
    assert response.status_code == 200, response.text
    return response


def table(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


async def four_events(client: Client, tenants: Tenants) -> list[dict[str, Any]]:
    """A priced, a cached, a partially priced and an unpriced event in acme-a; one of acme-a's
    outside the window; one of acme-b's inside it."""
    results = await record(
        client,
        tenants.ingest_a["key"],
        event("req-4", at(4), model="no-such-model-anywhere"),
        event("req-1", at(1), tags={"team": "search", "note": 'a "quoted", value'}),
        event(
            "req-2",
            at(2),
            model="claude-sonnet-latest",
            usage={
                "input_tokens": 10000,
                "cache_read_tokens": 4000,
                "cache_write_tokens": 2000,
                "output_tokens": 300,
            },
        ),
        event("req-3", at(3), model="gpt-test-000", usage={"input_tokens": 100, "images": 2}),
        event("too-old", at(49)),
    )
    await record(client, tenants.admin_b["key"], event("b-1", at(1), tags={"team": "search"}))
    return results


async def test_csv_holds_every_event_of_the_window_oldest_first_exactly(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    unknown, priced, cached, partial, _ = await four_events(client, tenants)
    response = await export(client, tenants.admin_a["key"], format="csv")
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    name = f"acme-a-usage-{WINDOW_FROM:%Y%m%dT%H%M%SZ}-{WINDOW_TO:%Y%m%dT%H%M%SZ}.csv"
    assert response.headers["content-disposition"] == f'attachment; filename="{name}"'
    # acme-a rolls up `team`: its value has a column of its own after the API's columns
    assert response.text.split("\r\n")[0] == ",".join((*CSV_COLUMNS, "tag:team"))
    rows = table(response.text)
    assert [r["id"] for r in rows] == ["req-4", "req-3", "req-2", "req-1"]  # oldest first
    received = dict(await pg.fetch("SELECT event_key, received_at FROM usage_events"))
    gpt = (await client.get("/v1/models/gpt-test-001")).json()
    assert rows[3] == {
        "event_id": str(priced["event_id"]),
        "id": "req-1",
        "occurred_at": iso(at(1)),
        "received_at": iso(received["req-1"]),
        "model": "gpt-test-001",
        "provider": "",
        "matched_model": "gpt-test-001",
        "matched_provider": "openai",
        "service_tier": "standard",
        "usage_format": "",
        "input_tokens": "1000",
        "output_tokens": "500",
        "cache_read_tokens": "0",
        "cache_write_tokens": "0",
        "reasoning_tokens": "0",
        "other_usage": "{}",
        "tags": rows[3]["tags"],
        "pricing_status": "priced",
        "total": "0.004",
        "currency": "USD",
        "unpriced": "[]",
        "price_version": str(gpt["price_version"]),
        "catalog_version": str(gpt["catalog_version"]),
        "override_id": "",
        "note": priced["note"],
        # on the project's clock: acme-a's is Berlin's
        "occurred_at_local": at(1).astimezone(BERLIN).isoformat(),
        "month": f"{at(1).astimezone(BERLIN):%Y-%m}",
        "tag:team": "search",
    }
    # a tag value with a quote and a comma survives the CSV whole
    assert json.loads(rows[3]["tags"]) == {"team": "search", "note": 'a "quoted", value'}
    assert (rows[2]["total"], rows[2]["cache_read_tokens"]) == ("0.0252", "4000")
    assert rows[2]["event_id"] == str(cached["event_id"])
    assert (rows[1]["pricing_status"], rows[1]["total"]) == ("partially_priced", "0.0001")
    assert (json.loads(rows[1]["other_usage"]), rows[1]["unpriced"]) == (
        {"images": 2},
        '["images"]',
    )
    assert rows[1]["event_id"] == str(partial["event_id"])
    assert rows[0] | {"received_at": "", "note": ""} == {
        **dict.fromkeys((*CSV_COLUMNS, "tag:team"), ""),  # no team tag: an empty cell
        "event_id": str(unknown["event_id"]),
        "id": "req-4",
        "occurred_at": iso(at(4)),
        "model": "no-such-model-anywhere",
        "service_tier": "standard",
        "input_tokens": "1000",
        "output_tokens": "500",
        "cache_read_tokens": "0",
        "cache_write_tokens": "0",
        "reasoning_tokens": "0",
        "other_usage": "{}",
        "tags": "{}",
        "pricing_status": "unpriced",
        "currency": "USD",  # total is empty: unpriced, never 0
        "unpriced": "[]",
        "catalog_version": str(gpt["catalog_version"]),
        "occurred_at_local": at(4).astimezone(BERLIN).isoformat(),
        "month": f"{at(4).astimezone(BERLIN):%Y-%m}",
    }


async def test_jsonl_lines_are_the_events_as_the_api_shows_them(
    client: Client, tenants: Tenants
) -> None:
    results = await four_events(client, tenants)
    key = tenants.admin_a["key"]
    response = await export(client, key, format="jsonl")
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in response.text.splitlines()]
    expected = []
    unknown, priced, cached, partial, _ = results
    for result in (unknown, partial, cached, priced):  # oldest first
        shown = await client.get(f"/v1/usage/events/{result['event_id']}", headers=bearer(key))
        expected.append(shown.json())
    assert lines == expected
    assert response.text.endswith("\n")


async def test_filters_are_the_listing_s(client: Client, tenants: Tenants) -> None:
    await four_events(client, tenants)
    key = tenants.admin_a["key"]

    async def keys(**params: Any) -> list[str]:
        return [r["id"] for r in table((await export(client, key, **params)).text)]

    assert await keys(model="gpt-test-001") == ["req-1"]
    assert await keys(model="claude-sonnet-4-5-20250929") == ["req-2"]  # as the catalog priced
    assert await keys(provider="openai") == ["req-3", "req-1"]
    assert await keys(status="unpriced") == ["req-4"]
    assert await keys(**{"tag:team": "search"}) == ["req-1"]
    assert await keys(**{"tag:team": "other"}) == []
    narrow = await client.get(
        EXPORT, headers=bearer(key), params={"from": iso(at(3)), "to": iso(at(1))}
    )
    assert [r["id"] for r in table(narrow.text)] == ["req-3", "req-2"]  # [from, to)
    empty = await export(client, key, model="nothing-like-it")
    assert empty.text == ",".join((*CSV_COLUMNS, "tag:team")) + "\r\n"  # the header alone


async def test_wrong_requests_are_problems(client: Client, tenants: Tenants) -> None:
    key = tenants.admin_a["key"]

    async def get(params: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        return await client.get(EXPORT, headers=headers or bearer(key), params=params)

    problem = assert_problem(await get({"to": iso(WINDOW_TO)}), 422, "from")
    assert problem["type"] == "urn:aiserver:problem:invalid-request"
    assert_problem(await get({"from": iso(WINDOW_FROM)}), 422, "to")
    assert_problem(await get(window(format="xlsx")), 422, "format")
    assert_problem(await get({"from": iso(WINDOW_TO), "to": iso(WINDOW_FROM)}), 422, "after")
    assert_problem(await get(window(since="x")), 422, "since")
    assert_problem(await get(window(**{"tag:bad key": "x"})), 422, "tag:bad key")
    assert_problem(await get({"from": "yesterday", "to": iso(WINDOW_TO)}), 422, "RFC 3339")
    assert_problem(await get(window(status="free")), 422, "status")
    # the scope is checked first: a key without read, an operator's token
    assert_problem(await get({}, bearer(tenants.ingest_a["key"])), 403, "read")
    assert_problem(await get(window(), admin()), 403, "project's key")
    assert_problem(await get(window(), bearer(tenants.revoked_a)), 401, "")


async def test_a_key_exports_its_own_project_only(client: Client, tenants: Tenants) -> None:
    await four_events(client, tenants)
    for fmt in ("csv", "focus"):
        rows = table((await export(client, tenants.admin_b["key"], format=fmt)).text)
        ids = [r.get("id") or r.get("x_EventKey") for r in rows]
        assert ids == (["b-1", "b-1"] if fmt == "focus" else ["b-1"])  # input and output rows
    jsonl = (await export(client, tenants.admin_b["key"], format="jsonl")).text
    assert [json.loads(line)["id"] for line in jsonl.splitlines()] == ["b-1"]
    for fmt in ("csv", "jsonl", "focus"):
        a = (await export(client, tenants.admin_a["key"], format=fmt)).text
        assert "b-1" not in a
        assert "acme-b" not in a


# -- FOCUS -----------------------------------------------------------------------------------

MANDATORY = (
    "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency", "BillingPeriodEnd",
    "BillingPeriodStart", "ChargeCategory", "ChargeClass", "ChargeDescription", "ChargePeriodEnd",
    "ChargePeriodStart", "ContractedCost", "EffectiveCost", "InvoiceIssuerName", "ListCost",
    "PricingQuantity", "PricingUnit", "ProviderName", "PublisherName", "ServiceCategory",
    "ServiceName",
)  # fmt: skip
NOT_NULL = (
    "BilledCost", "BillingAccountId", "BillingCurrency", "BillingPeriodEnd", "BillingPeriodStart",
    "ChargeCategory", "ChargePeriodEnd", "ChargePeriodStart", "ContractedCost", "EffectiveCost",
    "InvoiceIssuerName", "ListCost", "ProviderName", "PublisherName", "ServiceCategory",
    "ServiceName", "ChargeFrequency", "ServiceSubcategory",
    # not null for a usage row that is no correction
    "PricingQuantity", "PricingUnit", "ConsumedQuantity", "ConsumedUnit", "ListUnitPrice",
    "ContractedUnitPrice", "PricingCategory", "SkuId", "SkuPriceId",
)  # fmt: skip
DECIMALS = (
    "BilledCost", "EffectiveCost", "ListCost", "ContractedCost", "ListUnitPrice",
    "ContractedUnitPrice", "PricingQuantity", "ConsumedQuantity",
)  # fmt: skip
#: FOCUS's numeric format: an integer, a decimal, or E notation without a '+'; no sign for a
#: positive value
NUMERIC = re.compile(r"-?\d+(\.\d+)?(E-?\d+)?")
#: FOCUS's date/time format
DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
SERVICE_CATEGORIES = {"AI and Machine Learning", "Other"}  # of the allowed values, ours
UNITS = re.compile(r"[A-Z][A-Za-z]*s")  # FOCUS's unit format: plural units, capitalised


def check_focus_rules(text: str) -> list[dict[str, str]]:
    """The FOCUS 1.2 column rules that a usage dataset of aiserver's must keep; its rows."""
    header = text.split("\r\n")[0].split(",")
    assert set(MANDATORY) <= set(header)
    custom = [c for c in header if c.startswith("x_")]
    assert header == sorted(set(header) - set(custom)) + custom  # FOCUS's first, then x_
    assert all(re.fullmatch(r"x_[A-Z][A-Za-z]*", c) for c in custom)
    assert all(re.fullmatch(r"[A-Z][A-Za-z]*", c) for c in header if c not in custom)
    rows = table(text)
    for row in rows:
        for column in NOT_NULL:
            assert row[column] != "", (column, row)
        for column in DECIMALS:
            assert NUMERIC.fullmatch(row[column]), (column, row[column])
        assert Decimal(row["ListUnitPrice"]) >= 0
        assert Decimal(row["ContractedUnitPrice"]) >= 0
        for column in (
            "ChargePeriodStart", "ChargePeriodEnd", "BillingPeriodStart", "BillingPeriodEnd",
        ):  # fmt: skip
            assert DATETIME.fullmatch(row[column]), (column, row[column])
        start, end = row["ChargePeriodStart"], row["ChargePeriodEnd"]
        assert end > start  # ISO 8601 in UTC with Z sorts as time does
        assert row["BillingPeriodStart"] <= start
        assert end <= row["BillingPeriodEnd"]
        assert row["BillingCurrency"] == "USD"
        assert row["ChargeCategory"] == "Usage"
        assert row["ChargeClass"] == ""  # null: no row is a correction
        assert row["ChargeFrequency"] == "Usage-Based"
        assert row["PricingCategory"] == "Standard"
        assert row["ServiceCategory"] in SERVICE_CATEGORIES
        assert row["ServiceSubcategory"] == "Generative AI"  # a child of AI and Machine Learning
        assert UNITS.fullmatch(row["PricingUnit"])
        assert row["ConsumedUnit"] == row["PricingUnit"]
        quantity = Decimal(row["PricingQuantity"])
        # unit price × quantity = cost, exactly, for list and contracted prices
        assert Decimal(row["ListUnitPrice"]) * quantity == Decimal(row["ListCost"])
        assert Decimal(row["ContractedUnitPrice"]) * quantity == Decimal(row["ContractedCost"])
        assert row["BilledCost"] == row["EffectiveCost"] == row["ListCost"]
        tags = json.loads(row["Tags"])
        assert isinstance(tags, dict)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items())
        assert (row["ResourceId"] == "") == (row["ResourceType"] == "")
        assert (row["SubAccountId"] == "") == (row["SubAccountType"] == "")
        assert (row["SkuId"] == "") == (row["SkuMeter"] == "")
    return rows


async def test_focus_rows_keep_the_focus_column_rules_and_add_up_to_each_event(
    client: Client, tenants: Tenants
) -> None:
    unknown, priced, cached, partial, _ = await four_events(client, tenants)
    response = await export(client, tenants.admin_a["key"], format="focus")
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    name = f"acme-a-usage-{WINDOW_FROM:%Y%m%dT%H%M%SZ}-{WINDOW_TO:%Y%m%dT%H%M%SZ}-focus.csv"
    assert response.headers["content-disposition"] == f'attachment; filename="{name}"'
    assert response.headers["x-unpriced-events"] == "1"  # req-4 has no row: it is counted
    rows = check_focus_rules(response.text)
    assert [(r["x_EventKey"], r["SkuMeter"]) for r in rows] == [
        ("req-3", "input"),  # its images have no price: no row, and it says so
        ("req-2", "input"),
        ("req-2", "cache_read"),
        ("req-2", "cache_write"),
        ("req-2", "output"),
        ("req-1", "input"),
        ("req-1", "output"),
    ]
    by_event: dict[str, Decimal] = {}
    for row in rows:
        by_event[row["x_EventKey"]] = by_event.get(row["x_EventKey"], Decimal(0)) + Decimal(
            row["BilledCost"]
        )
    assert by_event == {
        "req-3": Decimal("0.0001"),
        "req-2": Decimal("0.0252"),
        "req-1": Decimal("0.004"),
    }
    gpt = (await client.get("/v1/models/gpt-test-001")).json()
    hour = at(1).replace(minute=0, second=0, microsecond=0)
    # the month on acme-a's clock (Europe/Berlin), as spend and the dashboard count it
    local = at(1).astimezone(ZoneInfo("Europe/Berlin"))
    first = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    month = first.astimezone(UTC)
    next_month = (first + timedelta(days=32)).replace(day=1).astimezone(UTC)
    assert rows[5] == {
        "BilledCost": "0.002",
        "BillingAccountId": "acme-a",
        "BillingAccountName": "Acme-A",
        "BillingCurrency": "USD",
        "BillingPeriodEnd": f"{next_month:%Y-%m-%dT%H:%M:%SZ}",
        "BillingPeriodStart": f"{month:%Y-%m-%dT%H:%M:%SZ}",
        "ChargeCategory": "Usage",
        "ChargeClass": "",
        "ChargeDescription": "1000 input tokens of gpt-test-001 at 0.000002 USD each",
        "ChargeFrequency": "Usage-Based",
        "ChargePeriodEnd": f"{hour + timedelta(hours=1):%Y-%m-%dT%H:%M:%SZ}",
        "ChargePeriodStart": f"{hour:%Y-%m-%dT%H:%M:%SZ}",
        "ConsumedQuantity": "1000",
        "ConsumedUnit": "Tokens",
        "ContractedCost": "0.002",
        "ContractedUnitPrice": "0.000002",
        "EffectiveCost": "0.002",
        "InvoiceIssuerName": "openai",
        "ListCost": "0.002",
        "ListUnitPrice": "0.000002",
        "PricingCategory": "Standard",
        "PricingQuantity": "1000",
        "PricingUnit": "Tokens",
        "ProviderName": "openai",
        "PublisherName": "openai",
        "ResourceId": "gpt-test-001",
        "ResourceName": "gpt-test-001",
        "ResourceType": "Model",
        "ServiceCategory": "AI and Machine Learning",
        "ServiceName": "openai API",
        "ServiceSubcategory": "Generative AI",
        "SkuId": "openai/gpt-test-001/input",
        "SkuMeter": "input",
        "SkuPriceId": f"openai/gpt-test-001/input@v{gpt['price_version']}:0.000002",
        "SubAccountId": "acme-a",
        "SubAccountName": "Acme-A",
        "SubAccountType": "Project",
        "Tags": rows[5]["Tags"],
        "x_EventId": str(priced["event_id"]),
        "x_EventKey": "req-1",
        "x_OccurredAt": iso(at(1)),
        "x_Model": "gpt-test-001",
        "x_Provider": "",
        "x_ServiceTier": "standard",
        "x_PricingStatus": "priced",
        "x_UnpricedDimensions": "[]",
        "x_PriceVersion": str(gpt["price_version"]),
        "x_CatalogVersion": str(gpt["catalog_version"]),
        "x_OverrideId": "",
    }
    assert json.loads(rows[5]["Tags"]) == {"team": "search", "note": 'a "quoted", value'}
    assert list(rows[5]) == list(FOCUS_COLUMNS)
    assert rows[0]["x_PricingStatus"] == "partially_priced"
    assert rows[0]["x_UnpricedDimensions"] == '["images"]'
    assert rows[0]["ChargeDescription"] == (
        "100 input tokens of gpt-test-000 at 0.000001 USD each; the call also used images, "
        "which the catalog has no price for: not in this cost"
    )
    assert rows[1]["x_Model"] == "claude-sonnet-latest"
    assert rows[1]["ResourceId"] == "claude-sonnet-4-5-20250929"
    assert rows[1]["x_EventId"] == str(cached["event_id"])
    assert rows[0]["x_EventId"] == str(partial["event_id"])
    assert str(unknown["event_id"]) not in {r["x_EventId"] for r in rows}


async def test_focus_of_only_unpriced_events_is_the_header_and_their_count(
    client: Client, tenants: Tenants
) -> None:
    await four_events(client, tenants)
    response = await export(client, tenants.admin_a["key"], format="focus", status="unpriced")
    assert response.text == ",".join(FOCUS_COLUMNS) + "\r\n"
    assert response.headers["x-unpriced-events"] == "1"
    priced = await export(client, tenants.admin_a["key"], format="focus", status="priced")
    assert priced.headers["x-unpriced-events"] == "0"
    assert "x-unpriced-events" not in (await export(client, tenants.admin_a["key"])).headers


async def test_focus_names_the_override_that_priced_a_call_and_counts_calls_of_unknown_cost(
    client: Client, tenants: Tenants
) -> None:
    """Before, an event priced under an override laid over a price version was named by the
    version alone (`@v2`), a model only an override prices by a version 0 that does not exist
    (`@v0`, and `price_version` 0 in csv), and a call of a known model that used only what the
    model has no price for was `partially_priced` at a total of 0: no FOCUS row, not counted in
    X-Unpriced-Events, so it vanished from the file."""
    overrides = {}
    for model in ("gpt-test-001", "brand-new-model"):
        made = await client.post("/v1/overrides", headers=admin(), json={
            "provider": "openai", "model": model,
            "prices": {"input_cost_per_token": "0.000009", "output_cost_per_token": "0.00001"},
        })  # fmt: skip
        assert made.status_code == 201, made.text
        overrides[model] = made.json()["id"]
    now = datetime.now(UTC)  # after the overrides were set: they price these calls
    laid, alone, images = await record(
        client, tenants.ingest_a["key"],
        event("laid-over", now, model="gpt-test-001", usage={"input_tokens": 1}),
        event("alone", now, model="brand-new-model", usage={"input_tokens": 1}),
        event("images-only", now, model="gpt-test-000", usage={"images": 2}),
    )  # fmt: skip
    until = iso(now + timedelta(minutes=1))
    assert (laid["pricing_status"], alone["pricing_status"]) == ("priced", "priced")
    assert alone["price_version"] is None
    # its cost is unknown, not 0: unpriced, kept, and named
    assert (images["pricing_status"], images["total"], images["unpriced"]) == (
        "unpriced", None, ["images"]
    )  # fmt: skip

    response = await export(client, tenants.admin_a["key"], format="focus", to=until)
    skus = {r["x_EventKey"]: (r["SkuPriceId"], r["x_PriceVersion"]) for r in table(response.text)}
    version = laid["price_version"]
    assert skus == {
        "laid-over": (
            f"openai/gpt-test-001/input@v{version}+override{overrides['gpt-test-001']}:0.000009",
            str(version),
        ),
        "alone": (
            f"openai/brand-new-model/input@override{overrides['brand-new-model']}:0.000009",
            "",
        ),
    }
    assert response.headers["x-unpriced-events"] == "1"
    everything = await export(client, tenants.admin_a["key"], to=until)
    rows = {r["id"]: r for r in table(everything.text)}
    assert rows["alone"]["price_version"] == ""
    assert (rows["images-only"]["pricing_status"], rows["images-only"]["total"]) == (
        "unpriced", ""
    )  # fmt: skip
    assert rows["images-only"]["matched_model"] == "gpt-test-000"  # the model is known


# -- streaming -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API served by uvicorn on a port of its own (a real socket, so that a client can hang
    up) in this test's event loop, and a client of it. (The test client's app runs in a loop of
    its own, and the pool is the process's: the two are not used together.)"""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_config=None, lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(20):
            while not server.started:
                await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            yield http
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)


@pytest.fixture
async def served(api_settings: Settings, redis_clean: None) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(api_settings) as http:
        yield http


async def reader_with_events(
    http: httpx.AsyncClient, pg: asyncpg.Connection, count: int, slug: str = "acme-a"
) -> str:
    """A read key of a project `slug` holding `count` + 1 events, a microsecond apart (the
    copies are written straight into the table: the tests are of the export, not of ingest)."""
    project = await http.post("/v1/projects", headers=admin(), json={"slug": slug, "name": "Acme"})
    assert project.status_code == 201, project.text
    made = await http.post(
        f"/v1/projects/{slug}/keys",
        headers=admin(),
        json={"name": "all", "scopes": ["ingest", "read"]},
    )
    key: str = made.json()["key"]
    recorded = await http.post("/v1/usage", headers=bearer(key), json=event("req-1", at(1)))
    assert recorded.status_code == 201, recorded.text
    await pg.execute(
        """
        INSERT INTO usage_events (
            project_id, occurred_at, received_at, event_key, model, provider, matched_model,
            matched_provider, usage_format, service_tier, input_tokens, output_tokens,
            cache_read_tokens, cache_write_tokens, reasoning_tokens, usage_other, tags, status,
            total_cost, components, unpriced, pricing_note, suggestions, price_version,
            catalog_version, override_id)
        SELECT project_id, occurred_at - n * interval '1 microsecond', received_at, 'copy-' || n,
            model, provider, matched_model, matched_provider, usage_format, service_tier,
            input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens,
            usage_other, tags, status, total_cost, components, unpriced, pricing_note,
            suggestions, price_version, catalog_version, override_id
        FROM usage_events, generate_series(1, $1) AS n
        WHERE event_key = 'req-1' AND project_id = (SELECT id FROM projects WHERE slug = $2)
        """,
        count,
        slug,
    )
    return key


async def export_connections(pg: asyncpg.Connection) -> int:
    count: int = await pg.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name = $1 AND datname = current_database()",
        APPLICATION_NAME,
    )
    return count


async def no_export_connections(pg: asyncpg.Connection) -> None:
    async with asyncio.timeout(10):
        while await export_connections(pg):
            await asyncio.sleep(0.05)


async def test_a_client_that_hangs_up_ends_its_export_and_its_connection(
    served: httpx.AsyncClient, pg: asyncpg.Connection
) -> None:
    key = await reader_with_events(served, pg, 200_000)  # ~60 MB of CSV: more than sockets hold
    for _ in range(2):  # twice: the connection and the slot come back each time
        async with served.stream("GET", EXPORT, headers=bearer(key), params=window()) as response:
            assert response.status_code == 200
            chunks = response.aiter_raw()
            first = await anext(chunks)
            assert first.startswith(b"event_id,id,occurred_at")
            assert await export_connections(pg) == 1
            assert usage_export.slots.in_use == 1
        # leaving the block closed the socket mid-export
        await no_export_connections(pg)
        assert usage_export.slots.in_use == 0


async def test_a_database_that_fails_half_way_cuts_the_response_short(
    served: httpx.AsyncClient, pg: asyncpg.Connection
) -> None:
    key = await reader_with_events(served, pg, 200_000)
    async with served.stream("GET", EXPORT, headers=bearer(key), params=window()) as response:
        chunks = response.aiter_raw()
        await anext(chunks)
        await pg.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = $1 AND datname = current_database()",
            APPLICATION_NAME,
        )
        with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
            async for _ in chunks:
                pass
    await no_export_connections(pg)
    assert usage_export.slots.in_use == 0


async def test_a_process_streams_a_bounded_number_of_exports_at_once(
    served: httpx.AsyncClient, pg: asyncpg.Connection
) -> None:
    """At most MAX_EXPORTS at once, and at most MAX_EXPORTS_PER_PROJECT of one project: one
    project's key (a slow reader's) used to be able to take every slot, and no other project
    could export. The last free slot goes to a project that streams none: two projects used to
    be able to hold all four, and a third could not export."""
    assert (usage_export.MAX_EXPORTS, usage_export.MAX_EXPORTS_PER_PROJECT) == (4, 2)
    keys = {
        slug: await reader_with_events(served, pg, 100_000, slug)
        for slug in ("acme-a", "acme-b", "acme-c", "acme-d")
    }
    held: dict[str, list[httpx.Response]] = {slug: [] for slug in keys}

    async def hold(slug: str) -> None:
        request = served.build_request("GET", EXPORT, headers=bearer(keys[slug]), params=window())
        response = await served.send(request, stream=True)
        assert response.status_code == 200
        held[slug].append(response)

    async def refused(slug: str, says: str) -> None:
        more = await served.get(EXPORT, headers=bearer(keys[slug]), params=window())
        problem = assert_problem(more, 503, says)
        assert problem["type"] == "urn:aiserver:problem:exports-busy"
        assert more.headers["retry-after"] == "5"

    await hold("acme-a")
    await hold("acme-a")
    await refused("acme-a", "streams 2 usage exports of this project at once already")
    await hold("acme-b")
    # three slots taken: the fourth is kept for a project that streams none
    await refused("acme-b", "at once, 1 of this project; its last free slot is kept for a project")
    await hold("acme-c")
    assert usage_export.slots.in_use == usage_export.MAX_EXPORTS
    assert [len(held[slug]) for slug in keys] == [2, 1, 1, 0]
    await refused("acme-d", "streams 4 usage exports at once already")
    await held["acme-a"].pop().aclose()
    async with asyncio.timeout(10):
        while usage_export.slots.in_use == usage_export.MAX_EXPORTS:
            await asyncio.sleep(0.05)
    # a slot is free again: a project that held one may not take it, one that held none may
    await refused("acme-a", "at once, 1 of this project; its last free slot is kept for a project")
    whole = await served.get(EXPORT, headers=bearer(keys["acme-d"]), params=window(format="focus"))
    assert whole.status_code == 200
    assert whole.text.count("\r\n") == 1 + 2 * 100_001  # the header, an input and an output row
    for response in (response for responses in held.values() for response in responses):
        await response.aclose()
    await no_export_connections(pg)
    assert usage_export.slots.in_use == 0


async def test_an_export_that_outlasts_its_time_limit_is_cut(
    api_settings: Settings, redis_clean: None, pg: asyncpg.Connection
) -> None:
    """A client that stops reading held its export's connection, snapshot and slot for as long
    as it liked. At USAGE_EXPORT_MAX_SECONDS the export ends: the client's download breaks
    (never a short one that looks whole), and the connection and the slot come back."""
    quick = replace_settings(api_settings, usage_export_max_seconds=1)
    uvicorn_errors: list[logging.LogRecord] = []
    kept = KeptRecords(uvicorn_errors, level=logging.ERROR)
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(serve(quick))
        # after the app configured logging (which sets uvicorn's handlers anew)
        logging.getLogger("uvicorn.error").addHandler(kept)
        stack.callback(logging.getLogger("uvicorn.error").removeHandler, kept)
        key = await reader_with_events(http, pg, 200_000)  # more than sockets hold
        with capture_logs() as logs:
            async with http.stream("GET", EXPORT, headers=bearer(key), params=window()) as response:
                assert response.status_code == 200
                chunks = response.aiter_raw()
                await anext(chunks)
                await no_export_connections(pg)  # the export ended while nothing was read
                assert usage_export.slots.in_use == 0
                with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
                    async for _ in chunks:
                        pass
        (cut,) = [e for e in logs if e["event"] == "usage export cut at its time limit"]
        assert (cut["log_level"], cut["seconds"]) == ("warning", 1)
        assert cut["events"] < 200_001  # cut before its end (maybe before its first batch)
        # a whole export within the limit is not cut
        small = await reader_with_events(http, pg, 10, "acme-small")
        whole = await http.get(EXPORT, headers=bearer(small), params=window())
        assert whole.status_code == 200
        assert whole.text.count("\r\n") == 1 + 11
    # the server has stopped: no "Exception in ASGI application" from uvicorn for the cut, which
    # is on purpose (and logged as a warning above)
    assert [r.getMessage() for r in uvicorn_errors] == []


def test_times_are_utc_with_z() -> None:
    from aiserver.ledger.usage.export import utc

    berlin = datetime(2026, 12, 1, 11, 0, 0, 412000, tzinfo=timezone(timedelta(hours=1)))
    assert utc(berlin) == "2026-12-01T10:00:00.412000Z"
    assert utc(datetime(2026, 12, 1, 10, tzinfo=UTC)) == "2026-12-01T10:00:00Z"
