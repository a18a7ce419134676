"""Real OTLP payloads: spans made by the OpenTelemetry SDK, exported by its OTLP/HTTP exporter.

`finished_spans` runs the SDK's tracer (a resource, an instrumentation scope, spans with the
attributes an instrumentation sets and the times given). `exported` sends them with the SDK's own
`OTLPSpanExporter` to a local receiver over real TCP and returns the request as it arrived (body,
headers): protobuf, gzip when asked. The tests replay that request to the API. `otlp_json` is the
same message in the OTLP JSON encoding: the SDK's own encoded message through protobuf's JSON
mapping, with the trace and span ids in hex as OTLP JSON requires (the Python SDK has no JSON
exporter).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util.types import AttributeValue

from .receiver import Received, Receiver

#: OpenLLMetry's Anthropic span: its input_tokens holds the cache reads and writes (it adds
#: them to Anthropic's own count, as the conventions ask); "Anthropic" is capitalized there.
OPENLLMETRY_ANTHROPIC: Mapping[str, AttributeValue] = {
    "gen_ai.system": "Anthropic",
    "gen_ai.operation.name": "chat",
    "gen_ai.request.model": "claude-sonnet-4-5",
    "gen_ai.response.model": "claude-sonnet-4-5-20250929",
    "gen_ai.usage.input_tokens": 4404,
    "gen_ai.usage.output_tokens": 503,
    "gen_ai.usage.cache_read.input_tokens": 1800,
    "gen_ai.usage.cache_creation.input_tokens": 556,
}


def chat_span(model: str, input_tokens: int = 1000, output_tokens: int = 500) -> dict[str, Any]:
    """The attributes of the conventions' chat span (opentelemetry-instrumentation-openai-v2)."""
    return {
        "gen_ai.provider.name": "openai",
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": input_tokens,
        "gen_ai.usage.output_tokens": output_tokens,
    }


#: The headers a replay forwards from what the exporter sent.
FORWARDED = ("authorization", "content-type", "content-encoding", "user-agent")


@dataclass(frozen=True)
class SpanSpec:
    """One span: its name, attributes and end (its start is a second before)."""

    attributes: Mapping[str, AttributeValue]
    end: datetime
    name: str = "chat"


@dataclass
class Trace:
    """Spans of one process (a resource) and one instrumentation (a scope)."""

    spans: list[SpanSpec]
    resource: Mapping[str, AttributeValue] = field(
        default_factory=lambda: {"service.name": "search-api"}
    )
    scope: str = "opentelemetry.instrumentation.openai_v2"


def nanos(at: datetime) -> int:
    return int(at.astimezone(UTC).timestamp()) * 1_000_000_000 + at.microsecond * 1000


def finished_spans(trace: Trace) -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create(dict(trace.resource)))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer(trace.scope)
    for spec in trace.spans:
        end = nanos(spec.end)
        span = tracer.start_span(
            spec.name, attributes=dict(spec.attributes), start_time=end - 1_000_000_000
        )
        span.end(end_time=end)
    provider.shutdown()
    return list(memory.get_finished_spans())


def exported(spans: Sequence[ReadableSpan], key: str, *, gzip: bool = False) -> Received:
    """The request the SDK's OTLP/HTTP exporter makes of `spans`, as a server receives it."""
    receiver = Receiver()
    receiver.start()
    try:
        exporter = OTLPSpanExporter(
            endpoint=receiver.url,
            headers={"Authorization": f"Bearer {key}"},
            compression=Compression.Gzip if gzip else Compression.NoCompression,
        )
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        exporter.shutdown()
    finally:
        receiver.stop()
    (request,) = receiver.received
    return request


def replayed_headers(request: Received) -> dict[str, str]:
    lowered = {name.lower(): value for name, value in request.headers.items()}
    return {name: lowered[name] for name in FORWARDED if name in lowered}


def otlp_json_of(message: Any) -> bytes:
    """An ExportTraceServiceRequest message in the OTLP JSON encoding."""
    data = json_format.MessageToDict(message)
    for resource in data.get("resourceSpans", []):
        for scope in resource.get("scopeSpans", []):
            for span in scope.get("spans", []):
                for name in ("traceId", "spanId", "parentSpanId"):
                    if name in span:
                        span[name] = base64.b64decode(span[name]).hex()
    return json.dumps(data).encode()


def otlp_json(spans: Sequence[ReadableSpan]) -> bytes:
    """The SDK's encoded message of `spans`, in the OTLP JSON encoding."""
    return otlp_json_of(encode_spans(spans))


def ids(span: ReadableSpan) -> tuple[str, str]:
    """(trace id, span id) in hex, as the event key names them."""
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def event_key(span: ReadableSpan) -> str:
    trace_id, span_id = ids(span)
    return f"otel-{trace_id}-{span_id}"
