"""Send one signed webhook: check the target again, connect to an address the check approved,
POST, and say what happened. Nothing here raises for what the receiver does: every outcome is
an `Outcome`, recorded by the caller.

The target is resolved and checked right before the request (`resolve_target`: a name saved
while it pointed to a public address may point to 169.254.169.254 today), and the connection
goes to one of the addresses that check returned, never to a second resolution of the name:
the URL's host is replaced by the address, the `Host` header keeps the name and, for https,
TLS sends the name (SNI) and verifies the certificate against it. So what was checked is what
is reached, and a DNS answer that changes between the check and the connect (DNS rebinding)
changes nothing. Proxies from the environment are ignored for the same reason, no connection
is kept for a later request (the client's pool would reuse one made for another name), redirects
are not followed (a 3xx is a failed attempt), and at most `MAX_READ` bytes of an answer are read,
for at most `EXCERPT_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote, unquote_plus, urlsplit

import httpx

from aiserver.ledger.errors import InvalidField, WebhookLookupSlow
from aiserver.ledger.text import has_control
from aiserver.ledger.webhooks import signing
from aiserver.ledger.webhooks.targets import resolve_target

#: The whole attempt (resolution, connection, request, answer) ends after this many seconds.
TIMEOUT_S: Final = 10.0
#: Of an answer, this many bytes are read (and a short excerpt of them kept with a failure).
MAX_READ: Final = 1024
#: An answer that is not a success is read for at most this many seconds, for its excerpt.
EXCERPT_S: Final = 1.0
MAX_EXCERPT: Final = 200
USER_AGENT: Final = "aiserver-webhooks/1"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to: the receiver's status, or why there was none."""

    status_code: int | None
    error: str | None
    duration_s: float

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def client() -> httpx.AsyncClient:
    """The client for webhooks: no redirects, no proxies from the environment (the request
    must reach the approved address itself), certificates verified."""
    return httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=TIMEOUT_S)


#: Parts of a webhook's path or query this long are taken out of what is kept of an attempt.
_SECRET_PART: Final = 8


def without_path(text: str | None, url: str) -> str | None:
    """`text` (an answer's excerpt, an error) with the URL's path and query, and each long part
    of them, taken out (`…`): a receiver may echo the path (`Cannot POST /services/T0/B0/X`),
    a hook's path is often its credential, and the text is stored, logged and shown to every
    key that reads the budget's alerts. Each is taken out as the URL writes it, as it is sent
    (`ö` as `%C3%B6`), and as a receiver decodes it (`%2D` as `-`, a query's `+` as a space)."""
    if not text:
        return text
    parts = urlsplit(url)
    written = parts.path + (f"?{parts.query}" if parts.query else "")
    try:  # as it is sent: percent-encoded where the URL holds what HTTP cannot carry (`ö`, `"`)
        sent = httpx.URL(url).raw_path.decode("ascii")
    except (httpx.InvalidURL, UnicodeDecodeError):
        sent = written
    pieces: set[str] = set()
    for whole in (written, sent, unquote(written), unquote_plus(written)):
        path, _, query = whole.partition("?")
        pieces.update((whole, path, query, *re.split(r"[/?&=]", whole)))
    for piece in sorted({p for p in pieces if len(p) >= _SECRET_PART}, key=len, reverse=True):
        text = text.replace(piece, "…")
    return text


def _excerpt(data: bytes) -> str:
    text = data[:MAX_EXCERPT].decode("utf-8", "replace")
    return "".join(c if not has_control(c) else " " for c in text).strip()


