"""Where a webhook may be sent: never into the server's own network by accident or by design.

A target is an `http` or `https` URL with a host name or address and no credentials in it. Its
host must resolve only to public addresses: loopback, private (10/8, 172.16/12, 192.168/16,
fc00::/7), link-local (169.254/16, fe80::/10, which holds the cloud metadata service),
site-local (fec0::/10, deprecated but still routed by some networks), carrier-grade NAT,
multicast, unspecified and reserved addresses are refused, unless the operator lists the host in
WEBHOOK_ALLOWED_HOSTS (a local receiver in tests, an internal alert gateway).

An IPv6 address that carries an IPv4 address is judged by that IPv4 address too: IPv4-mapped
(::ffff:0:0/96), 6to4 (2002::/16, whose relay delivers to the embedded IPv4 address) and Teredo
(2001::/32, its server and its client). NAT64 addresses (64:ff9b::/96 and the local-use
64:ff9b:1::/48) are refused whatever they embed: the translator, not this check, decides where
they lead, and the local-use prefix may place the IPv4 address anywhere in it.

The check runs when a target is saved and again before each delivery (a name can be pointed
elsewhere after it was saved); a delivery connects to the addresses that the check approved.
The URL must also be one the HTTP client reads (`httpx.URL`: no DEL or other non-printable
character, a host name valid under IDNA 2008), and the host is resolved as the client encodes
it, so that the name checked is the name the request goes to. A refusal names the host, never
the addresses it resolved to, and reads the same whether the host does not resolve or resolves to
an internal address: a project's key learns nothing of the internal network from it, not even
which internal names exist. The log (the operator's) says which of the two it was.

A lookup takes at most `LOOKUP_S`, and a process runs at most `LOOKUPS` at once: they run on
the event loop's thread pool, which new connections by name and work moved off the loop share,
and a host whose DNS never answers would hold a thread for the resolver's whole timeout. One
not done in time is `WebhookLookupSlow` (a 503 where a target is saved; a failed attempt, tried
again later, where an alert is sent). So that one project's slow hosts cannot take every slot
from the others, a project (`owner`) runs one lookup at a time, and a caller that finds its
host being looked up shares that lookup (one waiting for its project's turn does not look
again: it waits for its turn).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import weakref
from collections.abc import Collection
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from aiserver.core_db.logging import get_logger
from aiserver.ledger.errors import InvalidField, WebhookLookupSlow

_log = get_logger(__name__)

MAX_URL: Final = 2048
_CGNAT: Final = ipaddress.ip_network("100.64.0.0/10")
#: NAT64: the well-known prefix (RFC 6052) and the local-use one (RFC 8215).
_NAT64: Final = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def check_url(url: str, field: str = "webhook_url") -> str:
    """The host of `url` as the HTTP client sends it (a name IDNA-encoded, an IPv6 address
    without brackets) when its form is allowed; `InvalidField` naming `field` otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port that is not a number in range
        host = httpx.URL(url).raw_host.decode("ascii")  # what a delivery will connect to
    except (ValueError, httpx.InvalidURL):
        parts, port, host = None, None, ""
    if (
        parts is None
        or len(url) > MAX_URL
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or not host
        or parts.username is not None
        or parts.password is not None
        or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url)
    ):
        raise InvalidField(
            f"{field} must be an http or https URL with a host and without credentials, at most "
            f"{MAX_URL} characters",
            [field],
        )
    del port
    return host


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether a webhook may reach `address` without the operator allowing its host: neither it
    nor any IPv4 address it embeds (IPv4-mapped, 6to4, Teredo) is internal."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return _is_public(address.ipv4_mapped)
        if address.is_site_local or any(address in net for net in _NAT64):
            return False
        embedded = [address.sixtofour] if address.sixtofour is not None else []
        if address.teredo is not None:
            embedded.extend(address.teredo)  # the Teredo server and the client
        if not all(_is_public(ipv4) for ipv4 in embedded):
            return False
    return _is_public(address)


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        or address.is_reserved
        or (isinstance(address, ipaddress.IPv4Address) and address in _CGNAT)
    )


def allowed_entry(entry: str) -> tuple[str, int | None]:
    """An entry of WEBHOOK_ALLOWED_HOSTS as (host, port): `gateway.internal` or `127.0.0.1`
    (any port), `gateway.internal:8443`, `127.0.0.1:9000` or `[::1]:9000` (that port only), `::1`
    (an IPv6 address alone: any port). ValueError when the port is no port."""
    entry = entry.strip()
    if entry.count(":") > 1 and not entry.startswith("["):
        ipaddress.IPv6Address(entry)  # ValueError: not an IPv6 address (`http://host:9000`)
        return entry.lower(), None
    if any(c in entry for c in "/?#@\\") or entry.endswith(":"):  # a URL, or a port left out
        raise ValueError(f"{entry!r} is not host or host:port")
    parts = urlsplit("//" + entry)
    port = parts.port  # ValueError: out of range, or not a number
    if not parts.hostname or port == 0:
        raise ValueError(f"{entry!r} is not host or host:port")
    if entry.startswith("["):
        ipaddress.IPv6Address(parts.hostname)  # `[name]:9000` is no address
    return parts.hostname.lower(), port


