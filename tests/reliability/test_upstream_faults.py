"""Scenario 1: upstream faults that tests/costs/test_refresh.py does not already cover.

Each fault is refreshed (a forced refresh against a real local upstream and PostgreSQL; the 1 GiB
bodies by a real `aiserver-costs refresh --force` process, whose peak memory is measured) while a
real `aiserver-api` process answers a steady stream of cost calculations. Every time: the catalog is
unchanged row for row, the metadata records the error, the API keeps answering 200 from the
version it had, and the next good refresh succeeds and reaches the API.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import pytest

from aiserver.core_db.migrations import apply_migrations
from aiserver.costs.refresh import Outcome, refresh_catalog

from ..conftest import Settings, create_database, drop_database, make_settings, replace_settings
from ..support.catalog import catalog_rows, document, model_entry
from ..support.upstream import Upstream
from .harness import (
    GIB,
    REFRESH,
    ApiProcess,
    Load,
    api_env,
    api_process,
    calculate_loop,
    cued,
    errors_logged,
    eventually,
    huge_upstream,
    metadata,
    model_names,
    peak_rss_kb,
    priced_version,
    versioned_document,
)

pytestmark = pytest.mark.slow

T = TypeVar("T")

MODELS: Final = 40
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024  # MODEL_COST_MAX_BYTES is left at its default


@dataclass
class Stage:
    """One database, one upstream and one API process for the whole module; every test leaves
    the catalog whole, one version further on."""

    settings: Settings
    upstream: Upstream
    api: ApiProcess
    logs: Path


@pytest.fixture(scope="module")
async def stage(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stage]:
    url = await create_database()
    upstream = Upstream()
    upstream.start()
    logs = tmp_path_factory.mktemp("upstream-faults")
    try:
        settings = replace_settings(
            make_settings(url), model_cost_source_url=upstream.url, model_cost_fetch_retries=0
        )
        await apply_migrations(settings.core)
        upstream.serve(versioned_document(1, MODELS))
        assert (
            await refresh_catalog(settings.core, settings.costs, trigger="test")
        ).outcome is Outcome.APPLIED
        async with api_process(api_env(url, upstream_url=upstream.url), logs / "api.log") as api:
            yield Stage(settings, upstream, api, logs)
    finally:
        upstream.stop()
        await drop_database(url)


def _entries(count: int, version: int) -> dict[str, dict[str, Any]]:
    return {
        name: model_entry(
            i, input_cost_per_token=f"{version}e-06", output_cost_per_token=f"{2 * version}e-06"
        )
        for i, name in enumerate(model_names(count))
    }


def ninety_five_percent_missing(version: int) -> bytes:
    return document(_entries(MODELS // 20, version))  # 2 of the 40 models


def list_of_models(version: int) -> bytes:
    """An OpenAI-style listing: valid JSON, but the models sit in an array under "data"."""
    models = [{"id": name, **entry} for name, entry in _entries(MODELS, version).items()]
    return json.dumps({"object": "list", "data": models}).encode()


def another_schema(version: int) -> bytes:
    """The same model names, described in a schema that is not LiteLLM's."""
    body = {
        name: {"provider": "openai", "pricing": {"input": f"{version}e-06", "unit": "token"}}
        for name in model_names(MODELS)
    }
    return json.dumps(body).encode()


def json_scalar(version: int) -> bytes:
    return b'"model_prices_and_context_window.json moved"'


