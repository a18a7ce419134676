"""Scenario 7, the ledger's part: SIGTERM to a real `aiserver-api` in the middle of a
10,000-event POST /v1/usage, and to a real `aiserver-taskrunner` in the middle of a fold.

Each signal is timed by a lock the test holds: the request's (or the fold's) transaction has
written part of its work and waits for the lock when the signal comes. The test then releases
the lock, at once or only after the process has had to give up. Whatever the process did, it did
whole or not at all, and a retry (a restarted process) finishes the work exactly once.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import asyncpg
import httpx
import pytest

from aiserver.api.problems import PROBLEM_JSON
from aiserver.core_db.errors import RETRY_AFTER_S, problem_type
from aiserver.ledger.usage.partitions import month_of, partition_name

from ..conftest import drop_database
from ..support.folding import fold_all
from ..support.processes import taskrunners
from ..support.rollups import brute_force, outbox_size, stored_events, stored_rollups
from ..support.upstream import Upstream
from .harness import (
    api_env,
    api_process,
    catalogued_database,
    errors_logged,
    eventually,
    taskrunner_env,
)
from .test_upgrade import project_key, runner_errors

pytestmark = pytest.mark.slow

BATCH: Final = 10_000
WAIT_S: Final = 60.0
#: The API's own bound on finishing requests after SIGTERM (uvicorn's timeout_graceful_shutdown).
API_GRACE_S: Final = 20.0
#: A backend of this database in a transaction, waiting for a lock on the relation $1.
WAITING_ON: Final = """
SELECT a.pid FROM pg_stat_activity AS a JOIN pg_locks AS l ON l.pid = a.pid
WHERE a.datname = current_database() AND a.backend_xid IS NOT NULL
  AND l.relation = $1::regclass AND NOT l.granted
"""
#: The project's events that are folded (no longer in the outbox), as `stored_events` reads them.
FOLDED: Final = """
SELECT project_id, occurred_at, model, provider, matched_model, matched_provider, status,
       tags::text, usage_other::text, input_tokens, output_tokens, cache_read_tokens,
       cache_write_tokens, reasoning_tokens, total_cost
FROM usage_events AS e
WHERE project_id = $1 AND NOT EXISTS (SELECT FROM usage_outbox AS o WHERE o.event_id = e.id)
"""
#: A backend of this database that has written (it has a transaction id) and waits for a lock.
WAITING_IN_TRANSACTION: Final = """
SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND backend_xid IS NOT NULL AND wait_event_type = 'Lock'
"""
GONE: Final = "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $1"
#: The API's warning for a request cancelled by the server (answered 503).
CANCELLED: Final = "request cancelled by the server, answered 503"


def batch(at: datetime) -> dict[str, Any]:
    return {
        "events": [
            {
                "id": f"k{i:05d}",
                "model": "gpt-test-001",
                "occurred_at": at.isoformat(),
                "tags": {"team": f"t{i % 4}"},
                "usage": {"input_tokens": 100 + i % 991, "output_tokens": i % 97},
            }
            for i in range(BATCH)
        ]
    }


@dataclass
class Served:
    url: str
    env: dict[str, str]


@pytest.fixture
async def served(migrated_template_url: str, upstream: Upstream) -> AsyncIterator[Served]:
    url = await catalogued_database(migrated_template_url)
    try:
        yield Served(url, api_env(url, upstream_url=upstream.url))
    finally:
        await drop_database(url)


async def keys_stored(conn: asyncpg.Connection, project_id: int) -> tuple[int, int, int]:
    """(events, distinct keys, outbox rows) of the project's batch (the primer aside)."""
    row = await conn.fetchrow(
        "SELECT count(*), count(DISTINCT event_key),"
        " (SELECT count(*) FROM usage_outbox WHERE project_id = $1) - 1"
        " FROM usage_events WHERE project_id = $1 AND event_key <> 'primer'",
        project_id,
    )
    assert row is not None
    return tuple(row)


