"""OTLP/HTTP bodies decoded and answers encoded (`aiserver.ledger.otlp.wire`)."""

from __future__ import annotations

import gzip
import json
import random
import zlib
from datetime import UTC, datetime
from typing import Any

import pytest
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from aiserver.core_db.errors import problem
from aiserver.ledger.errors import MalformedTraces, TooManyEvents, UnsupportedEncoding
from aiserver.ledger.otlp import wire

from ..support.otlp import SpanSpec, Trace, finished_spans, otlp_json_of

END = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)

#: The OTLP JSON example of the opentelemetry-proto repository (examples/trace.json).
SPEC_EXAMPLE = b"""{"resourceSpans": [{
  "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}]},
  "scopeSpans": [{
    "scope": {"name": "my.library", "version": "1.0.0",
              "attributes": [{"key": "my.scope.attribute",
                              "value": {"stringValue": "some scope attribute"}}]},
    "spans": [{
      "traceId": "5B8EFFF798038103D269B633813FC60C", "spanId": "EEE19B7EC3C1B174",
      "parentSpanId": "EEE19B7EC3C1B173", "name": "I'm a server span",
      "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": "1544712661000000000",
      "kind": 2,
      "attributes": [{"key": "my.span.attr", "value": {"stringValue": "some value"}}]}]}]}]}"""


def sdk_message():  # type: ignore[no-untyped-def]
    spec = SpanSpec({"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 12}, END)
    return encode_spans(finished_spans(Trace([spec, spec])))


def test_otlp_json_with_hex_ids_decodes_to_the_sdk_s_own_message() -> None:
    message = sdk_message()
    assert wire.decode_request(otlp_json_of(message), "json") == message
    assert wire.decode_request(message.SerializeToString(), "protobuf") == message


def test_the_spec_s_json_example_decodes_with_its_ids_read_as_hex() -> None:
    message = wire.decode_request(SPEC_EXAMPLE, "json")
    span = message.resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id == bytes.fromhex("5B8EFFF798038103D269B633813FC60C")
    assert span.span_id == bytes.fromhex("EEE19B7EC3C1B174")
    assert span.parent_span_id == bytes.fromhex("EEE19B7EC3C1B173")
    assert span.end_time_unix_nano == 1544712661000000000
    assert span.kind == 2


def test_json_int64_as_numbers_and_unknown_fields_are_accepted() -> None:
    data = json.loads(SPEC_EXAMPLE)
    span = data["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["endTimeUnixNano"] = 1544712661000000000
    span["attributes"].append({"key": "n", "value": {"intValue": 42}})
    span["aFieldOfTomorrow"] = {"x": 1}
    data["somethingNew"] = True
    message = wire.decode_request(json.dumps(data).encode(), "json")
    decoded = message.resource_spans[0].scope_spans[0].spans[0]
    assert decoded.end_time_unix_nano == 1544712661000000000
    assert decoded.attributes[1].value.int_value == 42


@pytest.mark.parametrize(
    ("body", "encoding", "says"),
    [
        (b"\xff\xff\xff", "protobuf", "not an ExportTraceServiceRequest"),
        (b"{not json", "json", "not valid JSON"),
        (b"[1, 2]", "json", "must be a JSON object"),
        (b'{"resourceSpans": 5}', "json", "resourceSpans must be a list"),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}',
            "json",
            "resourceSpans[0].scopeSpans[0].spans[0].traceId must be a hex string",
        ),
        (b'{"resourceSpans": [{"resource": {"attributes": 3}}]}', "json", "not OTLP JSON"),
        # OTLP JSON names fields in lowerCamelCase; protobuf's parser took the proto's names too:
        # beside resourceSpans one list was dropped uncounted, and alone, ids were read as base64
        (b'{"resourceSpans": [], "resource_spans": []}', "json", "resource_spans"),
        (b'{"resource_spans": [{"scopeSpans": []}]}', "json", "lowerCamelCase"),
        (b'{"resourceSpans": [{"scope_spans": []}]}', "json", "resourceSpans[0].scope_spans"),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"trace_id": "5b8e"}]}]}]}',
            "json",
            "resourceSpans[0].scopeSpans[0].spans[0].trace_id",
        ),
    ],
)
def test_a_body_that_does_not_decode_is_malformed(body: bytes, encoding: str, says: str) -> None:
    with pytest.raises(MalformedTraces) as caught:
        wire.decode_request(body, encoding)  # type: ignore[arg-type]
    assert says in str(caught.value)
    assert caught.value.status == 400


def test_gzip_is_undone_within_the_limit() -> None:
    body = b"x" * 1000
    assert wire.decompress(gzip.compress(body), "gzip", 1000) == body
    assert wire.decompress(body, None, 1000) == body
    assert wire.decompress(body, "identity", 1000) == body
    with pytest.raises(TooManyEvents):
        wire.decompress(gzip.compress(b"x" * 1001), "gzip", 1000)  # a bomb stops at the limit
    with pytest.raises(TooManyEvents):
        wire.decompress(b"x" * 1001, None, 1000)
    with pytest.raises(MalformedTraces, match="not valid gzip"):
        wire.decompress(b"plain text", "gzip", 1000)
    with pytest.raises(MalformedTraces, match="truncated"):
        wire.decompress(gzip.compress(body)[:-12], "gzip", 1000)
    with pytest.raises(UnsupportedEncoding, match="br"):
        wire.decompress(body, "br", 1000)


