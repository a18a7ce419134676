"""One real `aiserver-api` process, shared by the tests of hostile input, auth and fuzzing.

It serves a throwaway database holding a known catalog (40 models at version 1 prices, and an
alias), with JSON logs captured to a file that the tests read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from aiserver.core_db.migrations import apply_migrations
from aiserver.costs.refresh import Outcome, refresh_catalog

from ..conftest import (
    Settings,
    create_database,
    make_settings,
    replace_settings,
)
from ..support.catalog import document, model_entry
from ..support.upstream import Upstream
from .harness import (
    ApiProcess,
    api_env,
    api_process,
    drop_served,
    errors_logged,
    model_names,
    table_counts,
)


@dataclass
class Served:
    settings: Settings
    api: ApiProcess
    upstream: Upstream


def served_catalog() -> bytes:
    entries = {
        name: model_entry(i, input_cost_per_token="1e-06", output_cost_per_token="2e-06")
        for i, name in enumerate(model_names(40))
    }
    return document(entries, **{"gpt-test-latest": {"alias_of": "gpt-test-039"}})


@pytest.fixture(scope="package")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    url = await create_database()
    upstream = Upstream()
    upstream.start()
    try:
        settings = replace_settings(make_settings(url), model_cost_source_url=upstream.url)
        await apply_migrations(settings.core)
        upstream.serve(served_catalog())
        assert (
            await refresh_catalog(settings.core, settings.costs, trigger="test")
        ).outcome is Outcome.APPLIED
        log = tmp_path_factory.mktemp("served-api") / "api.log"
        # no limit on failed attempts: the auth and fuzzing tests present dozens of wrong tokens
        # from this one address (tests/api/test_auth_failures.py tests the limit)
        env = api_env(url, upstream_url=upstream.url, API_AUTH_FAILURE_LIMIT="0")
        async with api_process(env, log) as api:
            yield Served(settings, api, upstream)
    finally:
        upstream.stop()
        await drop_served(url)


@pytest.fixture
async def unchanged(served: Served) -> AsyncIterator[None]:
    """The test stores nothing (the row count of every table is unchanged) and the served API
    logs nothing at error level."""
    before = await table_counts(served.settings.core.database_url)
    yield
    assert await table_counts(served.settings.core.database_url) == before
    assert errors_logged(served.api.log) == []