@pytest.mark.parametrize("release", ["within-grace", "after-grace"])
async def test_sigterm_mid_10000_event_batch_stores_it_whole_or_not_and_the_retry_finishes_it(
    served: Served, release: str, tmp_path: Path, record_property: Any
) -> None:
    at = datetime.now(UTC) - timedelta(hours=1)
    body = batch(at)
    partition = partition_name(month_of(at))
    loop = asyncio.get_running_loop()
    observer = await asyncpg.connect(served.url)
    blocker = await asyncpg.connect(served.url)
    try:
        async with api_process(served.env, tmp_path / "api-1.log") as api:
            project_id, auth = await project_key(api, served.url, "shutdown")
            async with api.client(timeout=WAIT_S * 2) as client:
                primer = {**body["events"][0], "id": "primer"}  # makes the month's partition
                assert (await client.post("/v1/usage", headers=auth, json=primer)).is_success
                hold = blocker.transaction()
                await hold.start()
                await blocker.execute(f'LOCK TABLE "{partition}" IN ACCESS EXCLUSIVE MODE')
                request = asyncio.create_task(client.post("/v1/usage", headers=auth, json=body))
                pid = await eventually(
                    lambda: observer.fetchval(WAITING_ON, partition), timeout=WAIT_S
                )
                signalled = loop.time()
                api.proc.send_signal(signal.SIGTERM)
                if release == "within-grace":
                    await asyncio.sleep(1.0)
                    assert api.proc.returncode is None  # it waits for the request in flight
                    await hold.rollback()
                    exit_code = await asyncio.wait_for(api.proc.wait(), API_GRACE_S + 10)
                else:  # the request outlives the grace: the server gives up on it
                    exit_code = await asyncio.wait_for(api.proc.wait(), API_GRACE_S + 10)
                    await hold.rollback()
                exited_s = loop.time() - signalled
                try:
                    first: httpx.Response | str = await request
                except httpx.TransportError as exc:
                    first = type(exc).__name__
        await eventually(lambda: observer.fetchval(GONE, pid), timeout=WAIT_S)
        stored = await keys_stored(observer, project_id)
    finally:
        await blocker.close()
        await observer.close()
    assert exit_code in (0, -signal.SIGTERM), api.output()
    record_property("exit_code", exit_code)
    record_property("exited_after_signal_s", round(exited_s, 1))
    record_property("first_answer", first if isinstance(first, str) else first.status_code)
    if isinstance(first, httpx.Response) and first.is_success:
        assert first.json()["recorded"] == BATCH
        assert stored == (BATCH, BATCH, BATCH)  # acknowledged: all of it
    else:
        assert stored == (0, 0, 0), first  # not acknowledged: none of it
    errors = [e if isinstance(e, str) else e["event"] for e in errors_logged(api.log)]
    if release == "within-grace":
        assert isinstance(first, httpx.Response)
        assert first.status_code == 200, first
        assert errors == []
    else:  # uvicorn gives up on the request; the API answers it as a retryable failure
        assert isinstance(first, httpx.Response), first
        assert first.status_code == 503, first.text
        assert first.headers["content-type"] == PROBLEM_JSON
        assert first.headers["retry-after"] == str(RETRY_AFTER_S)
        answer = first.json()
        assert answer["type"] == problem_type(503, "service-unavailable"), answer
        assert (answer["status"], answer["instance"]) == (503, "/v1/usage")
        assert errors == ["Cancel 1 running task(s), timeout graceful shutdown exceeded"]
        cut = [e for e in api.events() if e.get("event") == CANCELLED]
        assert [(e["level"], e["path"], e["request_id"]) for e in cut] == [
            ("warning", "/v1/usage", first.headers["x-request-id"])
        ]

    # the client's retry, to a restarted process: each key stored once
    async with (
        api_process(served.env, tmp_path / "api-2.log") as again,
        again.client(timeout=WAIT_S * 2) as client,
    ):
        retry = await client.post("/v1/usage", headers=auth, json=body)
    assert retry.status_code == 200, retry.text
    answered = retry.json()
    assert answered["recorded"] + answered["duplicate"] == BATCH
    assert answered["duplicate"] == (BATCH if stored[0] else 0)
    conn = await asyncpg.connect(served.url)
    try:
        assert await keys_stored(conn, project_id) == (BATCH, BATCH, BATCH)
        total = await conn.fetchval(
            "SELECT sum(input_tokens * 1e-06 + output_tokens * 2e-06) = sum(total_cost)"
            " FROM usage_events WHERE project_id = $1 AND event_key <> 'primer'",
            project_id,
        )
    finally:
        await conn.close()
    assert total is True  # version 1's prices, every event
    assert errors_logged(again.log) == []


