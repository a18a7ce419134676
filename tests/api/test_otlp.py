"""POST /v1/otlp/v1/traces: OpenTelemetry GenAI spans, exported by the SDK's own OTLP/HTTP
exporter, become usage events priced as /v1/costs/calculate prices them, each recorded once.

The exporter sends its request to a local receiver over real TCP; the test replays that request
(body and headers as sent: protobuf, gzip) to the API in process. JSON bodies are the SDK's own
encoded message in the OTLP JSON encoding (see tests/support/otlp.py).
"""

from __future__ import annotations

import gzip
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

import asyncpg
import msgspec
from google.rpc import status_pb2
from litestar.testing import AsyncTestClient
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from aiserver.api.app import create_app
from aiserver.ledger.keys import new_key

from ..conftest import Settings, replace_settings
from ..support.otlp import (
    OPENLLMETRY_ANTHROPIC,
    SpanSpec,
    Trace,
    chat_span,
    event_key,
    exported,
    finished_spans,
    otlp_json,
    replayed_headers,
)
from .conftest import Client, Tenants, admin, bearer, make_key, make_project
from .test_endpoints import assert_problem
from .test_ledger_metrics import counted, scrape

PATH: Final = "/v1/otlp/v1/traces"
PROTOBUF: Final = "application/x-protobuf"
END: Final = datetime.now(UTC).replace(microsecond=654321) - timedelta(minutes=3)

ANTHROPIC: Final = {**OPENLLMETRY_ANTHROPIC, "user.id": "u-42"}
OPENAI: Final = chat_span("gpt-test-001")  # 2e-06 in, 4e-06 out
HTTP_SPAN: Final = {"http.request.method": "POST", "url.full": "https://api.anthropic.com/v1"}