async def post_pinned(
    http: httpx.AsyncClient,
    url: httpx.URL,
    address: str,
    headers: dict[str, str],
    body: bytes,
    *,
    connect_s: float | None = None,
) -> tuple[int, str]:
    """POST to `address` in place of the URL's host: the status, and an excerpt of the
    answer when it is not a success. `connect_s`: how long the connection may take
    (`httpx.ConnectTimeout` after it), when not the client's timeout.

    The connection is not kept for another request (`Connection: close`): the client's pool
    knows a connection by the address alone, so a kept one would carry the next request to
    that address for another name over TLS verified for this name, never checking its own."""
    pinned = url.copy_with(host=address)
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    limits = http.timeout
    if connect_s is not None:
        limits = httpx.Timeout(
            connect=connect_s, read=limits.read, write=limits.write, pool=limits.pool
        )
    request = http.build_request(
        "POST", pinned, content=body, extensions=extensions, timeout=limits,
        headers={**headers, "Host": url.netloc.decode(), "Connection": "close"},
    )  # fmt: skip
    response = await http.send(request, stream=True)
    read = b""
    try:
        if not 200 <= response.status_code < 300:
            # the status is the answer: of the body, what comes within EXCERPT_S (a body that
            # never ends, or that breaks off, keeps the attempt no longer, nor loses its status)
            with contextlib.suppress(TimeoutError, httpx.HTTPError):
                async with asyncio.timeout(EXCERPT_S):
                    async for chunk in response.aiter_raw():
                        read += chunk
                        if len(read) >= MAX_READ:
                            break
    finally:
        await response.aclose()
    return response.status_code, _excerpt(read)


async def post_first(
    http: httpx.AsyncClient,
    url: httpx.URL,
    addresses: Sequence[str],
    headers: dict[str, str],
    body: bytes,
    *,
    timeout: float = TIMEOUT_S,
) -> tuple[int, str]:
    """`post_pinned` to the first of `addresses` that takes the connection; the connection
    error of the last when none does. Each address but the last has its share of `timeout`
    to connect: one that refuses, or that does not answer in its share (its packets dropped,
    a broken IPv6 route), leaves the rest of the time to the next, instead of the whole
    attempt to itself; the addresses come in the same order at every attempt."""
    for n, address in enumerate(addresses, start=1):
        last = n == len(addresses)
        try:
            return await post_pinned(
                http, url, address, headers, body,
                connect_s=None if last else timeout / len(addresses),
            )  # fmt: skip
        except (httpx.ConnectError, httpx.ConnectTimeout):
            if last:
                raise
    raise httpx.ConnectError("no address to connect to")


async def send(
    http: httpx.AsyncClient,
    url: str,
    *,
    secrets: Sequence[str],
    body: bytes,
    headers: dict[str, str],
    allowed_hosts: Collection[str],
    timeout: float = TIMEOUT_S,
    timestamp: int | None = None,
    owner: object = None,
) -> Outcome:
    """POST `body`, signed with each of `secrets` (one `v1` each), to `url` (checked again,
    and pinned to an approved address; the next approved address is tried when one refuses
    the connection or does not take it in its share of the time: `post_first`). `owner` (the
    project's id) has one host lookup at a time, of any host (`resolve_target`)."""
    started = time.perf_counter()

    def outcome(status: int | None, error: str | None) -> Outcome:
        return Outcome(status, without_path(error, url), time.perf_counter() - started)

    signed = {
        **headers,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        signing.HEADER: signing.sign(secrets, body, timestamp),
    }
    try:
        async with asyncio.timeout(timeout) as bound:
            try:
                addresses = await resolve_target(url, allowed_hosts, owner=owner)
                target = httpx.URL(url)  # read by resolve_target already: this cannot fail
            except (InvalidField, httpx.InvalidURL) as exc:
                return outcome(None, f"refused: {exc}")
            except WebhookLookupSlow as exc:
                return outcome(None, str(exc))
            if not addresses:
                return outcome(None, "the host resolved to no address")
            deadline = bound.when()
            assert deadline is not None  # set above
            # the addresses share what the lookup left (up to LOOKUP_S of it may be gone)
            left = max(0.0, deadline - asyncio.get_running_loop().time())
            try:
                status, excerpt = await post_first(
                    http, target, addresses, signed, body, timeout=left
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                return outcome(None, f"could not connect to {addresses[-1]}: {exc}")
            return outcome(status, excerpt or None)
    except TimeoutError:
        return outcome(None, f"no answer within {timeout:g} s")
    except httpx.HTTPError as exc:
        return outcome(None, f"{type(exc).__name__}: {exc}"[:MAX_EXCERPT])
