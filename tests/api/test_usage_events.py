"""GET /v1/usage/events and /v1/usage/events/{event_id}: a project's events read back exactly,
filtered, walked page by page once each whatever is recorded meanwhile, and never another
project's."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg

from aiserver.ledger.usage.partitions import month_of, next_month, partition_name
from aiserver.ledger.usage.reading import Position, event_query
from aiserver.ledger.usage.store.reading import EventFilters, events_statement

from .conftest import Client, Tenants, admin, bearer
from .test_endpoints import assert_problem

#: Every event of these tests happened before BASE, a whole hour a day ago.
BASE = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=1)
EVENTS = "/v1/usage/events"


def at(hours: float) -> datetime:
    return BASE - timedelta(hours=hours)


def iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def event(key: str, when: datetime, **fields: Any) -> dict[str, Any]:
    return {
        "id": key,
        "model": "gpt-test-001",  # 2e-06 in, 4e-06 out
        "usage": {"input_tokens": 1000, "output_tokens": 500},
        "occurred_at": iso(when),
        **fields,
    }


def component(name: str, quantity: int, unit_price: str, cost: str) -> dict[str, Any]:
    return {"name": name, "quantity": quantity, "unit_price": unit_price, "cost": cost}


async def record(client: Client, key: str, *events: dict[str, Any]) -> list[dict[str, Any]]:
    response = await client.post("/v1/usage", headers=bearer(key), json={"events": list(events)})
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    assert [r["status"] for r in results] == ["recorded"] * len(events), results
    return results


async def listing(client: Client, key: str, **params: Any) -> dict[str, Any]:
    response = await client.get(EVENTS, headers=bearer(key), params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def keys_of(client: Client, key: str, **params: Any) -> list[str]:
    return [e["id"] for e in (await listing(client, key, limit=1000, **params))["data"]]


async def test_an_event_reads_back_whole_with_its_exact_cost(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    reader = tenants.admin_a["key"]
    priced, cached, partial, unknown = await record(
        client,
        tenants.ingest_a["key"],
        event("req-1", at(1), tags={"team": "search", "user": "u-1"}),
        event(
            "req-2",
            at(2),
            model="claude-sonnet-latest",
            service_tier="standard",
            usage={
                "input_tokens": 10000,
                "cache_read_tokens": 4000,
                "cache_write_tokens": 2000,
                "output_tokens": 300,
            },
        ),
        event("req-3", at(3), model="gpt-test-000", usage={"input_tokens": 100, "images": 2}),
        event("req-4", at(4), model="no-such-model-anywhere"),
    )
    gpt = (await client.get("/v1/models/gpt-test-001")).json()
    claude = (await client.get("/v1/models/claude-sonnet-4-5-20250929")).json()
    gpt0 = (await client.get("/v1/models/gpt-test-000")).json()
    received = {
        r["event_key"]: r["received_at"]
        for r in await pg.fetch("SELECT event_key, received_at FROM usage_events")
    }

    def before_catalog(when: datetime, model: dict[str, Any]) -> str:
        # the catalog was loaded by this test, after the calls: its first prices are used
        first = datetime.fromisoformat(model["valid_from"]).isoformat()
        return (
            f"{when.isoformat()} is before the catalog's first price for {model['model']!r} "
            f"({first}); that first price was used"
        )

    def common(key: str, result: dict[str, Any], when: datetime) -> dict[str, Any]:
        return {
            "event_id": result["event_id"],
            "id": key,
            "occurred_at": iso(when),
            "received_at": iso(received[key]),
            "provider": None,
            "service_tier": "standard",
            "usage_format": None,
            "currency": "USD",
            "suggestions": [],
            "override_id": None,
        }

    expected = {
        "req-1": {
            **common("req-1", priced, at(1)),
            "model": "gpt-test-001",
            "matched_model": "gpt-test-001",
            "matched_provider": "openai",
            "usage": {"input_tokens": 1000, "output_tokens": 500},
            "tags": {"team": "search", "user": "u-1"},
            "pricing_status": "priced",
            # 1000 * 0.000002 + 500 * 0.000004
            "total": "0.004",
            "components": [
                component("input", 1000, "0.000002", "0.002"),
                component("output", 500, "0.000004", "0.002"),
            ],
            "unpriced": [],
            "note": before_catalog(at(1), gpt),
            "price_version": gpt["price_version"],
            "catalog_version": gpt["catalog_version"],
        },
        "req-2": {
            **common("req-2", cached, at(2)),
            "model": "claude-sonnet-latest",
            "matched_model": "claude-sonnet-4-5-20250929",
            "matched_provider": "anthropic",
            "usage": {
                "input_tokens": 10000,
                "output_tokens": 300,
                "cache_read_tokens": 4000,
                "cache_write_tokens": 2000,
            },
            "tags": {},
            "pricing_status": "priced",
            # 4000 * 0.000003 + 4000 * 0.0000003 + 2000 * 0.00000375 + 300 * 0.000015
            # = 0.012 + 0.0012 + 0.0075 + 0.0045
            "total": "0.0252",
            "components": [
                component("input", 4000, "0.000003", "0.012"),
                component("cache_read", 4000, "0.0000003", "0.0012"),
                component("cache_write", 2000, "0.00000375", "0.0075"),
                component("output", 300, "0.000015", "0.0045"),
            ],
            "unpriced": [],
            "note": before_catalog(at(2), claude),
            "price_version": claude["price_version"],
            "catalog_version": claude["catalog_version"],
        },
        "req-3": {
            **common("req-3", partial, at(3)),
            "model": "gpt-test-000",
            "matched_model": "gpt-test-000",
            "matched_provider": "openai",
            "usage": {"input_tokens": 100, "images": 2},
            "tags": {},
            "pricing_status": "partially_priced",
            "total": "0.0001",  # 100 * 0.000001; the images have no price
            "components": [component("input", 100, "0.000001", "0.0001")],
            "unpriced": ["images"],
            "note": before_catalog(at(3), gpt0),
            "price_version": gpt0["price_version"],
            "catalog_version": gpt0["catalog_version"],
        },
        "req-4": {
            **common("req-4", unknown, at(4)),
            "model": "no-such-model-anywhere",
            "matched_model": None,
            "matched_provider": None,
            "usage": {"input_tokens": 1000, "output_tokens": 500},
            "tags": {},
            "pricing_status": "unpriced",
            "total": None,
            "components": [],
            "unpriced": [],
            "note": unknown["note"],
            "price_version": None,
            "catalog_version": gpt["catalog_version"],
        },
    }
    assert unknown["note"].startswith("unknown model 'no-such-model-anywhere'")
    for key, result in zip(expected, (priced, cached, partial, unknown), strict=True):
        response = await client.get(f"{EVENTS}/{result['event_id']}", headers=bearer(reader))
        assert response.status_code == 200, response.text
        assert response.json() == expected[key]
    page = await listing(client, reader)
    assert page == {"data": list(expected.values()), "next_cursor": None}


async def _scene(client: Client, tenants: Tenants) -> dict[str, int]:
    """Six events of project a at known times, and one of project b; {key: event id}."""
    results = await record(
        client,
        tenants.ingest_a["key"],
        event("e1", at(10), tags={"team": "search", "feature": "chat"}),
        event("e2", at(20), model="GPT-Test-002"),
        event("e3", at(30), model="gpt-test-002", provider="openai", tags={"team": "ads"}),
        event("e4", at(40), model="no-such-model-anywhere", tags={"team": "search"}),
        event("e5", at(50), model="gpt-test-000", usage={"input_tokens": 1, "images": 1}),
        event("e6", at(24 * 40), tags={"team": "search", "feature": "chat"}),  # a month before
    )
    await record(client, tenants.admin_b["key"], event("b1", at(10), tags={"team": "search"}))
    return {r["id"]: r["event_id"] for r in results}


async def test_filters_time_window_model_provider_status_and_tags(
    client: Client, tenants: Tenants
) -> None:
    await _scene(client, tenants)
    key = tenants.admin_a["key"]
    assert await keys_of(client, key) == ["e1", "e2", "e3", "e4", "e5", "e6"]
    # [from, to): the event at `from` is in, the one at `to` is out
    assert await keys_of(client, key, **{"from": iso(at(30)), "to": iso(at(10))}) == ["e2", "e3"]
    assert await keys_of(client, key, **{"from": iso(at(20))}) == ["e1", "e2"]
    assert await keys_of(client, key, to=iso(at(50))) == ["e6"]
    # offsets and a date alone are read as times in UTC
    berlin = at(30).astimezone(timezone(timedelta(hours=1))).isoformat()
    assert await keys_of(client, key, **{"from": berlin, "to": iso(at(29))}) == ["e3"]
    # an offset's + sent unescaped arrives as a space: it is read as the + it was
    spaced = f"{EVENTS}?from={berlin}&to={iso(at(29))}&limit=5"
    assert "+01:00" in spaced
    assert [e["id"] for e in (await client.get(spaced, headers=bearer(key))).json()["data"]] == [
        "e3"
    ]
    day = at(10).date().isoformat()  # a date alone is its midnight in UTC
    midnight = datetime.fromisoformat(day).replace(tzinfo=UTC)
    hours = {"e1": 10, "e2": 20, "e3": 30, "e4": 40, "e5": 50}
    expected = [k for k, h in hours.items() if at(h) >= midnight]
    assert await keys_of(client, key, **{"from": day, "to": iso(at(9))}) == expected
    # a model as the catalog priced it finds every spelling; a spelling finds only its own
    assert await keys_of(client, key, model="gpt-test-002") == ["e2", "e3"]
    assert await keys_of(client, key, model="GPT-Test-002") == ["e2"]
    assert await keys_of(client, key, model="gpt-test-0") == []
    assert await keys_of(client, key, provider="openai") == ["e1", "e2", "e3", "e5", "e6"]
    assert await keys_of(client, key, provider="anthropic") == []
    assert await keys_of(client, key, status="unpriced") == ["e4"]
    assert await keys_of(client, key, status="partially_priced") == ["e5"]
    assert await keys_of(client, key, status="priced") == ["e1", "e2", "e3", "e6"]
    assert await keys_of(client, key, **{"tag:team": "search"}) == ["e1", "e4", "e6"]
    both = {"tag:team": "search", "tag:feature": "chat"}
    assert await keys_of(client, key, **both) == ["e1", "e6"]
    assert await keys_of(client, key, **both, **{"from": iso(at(24))}) == ["e1"]
    assert await keys_of(client, key, **{"tag:team": "Search"}) == []
    assert await keys_of(client, key, **{"tag:nobody": "x"}) == []
    assert await keys_of(client, key, **{"tag:team": "search"}, status="priced") == ["e1", "e6"]


async def test_pages_meet_every_event_once_while_older_and_newer_ones_are_recorded(
    client: Client, tenants: Tenants
) -> None:
    reader, writer = tenants.admin_a["key"], tenants.ingest_a["key"]
    # 32 events over three months; several instants hold three or four events (ids decide)
    hours = [*range(0, 24 * 75, 24 * 75 // 10), 5, 5, 5, 100, 100, 100, 24 * 40, 24 * 40]
    hours += [24 * 40, 24 * 70, 24 * 70, 24 * 70, 3, 3, 3, 3, 7, 8, 9, 24 * 41, 24 * 41, 24 * 41]
    initial = await record(client, writer, *(event(f"i{n}", at(h)) for n, h in enumerate(hours)))
    assert len(initial) == 32
    known = {r["id"]: (datetime.fromisoformat(r["occurred_at"]), r["event_id"]) for r in initial}
    ahead: list[str] = []  # recorded during the walk where it has not been yet: it must be met
    behind: list[str] = []  # recorded where the walk has passed: it must not be
    walked: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        page = await listing(client, reader, limit=4, **({"cursor": cursor} if cursor else {}))
        pages += 1
        walked += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            assert len(page["data"]) <= 4
            break
        assert len(page["data"]) == 4
        last = page["data"][-1]
        last_at = datetime.fromisoformat(last["occurred_at"])
        n = pages
        news = [
            event(f"newer-{n}", at(-1 + n / 100)),  # newer than all: the walk has passed it
            event(f"same-{n}", last_at),  # the page's last instant, a larger id: passed too
            event(f"older-{n}", at(24 * 80 + n)),  # older than all: ahead
            event(f"between-{n}", last_at - timedelta(microseconds=1)),  # just after: ahead
        ]
        for result in await record(client, writer, *news):
            key = result["id"]
            (behind if key.startswith(("newer", "same")) else ahead).append(key)
            known[key] = (datetime.fromisoformat(result["occurred_at"]), result["event_id"])
    keys = [e["id"] for e in walked]
    assert len(keys) == len(set(keys)), "an event was met twice"
    expected = sorted(
        [r["id"] for r in initial] + ahead, key=lambda k: known[k], reverse=True
    )  # newest first: occurred_at, then event id
    assert keys == expected
    assert not set(keys) & set(behind)
    assert pages == -(-len(expected) // 4)


async def test_a_walk_during_a_stream_of_writes_meets_what_was_there_once_in_order(
    client: Client, tenants: Tenants
) -> None:
    reader, writer = tenants.admin_a["key"], tenants.ingest_a["key"]
    initial = await record(
        client, writer, *(event(f"i{n}", at(n % 7 + n / 1000)) for n in range(60))
    )
    stop = asyncio.Event()

    async def stream() -> int:
        """Until the walk ends (or 300 events): one event newer than all, then one among the
        initial ones, in turn."""
        n = 0
        while not stop.is_set() and n < 300:
            n += 1
            when = at(-0.5) if n % 2 else at(n % 7 + 0.0005)
            await record(client, writer, event(f"w{n}", when))
            await asyncio.sleep(0.001)
        return n

    writing = asyncio.create_task(stream())
    walked: list[dict[str, Any]] = []
    cursor: str | None = None
    try:
        while True:
            params = {"limit": 7, **({"cursor": cursor} if cursor else {})}
            page = await listing(client, reader, **params)
            walked += page["data"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
            await asyncio.sleep(0)
    finally:
        stop.set()
        written = await writing
    assert written > 0
    keys = [e["id"] for e in walked]
    assert len(keys) == len(set(keys))
    assert {r["id"] for r in initial} <= set(keys)
    order = [(e["occurred_at"], e["event_id"]) for e in walked]
    assert order == sorted(order, reverse=True)


async def test_a_cursor_that_this_api_did_not_return_for_this_query_is_a_400(
    client: Client, tenants: Tenants
) -> None:
    await _scene(client, tenants)
    key = tenants.admin_a["key"]
    first = await listing(client, key, limit=2)
    cursor = first["next_cursor"]
    assert [e["id"] for e in first["data"]] == ["e1", "e2"]
    second = await listing(client, key, limit=3, cursor=cursor)  # the limit may change
    assert [e["id"] for e in second["data"]] == ["e3", "e4", "e5"]
    flipped = cursor[:5] + ("A" if cursor[5] != "A" else "B") + cursor[6:]
    tagged = await listing(client, key, limit=1, **{"tag:team": "search"})
    for bad, params, headers in (
        ("nope!", {}, bearer(key)),
        ("", {}, bearer(key)),
        (cursor[:-2], {}, bearer(key)),  # cut short
        (cursor + "AAAA", {}, bearer(key)),
        (flipped, {}, bearer(key)),  # altered
        (cursor, {"status": "priced"}, bearer(key)),  # other filters
        (tagged["next_cursor"], {"tag:team": "ads"}, bearer(key)),
        (tagged["next_cursor"], {}, bearer(key)),
        (cursor, {}, bearer(tenants.admin_b["key"])),  # another project's
    ):
        response = await client.get(EVENTS, headers=headers, params={"cursor": bad, **params})
        body = assert_problem(response, 400, "the cursor is not one this API returned")
        assert body["type"] == "urn:aiserver:problem:bad-cursor"


async def test_unknown_or_wrong_query_parameters_are_422_naming_them(
    client: Client, tenants: Tenants
) -> None:
    key = tenants.admin_a["key"]
    cases: list[tuple[dict[str, str], list[str], str]] = [
        ({"modle": "x"}, ["modle"], "unknown query parameters: modle (this route takes cursor,"),
        ({"tags": "team=x", "page": "2"}, ["page", "tags"], "unknown query parameters: page, tags"),
        ({"tag:bad key": "x"}, ["tag:bad key"], "tag:bad key: not a tag key"),
        ({"tag:": "x"}, ["tag:"], "tag:: not a tag key"),
        ({"tag:team": ""}, ["tag:team"], "the value must be 1 to 256 characters"),
        ({"from": "yesterday"}, ["from"], "from: 'yesterday' is not an RFC 3339 time"),
        ({"to": "2026-13-01T00:00:00Z"}, ["to"], "to: '2026-13-01T00:00:00Z' is not an RFC"),
        ({"from": iso(at(1)), "to": iso(at(2))}, ["from", "to"], "must be after from"),
        ({"from": iso(at(1)), "to": iso(at(1))}, ["from", "to"], "must be after from"),
        ({"model": " "}, ["model"], "model must be 1 to 256 characters, not blank"),
    ]
    for params, fields, detail in cases:
        response = await client.get(EVENTS, headers=bearer(key), params=params)
        body = assert_problem(response, 422, detail)
        assert body["fields"] == fields, params
    response = await client.get(f"{EVENTS}?tag:team=a&tag:team=b", headers=bearer(key))
    assert assert_problem(response, 422, "tag:team: given twice")["fields"] == ["tag:team"]
    for params in ({"limit": "0"}, {"limit": "1001"}, {"status": "free"}, {"limit": "x"}):
        response = await client.get(EVENTS, headers=bearer(key), params=params)
        body = assert_problem(response, 422, "invalid request")
        assert body["type"] == "urn:aiserver:problem:invalid-request"
        assert [e["field"] for e in body["errors"]] == list(params), params
    response = await client.get(f"{EVENTS}/1", headers=bearer(key), params={"verbose": "1"})
    assert assert_problem(response, 422, "unknown query parameters: verbose")["fields"] == [
        "verbose"
    ]


async def test_a_parameter_given_twice_is_a_422_never_one_value_of_it_ignored(
    client: Client, tenants: Tenants
) -> None:
    await _scene(client, tenants)
    key = tenants.admin_a["key"]
    cursor = (await listing(client, key, limit=1))["next_cursor"]
    for query, field in (
        ("model=gpt-test-002&model=no-such-model-anywhere", "model"),  # not "either of them"
        ("provider=openai&provider=anthropic", "provider"),
        ("status=priced&status=unpriced", "status"),
        (f"from={iso(at(30))}&from={iso(at(20))}", "from"),
        (f"to={iso(at(10))}&to={iso(at(20))}", "to"),
        ("limit=1&limit=1000", "limit"),
        (f"cursor={cursor}&cursor={cursor}", "cursor"),
    ):
        response = await client.get(f"{EVENTS}?{query}", headers=bearer(key))
        body = assert_problem(response, 422, f"given more than once: {field} (each takes one")
        assert body["fields"] == [field], query


async def test_a_time_out_of_range_is_said_to_be_so_not_to_be_no_rfc_3339_time(
    client: Client, tenants: Tenants
) -> None:
    key = tenants.admin_a["key"]
    for field, text in (("from", "0001-01-01T00:00:00+01:00"), ("to", "9999-12-31T23:59:59-01:00")):
        response = await client.get(EVENTS, headers=bearer(key), params={field: text})
        body = assert_problem(response, 422, f"{field}: {text!r} is out of range")
        assert body["fields"] == [field]
        assert "not an RFC 3339 time" not in body["detail"]


async def test_a_key_never_reads_another_project_s_events(client: Client, tenants: Tenants) -> None:
    ids = await _scene(client, tenants)
    a, b = tenants.admin_a["key"], tenants.admin_b["key"]
    (b1,) = (await listing(client, b))["data"]
    assert b1["id"] == "b1"
    assert await keys_of(client, a) == ["e1", "e2", "e3", "e4", "e5", "e6"]
    assert await keys_of(client, b, **{"tag:team": "search"}) == ["b1"]
    # another project's event and one that does not exist get one answer
    answers = []
    for event_id in (ids["e1"], ids["e6"], b1["event_id"] + 1000, 0, -5, 2**63, 10**30):
        response = await client.get(f"{EVENTS}/{event_id}", headers=bearer(b))
        body = assert_problem(response, 404, f"no usage event {event_id}")
        answers.append({**body, "detail": None, "instance": None})
    assert answers[0] == {
        "type": "urn:aiserver:problem:unknown-event",
        "title": "Not Found",
        "status": 404,
        "detail": None,
        "instance": None,
    }
    assert all(answer == answers[0] for answer in answers)
    own = await client.get(f"{EVENTS}/{b1['event_id']}", headers=bearer(b))
    assert own.json() == b1
    response = await client.get(f"{EVENTS}/{b1['event_id']}", headers=bearer(a))
    assert_problem(response, 404, f"no usage event {b1['event_id']}")


async def test_reading_needs_a_project_key_with_the_read_scope(
    client: Client, tenants: Tenants
) -> None:
    ids = await _scene(client, tenants)
    for path in (EVENTS, f"{EVENTS}/{ids['e1']}"):
        response = await client.get(path, headers=bearer(tenants.ingest_a["key"]))
        body = assert_problem(
            response, 403, "needs a key with the scope 'read'; this key has ingest"
        )
        assert body["type"] == "urn:aiserver:problem:insufficient-scope"
        response = await client.get(path, headers=admin())  # the operator: usage is a project's
        assert_problem(response, 403, "needs a project's key with the scope 'read'")
        assert_problem(await client.get(path), 401, "Authorization: Bearer")
        assert_problem(await client.get(path, headers=bearer(tenants.revoked_a)), 401, "revoked")
    # the scope is checked before the query is read
    response = await client.get(
        EVENTS, headers=bearer(tenants.ingest_a["key"]), params={"limit": "x", "bogus": "1"}
    )
    assert_problem(response, 403, "scope 'read'")
    read_only = await client.post(
        "/v1/projects/acme-a/keys", headers=admin(), json={"name": "r", "scopes": ["read"]}
    )
    assert await keys_of(client, read_only.json()["key"], status="unpriced") == ["e4"]


async def test_a_listing_reads_only_the_months_of_its_window_and_position(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    """PostgreSQL prunes the partitions outside the time filters and the page's position."""
    await _scene(client, tenants)
    project_id = await pg.fetchval("SELECT id FROM projects WHERE slug = 'acme-a'")
    newest, older = month_of(at(10)), month_of(at(24 * 40))
    assert newest != older

    async def scanned(**filters: Any) -> set[str]:
        after = filters.pop("after", None)
        query = event_query(**filters)
        tags = json.dumps(query.tags) if query.tags else None
        filters = EventFilters(since=query.since, until=query.until, tags_json=tags)
        sql, args = events_statement(project_id, filters, after=after, limit=10)
        plan = json.loads(await pg.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args))
        return set(_relations(plan))

    everything = await scanned()
    assert {partition_name(newest), partition_name(older)} <= everything
    window = await scanned(since=newest, until=next_month(newest), tags=[("team", "search")])
    assert window == {partition_name(newest)}
    before = await scanned(after=Position(at(24 * 40), 1))
    assert partition_name(newest) not in before
    assert partition_name(older) in before


def _relations(plan: Any) -> list[str]:
    if isinstance(plan, list):
        return [name for item in plan for name in _relations(item)]
    if isinstance(plan, dict):
        found = [plan["Relation Name"]] if "Relation Name" in plan else []
        return found + [name for value in plan.values() for name in _relations(value)]
    return []
