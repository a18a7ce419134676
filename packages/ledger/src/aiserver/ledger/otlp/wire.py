"""OTLP/HTTP on the wire: a request body decoded, an answer encoded, in the request's encoding.

OTLP/HTTP (https://opentelemetry.io/docs/specs/otlp/#otlphttp) sends an
`ExportTraceServiceRequest` either as binary protobuf (`application/x-protobuf`) or in the
OTLP JSON encoding (`application/json`): protobuf's JSON mapping with lowerCamelCase keys,
64-bit integers as strings or numbers, enums as integers, unknown fields ignored, and trace and
span ids as hex strings, where protobuf's own mapping would have base64. The body may be
gzip-compressed (`Content-Encoding: gzip`).

The answer uses the request's encoding: an `ExportTraceServiceResponse` on success (its
`partial_success` names the spans rejected), and a `google.rpc.Status` for every 4xx and 5xx.
The messages are the official generated classes (`opentelemetry-proto`,
`googleapis-common-protos`): no part of the wire format is parsed by hand here.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import zlib
from collections.abc import Mapping
from typing import Any, Final, Literal

import msgspec
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from aiserver.ledger.errors import MalformedTraces, TooManyEvents, UnsupportedEncoding

Encoding = Literal["protobuf", "json"]

#: The media type of each encoding, in requests and answers alike.
MEDIA_TYPES: Final[Mapping[Encoding, str]] = {
    "protobuf": "application/x-protobuf",
    "json": "application/json",
}
_ENCODINGS: Final = {media: encoding for encoding, media in MEDIA_TYPES.items()}

#: The most gzip members a body may hold. An exporter compresses a request as one member;
#: a few concatenated ones are read too, a body of thousands of them is refused.
MAX_GZIP_MEMBERS: Final = 1000
#: How much of a gzip body is handed to the inflater at a time.
_GZIP_CHUNK: Final = 64 * 1024

#: The gRPC code a Status carries for an HTTP status (OTLP clients go by the HTTP status).
_CODES: Final = {
    400: code_pb2.INVALID_ARGUMENT,
    401: code_pb2.UNAUTHENTICATED,
    403: code_pb2.PERMISSION_DENIED,
    404: code_pb2.NOT_FOUND,
    409: code_pb2.ALREADY_EXISTS,
    413: code_pb2.RESOURCE_EXHAUSTED,
    415: code_pb2.INVALID_ARGUMENT,
    422: code_pb2.INVALID_ARGUMENT,
    429: code_pb2.RESOURCE_EXHAUSTED,
    503: code_pb2.UNAVAILABLE,
}

_ID_FIELDS: Final = ("traceId", "spanId", "parentSpanId")


def encoding_of(media_type: str) -> Encoding | None:
    """The encoding of a request's media type (without its parameters), None if not OTLP's."""
    return _ENCODINGS.get(media_type.strip().lower())


def require_encoding(media_type: str) -> Encoding:
    encoding = encoding_of(media_type)
    if encoding is None:
        raise UnsupportedEncoding(
            f"Content-Type {media_type or '(none)'!r} is not an OTLP encoding: send "
            "application/x-protobuf or application/json"
        )
    return encoding


def decompress(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The body with its content coding undone (gzip or none), at most `limit` bytes."""
    coding = (content_encoding or "identity").strip().lower()
    if coding == "gzip":
        plain = _gunzip(body, limit)
    elif coding == "identity":
        plain = body
    else:
        raise UnsupportedEncoding(
            f"Content-Encoding {content_encoding!r} is not supported: send gzip, or no encoding"
        )
    if len(plain) > limit:
        raise TooManyEvents(
            f"the OTLP body is larger than {limit} bytes (OTLP_MAX_BODY_BYTES), after gzip is "
            "undone: export smaller batches"
        )
    return plain


