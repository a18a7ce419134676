"""The guarded refresh against a local upstream: what is written, and what is never lost."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import Coroutine
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from aiserver.core_db.locks import advisory_unlock, try_advisory_lock
from aiserver.costs.errors import UpstreamRefused
from aiserver.costs.fetch import redirect_target
from aiserver.costs.refresh import REFRESH_LOCK, Outcome, refresh_catalog, seed_from_snapshot
from aiserver.costs.source import decode_json
from aiserver.costs.store.metadata import CATALOG_VERSION_LOCK

from ..conftest import Settings, replace_settings
from ..support.catalog import catalog_rows, document, fetch_all, fetch_one, models
from ..support.upstream import Upstream


@pytest.fixture
def cfg(settings: Settings, upstream: Upstream) -> Settings:
    return replace_settings(
        settings,
        model_cost_source_url=upstream.url,
        model_cost_fetch_timeout_seconds=2.0,
        model_cost_fetch_retries=1,
        model_cost_max_bytes=1_000_000,
    )


@pytest.fixture
async def loaded(cfg: Settings, upstream: Upstream) -> Settings:
    """A catalog holding the 20 models of `models(20)` (version 1)."""
    upstream.serve(document(models(20), **{"gpt-alias": {"alias_of": "gpt-test-001"}}))
    report = await refresh_catalog(cfg.core, cfg.costs, trigger="test")
    assert report.outcome is Outcome.APPLIED
    return cfg


async def _metadata(url: str) -> asyncpg.Record:
    return await fetch_one(url, "SELECT * FROM ai_cost_metadata WHERE source = 'litellm'")


async def test_first_refresh_loads_every_model_alias_and_document(
    cfg: Settings, upstream: Upstream
) -> None:
    upstream.serve(document(models(20), **{"gpt-alias": {"alias_of": "gpt-test-001"}}))
    report = await refresh_catalog(cfg.core, cfg.costs, trigger="test")
    assert report.outcome is Outcome.APPLIED
    assert (report.added, report.changed, report.removed, report.skipped) == (20, 0, 0, {})
    assert report.catalog_version == 1
    assert report.fetched_bytes == len(upstream.body)
    row = await fetch_one(
        cfg.core.database_url,
        "SELECT provider, mode, max_input_tokens, input_cost_per_token, output_cost_per_token,"
        " entry::text AS entry FROM ai_model_costs WHERE model = 'gpt-test-002'",
    )
    assert row["provider"] == "openai"
    assert row["mode"] == "chat"
    assert row["max_input_tokens"] == 128000
    assert row["input_cost_per_token"] == Decimal("0.000003")
    assert row["output_cost_per_token"] == Decimal("0.000006")
    entry = decode_json(row["entry"])
    assert entry["supports_function_calling"] is True
    assert entry["input_cost_per_token"] == Decimal("0.000003")
    meta = await _metadata(cfg.core.database_url)
    assert meta["model_count"] == 20
    assert meta["alias_count"] == 1
    assert meta["catalog_version"] == 1
    assert meta["etag"] == upstream.etag
    assert meta["last_success_at"] is not None
    assert meta["last_error"] is None
    documents = json.loads(meta["documents"])
    assert sorted(documents) == ["fallback_generalizations", "sample_spec"]
    alias = await fetch_one(cfg.core.database_url, "SELECT alias, target FROM ai_model_aliases")
    assert tuple(alias) == ("gpt-alias", "gpt-test-001")
    count = await fetch_one(cfg.core.database_url, "SELECT count(*) FROM ai_model_costs")
    assert count[0] == 20  # sample_spec and the rules are not stored as models


async def test_a_fresh_catalog_is_not_fetched_unless_forced(
    loaded: Settings, upstream: Upstream
) -> None:
    asked = len(upstream.requests)
    report = await refresh_catalog(loaded.core, loaded.costs, trigger="test")
    assert report.outcome is Outcome.FRESH
    assert len(upstream.requests) == asked
    forced = await refresh_catalog(loaded.core, loaded.costs, force=True, trigger="test")
    assert forced.outcome is Outcome.NOT_MODIFIED
    assert len(upstream.requests) == asked + 1


async def test_etag_gives_304_and_touches_no_row(loaded: Settings, upstream: Upstream) -> None:
    before = await catalog_rows(loaded.core.database_url)
    report = await refresh_catalog(loaded.core, loaded.costs, force=True, trigger="test")
    assert report.outcome is Outcome.NOT_MODIFIED
    assert upstream.requests[-1]["If-None-Match"] == upstream.etag
    assert upstream.requests[-1]["If-Modified-Since"] == "Sat, 28 Nov 2026 09:00:00 GMT"
    assert await catalog_rows(loaded.core.database_url) == before


async def test_the_same_bytes_without_a_304_write_nothing(
    loaded: Settings, upstream: Upstream
) -> None:
    before = await catalog_rows(loaded.core.database_url)
    upstream.conditional = False
    report = await refresh_catalog(loaded.core, loaded.costs, force=True, trigger="test")
    assert report.outcome is Outcome.UNCHANGED
    assert report.fetched_bytes == len(upstream.body)
    assert await catalog_rows(loaded.core.database_url) == before
    meta = await _metadata(loaded.core.database_url)
    assert meta["catalog_version"] == 1
    assert meta["last_error"] is None


async def test_same_prices_spelled_differently_write_nothing(
    loaded: Settings, upstream: Upstream
) -> None:
    before = await catalog_rows(loaded.core.database_url)
    version = (await _metadata(loaded.core.database_url))["catalog_version"]
    respelled = document(models(20), **{"gpt-alias": {"alias_of": "gpt-test-001"}})
    respelled = re.sub(rb"(?<![0-9.])3e-06", b"3.0e-06", respelled)
    respelled = re.sub(rb"(?<![0-9.])2e-06", b"0.000002", respelled)
    assert b"3.0e-06" in respelled
    assert b"0.000002" in respelled
    upstream.serve(respelled)  # another ETag, so the body is downloaded and compared
    report = await refresh_catalog(loaded.core, loaded.costs, force=True, trigger="test")
    assert report.outcome is Outcome.UNCHANGED
    assert (report.added, report.changed, report.removed) == (0, 0, 0)
    assert await catalog_rows(loaded.core.database_url) == before
    meta = await _metadata(loaded.core.database_url)
    assert meta["catalog_version"] == version
    assert meta["etag"] == upstream.etag


async def test_an_unchanged_document_in_another_order_and_spelling_is_not_parsed_again(
    loaded: Settings, upstream: Upstream
) -> None:
    """The document applied last time, with its keys reordered, its whole numbers written with a
    fraction and its prices respelled, is recognized by its content hash: no row is written, and
    the run still reports the entry that stays skipped."""
    changed = models(20)
    changed["gpt-test-003"]["input_cost_per_token"] = "BAD"
    changed["gpt-test-004"]["output_cost_per_token"] = "8.5e-06"  # so that this one applies
    first = document(changed, **{"gpt-alias": {"alias_of": "gpt-test-001"}})
    upstream.serve(first.replace(b'"BAD"', b'"free"'))
    applied = await refresh_catalog(loaded.core, loaded.costs, force=True, trigger="test")
    assert applied.outcome is Outcome.APPLIED
    assert list(applied.skipped) == ["gpt-test-003"]
    before = await catalog_rows(loaded.core.database_url)
    version = (await _metadata(loaded.core.database_url))["catalog_version"]

    def respell(value: object) -> object:
        """Numbers as markers for their new spelling; dicts in reverse key order."""
        if isinstance(value, dict):
            return {key: respell(value[key]) for key in reversed(value)}
        if isinstance(value, list):
            return [respell(item) for item in value]
        if isinstance(value, Decimal):  # 3e-06 -> 3.00E-6, 8.5e-06 -> 8.50E-6, 0.0 -> 0.00E+2
            mantissa, _, exponent = f"{value.normalize():E}".partition("E")
            mantissa += "0" if "." in mantissa else ".00"
            return f"@{mantissa}E{exponent}" if value else "@0.00E+2"
        if isinstance(value, int) and not isinstance(value, bool):  # 128000 -> 1.28000E+5
            return f"@{Decimal(value):.5E}"
        return value

    entries = json.loads(first.replace(b'"BAD"', b'"free"'), parse_float=Decimal)
    text = json.dumps(respell(entries), separators=(",", ":"))
    text = re.sub(r'"@([^"]+)"', r"\1", text)
    for spelling in ("1.28000E+5", "3.00E-6", "8.50E-6", "0.00E+2"):
        assert spelling in text
    upstream.serve(text.encode())
    report = await refresh_catalog(loaded.core, loaded.costs, force=True, trigger="test")
    assert report.outcome is Outcome.UNCHANGED
    assert report.skipped == applied.skipped
    assert await catalog_rows(loaded.core.database_url) == before
    meta = await _metadata(loaded.core.database_url)
    assert meta["catalog_version"] == version
    run = await fetch_one(
        loaded.core.database_url,
        "SELECT outcome, skipped, skipped_entries::text AS entries FROM ai_cost_refresh_runs"
        " ORDER BY id DESC LIMIT 1",
    )
    assert (run["outcome"], run["skipped"]) == ("unchanged", 1)
    assert json.loads(run["entries"]) == applied.skipped
    # the same bytes once more (no 304): recognized by the body hash, and reported alike
    upstream.conditional = False
    again = await refresh_catalog(loaded.core, loaded.costs, force=True, trigger="test")
    assert (again.outcome, again.skipped) == (Outcome.UNCHANGED, applied.skipped)


async def test_a_changed_price_opens_a_new_version_and_keeps_the_old(
    loaded: Settings, upstream: Upstream
) -> None:
    changed = models(20)
    changed["gpt-test-005"]["input_cost_per_token"] = "9.5e-06"
    upstream.serve(document(changed, **{"gpt-alias": {"alias_of": "gpt-test-001"}}))
    report = await refresh_catalog(loaded.core, loaded.costs, force=True, trigger="test")
    assert report.outcome is Outcome.APPLIED
    assert (report.added, report.changed, report.removed) == (0, 1, 0)
    assert report.catalog_version == 2
    conn = await asyncpg.connect(loaded.core.database_url)
    try:
        versions = await conn.fetch(
            "SELECT input_cost_per_token, valid_from, valid_to, opened_in_version,"
            " closed_in_version FROM ai_model_costs WHERE model = 'gpt-test-005' ORDER BY id"
        )
        untouched = await conn.fetchval(
            "SELECT count(*) FROM ai_model_costs WHERE model <> 'gpt-test-005'"
        )
    finally:
        await conn.close()
    old, new = versions
    assert old["input_cost_per_token"] == Decimal("0.000006")
    assert new["input_cost_per_token"] == Decimal("0.0000095")
    assert old["valid_to"] == new["valid_from"]
    assert new["valid_to"] is None
    assert (old["opened_in_version"], old["closed_in_version"]) == (1, 2)
    assert (new["opened_in_version"], new["closed_in_version"]) == (2, None)
    assert untouched == 19


async def test_new_prices_are_valid_from_after_the_ingests_in_flight_committed(
    loaded: Settings, upstream: Upstream
) -> None:
    """An ingest holds the catalog version's lock shared until its COMMIT, having priced its
    calls with the old prices. A refresh that starts meanwhile waits for it, and opens its
    prices from the time it got the lock: after that COMMIT, not from the refresh's start, so
    nothing the ingest priced falls inside the new prices' time (and no reprice moves it)."""
    changed = models(20)
    changed["gpt-test-005"]["input_cost_per_token"] = "9.5e-06"
    upstream.serve(document(changed, **{"gpt-alias": {"alias_of": "gpt-test-001"}}))
    ingest = await asyncpg.connect(loaded.core.database_url)
    try:
        async with ingest.transaction():
            await ingest.execute("SELECT pg_advisory_xact_lock_shared($1)", CATALOG_VERSION_LOCK)
            refresh_began = await ingest.fetchval("SELECT clock_timestamp()")
            refresh = asyncio.create_task(
                refresh_catalog(loaded.core, loaded.costs, force=True, trigger="test")
            )
            # this database's locks only: other test sessions on the server hold their own
            waiting = (
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            for _ in range(200):
                if await ingest.fetchval(waiting):
                    break
                await asyncio.sleep(0.02)
            assert await ingest.fetchval(waiting) == 1, "the refresh never waited for the lock"
            assert not refresh.done()
            ingest_committed = await ingest.fetchval("SELECT clock_timestamp()")
        report = await asyncio.wait_for(refresh, 10)
        new_from = await ingest.fetchval(
            "SELECT valid_from FROM ai_model_costs"
            " WHERE model = 'gpt-test-005' AND valid_to IS NULL"
        )
        run_started = await ingest.fetchval(
            "SELECT max(started_at) FROM ai_cost_refresh_runs WHERE outcome = 'applied'"
        )
    finally:
        await ingest.close()
    assert (report.outcome, report.changed, report.catalog_version) == (Outcome.APPLIED, 1, 2)
    assert refresh_began < run_started < ingest_committed < new_from


async def test_a_removed_model_is_closed_not_deleted(loaded: Settings, upstream: Upstream) -> None:
    fewer = models(20)
    del fewer["gpt-test-019"]
    upstream.serve(document(fewer, **{"gpt-alias": {"alias_of": "gpt-test-001"}}))
    report = await refresh_catalog(loaded.core, loaded.costs, force=True, trigger="test")
    assert (report.outcome, report.added, report.changed, report.removed) == (
        Outcome.APPLIED,
        0,
        0,
        1,
    )
    row = await fetch_one(
        loaded.core.database_url,
        "SELECT valid_to, closed_in_version FROM ai_model_costs WHERE model = 'gpt-test-019'",
    )
    assert row["valid_to"] is not None
    assert row["closed_in_version"] == 2
    assert (await _metadata(loaded.core.database_url))["model_count"] == 19


async def test_an_added_model_and_a_changed_alias_are_applied(
    loaded: Settings, upstream: Upstream
) -> None:
    more = models(21)
    upstream.serve(document(more, **{"gpt-alias": {"alias_of": "gpt-test-020"}}))
    report = await refresh_catalog(loaded.core, loaded.costs, force=True, trigger="test")
    assert (report.outcome, report.added, report.changed, report.removed) == (
        Outcome.APPLIED,
        1,
        0,
        0,
    )
    alias = await fetch_one(loaded.core.database_url, "SELECT target FROM ai_model_aliases")
    assert alias["target"] == "gpt-test-020"


@pytest.mark.parametrize(
    ("body", "content_type", "expected_error"),
    [
        (b"", "application/json", "rejected: empty body"),
        (
            b"<html><body>502 Bad Gateway</body></html>",
            "text/html",
            "rejected: not JSON",
        ),
        (b'{"gpt-test-000": {"litellm_provider": "openai", "input_c', "", "rejected: not JSON"),
        (b'[{"model": "gpt-4o"}]', "application/json", "rejected: wrong shape: expected"),
        (b'{"a": 1, "b": [2]}', "application/json", "rejected: wrong shape: no model entries"),
        (document(models(4)), "application/json", "rejected: shrink: the source has 4 models"),
        (
            b'{"gpt-test-000": {"litellm_provider": "open\xff\xfeai"}}',
            "application/json",
            "rejected: not JSON: invalid UTF-8",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", "rejected: not JSON"),
    ],
    ids=["empty", "html", "truncated-json", "list", "no-models", "shrink", "bad-utf8", "deep"],
)
async def test_a_rejected_body_leaves_the_catalog_row_for_row(
    loaded: Settings,
    upstream: Upstream,
    body: bytes,
    content_type: str,
    expected_error: str,
) -> None:
    before = await catalog_rows(loaded.core.database_url)
    upstream.serve(body)
    upstream.content_type = content_type or "application/json"
    report = await refresh_catalog(loaded.core, loaded.costs, force=True, trigger="test")
    assert report.outcome is Outcome.REJECTED
    assert await catalog_rows(loaded.core.database_url) == before
    meta = await _metadata(loaded.core.database_url)
    assert meta["last_error"].startswith(expected_error)
    assert meta["catalog_version"] == 1
    run = await fetch_one(
        loaded.core.database_url,
        "SELECT outcome, error FROM ai_cost_refresh_runs ORDER BY id DESC LIMIT 1",
    )
    assert run["outcome"] == "rejected"
    # the next good refresh succeeds and clears the error
    upstream.serve(document(models(20), **{"gpt-alias": {"alias_of": "gpt-test-002"}}))
    upstream.content_type = "application/json"
    good = await refresh_catalog(loaded.core, loaded.costs, force=True, trigger="test")
    assert good.outcome is Outcome.APPLIED
    assert (await _metadata(loaded.core.database_url))["last_error"] is None


@pytest.mark.parametrize(
    ("bad_value", "reason"),
    [
        ("-1e-06", "negative price at input_cost_per_token: -0.000001"),
        ('"free"', "non-numeric"),
        # PostgreSQL's NUMERIC holds neither (it would have failed the whole write)
        (
            "1e-20000",
            "unreadable number '1e-20000' at input_cost_per_token: outside the range of NUMERIC",
        ),
        ("2e131072", "unreadable number '2e131072'"),
        # beyond even Decimal's exponent range
        ("1e-9999999999999999999", "unreadable number '1e-9999999999999999999'"),
    ],
    ids=["negative", "non-numeric", "below-numeric", "above-numeric", "beyond-decimal"],
)
async def test_a_bad_entry_is_skipped_and_its_previous_version_stays(
    loaded: Settings, upstream: Upstream, bad_value: str, reason: str
) -> None:
    changed = models(20)
    changed["gpt-test-003"]["input_cost_per_token"] = "BAD"
    changed["gpt-test-004"]["output_cost_per_token"] = "8.5e-06"  # a real change beside it
    body = document(changed, **{"gpt-alias": {"alias_of": "gpt-test-001"}})
    upstream.serve(body.replace(b'"BAD"', bad_value.encode()))
    report = await refresh_catalog(loaded.core, loaded.costs, force=True, trigger="test")
    assert report.outcome is Outcome.APPLIED
    assert (report.added, report.changed, report.removed) == (0, 1, 0)
    assert list(report.skipped) == ["gpt-test-003"]
    assert report.skipped["gpt-test-003"].startswith(reason)
    kept = await fetch_one(
        loaded.core.database_url,
        "SELECT input_cost_per_token, valid_to FROM ai_model_costs WHERE model = 'gpt-test-003'",
    )
    assert kept["input_cost_per_token"] == Decimal("0.000004")
    assert kept["valid_to"] is None
    run = await fetch_one(
        loaded.core.database_url,
        "SELECT skipped, skipped_entries::text AS entries FROM ai_cost_refresh_runs"
        " ORDER BY id DESC LIMIT 1",
    )
    assert run["skipped"] == 1
    assert json.loads(run["entries"])["gpt-test-003"].startswith(reason)


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("gpt-test-020", {"mode": "chat\u0000"}),
        ("gpt-test-020", {"litellm_provider": "open\u0000ai"}),
        ("gpt-test-020", {"note": {"\u0000": 1}}),
        ("gpt-test-\u0000020", {}),
    ],
)
async def test_a_nul_character_in_an_entry_skips_it_not_the_refresh(
    loaded: Settings, upstream: Upstream, key: str, bad: dict[str, Any]
) -> None:
    """JSON may spell NUL (\\u0000), which neither PostgreSQL's text nor its jsonb holds: one
    entry with it failed the write of the whole catalog, as an exception that recorded
    nothing. It is skipped, named as JSON spells it."""
    body = models(21)
    body[key] = body.pop("gpt-test-020") | bad
    body["gpt-test-001"]["input_cost_per_token"] = 0.000009
    upstream.serve(document(body, **{"gpt-alias": {"alias_of": "gpt-test-001"}}))
    report = await refresh_catalog(loaded.core, loaded.costs, force=True, trigger="test")
    assert report.outcome is Outcome.APPLIED
    assert (report.added, report.changed, report.removed) == (0, 1, 0)
    assert "NUL" in report.skipped[key.replace("\x00", "\\u0000")]


