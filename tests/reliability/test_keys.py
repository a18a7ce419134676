"""Project keys across two real `aiserver-api` processes on one database.

A key revoked, or a project archived, through one process is refused by the other as soon as the
change commits: the transaction announces it (PostgreSQL NOTIFY) and every API process listens.
Here the key cache lives 600 s, so nothing but the announcement can explain the refusal. When a
process's listening connection is cut, it listens again and forgets its whole cache, so that a
revocation made while it was deaf is not missed. No key, nor its secret, reaches a log line.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import httpx
import pytest

from aiserver.ledger.authentication import LISTENER_NAME, RELISTEN_S

from ..conftest import Settings
from .harness import ADMIN_TOKEN, api_env, api_process, errors_logged

pytestmark = pytest.mark.slow

#: The key cache's lifetime in each process: far longer than the test.
CACHE_S = 600.0
#: How soon the other process must refuse a revoked key: the announcement, on a busy machine.
HEARD_S = 3.0


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _status(client: httpx.AsyncClient, key: str) -> int:
    return (await client.get("/v1/projects/acme-a", headers=_bearer(key))).status_code


async def _refused_within(client: httpx.AsyncClient, key: str, seconds: float) -> float:
    """How long until `client`'s process refuses `key` (fails the test after `seconds`)."""
    start = time.monotonic()
    while (status := await _status(client, key)) == 200:
        assert time.monotonic() - start < seconds, f"still accepted after {seconds} s"
        await asyncio.sleep(0.05)
    assert status in (401, 403), status
    return time.monotonic() - start


async def _listeners(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        found: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = $1 AND datname = current_database()",
            LISTENER_NAME,
        )
        return found
    finally:
        await conn.close()


async def test_a_revocation_or_an_archiving_reaches_the_other_process_as_it_commits(
    settings: Settings, tmp_path: Path
) -> None:
    url = settings.core.database_url
    env = api_env(url, upstream_url="http://127.0.0.1:9/none", API_KEY_CACHE_SECONDS=str(CACHE_S))
    admin = _bearer(ADMIN_TOKEN)
    keys: list[str] = []
    async with (
        api_process(env, tmp_path / "first.log", ready=False) as first,
        api_process(env, tmp_path / "second.log", ready=False) as second,
        first.client() as one,
        second.client() as two,
    ):
        created = await one.post("/v1/projects", headers=admin,
                                 json={"slug": "acme-a", "name": "A"})  # fmt: skip
        assert created.status_code == 201, created.text
        made = []
        for name in ("revoked", "deaf", "archived"):
            answer = await one.post("/v1/projects/acme-a/keys", headers=admin,
                                    json={"name": name, "scopes": ["read"]})  # fmt: skip
            made.append(answer.json())
        keys = [m["key"] for m in made]
        for key in keys:
            assert await _status(one, key) == 200
            assert await _status(two, key) == 200  # the second process has them cached now
        async with asyncio.timeout(30):
            while await _listeners(url) < 2:
                await asyncio.sleep(0.1)

        # a revocation: at once where it was made, as it is heard in the other
        assert (await one.delete(f"/v1/keys/{made[0]['id']}", headers=admin)).status_code == 200
        assert await _status(one, keys[0]) == 401
        await _refused_within(two, keys[0], HEARD_S)
        refused = await two.get("/v1/projects/acme-a", headers=_bearer(keys[0]))
        assert refused.json()["detail"].startswith("the key was revoked at")

        # the listeners cut: a revocation made while they are deaf is not heard, but each
        # forgets its cache when it listens again, so the key is refused by then
        conn = await asyncpg.connect(url)
        try:
            cut = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1 AND datname = current_database()",
                LISTENER_NAME,
            )
        finally:
            await conn.close()
        assert cut == 2
        assert (await one.delete(f"/v1/keys/{made[1]['id']}", headers=admin)).status_code == 200
        await _refused_within(two, keys[1], RELISTEN_S + HEARD_S)
        async with asyncio.timeout(30):
            while await _listeners(url) < 2:
                await asyncio.sleep(0.1)

        # an archiving: every key of the project, in the other process as it commits
        archived = await one.patch("/v1/projects/acme-a", headers=admin, json={"archived": True})
        assert archived.status_code == 200, archived.text
        await _refused_within(two, keys[2], HEARD_S)
        refused = await two.get("/v1/projects/acme-a", headers=_bearer(keys[2]))
        assert refused.status_code == 403
        assert refused.json()["type"].endswith("project-archived")

    for api in (first, second):
        text = api.output()
        for key in keys:
            assert key not in text
            assert key.split("_", 2)[2] not in text
        assert errors_logged(api.log) == []
