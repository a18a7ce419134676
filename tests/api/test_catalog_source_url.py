"""The catalog source URL (MODEL_COST_SOURCE_URL) may carry a mirror's credentials or a token in
its query. The download uses it as given; `GET /v1/catalog` (no credential), the database, the
logs, the refresh report (a job's result) and `aiserver-costs status` show it redacted."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import asyncpg
import pytest

from aiserver.costs.refresh import Outcome, refresh_catalog
from aiserver.costs.urls import redact_url

from ..conftest import Settings, child_env, replace_settings
from ..support.processes import run_module
from ..support.upstream import Upstream
from .conftest import Client

SECRETS = ("s3cret-pass", "tok-123456", "sig-abcdef")


def mirror_url(upstream: Upstream) -> str:
    """The local upstream's URL with a user and password and a token and signature in the query."""
    scheme, _, rest = upstream.url.partition("://")
    return f"{scheme}://mirror:{SECRETS[0]}@{rest}?token={SECRETS[1]}&sig={SECRETS[2]}&v=2"


def shown_url(upstream: Upstream) -> str:
    scheme, _, rest = upstream.url.partition("://")
    return f"{scheme}://mirror:***@{rest}?token=***&sig=***&v=***"


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:pass@host/p.json?token=abc&v=2", "https://user:***@host/p.json?token=***&v=***"),
        ("https://ghp_token@host:8443/p.json", "https://***@host:8443/p.json"),
        ("https://u:p@ss@[::1]:8443/p?x&y=1#frag", "https://u:***@[::1]:8443/p?***&y=***#***"),
        ("https://raw.githubusercontent.com/a/b.json", "https://raw.githubusercontent.com/a/b.json"),
        ("file:///srv/prices.json", "file:///srv/prices.json"),
        ("snapshot:aiserver-costs/x.json.gz", "snapshot:aiserver-costs/x.json.gz"),
    ],
)  # fmt: skip
def test_a_url_is_shown_without_its_secrets_and_redacting_it_again_changes_nothing(
    url: str, shown: str
) -> None:
    assert redact_url(url) == shown
    assert redact_url(shown) == shown


async def test_the_source_url_is_redacted_in_the_answer_the_database_and_the_logs(
    client: Client,
    api_settings: Settings,
    upstream: Upstream,
    pg: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = replace_settings(api_settings, model_cost_source_url=mirror_url(upstream))
    upstream.requests.clear()
    upstream.mode, upstream.status, upstream.failures_before_ok = "status", 503, 1
    caplog.set_level(logging.DEBUG)

    report = await refresh_catalog(cfg.core, cfg.costs, force=True, trigger="test", retries=1)

    assert report.outcome is Outcome.UNCHANGED, report
    # fetched with the real URL: its credentials went upstream (as Basic auth), both times
    basic = "Basic " + base64.b64encode(f"mirror:{SECRETS[0]}".encode()).decode()
    assert [r.get("Authorization") for r in upstream.requests] == [basic, basic]
    # the report (a refresh job's result) and every log line show the redacted form
    assert report.url == report.as_dict()["url"] == shown_url(upstream)
    events: list[dict[str, Any]] = [r.msg for r in caplog.records if isinstance(r.msg, dict)]
    retry = [e for e in events if e["event"] == "upstream fetch failed; retrying"]
    assert [e["url"] for e in retry] == [shown_url(upstream)]
    done = [e for e in events if str(e["event"]).startswith("catalog refresh: ")]
    assert [e["url"] for e in done] == [shown_url(upstream)]
    assert_no_secret("\n".join(str(r.__dict__) for r in caplog.records))
    # stored redacted, answered redacted
    stored = await pg.fetchval("SELECT url FROM ai_cost_metadata WHERE source = 'litellm'")
    assert stored == shown_url(upstream)
    response = await client.get("/v1/catalog")
    assert response.json()["url"] == shown_url(upstream)
    assert_no_secret(response.text)

    # a second refresh of the same source asks conditionally: redaction keeps it one source
    upstream.requests.clear()
    upstream.mode = "ok"
    again = await refresh_catalog(cfg.core, cfg.costs, force=True, trigger="test", retries=0)
    assert again.outcome is Outcome.NOT_MODIFIED
    assert upstream.requests[0].get("If-None-Match") == upstream.etag


async def test_a_url_stored_with_its_secrets_by_an_older_release_is_shown_redacted(
    client: Client, api_settings: Settings, upstream: Upstream, pg: asyncpg.Connection
) -> None:
    await pg.execute(
        "UPDATE ai_cost_metadata SET url = $1 WHERE source = 'litellm'", mirror_url(upstream)
    )
    response = await client.get("/v1/catalog")
    assert response.json()["url"] == shown_url(upstream)
    assert_no_secret(response.text)
    env = child_env(api_settings)
    code, out, err = await run_module("aiserver.costs.cli", env, "status")
    assert code == 0, err
    assert f"source:          litellm ({shown_url(upstream)})" in out
    assert_no_secret(out + err)
    code, out, err = await run_module("aiserver.costs.cli", env, "status", "--json")
    assert (code, json.loads(out)["url"]) == (0, shown_url(upstream))