@pytest.mark.parametrize("where", ["model", "provider", "alias"])
async def test_a_name_too_long_for_any_call_skips_its_entry_not_the_refresh(
    loaded: Settings, upstream: Upstream, where: str
) -> None:
    """A name of thousands of characters that do not compress (a broken upstream) overflowed
    the index of the catalog's names: the write of the whole catalog failed, as an exception
    that recorded nothing. No call can name a model or provider that long: it is skipped."""
    body: dict[str, Any] = models(21)
    long = secrets.token_hex(2000)
    key = long if where in ("model", "alias") else "gpt-test-020"
    entry = body.pop("gpt-test-020")
    body[key] = {"alias_of": "gpt-test-001"} if where == "alias" else entry
    if where == "provider":
        entry["litellm_provider"] = long
    body["gpt-test-001"]["input_cost_per_token"] = 0.000009
    upstream.serve(document(body, **{"gpt-alias": {"alias_of": "gpt-test-001"}}))
    report = await refresh_catalog(loaded.core, loaded.costs, force=True, trigger="test")
    assert report.outcome is Outcome.APPLIED
    assert (report.added, report.changed) == (0, 1)
    assert "characters" in report.skipped[key]


@pytest.mark.parametrize("bad", [{"max_output_tokens": -1}, {"rpm": {"tier-1": -1}}])
async def test_a_negative_number_outside_the_prices_skips_its_entry_not_the_refresh(
    loaded: Settings, upstream: Upstream, bad: dict[str, Any]
) -> None:
    """The catalog's CHECK refuses a negative number anywhere in an entry, where the guardrail
    looked at prices only: a limit of -1 (an upstream's "unknown") failed the write of the
    whole catalog, as an exception that recorded nothing. The entry is skipped."""
    body = models(21)
    body["gpt-test-020"] |= bad
    body["gpt-test-001"]["input_cost_per_token"] = 0.000009
    upstream.serve(document(body, **{"gpt-alias": {"alias_of": "gpt-test-001"}}))
    report = await refresh_catalog(loaded.core, loaded.costs, force=True, trigger="test")
    assert report.outcome is Outcome.APPLIED
    assert (report.added, report.changed) == (0, 1)
    assert report.skipped["gpt-test-020"].startswith("negative number at ")


