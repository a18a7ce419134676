"""OpenTelemetry: GenAI spans sent by an OTLP/HTTP exporter become usage events (docs/otlp.md).

`POST /v1/otlp/v1/traces` is OTLP/HTTP's trace endpoint under `/v1/otlp`, so an exporter pointed
at `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://host:8000/v1/otlp/v1/traces` with
`OTEL_EXPORTER_OTLP_HEADERS="Authorization=Bearer ais_..."` (a key with the scope `ingest`)
reports its model calls. The body is protobuf or OTLP JSON, gzip or not
(`aiserver.ledger.otlp.wire`); the answer, in the request's encoding, is an
`ExportTraceServiceResponse` whose `partial_success` counts the spans rejected, or for a failure a
`google.rpc.Status` as OTLP requires (a request in neither encoding is answered a problem).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, cast

from litestar import Controller, Request, Response, post
from litestar.di import NamedDependency
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIResponse,
    Operation,
    Reference,
    RequestBody,
    Schema,
)
from litestar.status_codes import HTTP_200_OK
from litestar.types import ExceptionHandlersMap

from aiserver.api import auth
from aiserver.api.controllers.projects import AUTHENTICATED, SECURITY
from aiserver.api.metrics import count_spans
from aiserver.api.problems import EXCEPTION_HANDLERS, PROBLEM_JSON
from aiserver.api.settings import ApiSettings
from aiserver.core_db.database import require_pool
from aiserver.core_db.logging import get_logger
from aiserver.costs.live import LiveCatalog
from aiserver.ledger.access import Access
from aiserver.ledger.errors import TooManyEvents
from aiserver.ledger.otlp import wire
from aiserver.ledger.otlp.export import export_traces
from aiserver.ledger.usage.ingest import UsageRecorder

log = get_logger(__name__)

PROTOBUF: Final = wire.MEDIA_TYPES["protobuf"]
ERROR_STATUSES: Final = (400, 401, 403, 413, 415, 429, 503)

_BINARY: Final = Schema(type=cast("Any", "string"), format=cast("Any", "binary"))


def _object(description: str, properties: dict[str, Any]) -> Schema:
    return cast("Schema", {"type": "object", "description": description, "properties": properties})


_REQUEST_JSON: Final = _object(
    "ExportTraceServiceRequest in the OTLP JSON encoding (lowerCamelCase, hex ids)",
    {"resourceSpans": {"type": "array", "items": {"type": "object"}}},
)
_RESPONSE_JSON: Final = _object(
    "ExportTraceServiceResponse; partialSuccess is present when spans were rejected",
    {
        "partialSuccess": {
            "type": "object",
            "properties": {
                "rejectedSpans": {"type": ["string", "integer"]},
                "errorMessage": {"type": "string"},
            },
        }
    },
)
_STATUS_JSON: Final = _object(
    "google.rpc.Status: message is the problem's detail; details hold a google.rpc.ErrorInfo "
    "(the problem type) and, naming fields, a google.rpc.BadRequest",
    {
        "code": {"type": "integer"},
        "message": {"type": "string"},
        "details": {"type": "array", "items": {"type": "object"}},
    },
)


@dataclass
class _ExportOperation(Operation):
    """The body and answers are read and written by the handler, in the request's encoding."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True,
            description="An ExportTraceServiceRequest: binary protobuf or OTLP JSON, gzip "
            "allowed (Content-Encoding: gzip).",
            content={
                PROTOBUF: OpenAPIMediaType(schema=_BINARY),
                "application/json": OpenAPIMediaType(schema=_REQUEST_JSON),
            },
        )
        responses: dict[str, OpenAPIResponse | Reference] = {
            "200": OpenAPIResponse(
                description="Accepted: an ExportTraceServiceResponse in the request's encoding",
                content={
                    PROTOBUF: OpenAPIMediaType(schema=_BINARY),
                    "application/json": OpenAPIMediaType(schema=_RESPONSE_JSON),
                },
            )
        }
        for status in ERROR_STATUSES:
            responses[str(status)] = OpenAPIResponse(
                description="A google.rpc.Status in the request's encoding; a problem when the "
                "request is in neither",
                content={
                    PROTOBUF: OpenAPIMediaType(schema=_BINARY),
                    "application/json": OpenAPIMediaType(schema=_STATUS_JSON),
                    PROBLEM_JSON: OpenAPIMediaType(
                        schema=Reference(ref="#/components/schemas/ProblemDetails")
                    ),
                },
            )
        self.responses = responses


