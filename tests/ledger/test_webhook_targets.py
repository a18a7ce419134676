"""`webhooks.targets`: an IPv6 address is judged by the IPv4 address it carries too (IPv4-mapped,
6to4, Teredo), site-local and NAT64 addresses are internal, and public addresses stay allowed."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest

from aiserver.core_db.settings import SettingsError, load_settings
from aiserver.ledger.errors import InvalidField, WebhookLookupSlow
from aiserver.ledger.settings import LedgerSettings
from aiserver.ledger.webhooks import targets
from aiserver.ledger.webhooks.targets import check_url, is_public, resolve_target

INTERNAL = [
    "127.0.0.1",
    "::1",
    "::ffff:10.0.0.1",  # IPv4-mapped
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2002:a9fe:a9fe::",  # 6to4 of 169.254.169.254, the cloud metadata service
    "2002:6440:1::",  # 6to4 of 100.64.0.1 (carrier-grade NAT)
    "2002::",  # 6to4 of 0.0.0.0
    "2001:0:7f00:1::ffff:ffff",  # Teredo: server 127.0.0.1
    "2001:0:808:808::f5ff:fffe",  # Teredo: server 8.8.8.8, client 10.0.0.1
    "2001:0:808:808::f7f7:f7f7",  # Teredo: both public (2001::/32 is not global: refused too)
    "fec0::1",  # site-local
    "feff:ffff::1",  # site-local, the top of fec0::/10
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8: the translator decides, refused all the same
    "64:ff9b:1::a00:1",  # local-use NAT64
    "::7f00:1",  # IPv4-compatible (deprecated) 127.0.0.1
]
PUBLIC = [
    "8.8.8.8",
    "::ffff:8.8.8.8",
    "2606:4700:4700::1111",
    "2002:808:808::1",  # 6to4 of 8.8.8.8
]


@pytest.mark.parametrize("address", INTERNAL)
def test_an_internal_address_or_one_carrying_an_internal_ipv4_is_not_public(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_a_public_address_is_public(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    ["http://[2002:7f00:1::]/", "http://[fec0::1]/", "https://[2001:0:7f00:1::ffff:ffff]:8443/x",
     "http://[64:ff9b::7f00:1]/"],
)  # fmt: skip
async def test_resolve_target_refuses_an_address_carrying_an_internal_ipv4(url: str) -> None:
    with pytest.raises(InvalidField, match="an internal address"):
        await resolve_target(url, allowed_hosts=())


async def test_resolve_target_allows_a_6to4_address_of_a_public_ipv4() -> None:
    assert await resolve_target("http://[2002:808:808::1]/", allowed_hosts=()) == [
        "2002:808:808::1"
    ]


@pytest.mark.parametrize(
    "url",
    ["https://hooks.example.com/x\x7f", "https://\u2603.net/hook"],
    ids=["DEL", "IDNA-2003-only"],
)
def test_a_url_the_http_client_cannot_read_is_refused_when_saved(url: str) -> None:
    """The delivery's HTTP client (httpx) refuses these URLs; `urlsplit` alone took them."""
    with pytest.raises(InvalidField, match="must be an http or https URL"):
        check_url(url)


def test_the_host_is_checked_as_the_http_client_encodes_it() -> None:
    """IDNA 2008, as httpx sends it: the 2003 rules would look up strasse.de instead."""
    assert check_url("https://stra\u00dfe.de/hook") == "xn--strae-oqa.de"
    assert check_url("http://[::1]:8080/x") == "::1"
    assert check_url("https://Hooks.Example.COM/a") == "hooks.example.com"


async def test_a_refusal_names_the_host_and_not_the_addresses_it_resolves_to() -> None:
    with pytest.raises(InvalidField) as refused:
        await resolve_target("http://localhost:9/hook", allowed_hosts=())
    message = str(refused.value)
    assert "the host 'localhost' does not resolve to public addresses only" in message
    assert "127.0.0.1" not in message
    assert "::1" not in message


async def test_a_host_that_does_not_resolve_is_refused_as_an_internal_one_is() -> None:
    """Two different answers would tell a project's key which internal names exist."""
    refusals = []
    for host in ("localhost", "no-such-host.invalid"):
        with pytest.raises(InvalidField) as refused:
            await resolve_target(f"http://{host}:9/hook", allowed_hosts=())
        refusals.append(str(refused.value).replace(repr(host), "HOST"))
    assert refusals[0] == refusals[1]
    assert "WEBHOOK_ALLOWED_HOSTS" in refusals[0]


@pytest.mark.parametrize(
    ("entry", "url", "reached"),
    [
        ("127.0.0.1", "http://127.0.0.1:5432/x", True),  # a host alone: any port
        ("127.0.0.1:9000", "http://127.0.0.1:9000/hook", True),
        ("127.0.0.1:9000", "http://127.0.0.1:5432/x", False),  # another service of the host
        ("127.0.0.1:80", "http://127.0.0.1/hook", True),  # the scheme's port
        ("LocalHost:443", "https://localhost/hook", True),
        ("[::1]:9000", "http://[::1]:9000/hook", True),
        ("[::1]:9000", "http://[::1]:9001/hook", False),
        ("::1", "http://[::1]:6379/x", True),
    ],
)
async def test_an_allowed_host_with_a_port_lets_webhooks_reach_that_port_only(
    entry: str, url: str, reached: bool
) -> None:
    """A listed host let every project's webhooks reach every service on it, and a failed
    delivery keeps an excerpt of the answer, which the project reads. `host:port` allows one."""
    if reached:
        assert await resolve_target(url, allowed_hosts=(entry,))
    else:
        with pytest.raises(InvalidField, match="webhook_url"):
            await resolve_target(url, allowed_hosts=(entry,))