async def test_a_token_limit_beyond_bigint_skips_its_entry_not_the_refresh(
    loaded: Settings, upstream: Upstream
) -> None:
    """A context limit no BIGINT holds (a typo upstream: 1e30 tokens) made the write of the
    whole catalog fail, as an exception that recorded nothing: one bad entry must not stop
    every other price from being refreshed."""
    body = models(21)
    body["gpt-test-020"]["max_input_tokens"] = 10**30
    body["gpt-test-001"]["input_cost_per_token"] = 0.000009
    upstream.serve(document(body, **{"gpt-alias": {"alias_of": "gpt-test-001"}}))
    report = await refresh_catalog(loaded.core, loaded.costs, force=True, trigger="test")
    assert report.outcome is Outcome.APPLIED
    assert (report.added, report.changed, report.removed) == (0, 1, 0)
    assert "out of range" in report.skipped["gpt-test-020"]
    assert report.model_count == 20


@pytest.mark.parametrize(
    ("mode", "expected_error"),
    [
        ("status", "failed: upstream answered HTTP 500"),
        ("reset", "failed: connection failed"),
        ("drip", "failed: timed out after 2 s"),
        ("endless", "failed: body too large: more than 1000000 bytes"),
    ],
)
async def test_an_upstream_fault_leaves_the_catalog_row_for_row(
    loaded: Settings, upstream: Upstream, mode: str, expected_error: str
) -> None:
    before = await catalog_rows(loaded.core.database_url)
    upstream.drip_interval = 0.5
    upstream.serve(document(models(30)), mode=mode)  # type: ignore[arg-type]
    asked = len(upstream.requests)
    report = await refresh_catalog(loaded.core, loaded.costs, force=True, trigger="test")
    assert report.outcome is Outcome.FAILED
    assert await catalog_rows(loaded.core.database_url) == before
    meta = await _metadata(loaded.core.database_url)
    assert meta["last_error"].startswith(expected_error)
    assert meta["last_error_at"] is not None
    transient = mode != "endless"  # a body over the limit is refused, the others unavailable
    assert len(upstream.requests) - asked == (2 if transient else 1)  # one retry when transient


