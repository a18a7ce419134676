"""The OpenTelemetry SDK's own OTLP/HTTP exporter, configured only by the environment variables
that docs/otlp.md gives, exports GenAI spans to a real `aiserver-api` process: what it reports
as exported is recorded once, its retry records nothing new, and what the API refuses it sees as
a failure (not retried).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from ..support.otlp import SpanSpec, Trace, chat_span, event_key, finished_spans
from .conftest import Served
from .harness import ADMIN_TOKEN, errors_logged

pytestmark = pytest.mark.slow

ADMIN: Final = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
END: Final = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
CALL: Final = chat_span("gpt-test-003")  # 1e-06 in, 2e-06 out


async def ingest_key(served: Served, slug: str) -> str:
    async with served.api.client() as client:
        made = await client.post("/v1/projects", headers=ADMIN, json={"slug": slug, "name": slug})
        assert made.status_code == 201, made.text
        key = await client.post(
            f"/v1/projects/{slug}/keys",
            headers=ADMIN,
            json={"name": "otel", "scopes": ["ingest", "read"]},
        )
        assert key.status_code == 201, key.text
        value: str = key.json()["key"]
        return value


async def events_of(served: Served, key: str) -> list[dict[str, Any]]:
    async with served.api.client() as client:
        response = await client.get("/v1/usage/events", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200, response.text
        data: list[dict[str, Any]] = response.json()["data"]
        return data


async def test_the_exporter_configured_by_the_environment_records_each_call_once(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = await ingest_key(served, "otel-env")
    monkeypatch.setenv(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{served.api.base_url}/v1/otlp/v1/traces"
    )
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"Authorization=Bearer%20{key}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    spans = finished_spans(
        Trace(
            [
                SpanSpec(CALL, END),
                SpanSpec(CALL, END),
                SpanSpec({"http.request.method": "GET"}, END),
            ]
        )
    )
    exporter = OTLPSpanExporter()
    try:
        assert await asyncio.to_thread(exporter.export, spans) is SpanExportResult.SUCCESS
        assert await asyncio.to_thread(exporter.export, spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    events = await events_of(served, key)
    assert sorted(e["id"] for e in events) == sorted(event_key(s) for s in spans[:2])
    for event in events:
        assert event["model"] == "gpt-test-003"
        assert Decimal(event["total"]) == Decimal("0.002")  # 1000 * 1e-06 + 500 * 2e-06
        assert event["tags"] == {"service": "search-api"}
    logged = [e for e in served.api.events() if e.get("event") == "otlp spans"]
    first, retry = logged[-2:]
    assert (first["spans"], first["recorded"], first["duplicate"], first["rejected"]) == (
        3,
        2,
        0,
        0,
    )
    assert (retry["recorded"], retry["duplicate"]) == (0, 2)
    assert retry["ignored"] == {"no_usage": 1}
    assert errors_logged(served.api.log) == []


async def test_what_the_api_refuses_the_exporter_sees_as_failed_and_partial_success_as_exported(
    served: Served,
) -> None:
    key = await ingest_key(served, "otel-refused")
    endpoint = f"{served.api.base_url}/v1/otlp/v1/traces"
    bad = {**CALL, "gen_ai.usage.output_tokens": -1}
    spans = finished_spans(Trace([SpanSpec(CALL, END), SpanSpec(bad, END)]))
    exporter = OTLPSpanExporter(endpoint=endpoint, headers={"Authorization": f"Bearer {key}"})
    wrong = OTLPSpanExporter(endpoint=endpoint, headers={"Authorization": "Bearer ais_nope_nope"})
    try:
        assert await asyncio.to_thread(exporter.export, spans) is SpanExportResult.SUCCESS
        assert await asyncio.to_thread(wrong.export, spans) is SpanExportResult.FAILURE
    finally:
        exporter.shutdown()
        wrong.shutdown()
    (event,) = await events_of(served, key)
    assert event["id"] == event_key(spans[0])
    logged = [e for e in served.api.events() if e.get("event") == "otlp spans"]
    assert (logged[-1]["recorded"], logged[-1]["rejected"]) == (1, 1)
    refused = [
        e for e in served.api.events()
        if e.get("event") == "request" and e.get("path") == "/v1/otlp/v1/traces"
    ]  # fmt: skip
    assert refused[-1]["status"] == 401  # one attempt: a 401 is not retried
    assert errors_logged(served.api.log) == []