Handler = Callable[[Request[Any, Any, Any], Any], Response[Any]]


def _as_status(handler: Handler) -> Handler:
    """The app's handler of an error, its problem re-encoded as OTLP's Status when the request
    is in an OTLP encoding (the status and headers, Retry-After on a 503, stay)."""

    def answer(request: Request[Any, Any, Any], exc: Any) -> Response[Any]:
        response = handler(request, exc)
        encoding = wire.encoding_of(request.content_type[0])
        if encoding is None or not isinstance(response.content, dict):
            return response
        return Response(
            wire.encode_status(response.content, encoding),
            status_code=response.status_code,
            media_type=wire.MEDIA_TYPES[encoding],
            headers=dict(response.headers),
        )

    return answer


OTLP_HANDLERS: Final[ExceptionHandlersMap] = {
    kind: _as_status(handler) for kind, handler in EXCEPTION_HANDLERS.items()
}


class OtlpController(Controller):
    path = "/v1/otlp"
    tags = ("usage",)
    guards = (auth.key_authenticated,)
    dependencies = AUTHENTICATED
    security = SECURITY
    exception_handlers = OTLP_HANDLERS

    @post(
        "/v1/traces",
        status_code=HTTP_200_OK,
        summary="Record OpenTelemetry GenAI spans as usage (OTLP/HTTP, scope ingest)",
        operation_class=_ExportOperation,
        request_max_body_size=None,  # read here, up to OTLP_MAX_BODY_BYTES
    )
    async def export_traces(
        self, request: Request[Any, Any, Any], access: NamedDependency[Access]
    ) -> Response[bytes]:
        """Spans with GenAI token counts become usage events (each once, however often the
        exporter sends it); other spans are ignored. A 200 means durable; `partial_success`
        counts the spans that could not be recorded, and says why."""
        project_id = access.project_key("ingest")
        encoding = wire.require_encoding(request.content_type[0])
        settings: ApiSettings = request.app.state.settings
        limit = settings.ledger.otlp_max_body_bytes
        body = await _read(request, limit)
        body = wire.decompress(body, request.headers.get("content-encoding"), limit)
        message = await wire.decode_off_loop(body, encoding)
        live: LiveCatalog = request.app.state.live
        recorder: UsageRecorder = request.app.state.usage
        why_not = live.not_ready()
        export = await export_traces(
            recorder,
            require_pool(),
            project_id,
            message,
            tag_attributes=settings.ledger.otlp_tags(),
            catalog=live.catalog if why_not is None else None,
            why_no_catalog=f"{why_not}; it is priced once the catalog can" if why_not else "",
            catch_up=live.catch_up,
        )
        count_spans(export)
        report = export.report
        log.info(
            "otlp spans",
            spans=export.reading.spans,
            recorded=report.recorded if report else 0,
            duplicate=report.duplicate if report else 0,
            rejected=export.rejected,
            noted=export.noted,
            ignored=dict(export.reading.ignored),
        )
        return Response(
            wire.encode_response(export.rejected, export.error_message, encoding),
            status_code=HTTP_200_OK,
            media_type=wire.MEDIA_TYPES[encoding],
        )


async def _read(request: Request[Any, Any, Any], limit: int) -> bytes:
    """The body as sent, refused (413) once it passes `limit` bytes, without reading on."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooManyEvents(
                f"the OTLP body is larger than {limit} bytes (OTLP_MAX_BODY_BYTES): export "
                "smaller batches"
            )
        chunks.append(chunk)
    return b"".join(chunks)
