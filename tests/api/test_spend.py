"""GET /v1/spend: a project's spend per bucket and group as exact decimal strings, from rollups
and the not-yet-folded tail alike, for the key's project only."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from ..support.folding import fold_all
from .conftest import Client, Tenants, admin, bearer, make_key
from .test_endpoints import assert_problem
from .test_usage_events import record

SPEND = "/v1/spend"
BERLIN = ZoneInfo("Europe/Berlin")  # acme-a's zone; it rolls up the tag key team
#: Three days ago in Berlin (early December: +01:00, no clock change near).
DAY = datetime.now(BERLIN).date() - timedelta(days=3)


def local(days: int, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(DAY + timedelta(days=days), time(hour, minute), tzinfo=BERLIN)


def event(key: str, when: datetime, model: str = "gpt-test-001", **fields: Any) -> dict[str, Any]:
    return {
        "id": key,
        "model": model,  # gpt-test-001: 2e-06 in, 4e-06 out; gpt-test-000: 1e-06, 2e-06
        "usage": {"input_tokens": 1000, "output_tokens": 500},
        "occurred_at": when.astimezone(UTC).isoformat(),
        **fields,
    }


def sums(cost: str, events: int, input_tokens: int, output_tokens: int,
         unpriced: int = 0) -> dict[str, Any]:  # fmt: skip
    return {
        "cost": cost, "events": events, "unpriced_events": unpriced, "partially_priced_events": 0,
        "input_tokens": input_tokens, "output_tokens": output_tokens, "cache_read_tokens": 0,
        "cache_write_tokens": 0, "reasoning_tokens": 0,
    }  # fmt: skip


def group(key: dict[str, Any] | None, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return {**sums(*args, **kwargs), "key": key, "other": key is None}


async def spend(client: Client, key: str, **params: Any) -> dict[str, Any]:
    response = await client.get(SPEND, headers=bearer(key), params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_spend_per_day_and_model_counts_folded_and_unfolded_events_exactly(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    key = tenants.admin_a["key"]
    await record(client, key,
        event("a", local(0, 10, 15)),  # 0.002 + 0.002
        event("b", local(0, 23, 30), "mystery-model", tags={"team": "search"}),  # unpriced
    )  # fmt: skip
    await fold_all(pg)
    await record(client, key,
        event("c", local(1, 8), "gpt-test-000", tags={"team": "search"}),  # 0.001 + 0.001
        event("d", local(1, 9, 59), usage={"input_tokens": 3}),  # 0.000006
    )  # fmt: skip
    await record(client, tenants.admin_b["key"], event("b1", local(0, 12)))  # never counted
    body = await spend(client, key, **{
        "from": DAY.isoformat(), "to": (DAY + timedelta(days=2)).isoformat(), "bucket": "day",
        "group_by": "model",
    })  # fmt: skip
    freshness = body.pop("freshness")
    gpt1 = ({"model": "gpt-test-001"}, "0.004006", 2, 1003, 500)
    gpt0 = ({"model": "gpt-test-000"}, "0.002", 1, 1000, 500)
    mystery = ({"model": "mystery-model"}, "0", 1, 1000, 500)
    assert body == {
        "from": local(0, 0).isoformat(),
        "to": local(2, 0).isoformat(),
        "tz": "Europe/Berlin",
        "bucket": "day",
        "group_by": ["model"],
        "top": None,
        "currency": "USD",
        "source": "rollups",
        "source_note": None,
        "raw_hours": 0,
        "total": sums("0.006006", 4, 3003, 1500, unpriced=1),
        "groups": [group(*gpt1), group(*gpt0), group(*mystery, unpriced=1)],
        "buckets": [
            {
                "start": local(0, 0).isoformat(),
                "end": local(1, 0).isoformat(),
                "total": sums("0.004", 2, 2000, 1000, unpriced=1),
                "groups": [
                    group({"model": "gpt-test-001"}, "0.004", 1, 1000, 500),
                    group(*mystery, unpriced=1),
                ],
            },
            {
                "start": local(1, 0).isoformat(),
                "end": local(2, 0).isoformat(),
                "total": sums("0.002006", 2, 1003, 500),
                "groups": [
                    group({"model": "gpt-test-001"}, "0.000006", 1, 3, 0),
                    group(*gpt0),
                ],
            },
        ],
    }
    last = await pg.fetchval("SELECT max(id) FROM usage_events WHERE event_key = 'd'")
    assert freshness["through_event_id"] == last
    assert freshness["unfolded_events"] == 2  # c and d are in the outbox still
    assert freshness["repriced_events_included"] is True
    as_of = datetime.fromisoformat(freshness["as_of"])
    assert timedelta(0) <= datetime.now(UTC) - as_of < timedelta(minutes=1)


async def test_group_by_a_tag_with_top_and_filters_in_an_offset_of_half_an_hour(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    key = tenants.admin_a["key"]
    await record(client, key,
        event("a", local(0, 10), tags={"team": "search", "user": "u1"}),  # 0.004
        event("b", local(0, 11), "gpt-test-000", tags={"team": "ads", "user": "u1"}),  # 0.002
        event("c", local(0, 12), "gpt-test-000", tags={"user": "u2"}),  # 0.002
    )  # fmt: skip
    await fold_all(pg)
    window = {"from": local(0, 0).isoformat(), "to": local(1, 0).isoformat()}
    body = await spend(client, key, **window, tz="Asia/Kolkata", bucket="day",
                       group_by="tag:team", top=1)  # fmt: skip
    assert body["source"] == "rollups"
    assert body["raw_hours"] == 1  # Kolkata's midnight is at 18:30 UTC; from and to at 23:00
    assert [(g["key"], g["cost"]) for g in body["groups"]] == [
        ({"tag:team": "search"}, "0.004"),
        (None, "0.004"),
    ]
    assert [b["start"] for b in body["buckets"]] == [
        local(0, 0).astimezone(ZoneInfo("Asia/Kolkata")).isoformat(),
        datetime.combine(
            DAY + timedelta(days=1), time(), tzinfo=ZoneInfo("Asia/Kolkata")
        ).isoformat(),
    ]
    raw = await spend(client, key, **window, group_by="tag:user", **{"tag:team": "ads"})
    assert raw["source"] == "raw_events"
    assert "user not rolled up" in raw["source_note"]
    assert [(g["key"], g["cost"], g["events"]) for g in raw["groups"]] == [
        ({"tag:user": "u1"}, "0.002", 1)
    ]
    repeated = await spend(
        client, key, **window, group_by=["model", "status"], model="gpt-test-000"
    )
    assert [(g["key"], g["cost"]) for g in repeated["groups"]] == [
        ({"model": "gpt-test-000", "status": "priced"}, "0.004")
    ]


async def test_a_key_reads_only_its_own_project_and_needs_the_read_scope(
    client: Client, tenants: Tenants
) -> None:
    await record(client, tenants.admin_a["key"], event("a", local(0, 10)))
    window = {"from": DAY.isoformat(), "to": (DAY + timedelta(days=1)).isoformat()}
    other = await spend(client, tenants.admin_b["key"], **window)
    assert (other["total"]["events"], other["tz"]) == (0, "UTC")
    reader = await make_key(client, "acme-a", ["read"])
    assert (await spend(client, reader["key"], **window))["total"]["cost"] == "0.004"
    response = await client.get(SPEND, headers=bearer(tenants.ingest_a["key"]), params=window)
    assert_problem(response, 403, "scope 'read'")
    response = await client.get(SPEND, headers=admin(), params=window)
    assert_problem(response, 403, "a project's key")
    response = await client.get(SPEND, params=window)
    assert_problem(response, 401, "")


async def test_a_question_that_cannot_be_answered_is_422_naming_the_field(
    client: Client, tenants: Tenants
) -> None:
    key = tenants.admin_a["key"]
    window = {"from": "2026-11-01", "to": "2026-12-01"}
    for params, detail, fields in (
        ({"tz": "Mars/Olympus"}, "tz: 'Mars/Olympus' is not an IANA time zone", ["tz"]),
        ({"group_by": "model,colour"}, "group_by: 'colour' is not model", ["group_by"]),
        ({"to": "2026-10-01"}, "must be after from", ["from", "to"]),
        ({"from": None}, "from is required", ["from"]),
        ({"top": "3"}, "top needs group_by", ["top"]),
        ({"tag:bad key": "x"}, "tag:bad key: not a tag key", ["tag:bad key"]),
        ({"verbose": "1"}, "unknown query parameters: verbose", ["verbose"]),
    ):
        query = {k: v for k, v in {**window, **params}.items() if v is not None}
        response = await client.get(SPEND, headers=bearer(key), params=query)
        assert assert_problem(response, 422, detail).get("fields") == fields, params
    for params in ({"bucket": "year"}, {"top": "0"}, {"status": "free"}):
        response = await client.get(SPEND, headers=bearer(key), params={**window, **params})
        (name,) = params
        problem = assert_problem(response, 422, f"invalid request: {name}: ")
        assert [e["field"] for e in problem["errors"]] == [name]