async def test_a_304_to_a_request_that_was_not_conditional_confirms_nothing(
    loaded: Settings, upstream: Upstream
) -> None:
    """A 304 answers a conditional GET only (RFC 9110): from a source asked without a validator
    (a new MODEL_COST_SOURCE_URL), it says nothing of the catalog held, which came from the old
    one. Taken as a confirmation, the old source's prices counted as the new one's, fresh."""
    before = await catalog_rows(loaded.core.database_url)
    moved = replace_settings(loaded, model_cost_source_url=upstream.url + "?v=2")
    upstream.serve(document(models(30)), mode="status")
    upstream.status = 304
    report = await refresh_catalog(moved.core, moved.costs, force=True, trigger="test")
    assert "If-None-Match" not in upstream.requests[-1]
    assert report.outcome is Outcome.FAILED
    assert await catalog_rows(loaded.core.database_url) == before
    meta = await _metadata(loaded.core.database_url)
    assert meta["url"] == upstream.url
    assert meta["last_error"].startswith("failed: upstream answered HTTP 304")


async def test_a_body_that_is_not_in_its_content_encoding_is_a_recorded_failure(
    loaded: Settings, upstream: Upstream
) -> None:
    """A body said to be gzip that is not (a broken upstream or proxy): httpx's DecodingError
    is no transport error, and it left the refresh as an exception, recorded nowhere."""
    before = await catalog_rows(loaded.core.database_url)
    upstream.serve(document(models(30)))
    upstream.content_encoding = "gzip"
    report = await refresh_catalog(loaded.core, loaded.costs, force=True, trigger="test")
    assert report.outcome is Outcome.FAILED
    assert await catalog_rows(loaded.core.database_url) == before
    meta = await _metadata(loaded.core.database_url)
    assert meta["last_error"].startswith("failed: the body could not be decoded")