def _gunzip(body: bytes, limit: int) -> bytes:
    """`body` with gzip undone, up to `limit` + 1 bytes: every member of it, as a gzip stream is
    a series of members (RFC 1952: two compressed parts one after the other, `cat a.gz b.gz`),
    so that no part of a body is dropped; at most MAX_GZIP_MEMBERS of them. `MalformedTraces`
    for bytes that are not gzip (after the last member too), a member cut short, and too many
    members.

    The body is read once, `_GZIP_CHUNK` bytes at a time, from an offset: handing each member
    the rest of the body (as `unused_data`) copied that rest again for every member, so a body
    of many empty members (20 bytes each) took time growing with the square of its size, on
    the event loop (22 s for 4 MiB)."""
    plain = bytearray()
    view = memoryview(body)
    offset = 0
    for _ in range(MAX_GZIP_MEMBERS):
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        while not inflater.eof:
            if offset >= len(body):
                raise MalformedTraces("the gzip body ends before its end (truncated)")
            chunk = view[offset : offset + _GZIP_CHUNK]
            try:  # the room left is at least 1 byte (0 would mean no bound)
                plain += inflater.decompress(chunk, limit + 1 - len(plain))
            except zlib.error as exc:
                raise MalformedTraces(f"the body is not valid gzip: {exc}") from None
            if len(plain) > limit:
                return bytes(plain)
            # what is left of the chunk: past the member's end, or not taken for want of room
            # (none here: the room ran out only past `limit`)
            offset += len(chunk) - len(inflater.unused_data) - len(inflater.unconsumed_tail)
        if offset >= len(body):
            return bytes(plain)
    raise MalformedTraces(
        f"the gzip body has more than {MAX_GZIP_MEMBERS} members: compress the body as one"
    )


#: A body (decompressed) or a message larger than this is decoded, and its spans read, in a
#: worker thread (`decode_off_loop`, `aiserver.ledger.otlp.export`): on the event loop, 19 MB of
#: JSON held every other request of the process for 9 s, and 100,000 spans took some 4 s to
#: read. Smaller ones (an SDK's batch of 512 spans is about this size) are decoded in place,
#: sparing the thread's round trip.
OFF_LOOP_BYTES: Final = 64 * 1024


async def decode_off_loop(body: bytes, encoding: Encoding) -> ExportTraceServiceRequest:
    """`decode_request`, in a worker thread when `body` is larger than `OFF_LOOP_BYTES`."""
    if len(body) <= OFF_LOOP_BYTES:
        return decode_request(body, encoding)
    return await asyncio.to_thread(decode_request, body, encoding)


def decode_request(body: bytes, encoding: Encoding) -> ExportTraceServiceRequest:
    """The request's message; `MalformedTraces` (400) for a body that does not decode."""
    message = ExportTraceServiceRequest()
    if encoding == "protobuf":
        try:
            message.ParseFromString(body)
        except (DecodeError, RecursionError) as exc:
            raise MalformedTraces(f"the body is not an ExportTraceServiceRequest: {exc}") from None
        return message
    try:
        data = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        raise MalformedTraces(f"the body is not valid JSON: {exc}") from None
    if type(data) is not dict:
        raise MalformedTraces("the body must be a JSON object (an ExportTraceServiceRequest)")
    _ids_to_base64(data)
    try:
        json_format.ParseDict(data, message, ignore_unknown_fields=True)
    except (json_format.ParseError, RecursionError, ValueError, TypeError) as exc:
        raise MalformedTraces(f"the body is not OTLP JSON: {exc}") from None
    return message


def _ids_to_base64(data: dict[str, Any]) -> None:
    """Rewrite the hex trace and span ids of OTLP JSON as base64, as protobuf's JSON mapping
    reads bytes (in spans and in their links)."""
    for r, resource in enumerate(_list(data, "resourceSpans", "")):
        for s, scope in enumerate(_list(resource, "scopeSpans", f"resourceSpans[{r}]")):
            where = f"resourceSpans[{r}].scopeSpans[{s}]"
            for n, span in enumerate(_list(scope, "spans", where)):
                _hex_ids(span, f"{where}.spans[{n}]")
                for k, link in enumerate(_list(span, "links", f"{where}.spans[{n}]")):
                    _hex_ids(link, f"{where}.spans[{n}].links[{k}]")


