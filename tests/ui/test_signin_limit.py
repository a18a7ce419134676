"""The limit on failed sign-ins against a real `aiserver-api` process (uvicorn): the client
address is the one uvicorn gives, from X-Forwarded-For when the peer is a trusted proxy
(FORWARDED_ALLOW_IPS, here 127.0.0.1) and the peer's own otherwise, so one client's failures
behind the proxy block that client and no other, and a client that reaches the API directly
cannot dodge the count with a forged header. The rest of the limit is tested in process
(tests/api/test_auth_failures.py)."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx
import pytest

from ..conftest import drop_database
from ..reliability.harness import (
    ADMIN_TOKEN,
    ApiProcess,
    api_env,
    api_process,
    catalogued_database,
)

pytestmark = pytest.mark.slow

LIMIT: Final = 3
CSRF_FIELD: Final = re.compile(r'name="csrf_token" value="([^"]+)"')
ADMIN: Final = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
#: A peer that is no trusted proxy: the loopback address that is not FORWARDED_ALLOW_IPS.
UNTRUSTED_PEER: Final = "127.0.0.2"


@dataclass
class Served:
    api: ApiProcess
    key: str  # a key with the scope read
    env: dict[str, str]  # the process's environment: another one serves the same
    log_dir: Path


@pytest.fixture(scope="module")
async def served(
    migrated_template_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Served]:
    url = await catalogued_database(migrated_template_url)
    log = tmp_path_factory.mktemp("signin-limit") / "api.log"
    env = api_env(
        url, upstream_url="http://127.0.0.1:9/unused", FORWARDED_ALLOW_IPS="127.0.0.1",
        API_AUTH_FAILURE_LIMIT=str(LIMIT), API_AUTH_FAILURE_WINDOW_SECONDS="300",
        UI_SESSION_SECRET="signin-limit-session-secret-0123456789",
    )  # fmt: skip
    try:
        async with api_process(env, log) as api, api.client() as client:
            made = await client.post("/v1/projects", headers=ADMIN,
                                     json={"slug": "lim", "name": "L"})  # fmt: skip
            assert made.status_code == 201, made.text
            key = await client.post("/v1/projects/lim/keys", headers=ADMIN,
                                    json={"name": "reader", "scopes": ["read"]})  # fmt: skip
            assert key.status_code == 201, key.text
            yield Served(api, key.json()["key"], env, log.parent)
    finally:
        await drop_database(url)


async def sign_in(client: httpx.AsyncClient, credential: str, forwarded: str | None) -> int:
    """The status of a sign-in (the form, then its POST) by the client `forwarded` names."""
    headers = {"x-forwarded-for": forwarded} if forwarded else {}
    form = await client.get("/ui/sign-in", headers=headers)
    nonce = CSRF_FIELD.search(form.text)
    assert nonce is not None, form.text
    bound = f"aiserver_ui_sign_in={form.cookies['aiserver_ui_sign_in']}"
    answer = await client.post(
        "/ui/sign-in", data={"credential": credential, "csrf_token": nonce.group(1)},
        headers={**headers, "cookie": bound},
    )  # fmt: skip
    return answer.status_code


async def operator(client: httpx.AsyncClient, forwarded: str) -> int:
    """The status of a JSON request with the operator's token from the client `forwarded`."""
    answer = await client.get("/v1/projects", headers={**ADMIN, "x-forwarded-for": forwarded})
    return answer.status_code


async def test_behind_a_trusted_proxy_each_client_counts_its_own_failures(served: Served) -> None:
    async with served.api.client() as proxy:  # from 127.0.0.1, the trusted proxy
        for n in range(LIMIT):
            assert await sign_in(proxy, f"guess-{n}-of-a-token", "203.0.113.7") == 401
        assert await sign_in(proxy, served.key, "203.0.113.7") == 429
        assert await operator(proxy, "203.0.113.7") == 429
        # another client behind the same proxy, and the proxy itself, are not blocked
        assert await sign_in(proxy, served.key, "203.0.113.8") == 303
        assert await operator(proxy, "203.0.113.8") == 200
        assert (await proxy.get("/v1/projects", headers=ADMIN)).status_code == 200
        # an IPv6 client counts by its /64
        for n in range(LIMIT):
            assert await sign_in(proxy, f"guess-{n}-of-a-token", "2001:db8:5:6::1") == 401
        assert await operator(proxy, "2001:db8:5:6::ffff") == 429
        assert await operator(proxy, "2001:db8:5:7::1") == 200
    blocked = [e for e in served.api.events() if e.get("event", "").startswith("too many failed")]
    assert [(e["level"], e["client"]) for e in blocked] == [
        ("warning", "203.0.113.7"), ("warning", "2001:db8:5:6::/64")
    ]  # fmt: skip
    assert "guess-" not in served.api.output()  # no credential in the log
    assert served.key not in served.api.output()


async def test_a_client_that_is_no_trusted_proxy_cannot_dodge_the_count(served: Served) -> None:
    transport = httpx.AsyncHTTPTransport(local_address=UNTRUSTED_PEER)
    async with httpx.AsyncClient(base_url=served.api.base_url, transport=transport) as direct:
        for n in range(LIMIT):  # a new X-Forwarded-For each time: ignored from this peer
            assert await sign_in(direct, "a-guess-of-the-token", f"198.51.100.{n}") == 401
        assert await sign_in(direct, served.key, "198.51.100.99") == 429
        assert await operator(direct, "198.51.100.98") == 429
    async with served.api.client() as proxy:  # the forged addresses were never counted
        assert await operator(proxy, "198.51.100.0") == 200


async def test_api_processes_share_the_count(served: Served) -> None:
    """Two API processes over one database and one Redis, as two replicas behind a load
    balancer: a client's failures count once in all, wherever they landed. Before, each process
    counted its own, and a client got the limit once per process."""
    async with (
        api_process(served.env, served.log_dir / "api-two.log") as two,
        served.api.client() as one_proxy,
        two.client() as two_proxy,
    ):
        # failures alternate between the processes: the last one blocks the client in both
        for n in range(LIMIT):
            proxy = (one_proxy, two_proxy)[n % 2]
            assert await sign_in(proxy, f"guess-{n}-of-a-token", "203.0.113.50") == 401
        for proxy in (one_proxy, two_proxy):
            assert await sign_in(proxy, served.key, "203.0.113.50") == 429
            assert await operator(proxy, "203.0.113.50") == 429
            assert await operator(proxy, "203.0.113.51") == 200  # another client


async def test_attempts_sent_at_once_get_no_more_than_the_limit_checked(served: Served) -> None:
    """Checked and counted in one step: of wrong credentials sent at once, LIMIT are told they
    are wrong and the rest to wait, on the JSON API and at the sign-in. Before, every request
    passed the check before any failure was counted: 30 sent at once got 30 answers of 401."""
    async with served.api.client() as proxy:
        guessed = await asyncio.gather(*(
            proxy.get("/v1/projects", headers={
                "Authorization": f"Bearer guess-{n:02d}-of-the-operator-token-0123456789",
                "x-forwarded-for": "203.0.113.60",
            })
            for n in range(30)
        ))  # fmt: skip
        assert Counter(r.status_code for r in guessed) == {401: LIMIT, 429: 30 - LIMIT}
        signed = await asyncio.gather(*(
            sign_in(proxy, f"guess-{n}-of-a-token", "203.0.113.61") for n in range(12)
        ))  # fmt: skip
        assert Counter(signed) == {401: LIMIT, 429: 12 - LIMIT}