async def test_a_transient_fault_is_retried_then_succeeds(
    cfg: Settings, upstream: Upstream
) -> None:
    upstream.serve(document(models(5)), mode="status")
    upstream.status = 503
    upstream.failures_before_ok = 1
    report = await refresh_catalog(cfg.core, cfg.costs, trigger="test")
    assert report.outcome is Outcome.APPLIED
    assert len(upstream.requests) == 2


async def test_a_redirect_within_the_source_is_followed(cfg: Settings, upstream: Upstream) -> None:
    upstream.location = "/moved/prices.json"
    upstream.serve(document(models(5)), mode="redirect")
    report = await refresh_catalog(cfg.core, cfg.costs, trigger="test")
    assert report.outcome is Outcome.APPLIED, report.error
    assert len(upstream.requests) == 2  # the redirect, then the document


@pytest.mark.parametrize("elsewhere", ["port", "host"])
async def test_a_redirect_to_another_origin_is_refused_and_not_fetched(
    loaded: Settings, upstream: Upstream, elsewhere: str
) -> None:
    """An upstream (compromised, or a mirror's misconfigured proxy) that redirects the fetch
    to another address, an internal service or the cloud metadata service, does not make the
    task runner read it: the refresh fails and nothing is asked of that address."""
    internal = Upstream(body=document(models(30)))
    internal.start()
    try:
        # another port (a second server), or this server under another host name
        target = (
            internal.url if elsewhere == "port" else upstream.url.replace("127.0.0.1", "localhost")
        )
        before = await catalog_rows(loaded.core.database_url)
        asked = len(upstream.requests)
        upstream.location = target
        upstream.serve(document(models(20)), mode="redirect")
        report = await refresh_catalog(loaded.core, loaded.costs, force=True, trigger="test")
        assert report.outcome is Outcome.FAILED
        assert report.error is not None
        assert "redirected to another host, scheme or port" in report.error
        assert "localhost" not in report.error
        assert str(internal.url) not in report.error
        assert internal.requests == []
        assert len(upstream.requests) - asked == 1  # the redirect only, and not retried
        assert await catalog_rows(loaded.core.database_url) == before
    finally:
        internal.stop()


