"""An API on a real, migrated database holding a small known catalog, and real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from arq import create_pool
from arq.connections import RedisSettings
from litestar.testing import AsyncTestClient

from aiserver.api.app import create_app
from aiserver.costs.refresh import Outcome, refresh_catalog

from ..conftest import Settings, replace_settings
from ..support.catalog import document, model_entry, models
from ..support.upstream import Upstream

ADMIN_TOKEN = "s3cret-admin-token-0123456789abcdef"
Client = AsyncTestClient  # type: ignore[type-arg]


def known_catalog() -> bytes:
    entries = models(20)
    entries["claude-sonnet-4-5-20250929"] = model_entry(
        0,
        provider="anthropic",
        input_cost_per_token="3e-06",
        output_cost_per_token="1.5e-05",
        cache_read_input_token_cost="3e-07",
        cache_creation_input_token_cost="3.75e-06",
    )
    entries["text-embedding-test"] = model_entry(1, provider="openai", mode="embedding")
    return document(entries, **{"claude-sonnet-latest": {"alias_of": "claude-sonnet-4-5-20250929"}})


@pytest.fixture
async def api_settings(settings: Settings, upstream: Upstream) -> Settings:
    cfg = replace_settings(
        settings,
        model_cost_source_url=upstream.url,
        api_admin_tokens=(ADMIN_TOKEN, "another-operator-token-0123456789"),
        catalog_poll_interval_seconds=0.2,
        model_cost_fetch_retries=0,
    )
    upstream.serve(known_catalog())
    assert (await refresh_catalog(cfg.core, cfg.costs, trigger="test")).outcome is Outcome.APPLIED
    return cfg


@pytest.fixture
async def redis_clean(api_settings: Settings) -> AsyncIterator[None]:
    pool = await create_pool(RedisSettings.from_dsn(api_settings.core.redis_url))
    await pool.flushdb()
    try:
        yield
    finally:
        await pool.flushdb()
        await pool.aclose()


@pytest.fixture
async def client(api_settings: Settings, redis_clean: None) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    async with AsyncTestClient(app=create_app(api_settings)) as test_client:
        yield test_client


@pytest.fixture
async def pg(api_settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the API's database, to look at what it stored."""
    conn = await asyncpg.connect(api_settings.core.database_url)
    try:
        yield conn
    finally:
        await conn.close()


def admin(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def make_project(client: Client, slug: str, **fields: Any) -> dict[str, Any]:
    response = await client.post(
        "/v1/projects", headers=admin(), json={"slug": slug, "name": slug.title(), **fields}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def make_key(
    client: Client, project: str, scopes: list[str], headers: dict[str, str] | None = None,
    **fields: Any,
) -> dict[str, Any]:  # fmt: skip
    response = await client.post(
        f"/v1/projects/{project}/keys",
        headers=headers or admin(),
        json={"name": f"{project}-{'-'.join(scopes)}", "scopes": scopes, **fields},
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


@dataclass
class Tenants:
    """Two projects; keys of each, and the broken keys a test presents."""

    admin_a: dict[str, Any]  # project a, every scope
    ingest_a: dict[str, Any]  # project a, ingest only
    admin_b: dict[str, Any]  # project b, every scope
    revoked_a: str
    expired_a: str
    last_char_a: str  # admin_a's key with another last character


@pytest.fixture
async def tenants(client: Client, api_settings: Settings) -> Tenants:
    await make_project(client, "acme-a", time_zone="Europe/Berlin", rollup_tags=["team"])
    await make_project(client, "acme-b")
    admin_a = await make_key(client, "acme-a", ["ingest", "read", "admin"])
    ingest_a = await make_key(client, "acme-a", ["ingest"])
    admin_b = await make_key(client, "acme-b", ["ingest", "read", "admin"])
    revoked = await make_key(client, "acme-a", ["read"])
    assert (await client.delete(f"/v1/keys/{revoked['id']}", headers=admin())).status_code == 200
    expiring = await make_key(
        client, "acme-a", ["read"], expires_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat()
    )
    conn = await asyncpg.connect(api_settings.core.database_url)
    try:  # expired an hour ago: the API refuses to create a key that has expired already
        await conn.execute(
            "UPDATE api_keys SET expires_at = now() - interval '1 hour' WHERE id = $1",
            expiring["id"],
        )
    finally:
        await conn.close()
    last = admin_a["key"][-1]
    return Tenants(
        admin_a=admin_a,
        ingest_a=ingest_a,
        admin_b=admin_b,
        revoked_a=revoked["key"],
        expired_a=expiring["key"],
        last_char_a=admin_a["key"][:-1] + ("A" if last != "A" else "B"),
    )