@pytest.mark.parametrize(
    "entry",
    [
        "127.0.0.1:0", "127.0.0.1:99999", "gateway:http", ":9000",
        # a port left out read as any port; a URL read as a host named "http", or an address
        "127.0.0.1:", "[::1]:", "http://127.0.0.1", "http://gateway.internal:9000",
        "127.0.0.1:9000/x", "x@127.0.0.1", "[gateway]:9000", "gateway?x",
    ],
)  # fmt: skip
def test_an_allowed_host_that_is_no_host_or_port_stops_the_start(entry: str) -> None:
    with pytest.raises(SettingsError, match=r"WEBHOOK_ALLOWED_HOSTS: .* is not `host` or"):
        load_settings(LedgerSettings, {"WEBHOOK_ALLOWED_HOSTS": entry})


class StandInDns:
    """The loop's `getaddrinfo`, replaced: a host whose name starts with `slow` answers when
    the test sets `answer` (a resolver's slowness cannot be had on demand), any other at once;
    `running` names the lookups not done. LOOKUP_S is 1 s."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, slow: str) -> None:
        self.answer = asyncio.Event()
        self.running: list[str] = []
        self.slow = slow
        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", self.lookup)
        monkeypatch.setattr(targets, "LOOKUP_S", 1.0)

    async def lookup(self, host: str, port: int, **_: object) -> list[tuple[object, ...]]:
        self.running.append(host)
        try:
            if host.startswith(self.slow):
                await self.answer.wait()
        finally:
            self.running.remove(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port))]


async def test_a_host_that_does_not_resolve_in_time_is_a_503_and_lookups_keep_to_their_slots(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A webhook's host was looked up with no bound but the resolver's own: a name whose DNS
    never answered held the request that saved it, and a thread of the loop's pool (which new
    connections by name and work moved off the loop share) for as long; many such requests
    held them all. Now a lookup takes at most LOOKUP_S, and at most LOOKUPS run at once, a
    lookup given up keeping its slot until its thread is done. The DNS here is a stand-in on
    this loop that answers when the test says so (a resolver's slowness cannot be had on
    demand)."""
    dns = StandInDns(monkeypatch, slow="")
    answer, running = dns.answer, dns.running
    tries = [resolve_target(f"https://slow-{n}.example.com/hook", ()) for n in range(5)]
    async with asyncio.timeout(30):  # before: each waited for the DNS, here for ever
        failed = await asyncio.gather(*tries, return_exceptions=True)
    assert all(isinstance(e, WebhookLookupSlow) for e in failed), failed
    assert WebhookLookupSlow.status == 503
    assert "did not resolve within 1 s" in str(failed[0])
    assert len(running) == targets.LOOKUPS  # the given-up lookups still hold their threads
    # a new lookup waits for a slot, which the given-up ones free once their DNS answers
    later = asyncio.ensure_future(resolve_target("https://later.example.com/hook", ()))
    await asyncio.sleep(0.05)
    assert not later.done()
    assert len(running) == targets.LOOKUPS
    answer.set()
    assert await later == ["93.184.215.14"]
    assert running == []


async def test_one_project_s_slow_hosts_leave_the_other_projects_a_lookup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The LOOKUPS slots were every project's: one project's budgets pointing at hosts whose DNS
    never answers (many alerts to one host, or two hosts) held them all, and every other
    project's alerts and saved webhooks failed as slow while those threads waited. A host being
    looked up is now shared by its callers, and a project runs one lookup at a time: its slow
    hosts hold one slot, and another project still resolves. The same stand-in DNS as above."""
    dns = StandInDns(monkeypatch, slow="slow")
    answer, running = dns.answer, dns.running
    # project 1: six alerts to one slow host, and a budget saved with another slow host
    tries = [resolve_target("https://slow-a.example.com/hook", (), owner=1) for _ in range(6)]
    tries.append(resolve_target("https://slow-b.example.com/hook", (), owner=1))
    async with asyncio.timeout(30):
        failed = await asyncio.gather(*tries, return_exceptions=True)
    assert all(isinstance(e, WebhookLookupSlow) for e in failed), failed
    assert running == ["slow-a.example.com"]  # one lookup for the six, none yet for slow-b
    # project 2 resolves its own host at once, while project 1's lookup still waits
    async with asyncio.timeout(0.5):
        assert await resolve_target("https://fast.example.com/hook", (), owner=2) == [
            "93.184.215.14"
        ]
    answer.set()
    async with asyncio.timeout(5):
        while running:
            await asyncio.sleep(0.01)
    # once its lookup is done, project 1 has its turn again, and a shared lookup is not kept
    assert await resolve_target("https://slow-a.example.com/hook", (), owner=1) == ["93.184.215.14"]
