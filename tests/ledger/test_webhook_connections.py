"""A webhook's connection serves its own request only: the client's pool knows a connection by
the address it was pinned to, so a connection kept after one name's request would carry the
next request to that address for another name over TLS that was verified for the first name."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from aiserver.ledger.webhooks.sending import post_pinned

from ..support.receiver import Receiver
from .test_alert_delivery import certificate as certificate  # the fixture
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
