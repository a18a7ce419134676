"""Scenario 5 (hand-written part): hostile input to a real `aiserver-api` process.

Every case must be answered with a clear 4xx problem (application/problem+json), log nothing at
error level, and store nothing (the row count of every table is unchanged). The generated part,
schemathesis against the OpenAPI schema, is test_schemathesis.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any, Final
from urllib.parse import quote

import pytest

from .conftest import Served
from .harness import ADMIN_TOKEN, PROBLEM_JSON, Case, assert_problem

pytestmark = pytest.mark.slow

CALC: Final = "/v1/costs/calculate"
BATCH: Final = "/v1/costs/calculate/batch"
JSON: Final = {"content-type": "application/json"}
ADMIN: Final = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
MIB: Final = 1024 * 1024


def _calc(model: Any = "gpt-test-000", **usage: Any) -> bytes:
    return json.dumps({"model": model, "usage": usage}).encode()


def _deep(depth: int, open_: bytes, close: bytes, inner: bytes = b"1") -> bytes:
    return open_ * depth + inner + close * depth


NESTED: Final[dict[str, Any]] = {"status": 400, "type_": "malformed-json",
                                  "detail": "nested too deeply"}  # fmt: skip
TOO_LARGE: Final[dict[str, Any]] = {"status": 413, "type_": "request-entity-too-large",
                                     "detail": "the request body is too large"}  # fmt: skip


BODIES: Final = {
    "non-utf8": Case("POST", CALC, b'{"model": "gpt-test-000\xff\xfe"}', 400, "malformed-json",
                     "invalid UTF-8"),
    "utf16": Case("POST", CALC, '{"model": "gpt-test-000"}'.encode("utf-16"), 400,
                  "malformed-json"),
    "lone-surrogate": Case("POST", CALC, b'{"model": "gpt-\\ud800"}', 400, "malformed-json"),
    "latin1-model": Case("POST", CALC, '{"model": "gpt-tést"}'.encode("latin-1"), 400,
                         "malformed-json", "invalid UTF-8"),
    "empty": Case("POST", CALC, b"", detail="the request body is empty"),
    "null": Case("POST", CALC, b"null"),
    "truncated": Case("POST", CALC, b'{"model": "gpt-test-000", "usage": {', 400,
                      "malformed-json"),
    # JSON nested deeper than the decoder goes is malformed as a whole, wherever the nesting is.
    "nested-arrays-100k": Case("POST", CALC, _deep(100_000, b"[", b"]"), **NESTED),
    "nested-objects-100k": Case("POST", CALC, _deep(100_000, b'{"a":', b"}"), **NESTED),
    "nested-usage-100k": Case(
        "POST", CALC, b'{"model": "gpt-test-000", "usage": ' + _deep(100_000, b"[", b"]") + b"}",
        **NESTED,
    ),
    "nested-batch-100k": Case(
        "POST", BATCH, b'{"requests": ' + _deep(100_000, b"[", b"]") + b"}", **NESTED,
    ),
    "nested-override-prices-100k": Case(
        "POST", "/v1/overrides",
        b'{"provider": "openai", "model": "m", "prices": {"input_cost_per_token": '
        + _deep(100_000, b"[", b"]") + b"}}",
        **NESTED, admin=True,
    ),
    "3-mib": Case("POST", CALC, b'{"model": "' + b"x" * (3 * MIB) + b'"}', **TOO_LARGE),
    "3-mib-batch": Case("POST", BATCH, json.dumps(
        {"requests": [{"model": "gpt-test-000", "provider": "x" * 100}] * 20_000}
    ).encode(), **TOO_LARGE),
    "form-encoded": Case("POST", CALC, b"model=gpt-test-000", 400, "malformed-json",
                         content_type="application/x-www-form-urlencoded"),
}  # fmt: skip

TOKEN_FIELDS: Final = ("input_tokens", "output_tokens", "cache_read_tokens", "reasoning_tokens",
                       "images", "requests")  # fmt: skip
#: (JSON text of the value, expected status, problem type)
TOKEN_VALUES: Final = {
    "negative": ("-1", 422, "invalid-usage"),
    "fractional": ("1.5", 422, "invalid-request"),
    "2^63": (str(2**63), 422, "invalid-usage"),
    "2^64": (str(2**64), 422, "invalid-usage"),
    "10^30": (str(10**30), 422, "invalid-usage"),
    "1e400": ("1e400", 400, "malformed-json"),  # beyond a double: the decoder's "out of range"
    "bool": ("true", 422, "invalid-request"),
    "nan": ("NaN", 400, "malformed-json"),
}

HOSTILE_NAMES: Final = {
    "sql": "gpt-test-000'; DROP TABLE ai_model_costs; --",
    "sql-or": "x' OR '1'='1",
    "path-traversal": "../../../../etc/passwd",
    "encoded-traversal": "..%2F..%2F..%2Fetc%2Fpasswd",
    "nul": "gpt-test-000\x00",
    "escape-sequences": "\x1b[2J\x1b[31mgpt-test-000\x1b[0m",
    "crlf-header-injection": "gpt-test-000\r\nX-Injected: yes",
    "bidi-override": "gpt-\u202etset-000",
    "format-string": "%s%s%s%n{0}{model}",
    "256-chars": "m" * 256,
}


def cases() -> Iterator[tuple[str, Case]]:
    yield from BODIES.items()
    for field in TOKEN_FIELDS:
        for name, (value, status, type_) in TOKEN_VALUES.items():
            body = f'{{"model": "gpt-test-000", "usage": {{"{field}": {value}}}}}'.encode()
            # a number beyond a double is refused by the JSON decoder, before any field is known
            detail = {"1e400": "Number out of range", "nan": "not valid JSON"}.get(name, field)
            yield f"{field}-{name}", Case("POST", CALC, body, status, type_, detail=detail)
    for name, model in HOSTILE_NAMES.items():
        yield f"calculate-{name}", Case("POST", CALC, _calc(model), 404, "unknown-model",
                                        detail="unknown model")  # fmt: skip
        yield f"provider-{name}", Case(
            "POST", CALC, json.dumps({"model": "gpt-test-000", "provider": model[:128]}).encode(),
            404, "unknown-model",
        )  # fmt: skip
        yield f"model-{name}", Case("GET", "/v1/models/" + quote(model, safe=""), None, 404,
                                    "unknown-model")  # fmt: skip
        # a decoded "/" leaves the route: no job id at all
        yield f"job-{name}", Case("GET", "/v1/jobs/" + quote(model, safe=""), None, 404,
                                  "not-found" if "/" in model else "unknown-job")  # fmt: skip
    yield "257-chars", Case("POST", CALC, _calc("m" * 257))
    yield from {
        "limit-negative": Case("GET", "/v1/models?limit=-1"),
        "limit-2^64": Case("GET", f"/v1/models?limit={2**64}"),
        "limit-fractional": Case("GET", "/v1/models?limit=1.5"),
        "cursor-garbage": Case("GET", "/v1/models?cursor=%27%3B--", None, 400, "bad-cursor"),
        "cursor-non-utf8": Case("GET", "/v1/models?cursor=__79", None, 400, "bad-cursor"),
        "document-not-a-uuid": Case("GET", "/v1/documents/..%2F..%2Fetc%2Fpasswd", None, 404,
                                    "not-found"),
        "override-negative-price": Case("POST", "/v1/overrides", json.dumps(
            {"provider": "openai", "model": "gpt-test-000",
             "prices": {"input_cost_per_token": "-1"}}).encode(), admin=True),
        "override-huge-price": Case("POST", "/v1/overrides", json.dumps(
            {"provider": "openai", "model": "gpt-test-000",
             "prices": {"input_cost_per_token": "1e400"}}).encode(), admin=True),
        "override-sql-field": Case("POST", "/v1/overrides", json.dumps(
            {"provider": "openai", "model": "gpt-test-000",
             "prices": {"input_cost_per_token = 0; --": "1"}}).encode(), admin=True),
        "override-long-model": Case("POST", "/v1/overrides", json.dumps(
            {"provider": "openai", "model": "m" * 300,
             "prices": {"input_cost_per_token": "1"}}).encode(), admin=True),
        "override-delete-beyond-int64": Case("DELETE", f"/v1/overrides/{2**64}", None, 404,
                                             "unknown-override", admin=True),
        "document-form-without-file": Case(
            "POST", "/v1/documents",
            b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\nhello\r\n--b--\r\n',
            content_type="multipart/form-data; boundary=b", detail="file",
        ),
        "override-delete-negative": Case("DELETE", "/v1/overrides/-1", None, 404,
                                         "unknown-override", admin=True),
    }.items()  # fmt: skip


CASES: Final = dict(cases())


@pytest.mark.parametrize("name", list(CASES))
async def test_hostile_input_is_a_clear_4xx_problem(
    served: Served, unchanged: None, name: str
) -> None:
    case = CASES[name]
    headers = {"content-type": case.content_type, **(ADMIN if case.admin else {})}
    async with served.api.client() as client:
        response = await client.request(case.method, case.path, content=case.body,
                                        headers=headers)  # fmt: skip
    body = assert_problem(response, case.status, case.type_)
    assert case.detail in body["detail"]
    assert "x-injected" not in response.headers
    assert len(response.content) < 64 * 1024  # the answer does not echo a huge input back
    if case.type_ == "unknown-model":
        assert body["suggestions"] is not None


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status_line = await reader.readline()
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


async def _stream_until_answered(
    port: int, head: bytes, chunk: bytes, *, chunked: bool, most: int
) -> tuple[int, dict[str, str], bytes, int]:
    """Send `head`, then `chunk` after chunk (at most `most` bytes) until the server answers;
    the answer and how many body bytes were sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        answer = asyncio.create_task(_read_response(reader))
        sent = 0
        frame = b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk
        while sent < most and not answer.done():
            try:
                writer.write(frame)
                await writer.drain()
            except OSError:
                break
            sent += len(chunk)
            await asyncio.sleep(0)
        status, headers, body = await asyncio.wait_for(answer, 30)
        return status, headers, body, sent
    finally:
        writer.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["declared-1-gib", "chunked-1-gib"])
async def test_a_1_gib_request_body_is_refused_without_reading_it(
    served: Served, unchanged: None, chunked: bool
) -> None:
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {1024**3}"
    head = (
        f"POST {CALC} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"{framing}\r\n\r\n"
    ).encode()
    status, headers, body, sent = await _stream_until_answered(
        served.api.port, head, b" " * 65536, chunked=chunked, most=256 * MIB
    )
    assert status == 413, body
    assert headers["content-type"].startswith(PROBLEM_JSON)
    assert json.loads(body)["type"] == "urn:aiserver:problem:request-entity-too-large"
    assert sent < 32 * MIB, f"the client sent {sent} bytes before the refusal"
