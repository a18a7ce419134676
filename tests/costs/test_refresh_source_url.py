"""A source URL that cannot be fetched: refused at once, never retried, and recorded as a failed
refresh like any other refusal; and `aiserver-costs refresh --source-url` checks its URL as
MODEL_COST_SOURCE_URL is checked, a wrong one being a wrong argument (exit 2)."""

from __future__ import annotations

import json

import asyncpg
import pytest

from aiserver.costs.errors import UpstreamRefused
from aiserver.costs.fetch import fetch_source
from aiserver.costs.refresh import Outcome, refresh_catalog

from ..conftest import Settings
from ..support.processes import run_module

#: A URL with an allowed scheme that is no URL (an IPv6 host never closed), and a scheme that
#: no download speaks.
MALFORMED = "http://[::1"
UNSUPPORTED = "ftp://127.0.0.1:9/prices.json"


@pytest.mark.parametrize("url", [MALFORMED, UNSUPPORTED, "http://"])
async def test_a_url_that_cannot_be_fetched_is_refused_not_retried(url: str) -> None:
    # backoff: a transient fault would be retried three times (it was, for ftp://); a refusal
    # is raised at the first attempt
    with pytest.raises(UpstreamRefused, match="the source URL cannot be fetched"):
        await fetch_source(url, retries=3, backoff=0.01)


@pytest.mark.parametrize("url", [MALFORMED, UNSUPPORTED])
async def test_a_refresh_from_such_a_url_is_recorded_as_failed(
    settings: Settings, url: str
) -> None:
    report = await refresh_catalog(
        settings.core, settings.costs, force=True, trigger="test", source_url=url
    )
    assert report.outcome is Outcome.FAILED
    assert report.error is not None
    assert report.error.startswith("the source URL cannot be fetched: "), report.error
    conn = await asyncpg.connect(settings.core.database_url)
    try:
        meta = await conn.fetchrow("SELECT last_error, last_error_at FROM ai_cost_metadata")
        run = await conn.fetchrow(
            "SELECT outcome, trigger, error FROM ai_cost_refresh_runs ORDER BY id DESC LIMIT 1"
        )
    finally:
        await conn.close()
    assert meta is not None
    assert meta["last_error"] == f"failed: {report.error}"
    assert meta["last_error_at"] is not None
    assert run is not None
    assert (run["outcome"], run["trigger"], run["error"]) == ("failed", "test", report.error)


async def test_refresh_checks_its_source_url_as_the_setting_is_checked(
    subprocess_env: dict[str, str],
) -> None:
    env = subprocess_env
    for url in (UNSUPPORTED, "prices.json", "gopher://example.com/x"):
        code, out, err = await run_module(
            "aiserver.costs.cli", env, "refresh", "--source-url", url, "--json"
        )
        assert (code, out) == (2, ""), err  # a wrong argument, as an unknown option is
        assert "usage: aiserver-costs refresh" in err
        # the option typed, not the setting it replaces (before: "MODEL_COST_SOURCE_URL must")
        assert (
            "argument --source-url: must be a URL starting with http://, https://, file://" in err
        )
        assert "Traceback" not in err
    code, out, _ = await run_module("aiserver.costs.cli", env, "status", "--json")
    assert json.loads(out)["last_error"] is None  # nothing was tried

    # the right scheme, and still no URL: the download fails, and says so, with no traceback
    code, out, err = await run_module(
        "aiserver.costs.cli", env, "refresh", "--source-url", MALFORMED
    )
    assert (code, out) == (1, ""), err
    assert "Traceback" not in err
    assert "aiserver-costs refresh: failed: the source URL cannot be fetched: " in err
    assert "the catalog was left unchanged" in err
    code, out, _ = await run_module("aiserver.costs.cli", env, "status", "--json")
    status = json.loads(out)
    assert status["last_error"].startswith("failed: the source URL cannot be fetched: ")
    assert status["last_run"]["outcome"] == "failed"