def test_members_longer_than_a_chunk_are_read_whole_and_in_order() -> None:
    parts = [bytes([65 + n]) * (150_000 + n) for n in range(3)] + [b"", b"tail"]
    body = b"".join(gzip.compress(part) for part in parts)
    assert wire.decompress(body, "gzip", 10**6) == b"".join(parts)
    with pytest.raises(MalformedTraces, match="not valid gzip"):
        wire.decompress(body + b"not gzip", "gzip", 10**6)


class _Counting:
    """A zlib inflater that counts the bytes handed to it (every inflater of a test)."""

    handed = 0

    def __init__(self, real: Any) -> None:
        self.real = real

    def decompress(self, data: Any, max_length: int = 0) -> bytes:
        _Counting.handed += len(data)
        return self.real.decompress(data, max_length)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_a_body_of_many_gzip_members_is_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The inflater is handed the body once, plus at most a chunk per member (what follows a
    member in its chunk). Before, each member was handed the rest of the body: here 999 empty
    members before 2 MB handed it 2 GB, and a body of 64 MiB of empty members would have
    kept the event loop for an hour."""
    real = zlib.decompressobj
    monkeypatch.setattr(zlib, "decompressobj", lambda **kw: _Counting(real(**kw)))
    monkeypatch.setattr(_Counting, "handed", 0)
    last = random.Random(7).randbytes(2_000_000)
    body = gzip.compress(b"") * (wire.MAX_GZIP_MEMBERS - 1) + gzip.compress(last)
    assert wire.decompress(body, "gzip", 3_000_000) == last
    assert _Counting.handed <= len(body) + wire.MAX_GZIP_MEMBERS * wire._GZIP_CHUNK


def test_a_body_of_more_gzip_members_than_allowed_is_refused() -> None:
    body = gzip.compress(b"") * (wire.MAX_GZIP_MEMBERS + 1)
    with pytest.raises(MalformedTraces, match="more than 1000 members"):
        wire.decompress(body, "gzip", 1000)


def test_only_protobuf_and_json_are_otlp_encodings() -> None:
    assert wire.encoding_of("application/x-protobuf") == "protobuf"
    assert wire.encoding_of("Application/JSON") == "json"
    assert wire.encoding_of("text/plain") is None
    with pytest.raises(UnsupportedEncoding, match="'text/plain' is not an OTLP encoding"):
        wire.require_encoding("text/plain")


def test_a_full_success_leaves_partial_success_unset() -> None:
    assert wire.encode_response(0, "", "protobuf") == b""
    assert json.loads(wire.encode_response(0, "", "json")) == {}


def test_a_partial_success_counts_the_rejected_spans_in_either_encoding() -> None:
    answer = ExportTraceServiceResponse.FromString(wire.encode_response(2, "why", "protobuf"))
    assert answer.HasField("partial_success")
    assert (answer.partial_success.rejected_spans, answer.partial_success.error_message) == (
        2,
        "why",
    )
    assert json.loads(wire.encode_response(2, "why", "json")) == {
        "partialSuccess": {"rejectedSpans": "2", "errorMessage": "why"}
    }


def test_a_warning_on_a_full_success_is_a_partial_success_of_no_rejected_span() -> None:
    # OTLP: "rejected_<signal> MUST have a value of 0, and the error_message MUST be non-empty"
    answer = ExportTraceServiceResponse.FromString(wire.encode_response(0, "note", "protobuf"))
    assert answer.HasField("partial_success")
    assert (answer.partial_success.rejected_spans, answer.partial_success.error_message) == (
        0,
        "note",
    )
    assert json.loads(wire.encode_response(0, "note", "json")) == {
        "partialSuccess": {"errorMessage": "note"}
    }


def test_a_problem_becomes_a_google_rpc_status_with_its_type_and_fields() -> None:
    body = problem(400, "the span is bad", slug="malformed-otlp", fields=["trace_id"])
    status = status_pb2.Status.FromString(wire.encode_status(body, "protobuf"))
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert status.message == "the span is bad"
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert status.details[0].Unpack(info)
    assert status.details[1].Unpack(bad)
    assert (info.reason, info.domain) == ("MALFORMED_OTLP", "aiserver")
    assert info.metadata["type"] == "urn:aiserver:problem:malformed-otlp"
    assert [v.field for v in bad.field_violations] == ["trace_id"]
    as_json = json.loads(wire.encode_status(body, "json"))
    assert as_json["message"] == "the span is bad"
    assert as_json["details"][0]["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    # Compared as dictionaries, which unpack each detail: the bytes of a packed detail holding
    # a map (ErrorInfo.metadata) depend on the order its entries were serialized in.
    parsed = json_format.ParseDict(as_json, status_pb2.Status())
    assert json_format.MessageToDict(parsed) == json_format.MessageToDict(status)
    unavailable = status_pb2.Status.FromString(wire.encode_status(problem(503, "down"), "protobuf"))
    assert (unavailable.code, len(unavailable.details)) == (code_pb2.UNAVAILABLE, 1)
