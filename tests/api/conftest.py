"""An API on a real, migrated database holding a small known catalog, and real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from arq import create_pool
from arq.connections import RedisSettings
from litestar.testing import AsyncTestClient

from aiserver.api.app import create_app
from aiserver.costs.refresh import Outcome, refresh_catalog

from ..conftest import Settings, replace_settings
from ..support.catalog import document, model_entry, models
from ..support.upstream import Upstream

ADMIN_TOKEN = "s3cret-admin-token-0123456789"


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
        api_admin_tokens=(ADMIN_TOKEN, "another-token"),
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


def admin(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