# -- a task runner stopped mid-fold -------------------------------------------------------------


async def test_sigterm_mid_fold_lets_the_fold_commit_whole_and_a_restarted_runner_folds_the_rest(
    served: Served, upstream: Upstream, tmp_path: Path, record_property: Any
) -> None:
    at = datetime.now(UTC) - timedelta(hours=1)
    async with api_process(served.env, tmp_path / "api.log") as api:
        project_id, auth = await project_key(api, served.url, "folding")
        async with api.client(timeout=WAIT_S * 2) as client:
            body = batch(at)
            primer = {**body["events"][0], "id": "primer"}
            assert (await client.post("/v1/usage", headers=auth, json=primer)).is_success
            async with asyncpg.create_pool(served.url, min_size=1, max_size=2) as pool:
                await fold_all(pool)  # the primer's rollup row: the one the test will lock
            answer = await client.post("/v1/usage", headers=auth, json=body)
        assert answer.status_code == 200, answer.text
    assert errors_logged(api.log) == []
    observer = await asyncpg.connect(served.url)
    blocker = await asyncpg.connect(served.url)
    loop = asyncio.get_running_loop()
    env = taskrunner_env(served.url, upstream_url=upstream.url)
    try:
        assert await outbox_size(observer) == BATCH
        assert len(await stored_events(observer, project_id)) == BATCH + 1
        hold = blocker.transaction()
        await hold.start()
        await blocker.execute(
            "SELECT FROM usage_rollups WHERE project_id = $1 FOR UPDATE", project_id
        )
        async with taskrunners(1, env, tmp_path) as (runner,):
            # the fold at start claims outbox rows and writes, then waits for the locked row
            pid = await eventually(
                lambda: observer.fetchval(WAITING_IN_TRANSACTION), timeout=WAIT_S
            )
            claimed = await observer.fetchval("SELECT count(*) FROM usage_outbox")
            signalled = loop.time()
            runner.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(1.0)
            assert runner.proc.returncode is None  # it lets the running fold finish
            await hold.rollback()
            exit_code = await asyncio.wait_for(runner.proc.wait(), WAIT_S)
            exited_s = loop.time() - signalled
        await eventually(lambda: observer.fetchval(GONE, pid), timeout=WAIT_S)
        # nothing half-applied: the rollups are exactly the sums of the events folded so far
        left = await outbox_size(observer)
        folded = await observer.fetch(FOLDED, project_id)
        assert await stored_rollups(observer, project_id) == brute_force(folded, ("team",))
        assert len(folded) == BATCH + 1 - left  # the primer was folded before
    finally:
        await blocker.close()
    try:
        assert exit_code == 0, runner.log.read_text()
        record_property("exit_code", exit_code)
        record_property("exited_after_signal_s", round(exited_s, 1))
        record_property("outbox_at_signal", claimed)
        record_property("outbox_after_exit", left)
        assert left < BATCH  # the fold in flight committed its batch
        assert runner_errors([runner]) == []
        # a restarted runner folds the rest: exact, and the outbox empty
        (tmp_path / "again").mkdir()
        async with taskrunners(1, env, tmp_path / "again") as (again,):
            await again.wait_for("task runner ready")
            await eventually(lambda: _outbox_empty(observer), timeout=WAIT_S)
            assert await again.terminate() == 0
        assert await stored_rollups(observer, project_id) == brute_force(
            await stored_events(observer, project_id), ("team",)
        )
        assert runner_errors([again]) == []
    finally:
        await observer.close()


async def _outbox_empty(conn: asyncpg.Connection) -> bool:
    return await outbox_size(conn) == 0
