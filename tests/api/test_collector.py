"""The API raises the garbage collector's first threshold while it serves: a batch of events
allocates many objects that live until its answer, and Python's default (a pass every 700)
walked them a dozen times or more per batch."""

from __future__ import annotations

import gc
from typing import Any

from litestar.testing import AsyncTestClient

from aiserver.api.app import create_app
from aiserver.api.wiring import COLLECTOR_THRESHOLDS

from ..conftest import Settings
from .conftest import Client, Tenants
from .test_usage import event, post


async def test_a_batch_of_a_thousand_events_starts_no_collector_pass(
    client: Client, tenants: Tenants
) -> None:
    batch = [
        event(f"gc-{i}", tags={"team": f"t{i % 7}", "user": f"u{i}"}, model=model)
        for i, model in enumerate(["gpt-test-001", "no-such-model-anywhere"] * 500)
    ]
    passes: list[int] = []

    def count(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            passes.append(info["generation"])

    gc.collect()  # what the tenants' setup left behind is not this request's
    gc.callbacks.append(count)
    try:
        response = await post(client, tenants.ingest_a["key"], {"events": batch})
    finally:
        gc.callbacks.remove(count)
    assert response.status_code == 200, response.text
    assert response.json()["recorded"] == 1000
    # With Python's default thresholds this request started 16 passes (checked).
    assert passes == [], len(passes)


async def test_the_thresholds_hold_while_the_app_runs_and_are_restored_after(
    api_settings: Settings, redis_clean: None
) -> None:
    before = gc.get_threshold()
    assert before != COLLECTOR_THRESHOLDS
    async with AsyncTestClient(app=create_app(api_settings)) as running:
        assert (await running.get("/health")).status_code == 200
        assert gc.get_threshold() == COLLECTOR_THRESHOLDS
    assert gc.get_threshold() == before
