"""Usage: applications report their model calls; the ledger prices and keeps them.

`POST /v1/usage` takes one event (a JSON object), a batch (`{"events": [...]}`, up to 10,000), or
JSON lines (`Content-Type: application/x-ndjson`, up to 100,000). The answer comes after the
database's COMMIT (see `aiserver.ledger.usage.ingest`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import msgspec
from litestar import Controller, Request, Response, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from aiserver.api import auth
from aiserver.api.controllers.projects import AUTHENTICATED, SECURITY
from aiserver.api.metrics import count_usage
from aiserver.api.problems import problem_response, problem_responses
from aiserver.api.query import NO_QUERY
from aiserver.core_db.database import require_pool
from aiserver.costs.live import LiveCatalog
from aiserver.ledger.access import Access
from aiserver.ledger.errors import TooManyEvents
from aiserver.ledger.usage.bodies import (
    MAX_JSON_BYTES,
    MAX_NDJSON_BYTES,
    Item,
    UsageBatchIn,
    decode_batch,
    decode_items,
    split_json,
    split_ndjson,
)
from aiserver.ledger.usage.events import UsageEventIn
from aiserver.ledger.usage.ingest import EventResult, IngestReport, UsageRecorder

NDJSON_TYPES = frozenset({"application/x-ndjson", "application/jsonl", "application/jsonlines"})


# The handler reads the body itself (an event, a batch or JSON lines, each event checked on its
# own), so its OpenAPI request body is written here, from the events' own msgspec types, inline
# (Litestar writes the document's components itself).
def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str):
            return _inline(defs[ref.rpartition("/")[2]], defs)
        return {key: _inline(value, defs) for key, value in schema.items() if key != "$defs"}
    if isinstance(schema, list):
        return [_inline(item, defs) for item in schema]
    return schema


def _schema_of(cls: type) -> Any:
    schema = msgspec.json.schema(cls)
    return _inline(schema, schema.get("$defs", {}))


_BODY = RequestBody(
    required=True,
    description="One event, a batch (`events`, 1 to 10,000), or JSON lines (one event per line, "
    "up to 100,000).",
    content={
        "application/json": OpenAPIMediaType(
            schema=cast("Schema", {"oneOf": [_schema_of(UsageEventIn), _schema_of(UsageBatchIn)]})
        ),
        "application/x-ndjson": OpenAPIMediaType(
            schema=Schema(type=OpenAPIType.STRING, description="one usage event (JSON) per line")
        ),
    },
)


@dataclass
class _IngestOperation(Operation):
    def __post_init__(self) -> None:
        self.request_body = _BODY


#: The answers, which the handler makes itself (`Response[Any]`, which Litestar would leave
#: untyped): one event's result (201 recorded, 200 duplicate), or a batch's report (200).
_ANSWERS: Final = {
    HTTP_200_OK: ResponseSpec(
        data_container=IngestReport | EventResult,
        description="A batch or JSON lines: one result per event, in order, and counts "
        "(IngestReport); or one event that was recorded before (EventResult, duplicate)",
        generate_examples=False,
    ),
    HTTP_201_CREATED: ResponseSpec(
        data_container=EventResult,
        description="One event, recorded now",
        generate_examples=False,
    ),
}


class UsageController(Controller):
    path = "/v1/usage"
    tags = ("usage",)
    guards = (auth.key_authenticated,)
    dependencies = AUTHENTICATED
    security = SECURITY

    @post(
        "/",
        status_code=HTTP_200_OK,
        summary="Record model calls (scope ingest)",
        guards=[auth.project_key_first("ingest"), NO_QUERY],
        operation_class=_IngestOperation,
        responses={**problem_responses(400, 401, 403, 409, 413, 422, 503), **_ANSWERS},
    )
    async def record_usage(
        self, request: Request[Any, Any, Any], access: NamedDependency[Access]
    ) -> Response[Any]:
        """Record one event (201, or 200 for a duplicate), `{"events": [...]}` or JSON lines
        (200, one result per event in order, and counts). A 2xx means durable; a failed
        request stored all of its events or none (never a part), and its retry with the same
        keys records each event once."""
        project_id = access.project_key("ingest")
        body = await request.body()
        single = False
        raws: list[Any] | None = None
        items: Sequence[Item] | None
        if request.content_type[0] in NDJSON_TYPES:
            _limit(body, MAX_NDJSON_BYTES, "JSON lines")
            raws = split_ndjson(body)
            items = decode_items(raws)
        else:
            _limit(body, MAX_JSON_BYTES, "JSON")
            items = decode_batch(body)  # a batch valid as a whole, in one pass
            if items is None:  # one event, or a batch to take apart event by event
                events = split_json(body)
                single = events is None
                raws = [body] if events is None else events
                items = decode_items(raws)
        live: LiveCatalog = request.app.state.live
        recorder: UsageRecorder = request.app.state.usage
        why_not = live.not_ready()  # None once a catalog with models is loaded
        report = await recorder.record(
            require_pool(),
            project_id,
            items,
            catalog=live.catalog if why_not is None else None,
            why_no_catalog=f"{why_not}; it is priced once the catalog can" if why_not else "",
            raws=raws,
            catch_up=live.catch_up,
        )
        count_usage(report)
        if single:
            return _single(request, report.results[0])
        return Response(report, status_code=HTTP_200_OK)


def _limit(body: bytes, limit: int, kind: str) -> None:
    if len(body) > limit:
        raise TooManyEvents(
            f"the request body ({len(body)} bytes) is larger than {limit} bytes, the most a "
            f"{kind} body may hold; split it"
        )


def _single(request: Request[Any, Any, Any], result: EventResult) -> Response[Any]:
    if result.problem is not None:
        return problem_response(request, result.problem)
    status = HTTP_201_CREATED if result.status == "recorded" else HTTP_200_OK
    return Response(result, status_code=status)


__all__ = ["IngestReport", "UsageController"]