def allowed(host: str, port: int, allowed_hosts: Collection[str]) -> bool:
    """Whether the operator listed `host` (any port) or `host:port` in WEBHOOK_ALLOWED_HOSTS: a
    listed host with a port lets a project's webhooks reach that port only, not every service
    on the host (a failed delivery keeps an excerpt of the answer, which the project reads)."""
    for entry in allowed_hosts:
        name, only = allowed_entry(entry)
        if name == host.lower().strip("[]") and only in (None, port):
            return True
    return False


#: How long a webhook's host may take to resolve (its wait for a free lookup included).
LOOKUP_S: Final = 5.0
#: How many lookups of webhook hosts one process runs at once (on its loop's thread pool).
LOOKUPS: Final = 2


class _Lookups:
    """The webhook host lookups of one event loop: its slots, the lookups running (by host and
    port), and each owner's turn (a lock, dropped once no one holds or waits for it)."""

    def __init__(self) -> None:
        self.slots = asyncio.Semaphore(LOOKUPS)
        self.running: dict[tuple[str, int], asyncio.Future[list[tuple[Any, ...]]]] = {}
        self.turns: weakref.WeakValueDictionary[object, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )


_lookups: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Lookups] = (
    weakref.WeakKeyDictionary()
)


async def _lookup(
    loop: asyncio.AbstractEventLoop, host: str, port: int, owner: object
) -> list[tuple[Any, ...]]:
    """`loop.getaddrinfo` in one of the loop's `LOOKUPS` slots, in `owner`'s turn (None: no
    turn), or the lookup of the same host and port already running. A lookup given up (its
    callers' time ran out) keeps its slot and its owner's turn until its thread is done with it:
    the slots bound the threads that lookups hold, not only the callers that wait."""
    lookups = _lookups.get(loop)
    if lookups is None:
        lookups = _lookups[loop] = _Lookups()
    key = (host, port)
    running = lookups.running.get(key)
    if running is None:
        turn = None if owner is None else lookups.turns.setdefault(owner, asyncio.Lock())
        if turn is not None:
            await turn.acquire()
        try:
            await lookups.slots.acquire()
        except BaseException:
            if turn is not None:
                turn.release()
            raise
        running = lookups.running.get(key)  # started by another caller while this waited
        if running is not None:
            lookups.slots.release()
            if turn is not None:
                turn.release()
        else:
            running = lookups.running[key] = asyncio.ensure_future(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            )

            def done(task: asyncio.Future[Any]) -> None:
                if lookups.running.get(key) is task:
                    del lookups.running[key]
                lookups.slots.release()
                if turn is not None:
                    turn.release()
                if not task.cancelled():
                    task.exception()  # taken: a lookup given up fails to no one

            running.add_done_callback(done)
    return list(await asyncio.shield(running))


async def resolve_target(
    url: str, allowed_hosts: Collection[str], field: str = "webhook_url", *, owner: object = None
) -> list[str]:
    """The addresses a delivery to `url` may connect to; `InvalidField` when its form is wrong,
    its host does not resolve, or any address it resolves to is internal and the host is not
    in `allowed_hosts`. Every address must be public, not just the first: a resolver that
    answers a public and a private address would otherwise let the second one through.
    `owner` (a project's id) has one lookup at a time (`_lookup`)."""
    host = check_url(url, field)
    port = urlsplit(url).port or (443 if url.lower().startswith("https") else 80)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(LOOKUP_S):
            infos = await _lookup(loop, host, port, owner)
    except TimeoutError:
        _log.warning("webhook target lookup slow", host=host, limit_s=LOOKUP_S)
        raise WebhookLookupSlow(
            f"{field}: the host {host!r} did not resolve within {LOOKUP_S:g} s; try again"
        ) from None
    except (OSError, UnicodeError) as exc:
        _log.info("webhook target refused", host=host, reason="does not resolve", error=str(exc))
        raise _not_public(host, field) from None
    addresses = sorted({str(info[4][0]) for info in infos})
    if allowed(host, port, allowed_hosts):
        return addresses
    if not all(is_public(ipaddress.ip_address(a.split("%")[0])) for a in addresses):
        _log.info("webhook target refused", host=host, reason="resolves to an internal address")
        raise _not_public(host, field)
    return addresses


def _not_public(host: str, field: str) -> InvalidField:
    """One refusal for both ways a host fails: the caller cannot tell an internal name that
    exists from one that does not."""
    return InvalidField(
        f"{field}: the host {host!r} does not resolve to public addresses only (it does not "
        "resolve, or it resolves to an internal address: loopback, private, link-local or "
        "reserved); webhooks go to public addresses only, unless the operator lists the host "
        "in WEBHOOK_ALLOWED_HOSTS",
        [field],
    )