def _list(parent: Any, key: str, where: str) -> list[Any]:
    if type(parent) is not dict:
        raise MalformedTraces(f"{where} must be a JSON object")
    _camel_only(parent, key, where)
    value = parent.get(key)
    if value is None:
        return []
    if type(value) is not list:
        raise MalformedTraces(f"{where}.{key} must be a list" if where else f"{key} must be a list")
    return value


def _camel_only(parent: dict[str, Any], key: str, where: str) -> None:
    """OTLP JSON names fields in lowerCamelCase, never by the proto's own names, which
    protobuf's parser takes too: beside `resourceSpans`, a `resource_spans` list was one of the
    two dropped without a word, and alone, its ids were read as base64, not hex."""
    proto = _PROTO_NAMES.get(key)
    if proto is not None and proto in parent:
        named = f"{where}.{proto}" if where else proto
        raise MalformedTraces(
            f"{named}: OTLP JSON names fields in lowerCamelCase ({key}), not the proto's names"
        )


#: The proto's names of the fields `_ids_to_base64` reads, where they differ.
_PROTO_NAMES: Final = {
    "resourceSpans": "resource_spans",
    "scopeSpans": "scope_spans",
    "traceId": "trace_id",
    "spanId": "span_id",
    "parentSpanId": "parent_span_id",
}


def _hex_ids(item: Any, where: str) -> None:
    if type(item) is not dict:
        raise MalformedTraces(f"{where} must be a JSON object")
    for field in _ID_FIELDS:
        _camel_only(item, field, where)
        value = item.get(field)
        if value is None:
            continue
        try:
            if type(value) is not str:
                raise ValueError
            item[field] = base64.b64encode(binascii.unhexlify(value)).decode()
        except (ValueError, binascii.Error):
            raise MalformedTraces(
                f"{where}.{field} must be a hex string (OTLP JSON), not {value!r:.60}"
            ) from None


def _encode(message: Message, encoding: Encoding) -> bytes:
    if encoding == "protobuf":
        encoded: bytes = message.SerializeToString()
        return encoded
    text: str = json_format.MessageToJson(message, indent=None)
    return text.encode()


def encode_response(rejected: int, error_message: str, encoding: Encoding) -> bytes:
    """The ExportTraceServiceResponse: `partial_success` is set only when spans were rejected,
    or to warn (`rejected_spans` 0, a message: OTLP's way to answer a full success with a
    warning); a full success without one leaves it unset, as OTLP requires."""
    response = ExportTraceServiceResponse()
    if rejected or error_message:
        response.partial_success.CopyFrom(
            ExportTracePartialSuccess(rejected_spans=rejected, error_message=error_message)
        )
    return _encode(response, encoding)


def encode_status(problem: Mapping[str, Any], encoding: Encoding) -> bytes:
    """A problem (RFC 9457) as the google.rpc.Status that OTLP answers a failure with: its
    `message` is the problem's detail; an ErrorInfo keeps the problem's type, and a BadRequest
    names the fields a 400 or 422 problem names."""
    status = int(problem["status"])
    slug = str(problem["type"]).rpartition(":")[2]
    message = status_pb2.Status(
        code=_CODES.get(status, code_pb2.INTERNAL), message=problem["detail"]
    )
    info = error_details_pb2.ErrorInfo(
        reason=slug.upper().replace("-", "_"),
        domain="aiserver",
        metadata={"type": str(problem["type"]), "status": str(status)},
    )
    message.details.add().Pack(info, deterministic=True)
    fields = problem.get("fields")
    if fields:
        violations = [
            error_details_pb2.BadRequest.FieldViolation(field=str(f), description=problem["detail"])
            for f in fields
        ]
        message.details.add().Pack(
            error_details_pb2.BadRequest(field_violations=violations), deterministic=True
        )
    return _encode(message, encoding)
