"""A request's spans recorded as usage, and what OTLP's answer says of them.

    result = await export_traces(recorder, pool, project_id, message, tag_attributes=...,
                                 catalog=catalog)

The model calls among the spans go through the usage ingest as one request
(`UsageRecorder.record`): priced, written with their idempotency keys, outbox rows and budget
commits in one transaction, answered after its COMMIT. So a batch the exporter sends again is
recorded once: its spans come back `duplicate`, which OTLP counts as accepted. A span that is
`invalid` (it cannot be an event) or a `conflict` (its key was recorded before with another
payload) is rejected: the answer's `partial_success` counts it and says why, the first few
spans by name. A span accepted with attributes left out (`SpanReading.notes`: a tag value with a
control character, say) is not rejected; its notes follow in the same message, which OTLP allows
as a warning (`rejected_spans` 0 when no span was rejected).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import asyncpg
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from aiserver.ledger.otlp.spans import SpanReading, read_spans
from aiserver.ledger.otlp.wire import OFF_LOOP_BYTES
from aiserver.ledger.usage.bodies import MAX_NDJSON_EVENTS
from aiserver.ledger.usage.ingest import IngestReport, UsageRecorder

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiserver.costs.catalog import Catalog

#: How many rejected spans the error message names (the count is always whole), and how many
#: notes of accepted spans.
NAMED_REJECTIONS: Final = 5


@dataclass(frozen=True, slots=True)
class TraceExport:
    """What became of a request's spans."""

    reading: SpanReading
    report: IngestReport | None  # None when no span was a model call
    rejected: int
    error_message: str
    noted: int = 0  # spans accepted with attributes left out


async def export_traces(
    recorder: UsageRecorder,
    pool: asyncpg.Pool,
    project_id: int,
    message: ExportTraceServiceRequest,
    *,
    tag_attributes: tuple[tuple[str, str], ...],
    catalog: Catalog | None,
    why_no_catalog: str = "",
    catch_up: Callable[[asyncpg.Pool, int], Awaitable[Catalog]] | None = None,
) -> TraceExport:
    if message.ByteSize() <= OFF_LOOP_BYTES:
        reading = read_spans(message, tag_attributes, most=MAX_NDJSON_EVENTS)
    else:  # off the event loop, as its decoding (`decode_off_loop`)
        reading = await asyncio.to_thread(
            read_spans, message, tag_attributes, most=MAX_NDJSON_EVENTS
        )
    if not reading.items:
        return TraceExport(reading, None, 0, "")
    report = await recorder.record(
        pool, project_id, reading.items, catalog=catalog, why_no_catalog=why_no_catalog,
        catch_up=catch_up,
    )  # fmt: skip
    reasons: list[str] = []
    notes: list[str] = []
    noted = 0
    for name, result, span_notes in zip(reading.names, report.results, reading.notes, strict=True):
        if result.status in ("invalid", "conflict"):
            reasons.append(
                f"{name}: {result.problem['detail'] if result.problem else result.status}"
            )
        elif span_notes:
            noted += 1
            notes.extend(f"{name}: {note}" for note in span_notes)
    rejected = len(reasons)
    parts = []
    if rejected:
        parts.append(_named(f"{rejected} of {reading.spans} spans rejected", reasons))
    if noted:
        parts.append(
            _named(f"{noted} of {reading.spans} spans recorded with attributes left out", notes)
        )
    return TraceExport(reading, report, rejected, "; ".join(parts), noted)


def _named(head: str, entries: list[str]) -> str:
    """`head`, then the first NAMED_REJECTIONS entries and how many more there are."""
    text = "; ".join([head, *entries[:NAMED_REJECTIONS]])
    if len(entries) > NAMED_REJECTIONS:
        text += f"; and {len(entries) - NAMED_REJECTIONS} more"
    return text