@pytest.mark.parametrize("location", ["http://[::1/x", "https://127.0.0.1:99999/p"])
def test_a_malformed_redirect_is_a_refusal_not_a_crash(location: str) -> None:
    with pytest.raises(UpstreamRefused, match="redirected to a malformed URL"):
        redirect_target("http://127.0.0.1:8000/prices.json", location)


async def test_a_redirect_loop_ends_in_a_failure(loaded: Settings, upstream: Upstream) -> None:
    upstream.serve(document(models(20)), mode="loop")
    asked = len(upstream.requests)
    report = await refresh_catalog(loaded.core, loaded.costs, force=True, trigger="test")
    assert report.outcome is Outcome.FAILED
    assert report.error == "upstream redirected more than 5 times"
    assert len(upstream.requests) - asked == 6  # refused at once, not retried


async def test_an_oversize_declared_length_is_refused_before_reading(
    loaded: Settings, upstream: Upstream
) -> None:
    big = document(models(20)) + b" " * 1_000_001
    upstream.serve(big)
    report = await refresh_catalog(loaded.core, loaded.costs, force=True, trigger="test")
    assert report.outcome is Outcome.FAILED
    assert report.error is not None
    assert report.error.startswith("body too large: Content-Length")


async def test_two_concurrent_refreshes_apply_once(cfg: Settings, upstream: Upstream) -> None:
    upstream.serve(document(models(20)))
    upstream.delay = 1.5  # long enough that the two overlap even on a loaded machine
    first, second = await asyncio.gather(
        refresh_catalog(cfg.core, cfg.costs, force=True, trigger="a"),
        refresh_catalog(cfg.core, cfg.costs, force=True, trigger="b"),
    )
    outcomes = sorted([first.outcome, second.outcome])
    assert outcomes == sorted([Outcome.APPLIED, Outcome.ALREADY_RUNNING])
    assert len(upstream.requests) == 1
    count = await fetch_one(cfg.core.database_url, "SELECT count(*) FROM ai_model_costs")
    assert count[0] == 20


