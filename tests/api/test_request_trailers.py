"""A chunked request's trailer lines (header lines after its body), which httptools gathers whole
as a head's, are bounded as a head is (`BoundedHeadProtocol`), and an ordinary chunked upload
is not refused by that bound. Against uvicorn serving a small ASGI app with the protocol on
127.0.0.1, in a thread of the test's process."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from aiserver.api.server import MAX_HEAD_BYTES, BoundedHeadProtocol

served: list[str] = []


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":  # the body did not come whole: not served
            return
        if not message.get("more_body"):
            break
    served.append(scope["path"])
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2")]})  # fmt: skip
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def port() -> Iterator[int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    number = s.getsockname()[1]
    s.close()
    # log_config and log_level None: uvicorn leaves this process's logging alone (a level it
    # set on uvicorn.error stayed for the tests after: test_logging's record was dropped)
    config = uvicorn.Config(_app, host="127.0.0.1", port=number, http=BoundedHeadProtocol,
                            lifespan="off", log_config=None, log_level=None)  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    served.clear()
    yield number
    server.should_exit = True
    thread.join(30)


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        return int(status.read().split("VmRSS:")[1].split()[0]) / 1024


def test_a_trailer_line_past_the_bound_is_refused_and_not_held(port: int) -> None:
    """Neither of the head's counts saw trailers (the chunk count stops at the head's end,
    `_parsed` is compared when the head is complete): a 64 MB trailer line was read whole into
    the server's memory, and the request then reached the app. Now the connection is closed
    once the line passes the bound, and the app is told the client went away."""
    conn = socket.create_connection(("127.0.0.1", port))
    conn.settimeout(30)
    before = _rss_mb()
    peak = before
    conn.sendall(b"POST /trailer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"1\r\na\r\n0\r\nX-Trailer: ")  # fmt: skip
    piece = b"v" * (64 * 1024)
    try:
        for n in range(1024):  # 64 MiB
            conn.sendall(piece)
            if n % 64 == 0:
                peak = max(peak, _rss_mb())
        conn.sendall(b"\r\n\r\n")
        answer = conn.recv(4096)
    except OSError:
        answer = b""  # refused and closed: what the bound is to do
    finally:
        conn.close()
    peak = max(peak, _rss_mb())
    assert not answer.startswith(b"HTTP/1.1 200"), answer[:100]
    assert "/trailer" not in served
    assert peak - before < 16, f"the server held {peak - before:.0f} MB of a trailer line"
    assert MAX_HEAD_BYTES == 64 * 1024


def _answer(conn: socket.socket) -> bytes:
    answer = b""
    while b"\r\n\r\n" not in answer:
        piece = conn.recv(4096)
        if not piece:
            break
        answer += piece
    return answer


def test_a_chunked_body_sent_slowly_with_a_small_trailer_is_served(port: int) -> None:
    """What the trailers' bound must not refuse: 2 MiB in chunks of 64 KiB, each size line
    written apart from its data (the server waits for the data with the size line read), then
    a trailer line of 1 KiB."""
    conn = socket.create_connection(("127.0.0.1", port))
    conn.settimeout(30)
    try:
        conn.sendall(b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b"v" * (64 * 1024)
        for _ in range(32):
            conn.sendall(b"%x\r\n" % len(piece))
            time.sleep(0.005)
            conn.sendall(piece + b"\r\n")
        conn.sendall(b"0\r\nX-Trailer: " + b"t" * 1024 + b"\r\n\r\n")
        answer = _answer(conn)
    finally:
        conn.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert served == ["/chunked"]
