"""POST /v1/otlp/v1/traces at its edges: every span of a body of several gzip members is read,
a count that is no count is a rejected span, never a 500 that the exporter would retry for
ever, and an attribute the event can do without whose value is unusable is left out of a span
that is recorded, the answer noting it."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

import asyncpg
import msgspec
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from structlog.testing import capture_logs

from .conftest import Client, Tenants, bearer

PATH: Final = "/v1/otlp/v1/traces"
TRACE: Final = "5b8efff798038103d269b633813fc60c"
END_NS: Final = int((datetime.now(UTC) - timedelta(minutes=3)).timestamp()) * 10**9


def value(v: Any) -> dict[str, Any]:
    return {"stringValue": v} if isinstance(v, str) else {"intValue": str(v)}


def chat(span_id: str, **counts: Any) -> dict[str, Any]:
    """An OpenAI chat span in the OTLP JSON encoding, 1000 tokens in and 500 out unless
    `counts` says otherwise."""
    attributes = {
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-test-001",
        "gen_ai.usage.input_tokens": 1000,
        "gen_ai.usage.output_tokens": 500,
        **{f"gen_ai.usage.{name}": count for name, count in counts.items()},
    }
    return {
        "traceId": TRACE,
        "spanId": span_id,
        "name": "chat gpt-test-001",
        "startTimeUnixNano": str(END_NS - 10**9),
        "endTimeUnixNano": str(END_NS),
        "attributes": [{"key": k, "value": value(v)} for k, v in attributes.items()],
    }


def request(*spans: dict[str, Any], service: str = "search-api") -> dict[str, Any]:
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]}
    return {"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": list(spans)}]}]}


def protobuf(data: dict[str, Any]) -> bytes:
    """The same request in binary protobuf (ids as protobuf's JSON mapping reads bytes)."""
    from aiserver.ledger.otlp import wire

    return wire.decode_request(json.dumps(data).encode(), "json").SerializeToString()


async def post_json(client: Client, key: str, data: dict[str, Any]) -> Any:
    headers = {**bearer(key), "Content-Type": "application/json"}
    return await client.post(PATH, content=json.dumps(data).encode(), headers=headers)


async def stored(pg: asyncpg.Connection) -> dict[str, dict[str, Any]]:
    rows = await pg.fetch("SELECT event_key, input_tokens, tags FROM usage_events")
    return {r["event_key"]: {**dict(r), "tags": msgspec.json.decode(r["tags"])} for r in rows}


async def test_a_count_of_more_digits_than_int_reads_is_a_rejected_span_not_a_500(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    huge = chat("eee19b7ec3c1b174", input_tokens="1" * 5000)  # a string of digits
    data = request(huge, chat("00000000000000a1"))
    response = await post_json(client, tenants.ingest_a["key"], data)
    assert response.status_code == 200, response.text
    partial = response.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "1"
    assert "gen_ai.usage.input_tokens must be a whole number of tokens" in partial["errorMessage"]
    assert list(await stored(pg)) == [f"otel-{TRACE}-00000000000000a1"]  # the rest recorded


async def test_every_member_of_a_gzip_body_is_read(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    """A gzip stream may be several members one after another (RFC 1952); two protobuf
    messages one after the other are one message with both lists. Both spans are recorded;
    bytes after the last member that are not gzip are a 400, not dropped in silence."""
    first = protobuf(request(chat("eee19b7ec3c1b174")))
    second = protobuf(request(chat("eee19b7ec3c1b175", input_tokens=7)))
    assert len(ExportTraceServiceRequest.FromString(first + second).resource_spans) == 2
    headers = {
        **bearer(tenants.ingest_a["key"]),
        "Content-Type": "application/x-protobuf",
        "Content-Encoding": "gzip",
    }
    body = gzip.compress(first) + gzip.compress(second)
    response = await client.post(PATH, content=body, headers=headers)
    assert response.status_code == 200, response.content
    rows = await stored(pg)
    assert {key: row["input_tokens"] for key, row in rows.items()} == {
        f"otel-{TRACE}-eee19b7ec3c1b174": 1000,
        f"otel-{TRACE}-eee19b7ec3c1b175": 7,
    }
    trailing = await client.post(PATH, content=gzip.compress(first) + b"junk", headers=headers)
    assert trailing.status_code == 400


async def test_a_service_name_with_a_control_character_is_left_out_and_the_span_recorded(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    """The call cost money: it is recorded without the tag `service` (no tag holds a control
    character), and the answer is OTLP's warning on a full success, the exporter's retry too."""
    data = request(chat("eee19b7ec3c1b174"), service="search-api\n")
    with capture_logs() as logs:
        response = await post_json(client, tenants.ingest_a["key"], data)
    assert response.status_code == 200, response.text
    (counts,) = (e for e in logs if e["event"] == "otlp spans")  # the operator sees it too
    assert (counts["recorded"], counts["rejected"], counts["noted"]) == (1, 0, 1)
    note = (
        f"1 of 1 spans recorded with attributes left out; span eee19b7ec3c1b174 of trace {TRACE}: "
        "service.name holds a control character: left out of the tags"
    )
    assert response.json() == {"partialSuccess": {"errorMessage": note}}  # rejectedSpans 0
    key = f"otel-{TRACE}-eee19b7ec3c1b174"
    assert await stored(pg) == {key: {"event_key": key, "input_tokens": 1000, "tags": {}}}
    again = await post_json(client, tenants.ingest_a["key"], data)  # a duplicate, noted alike
    assert again.json() == {"partialSuccess": {"errorMessage": note}}
    assert len(await stored(pg)) == 1


async def test_a_response_model_that_is_no_string_gives_way_to_the_request_model(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    """Priced as the request model, as when no response model is given; the rejected span's
    reasons come first in the answer, then the notes of the recorded ones."""
    number, flag = chat("00000000000000b1"), chat("00000000000000b2")
    number["attributes"].append({"key": "gen_ai.response.model", "value": {"intValue": "7"}})
    flag["attributes"].append({"key": "gen_ai.response.model", "value": {"boolValue": True}})
    data = request(number, flag, chat("00000000000000b3", input_tokens=-1))
    response = await post_json(client, tenants.ingest_a["key"], data)
    assert response.status_code == 200, response.text
    partial = response.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "1"
    stands_in = "gen_ai.request.model stands in"
    assert partial["errorMessage"] == (
        f"1 of 3 spans rejected; span 00000000000000b3 of trace {TRACE}: "
        "gen_ai.usage.input_tokens must be a whole number of tokens from 0 to "
        "1000000000000000, not -1; "
        "2 of 3 spans recorded with attributes left out; "
        f"span 00000000000000b1 of trace {TRACE}: "
        f"gen_ai.response.model must be a string, not 7: {stands_in}; "
        f"span 00000000000000b2 of trace {TRACE}: "
        f"gen_ai.response.model must be a string, not True: {stands_in}"
    )
    rows = await pg.fetch("SELECT event_key, model, total_cost FROM usage_events ORDER BY 1")
    assert [tuple(row) for row in rows] == [
        (f"otel-{TRACE}-00000000000000b1", "gpt-test-001", Decimal("0.004")),
        (f"otel-{TRACE}-00000000000000b2", "gpt-test-001", Decimal("0.004")),
    ]


async def test_more_model_call_spans_than_allowed_are_refused_without_reading_the_rest(
    client: Client, tenants: Tenants, pg: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 413 once the request holds more model calls than allowed (100,000; 10 here): the
    spans after are not read, as they were (a 64 MiB body of some 600,000 calls kept the event
    loop reading for half a minute, to be refused). Other spans do not count."""
    from aiserver.ledger.otlp import export, spans

    monkeypatch.setattr(export, "MAX_NDJSON_EVENTS", 10)
    read: list[int] = []
    event_of = spans._event

    def counted(*args: Any, **kwargs: Any) -> Any:
        read.append(1)
        return event_of(*args, **kwargs)

    monkeypatch.setattr(spans, "_event", counted)
    http = {**chat("0000000000000fff"), "attributes": []}  # no usage: ignored
    calls = [chat(f"{n + 1:016x}") for n in range(1000)]
    within = await post_json(client, tenants.ingest_a["key"], request(*calls[:10], http, http))
    assert within.status_code == 200, within.text
    read.clear()
    response = await post_json(client, tenants.ingest_a["key"], request(*calls))
    assert response.status_code == 413, response.text
    assert len(read) == 10  # the eleventh is refused before it is read
    assert "more than 10 model-call spans in one request" in response.json()["message"]
    assert len(await stored(pg)) == 10  # those of the first request only
