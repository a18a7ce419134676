"""A request head (its line and headers) without bound held the API's memory: uvicorn's httptools
protocol, which the image serves with, bounds no header, and httptools gathers a header's value
whole before handing it over, so one connection sending a 200 MB header line made a server hold
200 MB, and the request then reached the app. `aiserver.api.server.BoundedHeadProtocol` answers
431 to a head still incomplete past 64 KiB and closes the connection. These run against the
shared `aiserver-api` process, which serves with it (httptools is in the test environment, as in
the image)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
from pathlib import Path
from typing import Final

import pytest

from aiserver.api.server import MAX_HEAD_BYTES

from .conftest import Served
from .harness import eventually

pytestmark = pytest.mark.slow

#: Bound on waiting for an answer or a log line that must come: never a measure.
WAIT_S: Final = 60.0
CHUNK: Final = 16 * 1024


def _rss_kb(served: Served) -> int:
    status = Path(f"/proc/{served.api.proc.pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0])


def _refusals(served: Served) -> int:
    return sum(1 for e in served.api.events() if e.get("event", "").startswith("Request head too"))


async def _send_head(served: Served, header_bytes: int, *, end: bool = True) -> bytes:
    """A GET whose one header line takes `header_bytes`, written in CHUNK pieces, each after
    the one before was taken, then the head's end (unless `end` is false: the client stops
    sending, as one that waits for the refusal); what the server answered (b"" when it closed
    first: a client still sending may see the reset before the answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", served.api.port)
    answer = b""
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: ")
        for _ in range(header_bytes // CHUNK):
            writer.write(b"v" * CHUNK)
            await writer.drain()
        if end:
            writer.write(b"\r\nConnection: close\r\n\r\n")
            await writer.drain()
    except ConnectionError:
        pass  # closed while the rest was on its way: the answer, if any, is in the reader
    with contextlib.suppress(ConnectionError):
        answer = await asyncio.wait_for(reader.read(), WAIT_S)
    writer.close()
    return answer


def test_the_test_environment_serves_with_httptools_as_the_image_does() -> None:
    """Without httptools the API serves with h11, and the tests here would not see the image's
    parser: the test environment must install it."""
    assert importlib.util.find_spec("httptools") is not None, "httptools is not installed"


async def test_a_request_head_past_the_bound_is_a_431_problem_and_the_api_goes_on(
    served: Served,
) -> None:
    before = _refusals(served)
    answer = await _send_head(served, MAX_HEAD_BYTES + 2 * CHUNK, end=False)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), answer[:300]
    assert b"content-type: application/problem+json" in head.lower(), head
    problem = json.loads(body)
    assert problem["status"] == 431
    assert problem["type"].endswith("request-header-fields-too-large")
    assert str(MAX_HEAD_BYTES) in problem["detail"]

    async def logged() -> bool:
        return _refusals(served) == before + 1

    await eventually(logged, timeout=WAIT_S)
    async with served.api.client() as client:
        assert (await client.get("/health")).status_code == 200


async def test_a_head_within_the_bound_is_served(served: Served) -> None:
    """A header of 48 KiB, sent in pieces (so that the head is counted as it comes)."""
    answer = await _send_head(served, 48 * 1024)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]


async def test_a_100_mb_header_line_does_not_grow_the_api(served: Served) -> None:
    """The connection is closed once the head is past the bound: the rest is never read, and the
    API's resident memory stays where it was (it grew by the header's size before)."""
    before = _rss_kb(served)
    answer = await _send_head(served, 100 * 1000 * 1000)
    grown_mb = (_rss_kb(served) - before) / 1024
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:300]
    assert grown_mb < 16, f"the API grew by {grown_mb:.0f} MB"


async def _send_whole(served: Served, data: bytes) -> bytes:
    """`data` written at once (on loopback the server reads it in one chunk of up to 256 KiB),
    then what the server answered until it closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", served.api.port)
    answer = b""
    try:
        writer.write(data)
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            answer = await asyncio.wait_for(reader.read(), WAIT_S)
    finally:
        writer.close()
    return answer


def _get(header_bytes: int, *, close: bool) -> bytes:
    last = b"Connection: close\r\n" if close else b""
    return (
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: " + b"v" * header_bytes + b"\r\n"
        + last + b"\r\n"
    )  # fmt: skip


async def test_a_head_past_the_bound_that_arrives_whole_is_refused_too(served: Served) -> None:
    """A head of 100 KiB in one write reached the app: the chunk count saw it only as an
    incomplete head, and this one was complete in the first read. Its parsed URL and headers
    are counted now; the answer is the 431 alone (no 400 after it)."""
    before = _refusals(served)
    answer = await _send_whole(served, _get(100 * 1024, close=True))
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:300]
    assert answer.count(b"HTTP/1.1 ") == 1, answer[:300]

    async def logged() -> bool:
        return _refusals(served) == before + 1

    await eventually(logged, timeout=WAIT_S)


async def test_a_head_past_the_bound_behind_a_served_request_is_refused(served: Served) -> None:
    """Two requests in one write: the first, small, is served; the second's head (100 KiB)
    starts in the chunk where the first ended, which the chunk count does not count."""
    answer = await _send_whole(served, _get(10, close=False) + _get(100 * 1024, close=True))
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
    assert answer.count(b"HTTP/1.1 ") == 2, answer[:600]
    assert b"HTTP/1.1 431 " in answer, answer[:600]


async def test_a_head_just_within_the_bound_that_arrives_whole_is_served(served: Served) -> None:
    answer = await _send_whole(served, _get(MAX_HEAD_BYTES - 1024, close=True))
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
