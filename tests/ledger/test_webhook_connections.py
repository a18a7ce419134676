"""A webhook's connection serves its own request only: the client's pool knows a connection by
the address it was pinned to, so a connection kept after one name's request would carry the
next request to that address for another name over TLS that was verified for the first name."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aiserver.ledger.webhooks import sending
from aiserver.ledger.webhooks.sending import post_first, post_pinned

from ..support.receiver import Receiver
from .test_alert_delivery import certificate as certificate  # the fixture
from .test_alert_delivery import receiver as receiver  # the fixture
from .test_alert_delivery import tls_receiver as tls_receiver  # the fixture


async def test_a_name_s_request_never_rides_a_connection_verified_for_another_name(
    tls_receiver: Receiver, certificate: tuple[Path, Path]
) -> None:
    """The certificate names localhost, not other.example.invalid; both names pinned to
    127.0.0.1. After localhost's attempt (a 503 read whole, which leaves a connection that
    could be kept), the other name's attempt makes a TLS connection of its own, whose
    certificate does not verify: nothing of it is sent."""
    tls_receiver.script = [503]
    port = tls_receiver.port
    trusted = ssl.create_default_context(cafile=str(certificate[0]))
    async with httpx.AsyncClient(verify=trusted, follow_redirects=False, trust_env=False) as http:
        first = await post_pinned(
            http, httpx.URL(f"https://localhost:{port}/a"), "127.0.0.1", {}, b"{}"
        )
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await post_pinned(
                http, httpx.URL(f"https://other.example.invalid:{port}/b"), "127.0.0.1", {}, b"{}"
            )
    assert first == (503, "receiver is sad")
    assert [r.path for r in tls_receiver.received] == ["/a"]
    assert tls_receiver.server_names == ["localhost", "other.example.invalid"]
    assert tls_receiver.received[0].headers["Connection"] == "close"


@contextlib.contextmanager
def unanswering(address: str, port: int) -> Iterator[None]:
    """A port at `address` that takes no connection: it listens, and its queue of connections
    not yet accepted is full, so the kernel lets each new one wait, unanswered (as an address
    whose packets a firewall drops, or a broken IPv6 route, does)."""
    listener = socket.socket()
    listener.bind((address, port))
    listener.listen(0)
    fillers = []
    try:
        for _ in range(8):  # until one waits: the queue is full
            filler = socket.socket()
            filler.settimeout(0.2)
            fillers.append(filler)
            try:
                filler.connect((address, port))
            except TimeoutError:
                break
        else:
            pytest.fail("the queue never filled")
        yield
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_an_address_that_takes_no_connection_leaves_time_for_the_next(
    receiver: Receiver,
) -> None:
    """A name with two approved addresses, the first one unanswering: the attempt goes on to
    the second within its time. Before, the first address's connection waited out the whole
    attempt (a connection that times out was not one that fails, the next address was tried
    only after a refusal), so every attempt of such a receiver failed, for a day."""
    url = httpx.URL(f"http://hooks.example.invalid:{receiver.port}/hook")
    with unanswering("127.0.0.2", receiver.port):
        async with sending.client() as http, asyncio.timeout(4.0):
            answer = await post_first(http, url, ["127.0.0.2", "127.0.0.1"], {}, b"{}", timeout=4.0)
    assert answer == (200, "")
    assert [r.headers["Host"] for r in receiver.received] == [
        f"hooks.example.invalid:{receiver.port}"
    ]


@contextlib.contextmanager
def answering_slowly(status: bytes) -> Iterator[int]:
    """A port on 127.0.0.1 (yielded) whose every request is answered at once with `status`,
    then a long body one byte at a time, 5 a second, never finished."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    done = threading.Event()

    def answer(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: 100000\r\n\r\nbusy")
            while not done.wait(0.2):
                try:
                    conn.sendall(b".")
                except OSError:  # the sender gave up
                    return

    def accept() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        listener.close()


async def test_an_answer_whose_body_never_ends_is_recorded_with_its_status_at_once() -> None:
    """The receiver answers 503 at once, then sends its body a byte at a time: the attempt is
    the 503, with the start of the body, in about a second. Before, the attempt waited for the
    body until its whole time was out, and was recorded as no answer at all."""
    with answering_slowly(b"503 Service Unavailable") as port:
        async with sending.client() as http:
            outcome = await sending.send(
                http, f"http://127.0.0.1:{port}/hook", secrets=["s" * 24], body=b"{}",
                headers={}, allowed_hosts=("127.0.0.1",), timeout=6.0,
            )  # fmt: skip
    assert (outcome.status_code, outcome.delivered) == (503, False)
    assert outcome.error is not None
    assert outcome.error.startswith("busy"), outcome.error
    assert outcome.duration_s < 3.0


async def test_a_slow_lookup_still_leaves_the_next_address_its_time(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lookup of the name (up to 5 s, its wait for a slot included) is in the attempt's
    time: the addresses' shares must be of what is left after it. They were of the whole
    time, so after a lookup of more than half of it the first, unanswering address took the
    rest, and the second was never tried (`no answer within 4 s`)."""

    async def slow_lookup(url: str, allowed_hosts: object, **_: object) -> list[str]:
        await asyncio.sleep(2.2)
        return ["127.0.0.2", "127.0.0.1"]

    monkeypatch.setattr(sending, "resolve_target", slow_lookup)
    with unanswering("127.0.0.2", receiver.port):
        async with sending.client() as http:
            outcome = await sending.send(
                http, f"http://hooks.example.invalid:{receiver.port}/hook", secrets=["s" * 24],
                body=b"{}", headers={}, allowed_hosts=(), timeout=4.0,
            )  # fmt: skip
    assert (outcome.status_code, outcome.error) == (200, None)
    assert len(receiver.received) == 1
