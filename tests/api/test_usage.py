"""POST /v1/usage: each event priced exactly, kept durably, recorded once however often sent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec

from .conftest import Client, Tenants, admin, bearer
from .test_endpoints import assert_problem

NOW = datetime.now(UTC)


def event(key: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": key,
        "model": "gpt-test-001",  # 2e-06 in, 4e-06 out
        "usage": {"input_tokens": 1000, "output_tokens": 500},
        "tags": {"team": "search"},
        **fields,
    }


async def post(client: Client, key: str, body: Any, **kwargs: Any) -> Any:
    return await client.post("/v1/usage", headers=bearer(key), json=body, **kwargs)


async def stored(pg: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await pg.fetch(
        "SELECT p.slug, e.* FROM usage_events e JOIN projects p ON p.id = e.project_id"
        " ORDER BY e.id"
    )
    return [dict(r) for r in rows]


async def test_one_event_is_priced_exactly_and_kept_with_its_outbox_and_key_rows(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    response = await post(client, tenants.ingest_a["key"], event("req-1"))
    assert response.status_code == 201, response.text
    body = response.json()
    # 1000 * 0.000002 + 500 * 0.000004 = 0.002 + 0.002
    assert body["status"] == "recorded"
    assert body["total"] == "0.004"
    assert body["currency"] == "USD"
    assert body["pricing_status"] == "priced"
    assert body["id"] == "req-1"
    (row,) = await stored(pg)
    assert row["slug"] == "acme-a"
    assert row["id"] == body["event_id"]
    assert row["total_cost"] == Decimal("0.004")
    assert row["status"] == "priced"
    assert row["matched_model"] == "gpt-test-001"
    assert row["input_tokens"] == 1000
    assert row["output_tokens"] == 500
    assert msgspec.json.decode(row["tags"]) == {"team": "search"}
    assert row["price_version"] == body["price_version"]
    assert await pg.fetchval("SELECT count(*) FROM usage_outbox") == 1
    assert await pg.fetchval("SELECT count(*) FROM usage_idempotency") == 1


async def test_the_same_event_sent_three_times_is_recorded_once(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    answers = [await post(client, tenants.ingest_a["key"], event("req-1")) for _ in range(3)]
    assert [a.status_code for a in answers] == [201, 200, 200]
    first, *again = (a.json() for a in answers)
    for other in again:
        assert other["status"] == "duplicate"
        assert other["event_id"] == first["event_id"]
        assert other["total"] == "0.004"
    assert len(await stored(pg)) == 1
    assert await pg.fetchval("SELECT count(*) FROM usage_outbox") == 1


async def test_the_same_key_with_another_payload_is_a_conflict_that_changes_nothing(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    first = (await post(client, tenants.ingest_a["key"], event("req-1"))).json()
    changed = event("req-1", usage={"input_tokens": 9999})
    response = await post(client, tenants.ingest_a["key"], changed)
    body = assert_problem(response, 409, "recorded before with another payload")
    assert body["type"] == "urn:aiserver:problem:usage-conflict"
    assert body["event_id"] == first["event_id"]
    (row,) = await stored(pg)
    assert row["input_tokens"] == 1000


async def test_a_batch_answers_each_event_in_order_with_counts(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    await post(client, tenants.ingest_a["key"], event("old"))
    batch = [
        event("new-1"),
        event("old"),  # recorded before: duplicate
        event("new-1", usage={"input_tokens": 1}),  # earlier in this batch, other payload
        event("bad", usage={"input_tokens": 10, "cache_read_tokens": 11}),
        event("new-2", model="no-such-model-anywhere"),
        event("new-1"),  # earlier in this batch, same payload
    ]
    response = await post(client, tenants.ingest_a["key"], {"events": batch})
    assert response.status_code == 200, response.text
    body = response.json()
    statuses = [(r["id"], r["status"]) for r in body["results"]]
    assert statuses == [
        ("new-1", "recorded"),
        ("old", "duplicate"),
        ("new-1", "conflict"),
        ("bad", "invalid"),
        ("new-2", "recorded"),
        ("new-1", "duplicate"),
    ]
    assert (body["recorded"], body["duplicate"], body["conflict"], body["invalid"]) == (2, 2, 1, 1)
    bad = body["results"][3]["problem"]
    assert bad["status"] == 422
    assert set(bad["fields"]) == {"cache_read_tokens", "input_tokens"}
    unknown = body["results"][4]
    assert unknown["pricing_status"] == "unpriced"
    assert unknown["total"] is None
    assert "no-such-model-anywhere" in unknown["note"]
    rows = await stored(pg)
    assert sorted(r["event_key"] for r in rows) == ["new-1", "new-2", "old"]
    unpriced = next(r for r in rows if r["event_key"] == "new-2")
    assert unpriced["status"] == "unpriced"
    assert unpriced["total_cost"] is None


async def test_ndjson_records_every_line_and_a_bad_line_is_invalid_alone(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    lines = [msgspec.json.encode(event(f"line-{i}")) for i in range(5)]
    lines[2] = b'{"id": "line-2", "model": '
    response = await client.post(
        "/v1/usage",
        headers={**bearer(tenants.ingest_a["key"]), "Content-Type": "application/x-ndjson"},
        content=b"\n".join(lines) + b"\n",
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["status"] for r in body["results"]] == [
        "recorded", "recorded", "invalid", "recorded", "recorded",
    ]  # fmt: skip
    assert body["results"][2]["problem"]["status"] == 400
    assert len(await stored(pg)) == 4


async def test_ndjson_with_a_byte_order_mark_crlf_and_no_final_newline_records_every_line(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    # as a Windows editor saves a file: a UTF-8 byte order mark, CRLF, a blank line, the last
    # line without its line break
    lines = [msgspec.json.encode(event(f"bom-{i}")) for i in range(3)]
    body = b"\xef\xbb\xbf" + lines[0] + b"\r\n\r\n" + lines[1] + b"\r\n" + lines[2]
    headers = {**bearer(tenants.ingest_a["key"]), "Content-Type": "application/x-ndjson"}
    response = await client.post("/v1/usage", headers=headers, content=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert [(r["id"], r["status"]) for r in answer["results"]] == [
        ("bom-0", "recorded"), ("bom-1", "recorded"), ("bom-2", "recorded"),
    ]  # fmt: skip
    assert sorted(r["event_key"] for r in await stored(pg)) == ["bom-0", "bom-1", "bom-2"]
    again = (await client.post("/v1/usage", headers=headers, content=body)).json()
    assert [r["status"] for r in again["results"]] == ["duplicate"] * 3
    assert len(await stored(pg)) == 3


async def test_a_count_written_as_a_string_or_a_float_is_invalid_never_coerced(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    """docs/reliability.md, "Known gaps": counts used to be coerced; they are read strictly."""
    key = tenants.ingest_a["key"]
    for n, count in enumerate(("12", 1e3, 12.0)):
        usage = {"input_tokens": count, "output_tokens": 1}
        body = assert_problem(await post(client, key, event(f"c{n}", usage=usage)), 422, "int")
        assert body["type"] == "urn:aiserver:problem:invalid-event"
        assert body["fields"] == ["usage.input_tokens"]
    batch = await post(client, key, {"events": [
        event("b0", usage={"input_tokens": "12"}), event("b1"),
    ]})  # fmt: skip
    assert batch.status_code == 200, batch.text
    assert [r["status"] for r in batch.json()["results"]] == ["invalid", "recorded"]
    assert [e["event_key"] for e in await stored(pg)] == ["b1"]


async def test_occurred_at_in_the_future_or_past_the_retention_is_invalid(
    client: Client, tenants: Tenants
) -> None:
    now = datetime.now(UTC)  # not NOW, the time of import: a long run passes its 10 minutes
    future = (now + timedelta(minutes=10)).isoformat()
    response = await post(client, tenants.ingest_a["key"], event("f", occurred_at=future))
    body = assert_problem(response, 422, "ahead of the server's clock")
    assert body["type"] == "urn:aiserver:problem:invalid-event"
    assert body["fields"] == ["occurred_at"]
    for ancient in ("0001-01-01T00:00:00Z", (now - timedelta(days=401)).isoformat()):
        response = await post(client, tenants.ingest_a["key"], event("p", occurred_at=ancient))
        body = assert_problem(response, 422, "older than the retention of 400 days")
        assert body["fields"] == ["occurred_at"]


async def test_a_backfill_creates_its_month_s_partition(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    at = datetime(NOW.year - 1, NOW.month, 15, 12, tzinfo=UTC).isoformat()
    response = await post(client, tenants.ingest_a["key"], event("back", occurred_at=at))
    assert response.status_code == 201, response.text
    name = f"usage_events_p{NOW.year - 1:04d}{NOW.month:02d}"
    partitions = await pg.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'usage_events'::regclass"
    )
    assert name in {p["relname"] for p in partitions}


async def test_ingest_needs_a_project_key_with_the_ingest_scope(
    client: Client, tenants: Tenants
) -> None:
    response = await client.post("/v1/usage", headers=admin(), json=event("x"))
    assert_problem(response, 403, "needs a project's key with the scope 'ingest'")
    response = await post(client, tenants.revoked_a, event("x"))
    assert_problem(response, 401, "revoked")


async def test_the_openapi_document_describes_the_three_bodies(client: Client) -> None:
    document = (await client.get("/schema/openapi.json")).json()
    body = document["paths"]["/v1/usage"]["post"]["requestBody"]
    assert set(body["content"]) == {"application/json", "application/x-ndjson"}
    one, batch = body["content"]["application/json"]["schema"]["oneOf"]
    assert one["required"] == ["id", "model"]
    assert set(one["properties"]) == {
        "id", "model", "provider", "usage", "usage_format", "service_tier", "occurred_at", "tags",
        "reservation_id",
    }  # fmt: skip
    assert batch["properties"]["events"]["maxItems"] == 10_000
    assert batch["properties"]["events"]["items"] == one


async def test_keys_are_per_project_and_a_key_never_reaches_another_project_s_events(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    a = (await post(client, tenants.ingest_a["key"], event("shared"))).json()
    b = await post(client, tenants.admin_b["key"], event("shared", usage={"input_tokens": 7}))
    assert b.status_code == 201  # B's own event: not A's duplicate, not a conflict with A's
    assert b.json()["event_id"] != a["event_id"]
    rows = await stored(pg)
    assert [(r["slug"], r["event_key"], r["input_tokens"]) for r in rows] == [
        ("acme-a", "shared", 1000),
        ("acme-b", "shared", 7),
    ]


async def test_over_the_limits_is_a_413_problem_and_nothing_is_stored(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    key = tenants.ingest_a["key"]
    response = await post(client, key, {"events": [event(f"e{i}") for i in range(10_001)]})
    body = assert_problem(response, 413, "10001 events in one request; at most 10000")
    assert body["type"] == "urn:aiserver:problem:too-many-events"
    padded = {"events": [event("big", tags={"pad": "x" * 256})] * 70_000}  # about 17 MiB
    response = await post(client, key, padded)
    assert_problem(response, 413, "the most a JSON body may hold")
    ndjson = {**bearer(key), "Content-Type": "application/x-ndjson"}
    line = msgspec.json.encode(event("n")) + b"\n"
    response = await client.post("/v1/usage", headers=ndjson, content=line * 100_001)
    assert_problem(response, 413, "100001 lines in one request; at most 100000")
    response = await client.post("/v1/usage", headers=ndjson, content=b" " * (64 * 1024 * 1024 + 1))
    assert_problem(response, 413, "too large")
    assert await stored(pg) == []


async def test_an_event_may_carry_the_provider_s_own_usage_object(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    anthropic = {  # Anthropic's input_tokens leaves out the cache reads and writes
        "input_tokens": 100,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 200,
        "output_tokens": 50,
    }
    body = event("anthropic-1", model="claude-sonnet-4-5-20250929", usage=anthropic,
                 usage_format="anthropic")  # fmt: skip
    response = await post(client, tenants.ingest_a["key"], body)
    assert response.status_code == 201, response.text
    # 100 * 3e-06 + 1000 * 3e-07 + 200 * 3.75e-06 + 50 * 1.5e-05
    assert response.json()["total"] == "0.0021"
    (row,) = await stored(pg)
    assert (row["input_tokens"], row["cache_read_tokens"], row["cache_write_tokens"]) == (
        1300, 1000, 200,
    )  # fmt: skip
    assert row["usage_format"] == "anthropic"
    wrong = {**anthropic, "output_tokens": -1}
    response = await post(client, tenants.ingest_a["key"],
                          {**body, "id": "anthropic-2", "usage": wrong})  # fmt: skip
    problem = assert_problem(response, 422, "output_tokens")
    assert problem["fields"] == ["usage.output_tokens"]