async def test_seed_loads_the_bundled_snapshot_once(settings: Settings) -> None:
    first = await seed_from_snapshot(settings.core)
    assert first is not None
    assert first.outcome is Outcome.SEEDED
    assert first.model_count > 4000
    again = await seed_from_snapshot(settings.core)
    assert again is None
    meta = await _metadata(settings.core.database_url)
    assert meta["last_success_at"] is None  # a snapshot of unknown age: stale until refreshed
    assert meta["model_count"] == first.model_count
    gpt = await fetch_one(
        settings.core.database_url,
        "SELECT provider FROM ai_model_costs WHERE model = 'gpt-4o' AND valid_to IS NULL",
    )
    assert gpt["provider"] == "openai"


async def _refresh_lock_free_while_held_at(
    settings: Settings, table: str, look: Coroutine[Any, Any, Any]
) -> tuple[bool, Any]:
    """Run `look` with `table` locked, so that it waits on its first read of the table; whether
    the refresh lock was free meanwhile, and what `look` returned once the table was free."""
    url = settings.core.database_url
    blocker = await asyncpg.connect(url)
    probe = await asyncpg.connect(url)
    try:
        blocker_tx = blocker.transaction()
        await blocker_tx.start()
        await blocker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        task = asyncio.ensure_future(look)
        for _ in range(500):
            waiting = await probe.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query LIKE $1",
                f"%{table}%",
            )
            if waiting:
                break
            await asyncio.sleep(0.01)
        assert waiting == 1, f"it never reached its read of {table}"
        granted = await try_advisory_lock(probe, REFRESH_LOCK)
        if granted:
            await advisory_unlock(probe, REFRESH_LOCK)
        await blocker_tx.commit()
        return granted, await task
    finally:
        await blocker.close()
        await probe.close()