def padded_shrink(version: int) -> bytes:
    """95% of the models missing, made up for by as many entries of the wrong shape under other
    names: only 2 models would stay current."""
    junk = {f"notice-{i:03d}": "see the new location" for i in range(MODELS - MODELS // 20)}
    return document(_entries(MODELS // 20, version), **junk)


@dataclass(frozen=True)
class BodyFault:
    make: Any
    outcome: str
    error: str
    mode: str = "ok"  # how tests/support/upstream.py serves it


BODY_FAULTS: Final = {
    "95-percent-missing": BodyFault(
        ninety_five_percent_missing, "rejected",
        f"rejected: shrink: the source has 2 models, the catalog has {MODELS}",
    ),
    "padded-with-wrong-shape-entries": BodyFault(
        padded_shrink, "rejected", f"rejected: shrink: the source has 2 models, the catalog has "
        f"{MODELS}",
    ),
    "models-in-a-list": BodyFault(
        list_of_models, "rejected", "rejected: wrong shape: no model entries"
    ),
    "another-schema": BodyFault(
        another_schema, "rejected", "rejected: wrong shape: no model entries"
    ),
    "json-scalar": BodyFault(
        json_scalar, "rejected",
        "rejected: wrong shape: expected a JSON object of models, got str",
    ),
    # transport faults (tests/costs/test_refresh.py has them without an API running), and a
    # connection that closes after half of a good body
    "http-500": BodyFault(versioned_document, "failed", "failed: upstream answered HTTP 500",
                          "status"),
    "connection-reset": BodyFault(versioned_document, "failed", "failed: connection failed",
                                  "reset"),
    "closed-mid-body": BodyFault(versioned_document, "failed", "failed: connection failed",
                                 "truncated"),
}  # fmt: skip


async def _during_load(stage: Stage, refresh: Awaitable[T]) -> tuple[T, Load]:
    """Run `refresh` while the API answers a steady stream of calculations."""
    load, stop = Load(), asyncio.Event()
    async with stage.api.client() as client:
        loader = asyncio.create_task(calculate_loop(client, load, stop))
        try:
            await asyncio.sleep(0.3)  # answers from before the refresh, too
            result = await refresh
            await asyncio.sleep(0.3)
        finally:
            stop.set()
            await loader
    return result, load


async def _refresh_process(stage: Stage, source_url: str) -> tuple[dict[str, Any], int, Load]:
    """A forced refresh by a real `aiserver-costs refresh` process from `source_url`, while the
    API answers calculations: its JSON report, its peak memory (kB) and the API's answers."""
    env = api_env(stage.settings.core.database_url, upstream_url=source_url,
                  MODEL_COST_FETCH_RETRIES="0")  # fmt: skip
    async with cued(
        "aiserver.costs.cli", ["refresh", "--force", "--json"], [env], preload=REFRESH
    ) as (child,):
        (code, out, err), load = await _during_load(stage, child.go(timeout=120))
    assert code == 1, (out, err)
    return json.loads(out), peak_rss_kb(err), load


async def _assert_fault_left_everything(
    stage: Stage, before: list[Any], version: int, report: dict[str, Any], load: Load, error: str
) -> None:
    url = stage.settings.core.database_url
    assert await catalog_rows(url) == before
    meta = await metadata(url)
    assert meta["catalog_version"] == version
    assert meta["last_error"].startswith(error), meta["last_error"]
    assert meta["last_error_at"] is not None
    assert report["catalog_version"] is None
    # the API kept answering from the version it had, and it reports the error
    assert len(load.outcomes) >= 5
    assert set(load.statuses()) == {200}, load.statuses()
    assert {priced_version(body) for _, _, body in load.outcomes} == {(version, version)}
    async with stage.api.client() as client:
        status = (await client.get("/v1/catalog")).json()
    assert status["last_error"] == meta["last_error"]
    assert status["catalog_version"] == status["loaded_version"] == version


async def _next_good_refresh_succeeds(stage: Stage, version: int) -> None:
    stage.upstream.serve(versioned_document(version + 1, MODELS))
    report = await refresh_catalog(
        stage.settings.core, stage.settings.costs, force=True, trigger="test"
    )
    assert (report.outcome, report.changed, report.catalog_version) == (
        Outcome.APPLIED,
        MODELS,
        version + 1,
    )
    assert (await metadata(stage.settings.core.database_url))["last_error"] is None

    async def api_has_it() -> bool:
        async with stage.api.client() as client:
            response = await client.post(
                "/v1/costs/calculate",
                json={"model": "gpt-test-007", "usage": {"input_tokens": 5, "output_tokens": 5}},
            )
        return priced_version(response.json()) == (version + 1, version + 1)

    await eventually(api_has_it, timeout=10)
    assert errors_logged(stage.api.log) == []


@pytest.mark.parametrize("name", list(BODY_FAULTS))
async def test_a_bad_body_leaves_the_catalog_and_the_api_serving(stage: Stage, name: str) -> None:
    fault = BODY_FAULTS[name]
    url = stage.settings.core.database_url
    version = (await metadata(url))["catalog_version"]
    before = await catalog_rows(url)
    stage.upstream.serve(fault.make(version + 1), mode=fault.mode)  # type: ignore[arg-type]
    refresh = refresh_catalog(stage.settings.core, stage.settings.costs, force=True, trigger="test")
    result, load = await _during_load(stage, refresh)
    report = result.as_dict()
    assert report["outcome"] == fault.outcome
    await _assert_fault_left_everything(stage, before, version, report, load, fault.error)
    await _next_good_refresh_succeeds(stage, version)


@pytest.mark.parametrize(
    ("mode", "error", "most_sent"),
    [
        # refused on the declared length: nothing but what the socket buffers took was sent
        (
            "declared",
            f"failed: body too large: Content-Length {GIB} exceeds the limit of "
            f"{DEFAULT_MAX_BYTES} bytes",
            16 * 1024 * 1024,
        ),
        # no length: refused while streaming, as soon as the limit is passed
        (
            "chunked",
            f"failed: body too large: more than {DEFAULT_MAX_BYTES} bytes",
            DEFAULT_MAX_BYTES + 16 * 1024 * 1024,
        ),
    ],
    ids=["declared-length", "chunked"],
)
async def test_a_1_gib_body_is_refused_while_streaming(
    stage: Stage, mode: str, error: str, most_sent: int, record_property: Any
) -> None:
    url = stage.settings.core.database_url
    version = (await metadata(url))["catalog_version"]
    before = await catalog_rows(url)
    with huge_upstream(mode) as huge:  # type: ignore[arg-type]
        report, peak_kb, load = await _refresh_process(stage, huge.url)
        sent, requests = huge.sent, huge.requests
    record_property("upstream_sent_bytes", sent)
    record_property("refresh_peak_rss_kb", peak_kb)
    record_property("calculations_during_refresh", len(load.outcomes))
    assert report["outcome"] == "failed"
    assert requests == 1  # too large is not transient: no retry
    assert sent <= most_sent, f"the upstream sent {sent} bytes"
    # the refresh process never held the gigabyte: its peak is the limit plus the interpreter
    assert peak_kb * 1024 < DEFAULT_MAX_BYTES + 256 * 1024 * 1024, f"peak RSS {peak_kb} kB"
    await _assert_fault_left_everything(stage, before, version, report, load, error)
    await _next_good_refresh_succeeds(stage, version)
