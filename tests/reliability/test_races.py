"""Scenario 3: races between processes that start, refresh and reload at the same time."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any, Final

import pytest

from aiserver.costs.refresh import Outcome, refresh_catalog, snapshot_bytes

from ..conftest import Settings, replace_settings
from ..support.catalog import fetch_all
from ..support.processes import taskrunners
from ..support.upstream import Upstream
from .harness import (
    REFRESH,
    ApiProcess,
    advisory_locks,
    api_env,
    api_process,
    cued,
    eventually,
    metadata,
    model_names,
    priced_version,
    taskrunner_env,
    versioned_document,
)

pytestmark = pytest.mark.slow

MODELS: Final = 40


async def test_four_task_runners_on_an_empty_database_migrate_once_and_seed_once(
    empty_database_url: str, upstream: Upstream, tmp_path: Path
) -> None:
    upstream.serve(snapshot_bytes())  # should a cron tick come, the upstream has nothing new
    env = taskrunner_env(empty_database_url, upstream_url=upstream.url)
    async with taskrunners(4, env, tmp_path) as runners:
        await asyncio.gather(*(runner.wait_for("task runner ready") for runner in runners))
        exits = await asyncio.gather(*(runner.terminate() for runner in runners))
    assert exits == [0, 0, 0, 0], [r.log.read_text() for r in runners]

    migrations = [tuple(r) for r in await fetch_all(empty_database_url, "SELECT app_name, name"
                                                 " FROM migration")]  # fmt: skip
    assert migrations
    assert len(migrations) == len(set(migrations))  # the schema once
    applied = [e for r in runners for e in r.events() if e.get("event") == "migration applied"]
    assert len(applied) == len(migrations)  # each migration applied by exactly one runner

    seeds = await fetch_all(
        empty_database_url,
        "SELECT outcome FROM ai_cost_refresh_runs WHERE trigger = 'seed'",
    )
    assert [r["outcome"] for r in seeds] == ["seeded"]  # the seed once
    (counts,) = await fetch_all(
        empty_database_url,
        "SELECT count(*) FILTER (WHERE valid_to IS NULL) AS current, count(*) AS total,"
        " count(DISTINCT model) AS models FROM ai_model_costs",
    )
    assert counts["current"] > 4000
    assert counts["current"] == counts["total"] == counts["models"]  # one version per model
    assert await advisory_locks(empty_database_url) == 0


async def test_four_concurrent_forced_refreshes_apply_exactly_once(
    settings: Settings, upstream: Upstream
) -> None:
    cfg = replace_settings(settings, model_cost_source_url=upstream.url)
    upstream.serve(versioned_document(1, MODELS))
    assert (await refresh_catalog(cfg.core, cfg.costs, trigger="test")).outcome is Outcome.APPLIED
    upstream.serve(versioned_document(2, MODELS))
    upstream.delay = 3.0  # the winner holds the lock this long: the others arrive meanwhile
    asked = len(upstream.requests)

    env = api_env(cfg.core.database_url, upstream_url=upstream.url)
    async with cued(
        "aiserver.costs.cli", ["refresh", "--force", "--json"], [env] * 4, preload=REFRESH
    ) as kids:
        results = await asyncio.gather(*(kid.go(timeout=120) for kid in kids))

    assert [code for code, _, _ in results] == [0, 0, 0, 0], results
    outcomes = Counter(json.loads(out)["outcome"] for _, out, _ in results)
    assert outcomes == {"applied": 1, "already_running": 3}
    assert len(upstream.requests) - asked == 1  # one download
    runs = await fetch_all(
        cfg.core.database_url, "SELECT outcome FROM ai_cost_refresh_runs ORDER BY id"
    )
    assert [r["outcome"] for r in runs] == ["applied", "applied"]  # the setup's, then one
    assert (await metadata(cfg.core.database_url))["catalog_version"] == 2
    (versions,) = await fetch_all(
        cfg.core.database_url,
        "SELECT count(*) AS rows, count(*) FILTER (WHERE valid_to IS NULL) AS current"
        " FROM ai_model_costs",
    )
    assert (versions["rows"], versions["current"]) == (2 * MODELS, MODELS)
    assert await advisory_locks(cfg.core.database_url) == 0


# -- API replicas reloading while refreshes commit ---------------------------------------------

LAST_VERSION: Final = 9
BATCH: Final = {
    "requests": [
        {"model": name, "usage": {"input_tokens": 1000, "output_tokens": 100}}
        for name in model_names(MODELS)
    ]
}


async def _batch_loop(
    api: ApiProcess, seen: list[list[tuple[int, int]]], stop: asyncio.Event
) -> None:
    """Price all models in one batch, again and again: every answer's versions, in order."""
    async with api.client() as client:
        for _ in range(5000):
            if stop.is_set():
                return
            response = await client.post("/v1/costs/calculate/batch", json=BATCH)
            assert response.status_code == 200, response.text
            body = response.json()
            assert (body["succeeded"], body["failed"]) == (MODELS, 0)
            seen.append([priced_version(item["result"]) for item in body["results"]])