async def test_a_seed_check_on_a_loaded_catalog_leaves_the_refresh_lock_alone(
    loaded: Settings,
) -> None:
    """A replica starting beside a running fleet looks at the catalog without taking the
    refresh lock: a forced refresh asked for meanwhile runs, not skipped as "already running"
    (seen in CI: two workers starting at once, and both forced refreshes skipped)."""
    granted, seeded = await _refresh_lock_free_while_held_at(
        loaded, "ai_model_costs", seed_from_snapshot(loaded.core)
    )
    assert seeded is None  # the catalog has models: nothing seeded
    assert granted, "the seed check held the refresh lock while it looked at the catalog"


async def test_the_staleness_check_of_a_fresh_catalog_leaves_the_refresh_lock_alone(
    loaded: Settings,
) -> None:
    """Every runner checks the catalog's age each interval: that look must not hold the lock
    either, or a forced refresh at that moment is skipped as "already running"."""
    granted, report = await _refresh_lock_free_while_held_at(
        loaded, "ai_cost_metadata", refresh_catalog(loaded.core, loaded.costs, trigger="test")
    )
    assert report.outcome is Outcome.FRESH
    assert granted, "the staleness check held the refresh lock while it read the catalog's age"


async def test_the_refresh_lock_is_free_after_each_run(loaded: Settings) -> None:
    conn = await asyncpg.connect(loaded.core.database_url)
    try:
        # this database's advisory locks only: other test sessions on the server hold their own
        held = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
    finally:
        await conn.close()
    assert held == 0


async def test_a_catalog_write_the_database_refuses_is_a_recorded_rejection(
    loaded: Settings, upstream: Upstream
) -> None:
    """A row the upstream serves that PostgreSQL refuses (here a CHECK the test adds; in life a
    value no guardrail foresaw) failed the write with an error recorded nowhere: no run row, no
    `last_error`, the cron's traceback every tick. It is now a rejected refresh, recorded, and
    the catalog stays as it was (the write's transaction rolled back)."""
    url = loaded.core.database_url
    before = await catalog_rows(url)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "ALTER TABLE ai_model_costs ADD CONSTRAINT test_refused"
            " CHECK (model <> 'gpt-test-020') NOT VALID"
        )
        upstream.serve(document(models(21)))
        report = await refresh_catalog(loaded.core, loaded.costs, force=True, trigger="test")
    finally:
        await conn.execute("ALTER TABLE ai_model_costs DROP CONSTRAINT IF EXISTS test_refused")
        await conn.close()
    assert report.outcome is Outcome.REJECTED
    assert report.error is not None
    assert "CheckViolationError" in report.error
    assert "test_refused" in report.error
    assert await catalog_rows(url) == before
    meta = await _metadata(url)
    assert meta["catalog_version"] == 1
    assert "test_refused" in meta["last_error"]
    run = await fetch_one(
        url, "SELECT outcome, error FROM ai_cost_refresh_runs ORDER BY id DESC LIMIT 1"
    )
    assert run["outcome"] == "rejected"
    assert "test_refused" in run["error"]


async def test_a_refresh_whose_connection_is_cut_raises_the_cut_not_the_unlock(
    loaded: Settings, upstream: Upstream
) -> None:
    """PostgreSQL ending the refresh's connection mid-write: the unlock in `finally` ran on the
    closed connection and its InterfaceError ("connection is closed") hid the real cause."""
    url = loaded.core.database_url
    upstream.serve(document(models(21)))
    holder = await asyncpg.connect(url)
    try:
        locking = holder.transaction()
        await locking.start()
        await holder.execute("LOCK TABLE ai_model_costs IN SHARE MODE")  # writes wait, reads go
        refresh = asyncio.create_task(
            refresh_catalog(loaded.core, loaded.costs, force=True, trigger="test")
        )
        async with asyncio.timeout(20):
            while not (
                waiting := await fetch_all(
                    url,
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock'",
                )
            ):
                await asyncio.sleep(0.05)
        await fetch_one(url, "SELECT pg_terminate_backend($1)", waiting[0]["pid"])
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError)) as raised:
            await refresh
        await locking.rollback()
    finally:
        await holder.close()
    assert "terminating connection due to administrator command" in str(raised.value), repr(
        raised.value
    )