async def stored(pg: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await pg.fetch(
        "SELECT p.slug, e.* FROM usage_events e JOIN projects p ON p.id = e.project_id"
        " ORDER BY e.id"
    )
    return [dict(r) for r in rows]


async def replay(client: Client, request: Any) -> Any:
    return await client.post(PATH, content=request.body, headers=replayed_headers(request))


def accepted(response: Any) -> ExportTraceServiceResponse:
    assert response.status_code == 200, response.content
    assert response.headers["content-type"] == PROTOBUF
    return ExportTraceServiceResponse.FromString(response.content)


def status_of(response: Any, status: int) -> status_pb2.Status:
    assert response.status_code == status, response.content
    assert response.headers["content-type"] == PROTOBUF
    return status_pb2.Status.FromString(response.content)


async def test_genai_spans_from_the_exporter_become_events_priced_as_calculate_prices_them(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    spans = finished_spans(
        Trace(
            [
                SpanSpec(ANTHROPIC, END),
                SpanSpec(HTTP_SPAN, END, name="POST"),
                SpanSpec(OPENAI, END),
            ],
            scope="opentelemetry.instrumentation.anthropic",
        )
    )
    sent = exported(spans, tenants.ingest_a["key"])
    assert replayed_headers(sent)["content-type"] == PROTOBUF
    answer = accepted(await replay(client, sent))
    assert not answer.HasField("partial_success")  # a full success leaves it unset
    rows = await stored(pg)
    # one transaction writes them in the order of their keys (random ids): look them up by key
    by_key = {r["event_key"]: r for r in rows}
    assert sorted(by_key) == sorted([event_key(spans[0]), event_key(spans[2])])
    claude, gpt = by_key[event_key(spans[0])], by_key[event_key(spans[2])]
    assert claude["slug"] == "acme-a"
    assert (claude["model"], claude["provider"], claude["matched_model"]) == (
        "claude-sonnet-4-5-20250929",
        "anthropic",
        "claude-sonnet-4-5-20250929",
    )
    assert (
        claude["input_tokens"],
        claude["output_tokens"],
        claude["cache_read_tokens"],
        claude["cache_write_tokens"],
    ) == (4404, 503, 1800, 556)
    assert claude["occurred_at"] == END
    assert msgspec.json.decode(claude["tags"]) == {"service": "search-api"}
    # 2048 uncached at 3e-06, 1800 cache reads at 3e-07, 556 cache writes at 3.75e-06, 503 out
    # at 1.5e-05: 0.006144 + 0.00054 + 0.002085 + 0.007545
    assert claude["total_cost"] == Decimal("0.016314")
    assert gpt["total_cost"] == Decimal("0.004")  # 1000 * 2e-06 + 500 * 4e-06
    for row in rows:
        calculated = await client.post(
            "/v1/costs/calculate",
            json={
                "model": row["model"],
                "provider": row["provider"],
                "usage": {
                    "input_tokens": row["input_tokens"],
                    "output_tokens": row["output_tokens"],
                    "cache_read_tokens": row["cache_read_tokens"],
                    "cache_write_tokens": row["cache_write_tokens"],
                },
                "at": row["occurred_at"].isoformat(),
            },
        )
        assert calculated.status_code == 200, calculated.text
        assert Decimal(calculated.json()["total"]) == row["total_cost"]
        assert calculated.json()["price_version"] == row["price_version"]


async def ingest_key(client: Client) -> str:
    """A project of its own and its ingest key, in an app made with other settings (one app
    at a time: the database pool is the process's)."""
    await make_project(client, "otel")
    key: str = (await make_key(client, "otel", ["ingest"]))["key"]
    return key


async def test_gzip_bodies_are_read_and_tags_come_from_the_configured_attributes(
    api_settings: Settings, redis_clean: None, pg: asyncpg.Connection
) -> None:
    settings = replace_settings(
        api_settings, otlp_tag_attributes=("user.id=user", "deployment.environment")
    )
    spans = finished_spans(
        Trace(
            [SpanSpec(ANTHROPIC, END)],
            resource={"service.name": "chat-bot", "deployment.environment": "prod"},
        )
    )
    async with AsyncTestClient(app=create_app(settings)) as client:
        sent = exported(spans, await ingest_key(client), gzip=True)
        assert replayed_headers(sent)["content-encoding"] == "gzip"
        accepted(await replay(client, sent))
    (row,) = await stored(pg)
    assert msgspec.json.decode(row["tags"]) == {
        "service": "chat-bot",
        "user": "u-42",
        "deployment.environment": "prod",
    }
    assert row["input_tokens"] == 4404


async def test_otlp_json_is_answered_in_json(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    spans = finished_spans(Trace([SpanSpec(OPENAI, END)]))
    headers = {**bearer(tenants.ingest_a["key"]), "Content-Type": "application/json"}
    response = await client.post(PATH, content=otlp_json(spans), headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {}
    gzipped = {**headers, "Content-Encoding": "gzip"}
    again = await client.post(PATH, content=gzip.compress(otlp_json(spans)), headers=gzipped)
    assert again.json() == {}  # the same span: a duplicate, accepted
    (row,) = await stored(pg)
    assert row["event_key"] == event_key(spans[0])
    assert (row["model"], row["input_tokens"], row["output_tokens"]) == ("gpt-test-001", 1000, 500)


async def test_the_spec_s_json_example_is_accepted_and_a_genai_variant_recorded(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    # examples/trace.json of the OTLP repository, then with GenAI attributes and a recent end
    example: dict[str, Any] = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}]
                },
                "scopeSpans": [
                    {
                        "scope": {"name": "my.library", "version": "1.0.0"},
                        "spans": [
                            {
                                "traceId": "5B8EFFF798038103D269B633813FC60C",
                                "spanId": "EEE19B7EC3C1B174",
                                "parentSpanId": "EEE19B7EC3C1B173",
                                "name": "I'm a server span",
                                "startTimeUnixNano": "1544712660000000000",
                                "endTimeUnixNano": "1544712661000000000",
                                "kind": 2,
                                "attributes": [
                                    {"key": "my.span.attr", "value": {"stringValue": "some value"}}
                                ],
                            }
                        ],
                    }
                ],
            }
        ]
    }
    headers = {**bearer(tenants.ingest_a["key"]), "Content-Type": "application/json"}
    response = await client.post(PATH, json=example, headers=headers)
    assert (response.status_code, response.json()) == (200, {})
    assert await stored(pg) == []  # no GenAI usage: ignored
    span = example["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    end = int(END.timestamp()) * 10**9
    span["endTimeUnixNano"] = str(end)
    span["attributes"] += [
        {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-test-002"}},
        {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "100"}},  # int64 as a string
        {"key": "gen_ai.usage.output_tokens", "value": {"intValue": 10}},  # ... or a number
    ]
    response = await client.post(PATH, json=example, headers=headers)
    assert (response.status_code, response.json()) == (200, {})
    (row,) = await stored(pg)
    assert row["event_key"] == "otel-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174"
    assert (row["input_tokens"], row["output_tokens"]) == (100, 10)
    assert row["occurred_at"] == datetime.fromtimestamp(end // 10**9, UTC)
    assert msgspec.json.decode(row["tags"]) == {"service": "my.service"}


async def test_invalid_genai_spans_are_a_partial_success_and_the_rest_is_recorded(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    negative = {**OPENAI, "gen_ai.usage.input_tokens": -3}
    long_model = {**OPENAI, "gen_ai.request.model": "m" * 300}
    spans = finished_spans(
        Trace([SpanSpec(negative, END), SpanSpec(OPENAI, END), SpanSpec(long_model, END)])
    )
    answer = accepted(await replay(client, exported(spans, tenants.ingest_a["key"])))
    assert answer.partial_success.rejected_spans == 2
    message = answer.partial_success.error_message
    assert message.startswith("2 of 3 spans rejected; ")
    trace_id = f"{spans[0].get_span_context().trace_id:032x}"  # type: ignore[union-attr]
    assert f"span {spans[0].get_span_context().span_id:016x} of trace {trace_id}" in message  # type: ignore[union-attr]
    assert "gen_ai.usage.input_tokens must be a whole number of tokens" in message
    assert "gen_ai.request.model must be at most 256 characters, not 300" in message
    (row,) = await stored(pg)
    assert row["event_key"] == event_key(spans[1])
    # JSON: the same answer in JSON
    headers = {**bearer(tenants.ingest_a["key"]), "Content-Type": "application/json"}
    response = await client.post(PATH, content=otlp_json(spans), headers=headers)
    partial = response.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "2"
    assert partial["errorMessage"].startswith("2 of 3 spans rejected; ")
    assert len(await stored(pg)) == 1


async def test_a_span_sent_twice_is_recorded_once_and_ignored_spans_are_counted(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    spans = finished_spans(Trace([SpanSpec(OPENAI, END), SpanSpec(HTTP_SPAN, END, name="POST")]))
    sent = exported(spans, tenants.ingest_a["key"])
    before = await scrape(client)
    first = accepted(await replay(client, sent))
    second = accepted(await replay(client, sent))  # the exporter's retry
    assert not first.HasField("partial_success")
    assert not second.HasField("partial_success")
    after = await scrape(client)
    (row,) = await stored(pg)
    assert row["event_key"] == event_key(spans[0])
    assert await pg.fetchval("SELECT count(*) FROM usage_outbox") == 1
    assert counted(before, after, "aiserver_otlp_spans_total", result="recorded") == 1
    assert counted(before, after, "aiserver_otlp_spans_total", result="duplicate") == 1
    assert counted(before, after, "aiserver_otlp_spans_total", result="ignored") == 2
    assert counted(before, after, "aiserver_otlp_ignored_spans_total", reason="no_usage") == 2
    assert counted(before, after, "aiserver_usage_events_total", result="recorded") == 1


async def test_the_same_span_with_another_payload_is_a_rejected_conflict(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    spans = finished_spans(Trace([SpanSpec(OPENAI, END)]))
    accepted(await replay(client, exported(spans, tenants.ingest_a["key"])))
    changed = encode_spans(spans)  # the SDK's message, one count changed: same ids
    (span,) = changed.resource_spans[0].scope_spans[0].spans
    (count,) = (a for a in span.attributes if a.key == "gen_ai.usage.output_tokens")
    count.value.int_value = 9
    headers = {**bearer(tenants.ingest_a["key"]), "Content-Type": PROTOBUF}
    answer = accepted(await client.post(PATH, content=changed.SerializeToString(), headers=headers))
    assert answer.partial_success.rejected_spans == 1
    assert "was recorded before with another payload" in answer.partial_success.error_message
    (row,) = await stored(pg)
    assert row["output_tokens"] == 500  # the original stays


async def test_a_key_records_into_its_own_project_only(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    spans = finished_spans(Trace([SpanSpec(OPENAI, END)]))
    accepted(await replay(client, exported(spans, tenants.ingest_a["key"])))
    accepted(await replay(client, exported(spans, tenants.admin_b["key"])))
    rows = await stored(pg)
    # the same span in each project: each its own event, not a duplicate across projects
    assert [(r["slug"], r["event_key"]) for r in rows] == [
        ("acme-a", event_key(spans[0])),
        ("acme-b", event_key(spans[0])),
    ]
    listed = await client.get("/v1/usage/events", headers=bearer(tenants.admin_b["key"]))
    assert [e["event_id"] for e in listed.json()["data"]] == [rows[1]["id"]]


async def test_a_key_is_required_with_the_ingest_scope(client: Client, tenants: Tenants) -> None:
    spans = finished_spans(Trace([SpanSpec(OPENAI, END)]))
    sent = exported(spans, tenants.ingest_a["key"])
    headers = replayed_headers(sent)
    del headers["authorization"]
    missing = status_of(await client.post(PATH, content=sent.body, headers=headers), 401)
    assert "Authorization: Bearer" in missing.message
    for key, status, says in (
        (tenants.revoked_a, 401, "revoked"),
        (tenants.expired_a, 401, "expired"),
    ):
        got = await client.post(PATH, content=sent.body, headers={**headers, **bearer(key)})
        assert says in status_of(got, status).message
    reader = await make_key(client, "acme-a", ["read"])
    read_only = await client.post(
        PATH, content=sent.body, headers={**headers, **bearer(reader["key"])}
    )
    assert "ingest" in status_of(read_only, 403).message
    operator = await client.post(PATH, content=sent.body, headers={**headers, **admin()})
    assert "needs a project's key with the scope 'ingest'" in status_of(operator, 403).message
    json_headers = {"Content-Type": "application/json"}
    as_json = await client.post(PATH, content=b"{}", headers=json_headers)
    assert as_json.status_code == 401
    assert as_json.headers["content-type"] == "application/json"
    assert "Authorization: Bearer" in as_json.json()["message"]


async def test_bad_bodies_are_400_statuses_and_other_media_types_415_problems(
    client: Client, tenants: Tenants, pg: asyncpg.Connection
) -> None:
    key = bearer(tenants.ingest_a["key"])
    garbage = await client.post(
        PATH, content=b"\xff\xff\xff", headers={**key, "Content-Type": PROTOBUF}
    )
    assert "not an ExportTraceServiceRequest" in status_of(garbage, 400).message
    not_gzip = await client.post(
        PATH,
        content=b"\x0a\x00",
        headers={**key, "Content-Type": PROTOBUF, "Content-Encoding": "gzip"},
    )
    assert "not valid gzip" in status_of(not_gzip, 400).message
    bad_json = await client.post(
        PATH, content=b"{nope", headers={**key, "Content-Type": "application/json"}
    )
    assert bad_json.status_code == 400
    assert bad_json.headers["content-type"] == "application/json"
    body = bad_json.json()
    assert "not valid JSON" in body["message"]
    assert body["details"][0]["metadata"]["type"] == "urn:aiserver:problem:malformed-otlp"
    text = await client.post(PATH, content=b"hello", headers={**key, "Content-Type": "text/plain"})
    assert_problem(text, 415, "'text/plain' is not an OTLP encoding")
    brotli = await client.post(
        PATH, content=b"x", headers={**key, "Content-Type": PROTOBUF, "Content-Encoding": "br"}
    )
    assert "Content-Encoding 'br' is not supported" in status_of(brotli, 415).message
    assert await stored(pg) == []


async def test_a_body_over_the_limit_is_413_before_or_after_gzip(
    api_settings: Settings, redis_clean: None, pg: asyncpg.Connection
) -> None:
    spans = finished_spans(Trace([SpanSpec(OPENAI, END)] * 20))
    limit = len(exported(spans, "ais_x_y").body) - 1
    settings = replace_settings(api_settings, otlp_max_body_bytes=limit)
    async with AsyncTestClient(app=create_app(settings)) as client:
        sent = exported(spans, await ingest_key(client))
        headers = replayed_headers(sent)
        plain = await client.post(PATH, content=sent.body, headers=headers)
        assert f"larger than {limit} bytes" in status_of(plain, 413).message
        zipped = await client.post(
            PATH, content=gzip.compress(sent.body), headers={**headers, "content-encoding": "gzip"}
        )
        assert "after gzip is undone" in status_of(zipped, 413).message
    assert await stored(pg) == []


async def test_the_openapi_document_describes_both_encodings_and_the_statuses(
    client: Client,
) -> None:
    document = (await client.get("/schema/openapi.json")).json()
    operation = document["paths"][PATH]["post"]
    assert set(operation["requestBody"]["content"]) == {PROTOBUF, "application/json"}
    assert operation["security"] == [{"bearer": []}]
    assert set(operation["responses"]) == {"200", "400", "401", "403", "413", "415", "429", "503"}
    for status in ("400", "503"):
        content = operation["responses"][status]["content"]
        assert set(content) == {PROTOBUF, "application/json", "application/problem+json"}
        assert content["application/problem+json"]["schema"] == {
            "$ref": "#/components/schemas/ProblemDetails"
        }
    # a 200 is an ExportTraceServiceResponse in the request's encoding; in JSON, partialSuccess
    # says how many spans were refused and why
    answered = operation["responses"]["200"]["content"]
    assert answered[PROTOBUF]["schema"] == {"type": "string", "format": "binary"}
    partial = answered["application/json"]["schema"]["properties"]["partialSuccess"]
    assert set(partial["properties"]) == {"rejectedSpans", "errorMessage"}


async def test_the_database_down_is_a_503_status_with_retry_after(
    api_settings: Settings, redis_clean: None
) -> None:
    down = replace_settings(api_settings, database_url="postgresql://postgres@127.0.0.1:1/none")
    spans = finished_spans(Trace([SpanSpec(OPENAI, END)]))
    key = new_key().text  # well-formed: only the database can tell whether it is valid
    async with AsyncTestClient(app=create_app(down)) as client:
        for body, media in (
            (exported(spans, key).body, PROTOBUF),
            (otlp_json(spans), "application/json"),
        ):
            headers = {**bearer(key), "Content-Type": media}
            response = await client.post(PATH, content=body, headers=headers)
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "5"
            assert response.headers["content-type"] == media
            if media == PROTOBUF:
                message = status_pb2.Status.FromString(response.content).message
            else:
                message = response.json()["message"]
            assert "unavailable" in message
