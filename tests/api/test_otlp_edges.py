"""POST /v1/otlp/v1/traces at its edges: every span of a body of several gzip members is read,
and a count that is no count is a rejected span, never a 500 that the exporter would retry for
ever."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg
import msgspec
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

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
    assert ExportTraceServiceRequest.FromString(first + second).resource_spans[1]
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