async def _single_loop(api: ApiProcess, seen: list[tuple[int, int]], stop: asyncio.Event) -> None:
    async with api.client() as client:
        for i in itertools.cycle(range(MODELS)):
            if stop.is_set() or len(seen) >= 20000:
                return
            response = await client.post(
                "/v1/costs/calculate",
                json={
                    "model": f"gpt-test-{i:03d}",
                    "usage": {"input_tokens": 7, "output_tokens": 3},
                },
            )
            assert response.status_code == 200, response.text
            seen.append(priced_version(response.json()))


async def _serves(api: ApiProcess, version: int) -> bool:
    async with api.client() as client:
        with_version = await client.post(
            "/v1/costs/calculate",
            json={"model": "gpt-test-000", "usage": {"input_tokens": 1, "output_tokens": 1}},
        )
    return priced_version(with_version.json()) == (version, version)


async def test_api_replicas_price_every_answer_with_one_catalog_version_while_refreshes_commit(
    settings: Settings, upstream: Upstream, tmp_path: Path, record_property: Any
) -> None:
    cfg = replace_settings(settings, model_cost_source_url=upstream.url)
    upstream.serve(versioned_document(1, MODELS))
    assert (await refresh_catalog(cfg.core, cfg.costs, trigger="test")).outcome is Outcome.APPLIED
    env = api_env(cfg.core.database_url, upstream_url=upstream.url)

    async with (
        api_process(env, tmp_path / "api-a.log") as a,
        api_process(env, tmp_path / "api-b.log") as b,
    ):
        stop = asyncio.Event()
        batches: dict[int, list[list[tuple[int, int]]]] = {a.port: [], b.port: []}
        singles: dict[int, list[tuple[int, int]]] = {a.port: [], b.port: []}
        loads = [
            asyncio.create_task(loop)
            for api in (a, b)
            for loop in (
                _batch_loop(api, batches[api.port], stop),
                _single_loop(api, singles[api.port], stop),
            )
        ]
        try:
            for version in range(2, LAST_VERSION + 1):
                await asyncio.sleep(0.3)
                upstream.serve(versioned_document(version, MODELS))
                report = await refresh_catalog(cfg.core, cfg.costs, force=True, trigger="test")
                assert (report.outcome, report.catalog_version) == (Outcome.APPLIED, version)
            for api in (a, b):
                await eventually(lambda api=api: _serves(api, LAST_VERSION), timeout=15)
            await asyncio.sleep(0.3)
        finally:
            stop.set()
            done = await asyncio.gather(*loads, return_exceptions=True)
        failures: list[Any] = [d for d in done if isinstance(d, BaseException)]
        assert failures == []
        for api in (a, b):
            assert [e for e in api.events() if e.get("level") == "error"] == []

    for port in (a.port, b.port):
        # every answer was priced by the catalog version it names, and a batch by one version
        for batch in batches[port]:
            assert len(set(batch)) == 1, batch
            ((catalog_version, prices_version),) = set(batch)
            assert catalog_version == prices_version
        assert all(cv == pv for cv, pv in singles[port])
        # a replica never went back to an older version, and it reloaded under load
        for versions in ([b[0][0] for b in batches[port]], [cv for cv, _ in singles[port]]):
            assert versions == sorted(versions)
            assert versions[-1] == LAST_VERSION
        served = {b[0][0] for b in batches[port]} | {cv for cv, _ in singles[port]}
        record_property(f"replica_{port}", {"batches": len(batches[port]),
                                            "singles": len(singles[port]),
                                            "versions": sorted(served)})  # fmt: skip
        assert len(served) >= 3, served
        assert len(batches[port]) >= 5
